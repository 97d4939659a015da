import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_generated_docs_are_up_to_date():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_readme_has_exactly_two_setup_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("## Set up and run", 1)[1].split("```", 2)[1]
    cmds = [ln for ln in block.splitlines()[1:] if ln.strip()]
    assert [c.split("#")[0].strip() for c in cmds] == ["make main", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


# ---------------------------------------------------------------------------- the docs' Python examples run

PY_BLOCK = re.compile(r"```python\n(.*?)```", re.S)

# The examples are written for SmolLM2 and the real data. Here they run on the tiny random model and
# the toy texts put under the real files' names; these are the only changes: the model's name, and
# the sizes that a 100-word vocabulary and 256 neurons cannot meet (50 toxic tokens, 1,000 neurons).
TINY = {
    '"smollm2-135m-instruct"': '"tiny"',
    'methods="unembed")': 'methods="unembed", k_tokens=8, n_gen_prompts=20, n_eval_prompts=10, ks="10", '
                          'random_draws=1, rerank_top=50, benign_tokens=256, ppl_tokens=256)',
}


def python_examples() -> list[tuple[str, str]]:
    """The Python examples of the docs that run as written: the README's, the quickstart's and those of
    the package's and the job layer's docstrings (the interventions docstring's is a fragment)."""
    import mechtox
    import mechtox.jobs

    out = []
    for name in ("README.md", "docs/quickstart.md"):
        out += [(f"{name} example {i + 1}", b) for i, b in enumerate(PY_BLOCK.findall((REPO / name).read_text()))]
    for mod in (mechtox, mechtox.jobs):
        after = mod.__doc__.split("::", 1)[1].splitlines()  # the indented lines after "::"
        block = "\n".join(ln for ln in after if not ln or ln.startswith("    "))
        out.append((f"{mod.__name__} docstring", textwrap.dedent(block)))
    return out


@pytest.fixture
def toy_home(tmp_path, monkeypatch):
    """A working directory whose data folder ($MECHTOX_DATA) holds the toy texts under the real
    files' names (the labelled ones repeated past Jigsaw's 12,180 rows, each copy numbered), whose workspace
    ./mechtox-runs has the tiny model as its base and a saved probe, as after `mechtox probe`."""
    from mechtox import data as D
    from mechtox.cli import main

    toy = tmp_path / "data"
    toy.mkdir()
    res = REPO / "mechtox" / "resources"
    rows = pd.read_csv(res / "toxicity_small.csv")
    copies = [rows.assign(text=rows.text + (f" {k}" if k else "")) for k in range(12_200 // len(rows) + 1)]
    pd.concat(copies).to_csv(toy / "jigsaw_balanced.csv", index=False)  # each text once: a held-out repeat is left out
    for name in ("rtp_challenge.jsonl", "rtp_nontoxic.jsonl"):
        (toy / name).write_text((res / "prompts_small.jsonl").read_text() * 4)
    (toy / "wikitext2_test.raw").write_text((res / "text_small.txt").read_text() * 20)
    monkeypatch.setenv("MECHTOX_DATA", str(toy))
    monkeypatch.delenv("MECHTOX_HOME", raising=False)  # the examples name ./mechtox-runs
    monkeypatch.setattr(D, "_ANNOUNCED", set())
    monkeypatch.chdir(tmp_path)
    for ws in ("mechtox-runs", "ws"):  # the default workspace, and the one the job layer's docstring names
        assert main(["models", "-w", ws, "-q", "--set-base", "tiny"]) == 0
    assert main(["probe", "-q", "--n-train", "60", "--n-test", "20", "--out", "probe"]) == 0
    return tmp_path


def test_the_python_examples_of_the_docs_run(toy_home, capsys):
    examples = python_examples()
    assert len(examples) >= 5
    for old in TINY:
        assert any(old in code for _, code in examples), f"no example has {old!r}: update TINY"
    for where, code in examples:
        for old, new in TINY.items():
            code = code.replace(old, new)
        try:
            exec(compile(code, where, "exec"), {})
        except Exception as e:
            pytest.fail(f"{where} fails: {type(e).__name__}: {e}")
    out = capsys.readouterr().out
    assert "builtin template-built" not in out  # the files were read by their real names


# ---------------------------------------------------------------------------- the docs' commands parse

SHELL_BLOCK = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)
# where the docs use a variable they define only in words: the workspace of the main job
SHELL_DEFAULTS = {"W": "-w WS"}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """Every ``mechtox ...`` command in the shell blocks of the README, docs/ and analyses/ READMEs, as
    (file, line, argv), with the variables the docs set before it (``W=...``, ``COMMON="..."``) put in."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "analyses").rglob("README.md"))]
    out = []
    for f in files:
        env = dict(SHELL_DEFAULTS)
        for block in SHELL_BLOCK.findall(f.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()  # a comment is no command
                if m := re.match(r'^([A-Z_]+)=("[^"]*"|\S+)$', line):
                    env[m.group(1)] = m.group(2).strip('"')
                    continue
                m = re.search(r"(?:^|\s|/)mechtox\s+(.*)$", line)
                if not m or line.startswith("pip"):
                    continue
                cmd = re.split(r"\s(?:&&|\||;|>|2>)", m.group(1))[0]
                for name, value in sorted(env.items(), key=lambda kv: -len(kv[0])):  # $COMMON before $C
                    cmd = re.sub(rf"\$\{{?{name}\b\}}?", lambda _, v=value: v, cmd)
                world = re.search(r"--nproc_per_node\s+(\d+)", line)
                out.append((f"{f.relative_to(REPO)}: {line}", world.group(1) if world else "1", shlex.split(cmd)))
    return out


def test_every_documented_command_parses_and_passes_its_checks(monkeypatch, capsys):
    """A flag renamed or removed, or a value a config refuses, breaks the commands people copy from
    the docs (results.md alone has dozens): each must parse and build its config as written."""
    from mechtox.cli import parse
    from mechtox.jobs import COMMANDS, Context
    from mechtox.jobs._base import from_args

    commands = documented_commands()
    assert len(commands) > 50
    bad = []
    for where, world, argv in commands:
        monkeypatch.setenv("WORLD_SIZE", world)  # what torchrun --nproc_per_node sets
        try:
            args = parse(argv)
            if args.command:
                from_args(Context, args)
                from_args(COMMANDS[args.command][1], args)
        except SystemExit:
            bad.append(f"{where}\n    {capsys.readouterr().err.strip().splitlines()[-1]}")
        except Exception as e:  # noqa: BLE001 (every failure is listed)
            bad.append(f"{where}\n    {type(e).__name__}: {e}")
    assert not bad, "documented commands that fail:\n" + "\n".join(bad)


def test_every_mutant_of_the_mutation_check_still_applies():
    """tools/mutate.py (README) refuses to run when a mutant's snippet is no longer in the code
    exactly once; a refactor must update the mutants with it."""
    r = subprocess.run([sys.executable, str(REPO / "tools" / "mutate.py"), "--list"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("mutants")
