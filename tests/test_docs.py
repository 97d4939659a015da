import re
import subprocess
import sys
import textwrap
from pathlib import Path

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
    files' names (the labelled ones repeated past Jigsaw's 12,180 rows), whose workspace
    ./mechtox-runs has the tiny model as its base and a saved probe, as after `mechtox probe`."""
    from mechtox import data as D
    from mechtox.cli import main

    toy = tmp_path / "data"
    toy.mkdir()
    res = REPO / "mechtox" / "resources"
    head, *rows = (res / "toxicity_small.csv").read_text().splitlines()
    (toy / "jigsaw_balanced.csv").write_text("\n".join([head] + rows * (12_200 // len(rows) + 1)) + "\n")
    for name in ("rtp_challenge.jsonl", "rtp_nontoxic.jsonl"):
        (toy / name).write_text((res / "prompts_small.jsonl").read_text() * 4)
    (toy / "wikitext2_test.raw").write_text((res / "text_small.txt").read_text() * 20)
    monkeypatch.setenv("MECHTOX_DATA", str(toy))
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
