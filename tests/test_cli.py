"""The CLI end to end on the tiny model (fast): eval with interventions, directions, errors."""

import copy
import json

import pandas as pd
import pytest

from mechtox.cli import main


@pytest.fixture
def ws(tmp_path):
    return str(tmp_path / "ws")


def test_probe_rank_eval_directions_on_tiny(ws, tmp_path, capsys):
    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "120",
                 "--n-test", "60", "--out", "p"]) == 0
    assert main(["rank", "-w", ws, "-q", "--model", "tiny", "--probe", "p", "--top", "5", "--svd-top", "16"]) == 0
    capsys.readouterr()
    code = main(["eval", "-w", ws, "-q", "--model", "tiny", "--prompts", "builtin:prompts", "--limit", "6",
                 "--max-new-tokens", "4", "--ppl-tokens", "100", "--probe", "p",
                 "-i", "none", "-i", "subtract:p:5", "-i", "ablate:p:10", "-i", "ablate-random:p:10:1",
                 "-i", "subtract-value:p:3", "-i", "subtract-svd:p:3", "-i", "scale-keys:p:5:0.5", "-i", "steer:p:2",
                 "-i", "subtract:p:auto",
                 "--out", "e"])
    assert code == 0
    rows = json.loads((tmp_path / "ws" / "runs" / "e" / "eval.json").read_text())["rows"]
    assert [r["intervention"] for r in rows][:3] == ["none", "subtract:p:5", "ablate:p:10"]
    assert all(0 <= r["toxicity"] <= 1 and r["ppl"] > 1 and 0 <= r["probe_score"] <= 1 for r in rows)
    lines = (tmp_path / "ws" / "runs" / "e" / "continuations.jsonl").read_text().splitlines()
    assert len(lines) == 9 * 6
    assert rows[-1]["intervention"].startswith("subtract:p:") and rows[-1]["intervention"].endswith("(auto)")
    assert main(["directions", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--prompts",
                 "builtin:prompts", "--k-tokens", "5", "--n-gen-prompts", "30", "--n-eval-prompts", "6", "--ks", "5",
                 "--random-draws", "2", "--ppl-tokens", "100", "--attribution", "--out", "d"]) == 0
    out = capsys.readouterr().out
    assert "precision@20" in out and "repeat such a word from their prompt" in out and "methods passing the goal" in out
    table = json.loads((tmp_path / "ws" / "runs" / "d" / "directions.json").read_text())
    assert {r["method"] for r in table["rows"]} == {"probe", "unembed", "gen-diffmean", "gradient", "unembed (contrast)",
                                                    "attribution"}
    assert all(isinstance(r["goal"], bool) and r["goal"] == (r["precise"] and r["causal"] and r["specific"])
               for r in table["rows"])
    c = table["copies"]
    assert 0 <= c["n_copied"] <= c["n_flagged"] <= c["n_toxic"]
    assert (tmp_path / "ws" / "runs" / "d" / "ranking-attribution.csv").is_file()
    assert main(["directions", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--prompts",
                 "builtin:prompts", "--prompt-filter", "unflagged", "--methods", "unembed", "--k-tokens", "5",
                 "--contrast", "", "--n-eval-prompts", "0", "--out", "d2"]) == 0
    meta = json.loads((tmp_path / "ws" / "runs" / "d2" / "directions.json").read_text())
    assert meta["prompt_filter"] == "unflagged" and meta["prompts"].endswith("[unflagged]")
    # the default --contrast (unembed) follows --methods
    assert main(["directions", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--prompts",
                 "builtin:prompts", "--methods", "gradient", "--k-tokens", "5", "--n-eval-prompts", "0",
                 "--out", "d4"]) == 0
    meta = json.loads((tmp_path / "ws" / "runs" / "d4" / "directions.json").read_text())
    assert [r["method"] for r in meta["rows"]] == ["gradient"]
    mixed = tmp_path / "mixed.txt"  # 40 prompts with a flagged word (fit), 10 without (evaluation)
    mixed.write_text("".join(f"the {w} people {i}\n" for i in range(20) for w in ("stupid", "idiot"))
                     + "".join(f"the good day {i}\n" for i in range(10)))
    assert main(["directions", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--prompts",
                 str(mixed), "--prompt-filter", "unflagged", "--fit-prompts", "flagged", "--methods", "unembed",
                 "--rerank", "unembed,lens", "--rerank-top", "500", "--k-tokens", "5", "--contrast", "", "--ks", "5",
                 "--n-eval-prompts", "4", "--random-draws", "2", "--ppl-tokens", "100", "--out", "d3"]) == 0
    out = capsys.readouterr().out
    assert "prompts the filter removed" in out and "unembed (reranked)" in out
    meta = json.loads((tmp_path / "ws" / "runs" / "d3" / "directions.json").read_text())
    assert meta["fit_prompts"] == "flagged" and meta["rerank"] == ["unembed", "lens"] and meta["benign_tokens"] == 4096
    rows = {r["method"]: r for r in meta["rows"]}
    assert rows["unembed (reranked)"]["ranked_by"] == "cosine top-500 by attribution minus benign use"
    assert rows["lens (reranked)"]["ranked_by"] == "toxic-lens neurons by attribution minus benign use"
    assert rows["lens (reranked)"]["precision@20"] == 1.0  # every candidate is a toxic-lens neuron
    assert all(isinstance(r["goal"], bool) for r in rows.values())
    reranked = (tmp_path / "ws" / "runs" / "d3" / "ranking-unembed-reranked.csv").read_text().splitlines()
    assert reranked[0].startswith("layer,neuron") and 1 < len(reranked) <= 501
    abl = json.loads((tmp_path / "ws" / "runs" / "d3" / "ablation.json").read_text())
    assert {k: len(v) for k, v in abl["random_drops"].items()} == {"unembed@5": 2, "unembed (reranked)@5": 2,
                                                                    "lens (reranked)@5": 2}
    # the saved directions are usable by every command that takes a probe
    assert main(["rank", "-w", ws, "-q", "--model", "tiny", "--probe", "unembed", "--top", "3", "--svd-top", "8"]) == 0


@pytest.mark.parametrize("spec,match", [
    ("explode:p:1", "unknown kind 'explode'"),
    ("subtract:p", "subtract takes DIRECTION:ALPHA"),
    ("subtract:p:lots", "'lots' is not a number"),
    ("ablate:p:-3", "K must be positive"),
    ("none:1", "none takes no arguments"),
    ("ablate:p:5:median", "ablate takes DIRECTION:K, DIRECTION:K:zero or DIRECTION:K:mean"),
    ("ablate:p:5:zero:7", "ablate takes DIRECTION:K"),
    ("ablate-random:p:5:1:2", "ablate-random takes DIRECTION:K or DIRECTION:K:SEED"),
    ("steer:p:auto", "ALPHA auto works for the subtract kinds"),
    ("subtract:p:nan", "'nan' is not a finite number"),
    ("scale-keys:p:5:inf", "'inf' is not a finite number"),
    ("scale-keys:p:5", "scale-keys takes DIRECTION:K:FACTOR"),
    ("subtract::1", "missing DIRECTION"),
])
def test_bad_intervention_spec_is_one_line(ws, capsys, spec, match):
    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "120",
                 "--n-test", "60", "--out", "p"]) == 0
    capsys.readouterr()
    assert main(["eval", "-w", ws, "-q", "--model", "tiny", "--prompts", "builtin:prompts", "-i", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "valid forms:" in err


def test_rank_reads_a_file_of_toxic_texts_alone(ws, capsys, tmp_path):
    """--act-data asks for toxic text, yet a file of toxic rows only was refused ('only one class
    (1) present; a probe needs toxic and non-toxic examples'); one without toxic rows is an error
    before the model loads."""
    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1"]) == 0
    toxic, clean = tmp_path / "toxic.csv", tmp_path / "clean.csv"
    toxic.write_text("text,label\nyou stupid idiot,1\nshut up you moron,1\n")
    clean.write_text("text,label\nthanks for the help,0\nthe river and the city,0\n")
    capsys.readouterr()
    assert main(["rank", "-w", ws, "-q", "--model", "tiny", "--act-data", str(toxic), "--out", "r"]) == 0
    assert "mean activations on 2 toxic texts" in capsys.readouterr().out
    assert "act_proj" in (tmp_path / "ws" / "runs" / "r" / "ranking.csv").read_text().splitlines()[0]
    assert main(["rank", "-w", ws, "--model", "tiny", "--act-data", str(clean)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "has no toxic rows (label 1)" in err and "loaded tiny" not in out + err


def test_missing_direction_and_bad_data(ws, capsys, tmp_path):
    assert main(["rank", "-w", ws, "--model", "tiny", "--probe", "nope"]) == 2
    assert "no direction or probe 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhi,0\nho,0\n")
    assert main(["probe", "-w", ws, "--model", "tiny", "--data", str(bad)]) == 2
    assert "only one class" in capsys.readouterr().err
    profane = tmp_path / "profane.txt"
    profane.write_text("you fucking idiot\nwhat a stupid shit\n")
    assert main(["directions", "-w", ws, "--model", "tiny", "--data", "builtin:toxicity", "--prompts", str(profane),
                 "--prompt-filter", "unflagged"]) == 2
    assert "every prompt of" in capsys.readouterr().err
    assert main(["directions", "-w", ws, "--model", "tiny", "--data", "builtin:toxicity", "--fit-prompts",
                 "flagged"]) == 2
    assert "add --prompt-filter unflagged" in capsys.readouterr().err
    assert main(["directions", "-w", ws, "--model", "tiny", "--data", "builtin:toxicity", "--methods", "unembed",
                 "--rerank", "probe"]) == 2
    assert "--rerank ['probe']: not among --methods" in capsys.readouterr().err
    assert main(["directions", "-w", ws, "--model", "tiny", "--data", "builtin:toxicity", "--methods", "gradient",
                 "--contrast", "unembed"]) == 2
    assert "--contrast ['unembed']: not among --methods" in capsys.readouterr().err
    assert main(["directions", "-w", ws, "--model", "tiny", "--data", "builtin:toxicity", "--benign-tokens", "-1"]) == 2
    assert "--benign-tokens must be 0 or more" in capsys.readouterr().err


def test_probe_of_other_dimension_is_one_line(ws, tmp_path, capsys):
    import numpy as np

    from mechtox.probe import fit_probe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 32))
    p = fit_probe(X, (X[:, 0] > 0).astype(int), "blocks.0.hook_resid_post", name="small")
    p.save(tmp_path / "ws" / "directions" / "small")
    assert main(["rank", "-w", ws, "--model", "tiny", "--probe", "small"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "d_model 32; model" in err


def test_version_names_mechtox_and_its_libraries_on_one_line(capsys):
    from importlib import metadata

    import mechtox

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.count("\n") == 1
    assert out.startswith(f"mechtox {metadata.version('mechtox')} (torch {metadata.version('torch')}, ")
    assert mechtox.__version__ == metadata.version("mechtox")  # the package's and pyproject's versions agree
    assert f"transformer-lens {metadata.version('transformer-lens')}" in out


@pytest.mark.parametrize("command", ["models", "probe", "rank", "directions", "eval", "pairs", "train", "attribute",
                                     "export", "report", "run"])
def test_every_help_page_renders(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: mechtox" in capsys.readouterr().out


@pytest.mark.parametrize("argv,want", [
    (["probe"], dict(workspace=None, seed=0, quiet=False, device=None, dtype="float32")),
    (["-q", "--seed", "3", "-w", "A", "probe"], dict(workspace="A", seed=3, quiet=True)),
    (["probe", "-q", "--seed", "3", "-w", "A"], dict(workspace="A", seed=3, quiet=True)),
    (["-w", "A", "--seed", "3", "probe", "-w", "B"], dict(workspace="B", seed=3)),   # after COMMAND wins
    (["--dtype", "bfloat16", "train", "dpo", "--seed", "5"], dict(dtype="bfloat16", seed=5)),
])
def test_common_options_go_before_or_after_the_command(argv, want, tmp_path, monkeypatch):
    from mechtox.cli import parse
    from mechtox.jobs import Context
    from mechtox.jobs._base import from_args

    monkeypatch.chdir(tmp_path)
    ctx = from_args(Context, parse(argv))
    assert {k: getattr(ctx, k) for k in want} == want


@pytest.mark.parametrize("argv,end", [
    (["probe", "--n-trian", "5"], "unrecognized arguments: --n-trian 5; did you mean --n-train?"),
    (["-q", "train", "dpo", "--lora-rank", "8"], "unrecognized arguments: --lora-rank 8; did you mean --lora-r?"),
    (["probe", "--quite", "--n-tset=4", "--zzzz"],
     "--quite --n-tset=4 --zzzz; did you mean --quiet (for --quite), --n-test (for --n-tset=4)?"),
    (["eval", "--zzzz"], "unrecognized arguments: --zzzz"),
])
def test_a_mistyped_option_is_refused_with_the_option_it_was_meant_to_be(argv, end, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    command = next(a for a in argv if not a.startswith("-"))
    assert e.value.code == 2 and err.endswith(end) and err.splitlines()[-1].startswith(f"mechtox {command}: error: ")


def test_help_version_and_flag_checks_import_no_torch():
    """`mechtox --help`, every `COMMAND --help`, `--version` and a bad flag's error come from the parser
    and the configs alone: torch and TransformerLens (6-8 s to import on 2 cores) are not imported."""
    import subprocess
    import sys

    script = """
import sys
from mechtox.cli import main, build_parser
from mechtox.jobs import COMMANDS
calls = [["--help"], ["--version"]] + [[c, "--help"] for c in COMMANDS]
for argv in calls:
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, argv
bad = [["probe", "--n-train", "-3"], ["train", "dpo", "--steps", "0"], ["train", "dpo", "--lr", "-1"],
       ["eval", "--batch-size", "0"], ["attribute", "--top", "0"], ["run", "--size", "huge"],
       ["directions", "--methods", "probe,nosuch"]]
for argv in bad:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2, (argv, code)
heavy = sorted(m for m in ("torch", "transformer_lens", "transformers", "numpy") if m in sys.modules)
print("HEAVY", heavy)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HEAVY []" in r.stdout, r.stdout[-300:]
    assert r.stderr.count("mechtox: error:") + r.stderr.count("mechtox run: error:") >= 6
    assert "unknown direction method(s) ['nosuch']" in r.stderr



def test_missing_files_pairs_and_directions_are_refused_before_transformer_lens_loads(tmp_path):
    """A data file, pair set or direction that is not there is an error before TransformerLens (and
    so before any model): seeding needs torch, nothing more (about 2 s instead of 8 on 2 cores)."""
    import subprocess
    import sys

    ws = str(tmp_path / "ws")
    script = f"""
import sys
from mechtox.cli import main
bad = [["probe", "-w", {ws!r}, "--data", "/no/such/file.csv"],
       ["probe", "-w", {ws!r}, "--eval", "nope", "--data", "/no/such/file.csv"],
       ["train", "dpo", "-w", {ws!r}, "--pairs", "nosuch"],
       ["train", "sft-probe", "-w", {ws!r}, "--probe", "nosuch"],
       ["eval", "-w", {ws!r}, "-i", "none", "-i", "subtract:nosuch:1"],
       ["rank", "-w", {ws!r}, "--probe", "nosuch"],
       ["pairs", "-w", {ws!r}, "--direction", "nosuch"],
       ["attribute", "-w", {ws!r}, "--before", "base", "--after", "base"]]
for argv in bad:
    assert main(argv) == 2, argv
print("HEAVY", sorted(m for m in ("transformer_lens", "transformers") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HEAVY []" in r.stdout, (r.stdout[-300:], r.stderr[-1000:])
    errors = [e for e in r.stderr.splitlines() if e.startswith("mechtox: error: ")]
    assert len(errors) == 8, r.stderr


@pytest.mark.parametrize("argv", [
    ["train", "dpo", "--pairs", "my pairs.jsonl", "--steps", "7", "-q", "--seed", "3", "--lora-r", "8", "--out", "x"],
    ["-w", "some ws", "eval", "-i", "none", "-i", "subtract:p:2", "--limit", "5", "--model", "gpt2-medium@w.pt"],
    ["probe", "--layers", "15,18", "--C", "cv", "--match-cue", "you", "--match-cue", "exclaim", "--pooling", "tokens"],
    ["--dtype", "bfloat16", "attribute", "--before", "base", "--after", "dpo", "--mode", "shared"],
])
def test_command_line_rebuilds_the_command_that_makes_a_config(argv, tmp_path, monkeypatch):
    """jobs._base.command_line (what the resume hint prints) against the parser: the line it writes
    parses back into the same config and context."""
    import shlex

    from mechtox.cli import parse
    from mechtox.jobs import COMMANDS, Context
    from mechtox.jobs._base import command_line, from_args

    monkeypatch.chdir(tmp_path)
    a = parse(argv)
    ctx, cfg = from_args(Context, a), from_args(COMMANDS[a.command][1], a)
    line = command_line(a.command, cfg, ctx)
    assert line.startswith(f"mechtox {a.command} ")
    b = parse(shlex.split(line)[1:])
    assert from_args(COMMANDS[b.command][1], b) == cfg and from_args(Context, b) == ctx


def test_an_interrupted_training_says_how_to_continue_and_that_command_finishes_it(ws, tmp_path, capsys, monkeypatch):
    """Ctrl-C after a checkpoint: the printed command (also in `mechtox models`) resumes the run to
    its last step."""
    import shlex

    from mechtox import training as T
    from tests.test_training import pairs

    p = pairs(12)
    pair_file = tmp_path / "pp.jsonl"
    pair_file.write_text("".join(json.dumps({"prompt": a, "chosen": b, "rejected": c}) + "\n"
                                 for a, b, c in zip(p.prompt, p.chosen, p.rejected, strict=True)))
    real = T.train

    def killed(*args, **kw):  # Ctrl-C after step 3 (the checkpoint is at step 2)
        real(*args, **kw, stop_after=3)
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train", killed)
    argv = ["train", "dpo", "-w", ws, "-q", "--model", "tiny", "--pairs", str(pair_file), "--steps", "5",
            "--batch-size", "4", "--checkpoint-every", "2", "--goodhart-n", "0", "--lr", "0.001"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    line = err.split("continue with: ")[1].splitlines()[0]
    assert err.strip().endswith("mechtox: interrupted") and line.endswith(" --resume")
    assert main(["models", "-w", ws]) == 0
    assert f"| dpo | 2 of 5 | interrupted: continue with `{line}` |" in capsys.readouterr().out
    monkeypatch.setattr(T, "train", real)
    assert main(shlex.split(line)[1:]) == 0
    meta = json.loads((tmp_path / "ws" / "models" / "dpo" / "config.json").read_text())
    assert meta["steps"] == 5 and meta["config"]["lr"] == 0.001


def test_train_reads_the_probe_check_texts_before_training(ws, tmp_path, monkeypatch):
    """The labelled texts of the probe check after training (TrainJobConfig.data) were read only
    after the training: a bad file failed once the steps were spent."""
    import mechtox.training
    from mechtox.errors import MechtoxError
    from mechtox.jobs import Context, execute, train
    from tests.test_training import pairs

    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1"]) == 0
    p = pairs(8)
    pair_file = tmp_path / "pairs.jsonl"
    pair_file.write_text("".join(json.dumps({"prompt": a, "chosen": b, "rejected": c}) + "\n"
                                 for a, b, c in zip(p.prompt, p.chosen, p.rejected, strict=True)))
    bad = tmp_path / "one_label.csv"
    bad.write_text("text,label\nhello,0\nthanks,0\n")

    def no_training(*a, **k):
        raise AssertionError("trained before the probe check's texts were read")

    monkeypatch.setattr(mechtox.training, "train", no_training)
    cfg = train.TrainJobConfig(objective="sft-probe", model="tiny", pairs=str(pair_file), probe="probe", steps=2,
                               batch_size=4, data=str(bad))
    with pytest.raises(MechtoxError, match="one_label.csv: only one class"):
        execute(train, cfg, Context(workspace=ws, quiet=True))


def test_train_sft_and_sap_from_the_cli(ws, tmp_path, capsys, monkeypatch):
    from tests.test_training import pairs

    p = pairs(12)
    pair_file = tmp_path / "safety.jsonl"
    pair_file.write_text("".join(json.dumps({"prompt": a, "chosen": b, "rejected": c}) + "\n"
                                 for a, b, c in zip(p.prompt, p.chosen, p.rejected, strict=True)))
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": "the city is", "gold": f" a good place number {i}"}) + "\n"
                            for i in range(10)))
    common = ["-w", ws, "-q", "--model", "tiny", "--steps", "2", "--batch-size", "4", "--goodhart-n", "0"]
    assert main(["train", "sft", *common, "--task", str(task), "--out", "sft"]) == 0
    assert main(["train", "sap", *common, "--task", str(task), "--pairs", str(pair_file), "--sap-layers", "1",
                 "--out", "sap"]) == 0
    out = capsys.readouterr().out
    assert "vectors after blocks [1]" in out and f"task {task}" in out
    meta = json.loads((tmp_path / "ws" / "models" / "sap" / "config.json").read_text())
    assert meta["objective"] == "sap" and meta["config"]["sap_layers"] == "1"
    metrics = (tmp_path / "ws" / "runs" / "train-sap" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and "safety_loss" in metrics[0]
    # the trained models are named models every command accepts
    assert main(["eval", "-w", ws, "-q", "--model", "sap", "--prompts", "builtin:prompts", "--limit", "2",
                 "--max-new-tokens", "2", "--ppl-tokens", "50"]) == 0
    assert main(["train", "sap", *common, "--task", str(task), "--pairs", str(pair_file), "--sap-layers", "9",
                 "--out", "bad"]) == 2
    assert "sap_layers '9'" in capsys.readouterr().err
    # a disk with no room for a checkpoint: one line, exit 2, and no model written
    import shutil

    from mechtox import training as T

    real = shutil.disk_usage
    monkeypatch.setattr(T.shutil, "disk_usage", lambda p: type(real(p))(*real(p)[:2], 2**20))
    assert main(["train", "sft", *common, "--task", str(task), "--out", "full"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not enough disk space for a training checkpoint" in err
    assert "choose another --out" in err and not (tmp_path / "ws" / "models" / "full").exists()


def test_data_flags_bad_folder_binary_file_and_offline_hub_id(ws, tmp_path, capsys, monkeypatch):
    import mechtox.workspace

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the bad data flag was refused")

    monkeypatch.setattr(mechtox.workspace.Workspace, "load_model", no_model)
    assert main(["run", "-w", ws, "--model", "tiny", "--data-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err and "is not a folder" in err
    monkeypatch.setenv("MECHTOX_DATA", str(tmp_path / "gone"))
    assert main(["run", "-w", ws, "--model", "tiny"]) == 2
    assert "$MECHTOX_DATA" in capsys.readouterr().err
    monkeypatch.undo()
    binary = tmp_path / "weights.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["probe", "-w", ws, "--model", "tiny", "--data", str(binary)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not readable UTF-8" in err and "Traceback" not in err
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["eval", "-w", ws, "-q", "--model", "tiny", "--prompts", "allenai/real-toxicity-prompts"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rtp_challenge.jsonl (shipped with mechtox)" in err


def test_rank_reads_its_act_data_before_the_model(ws, tmp_path, capsys, monkeypatch):
    """A bad --act-data file is refused before the model loads (the loader fails if reached)."""
    import mechtox.workspace

    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1", "--out", "p"]) == 0
    capsys.readouterr()

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --act-data was read")

    monkeypatch.setattr(mechtox.workspace.Workspace, "load_model", no_model)
    bad = tmp_path / "acts.csv"
    bad.write_text("text,label\nyou idiot,1\nhello,maybe\n")
    assert main(["rank", "-w", ws, "-q", "--model", "tiny", "--probe", "p", "--act-data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}:3: label 'maybe'" in err and "loaded before" not in err


def test_top_k_sizes_past_the_models_neurons(ws, capsys, monkeypatch):
    """The tiny model has 256 MLP neurons: '--ablate-ks 1000' had ablated all of them under the label
    'top-1000'. A size past the count is left out with a note; none left is an error before the
    continuations are generated (the loader of generate fails if reached)."""
    import mechtox.generation

    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1"]) == 0
    common = ["attribute", "-w", ws, "-q", "--before", "tiny", "--after", "tiny", "--prompts", "builtin:prompts",
              "--n", "3", "--max-new-tokens", "2", "--n-eval-prompts", "2", "--ppl-tokens", "50", "--f1-prompts", "0"]
    capsys.readouterr()
    assert main([*common, "--ablate-ks", "5,1000", "--out", "a"]) == 0
    out = capsys.readouterr().out
    assert "note: --ablate-ks 1000 left out: the model has 256 MLP neurons" in out
    assert "top-5 toxic" in out and "top-1000" not in out

    def no_generation(*a, **k):
        raise AssertionError("generated before the sizes were checked")

    monkeypatch.setattr(mechtox.generation, "generate", no_generation)
    assert main([*common, "--ablate-ks", "1000", "--out", "b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ablate-ks 1000: the model has 256 MLP neurons; give sizes up to that" in err


def test_attribute_of_models_given_as_paths_names_its_run_after_them(ws, tmp_path, capsys, monkeypatch):
    """The default run name was attribute-<before>-<after> as typed: with a path (./pre) it was an
    invalid name, refused when the results were written, after all the work. Paths and other specs
    become name-safe; a long one is cut, with a hash of the whole to keep two apart."""
    from mechtox.models import save_checkpoint, tiny_model

    monkeypatch.chdir(tmp_path)
    save_checkpoint(tiny_model(), tmp_path / "pre")
    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1"]) == 0
    assert main(["attribute", "-w", ws, "-q", "--before", "./pre", "--after", "tiny", "--prompts", "builtin:prompts",
                 "--n", "3", "--max-new-tokens", "2", "--n-eval-prompts", "0", "--f1-prompts", "0"]) == 0
    assert (tmp_path / "ws" / "runs" / "attribute-pre-tiny" / "attribution-own-groups.csv").is_file()
    from mechtox.jobs._base import spec_label

    assert [spec_label(s) for s in ("hf:org/name", "/tmp/g/ckpt", "base@w.pt", "..")] == [
        "hf-org-name", "tmp-g-ckpt", "base-w.pt", "model"]
    long_a, long_b = "/x/" + "a" * 60 + "/ckpt", "/y/" + "a" * 60 + "/ckpt"
    assert len(spec_label(long_a)) <= 40 and spec_label(long_a) != spec_label(long_b)


def test_rankings_of_two_models_and_attributions_along_two_directions_keep_apart(ws, tmp_path, capsys, monkeypatch):
    """`rank --probe p` of base and of another model both wrote runs/rank-p, and attributions along
    two directions both wrote runs/attribute-<before>-<after>: the second replaced the first,
    silently. The default names now hold the model (not base) and the direction (not probe)."""
    from mechtox.models import save_checkpoint, tiny_model

    monkeypatch.chdir(tmp_path)
    save_checkpoint(tiny_model(seed=1), tmp_path / "other")
    assert main(["models", "-w", ws, "--set-base", "tiny"]) == 0
    assert main(["probe", "-w", ws, "-q", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "30",
                 "--layers", "1"]) == 0
    assert main(["probe", "-w", ws, "-q", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "30",
                 "--layers", "0", "--out", "p0"]) == 0
    for model in ("base", "./other"):
        assert main(["rank", "-w", ws, "-q", "--model", model, "--probe", "probe", "--top", "3", "--svd-top", "8"]) == 0
    runs = tmp_path / "ws" / "runs"
    a, b = (pd.read_csv(runs / r / "ranking.csv") for r in ("rank-probe", "rank-probe-other"))
    assert not a[["layer", "neuron"]].equals(b[["layer", "neuron"]])  # two models' rankings, both kept
    for d in ("probe", "p0"):
        assert main(["attribute", "-w", ws, "-q", "--after", "./other", "--direction", d, "--prompts", "builtin:prompts",
                     "--n", "3", "--max-new-tokens", "2", "--n-eval-prompts", "0", "--f1-prompts", "0"]) == 0
    g = {r: json.loads((runs / r / "attribution-own-groups.json").read_text()) for r in
         ("attribute-base-other", "attribute-base-other-p0")}
    assert [v["direction"] for v in g.values()] == ["probe", "p0"]


def test_saving_over_a_direction_of_another_model_says_so(ws, tmp_path, capsys, monkeypatch):
    """`directions --model dpo` after `directions` (base) replaced the saved unembed, gen-diffmean...
    directions, and `probe --model dpo` the probe, silently: whatever read them before (rank, eval,
    attribute) now read another model's. Directions record their model as probes do, and replacing
    one of another model says so."""
    from mechtox.models import save_checkpoint, tiny_model

    monkeypatch.chdir(tmp_path)
    save_checkpoint(tiny_model(seed=1), tmp_path / "other")
    common = ["directions", "-w", ws, "-q", "--data", "builtin:toxicity", "--prompts", "builtin:prompts", "--k-tokens",
              "5", "--n-gen-prompts", "30", "--n-eval-prompts", "0", "--methods", "unembed"]
    assert main([*common, "--model", "tiny"]) == 0
    saved = tmp_path / "ws" / "directions" / "unembed" / "direction.json"
    assert json.loads(saved.read_text())["provenance"]["model"] == "tiny"
    assert "note:" not in capsys.readouterr().out
    assert main([*common, "--model", "./other"]) == 0
    out = capsys.readouterr().out
    assert f"note: 'unembed' from tiny replaced by this one from {tmp_path / 'other'} (to keep both, rename " \
           "directions/unembed first or give --save-prefix)" in out
    assert json.loads(saved.read_text())["provenance"]["model"] == str(tmp_path / "other")
    # --save-prefix: saved beside, the other model's left as it was
    theirs = saved.read_bytes()
    assert main([*common, "--model", "tiny", "--save-prefix", "t"]) == 0
    out = capsys.readouterr().out
    assert "note:" not in out and "directions saved as t-unembed" in out and saved.read_bytes() == theirs
    mine = json.loads((tmp_path / "ws" / "directions" / "t-unembed" / "direction.json").read_text())
    assert mine["provenance"]["model"] == "tiny" and mine["name"] == "t-unembed"
    assert main(["rank", "-w", ws, "-q", "--model", "tiny", "--probe", "t-unembed"]) == 0
    assert main([*common, "--model", "tiny", "--save-prefix", "a/b"]) == 2
    assert "--save-prefix" in capsys.readouterr().err
    probe = ["probe", "-w", ws, "-q", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "30", "--layers", "1"]
    assert main([*probe, "--model", "tiny"]) == 0 and main([*probe, "--model", "tiny"]) == 0
    assert "note:" not in capsys.readouterr().out  # the same model again: no note
    assert main([*probe, "--model", "./other"]) == 0
    assert "note: 'probe' from tiny replaced by this one from" in capsys.readouterr().out


def test_evaluations_of_two_models_keep_apart(ws, tmp_path, capsys, monkeypatch):
    """`mechtox eval --model base` then `--model dpo` (the workflow to compare them) wrote both to
    runs/eval: the second replaced the first, silently. The default run is eval-<model> now, and
    names the prompts and interventions when given: an evaluation under an ablation, or on other
    prompts, had replaced the plain one."""
    from mechtox.models import save_checkpoint, tiny_model

    monkeypatch.chdir(tmp_path)
    save_checkpoint(tiny_model(), tmp_path / "other")
    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1"]) == 0
    common = ["eval", "-w", ws, "-q", "--limit", "2", "--max-new-tokens", "2", "--ppl-tokens", "0", "--f1-prompts", "0"]
    toy = ["--prompts", "builtin:prompts"]
    runs = {"eval-tiny-prompts": [*toy, "--model", "tiny"], "eval-other-prompts": [*toy, "--model", "./other"],
            "eval-tiny-prompts-ablate-probe-5": [*toy, "--model", "tiny", "-i", "ablate:probe:5"],
            "eval-tiny-prompts-ablate-probe-5-subtract-probe-2": [*toy, "--model", "tiny", "-i", "ablate:probe:5",
                                                                   "-i", "subtract:probe:2"],
            "eval-tiny-mine.v2": ["--prompts", "mine.v2.txt", "--model", "tiny"]}
    (tmp_path / "mine.v2.txt").write_text("the city is\nyou are a\n")
    for args in runs.values():
        assert main([*common, *args]) == 0
    for run, args in runs.items():
        rows = json.loads((tmp_path / "ws" / "runs" / run / "eval.json").read_text())["rows"]
        assert {r["model"] for r in rows} == {args[args.index("--model") + 1]}
        given = [args[i + 1] for i, a in enumerate(args) if a == "-i"]
        assert [r["intervention"] for r in rows] == (given or ["none"]), run
    assert main([*common, *toy, "--model", "tiny", "--out", "mine"]) == 0 and (tmp_path / "ws" / "runs" / "mine").is_dir()


def test_eval_neuron_counts_past_the_model_are_errors_before_generating(ws, capsys, monkeypatch):
    """'-i ablate:probe:1000' on the 256-neuron tiny model had ablated all 256 under the label
    'ablate:probe:1000'; 'ablate-random:probe:200' was a numpy ValueError with a traceback."""
    import mechtox.evaluate

    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1"]) == 0

    def no_generation(*a, **k):
        raise AssertionError("generated before the interventions were checked")

    monkeypatch.setattr(mechtox.evaluate, "generate", no_generation)
    capsys.readouterr()
    for spec, match in (("ablate:probe:1000", "K 1000: the model has 256 MLP neurons; give K up to that"),
                        ("scale-keys:probe:300:2", "K 300: the model has 256 MLP neurons"),
                        ("ablate-random:probe:200", "no random baseline for these 200 neurons")):
        assert main(["eval", "-w", ws, "-q", "--model", "tiny", "--prompts", "builtin:prompts", "--limit", "2",
                     "--ppl-tokens", "50", "-i", spec]) == 2, spec
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err and "Traceback" not in err, err


def test_attribute_refuses_a_direction_between_blocks_before_generating(ws, capsys, monkeypatch):
    """A direction at blocks.1.hook_resid_mid had been attributed as the stream after block 0."""
    import torch

    import mechtox.generation
    from mechtox.probe import Direction
    from mechtox.workspace import Workspace

    Direction(vector=torch.randn(64), hook_name="blocks.1.hook_resid_mid", method="x", name="mid").save(
        Workspace(ws).direction_dir("mid"))

    def no_generation(*a, **k):
        raise AssertionError("generated before the direction was checked")

    monkeypatch.setattr(mechtox.generation, "generate", no_generation)
    assert main(["attribute", "-w", ws, "-q", "--before", "tiny", "--after", "tiny", "--direction", "mid",
                 "--prompts", "builtin:prompts", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a direction at blocks.1.hook_resid_mid cannot be attributed" in err


def test_attribute_says_when_the_exactness_check_fails(ws, tmp_path, capsys, monkeypatch):
    """A model with a centring post-norm is refused before generating. A Gemma-like post-norm model is
    attributed and passes the check; with its norms ignored (patched in: the computation before
    session 27) the check fails: a WARNING in the summary, check_passed false in the JSON and a
    warning in the report (it was an error figure among the others)."""
    import torch

    import mechtox.attribution as A
    from mechtox.models import save_checkpoint, tiny_model
    from mechtox.probe import Direction
    from mechtox.workspace import Workspace

    before = tiny_model(use_normalization_before_and_after=True, normalization_type="RMS")
    with torch.no_grad():
        for b in before.blocks:
            b.ln1_post.w.mul_(3.0)
    after = copy.deepcopy(before)
    with torch.no_grad():
        for b in after.blocks:
            b.mlp.W_out.add_(0.3 * torch.randn_like(b.mlp.W_out))
    save_checkpoint(before, tmp_path / "pre")
    save_checkpoint(after, tmp_path / "post")
    save_checkpoint(tiny_model(original_architecture="Olmo2ForCausalLM", normalization_type="LN"), tmp_path / "ln")
    Direction(vector=torch.randn(64), hook_name="blocks.1.hook_resid_post", method="x", name="d").save(
        Workspace(ws).direction_dir("d"))
    common = ["attribute", "-w", ws, "-q", "--before", str(tmp_path / "pre"), "--after", str(tmp_path / "post"),
              "--direction", "d", "--prompts", "builtin:prompts", "--n", "3", "--max-new-tokens", "3",
              "--n-eval-prompts", "0", "--mode", "shared", "--out", "a"]
    ln = [*common[:5], str(tmp_path / "ln"), common[6], str(tmp_path / "ln"), *common[8:]]
    assert main(ln) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be attributed neuron by neuron: it normalises each attention" in err
    assert main(common) == 0
    assert "error" in (out := capsys.readouterr().out) and "WARNING" not in out
    meta = json.loads((tmp_path / "ws" / "runs" / "a" / "attribution-shared-groups.json").read_text())
    assert meta["check_passed"] is True
    import mechtox.neurons as N

    monkeypatch.setattr(A, "post_norms", lambda m, L: [(None, None)] * L)
    monkeypatch.setattr(N, "post_mlp_norm", lambda m, layer: None)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(common) == 0
    assert not [w for w in caught if "exactness" in str(w.message)]  # said once, in the summary, not twice
    assert "WARNING: the exactness check failed" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ws" / "runs" / "a" / "attribution-shared-groups.json").read_text())
    assert meta["check_passed"] is False and abs(meta["check"]["error"]) > meta["check_limit"]
    assert main(["report", "-w", ws, "-q"]) == 0
    assert "The exactness check failed" in (tmp_path / "ws" / "report.html").read_text()


def test_a_damaged_result_file_leaves_its_run_out_of_the_report_not_the_report(ws, tmp_path, capsys):
    """A run file edited by hand or damaged (here: eval.json cut short) made `mechtox report` fail with
    a JSONDecodeError; now that run is left out, the report says which file, and the rest is there."""
    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1", "--out", "p"]) == 0
    assert main(["eval", "-w", ws, "-q", "--model", "tiny", "--prompts", "builtin:prompts", "--limit", "2",
                 "--max-new-tokens", "3", "--ppl-tokens", "50", "-i", "none", "--out", "e"]) == 0
    run = tmp_path / "ws" / "runs" / "e"
    whole = (run / "eval.json").read_text()
    capsys.readouterr()
    assert main(["report", "-w", ws, "-q"]) == 0
    assert "id='eval-e'" in (tmp_path / "ws" / "report.html").read_text()
    (run / "eval.json").write_text(whole[: len(whole) // 2])
    assert main(["report", "-w", ws, "-q"]) == 0
    err = capsys.readouterr().err
    assert f"report: left out runs/e ({run / 'eval.json'}: JSONDecodeError" in err
    page = (tmp_path / "ws" / "report.html").read_text()
    assert "Left out, as a file could not be read: runs/e (" in page and "id='eval-e'" not in page
    assert "Probe sweep: p" in page


def test_every_option_of_every_command_says_what_it_is_and_its_default():
    """`mechtox COMMAND --help` explains every option, and gives the default of each that has one
    (35 options had a bare flag, --model among them)."""
    import argparse
    import dataclasses

    from mechtox.cli import build_parser
    from mechtox.jobs import COMMANDS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        _, config = COMMANDS[name]
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.option_strings or action.dest)
            default = defaults.get(action.dest)
            if default not in (None, False, ""):
                assert "default" in action.help, (name, action.dest, action.help)


def test_eval_says_how_many_prompts_the_model_was_trained_on(ws, tmp_path, capsys):
    """A model trained by mechtox records its training prompts (as hashes); evaluating or attributing
    it on them is said, in the output and in the run's JSON, and new prompts are not counted."""
    prompts = ["the city is", "you are", "my friend said", "the team"]
    pair_file = tmp_path / "pp.jsonl"
    pair_file.write_text("".join(json.dumps({"prompt": p + " " * (i % 2), "chosen": " nice book", "rejected": " ugly jerk"})
                                 + "\n" for i, p in enumerate(prompts * 2)))
    assert main(["train", "dpo", "-w", ws, "-q", "--model", "tiny", "--pairs", str(pair_file), "--steps", "1",
                 "--batch-size", "4", "--goodhart-n", "0"]) == 0
    meta = json.loads((tmp_path / "ws" / "models" / "dpo" / "config.json").read_text())
    assert len(meta["trained_prompt_hashes"]) == 4 * 12  # four distinct prompts (white space aside)
    (tmp_path / "mixed.txt").write_text("you are\nthe team\nhello there\na new day\nthe weather\n")
    common = ["-w", ws, "-q", "--limit", "5", "--max-new-tokens", "3", "--ppl-tokens", "0", "--f1-prompts", "0"]
    capsys.readouterr()
    assert main(["eval", *common, "--model", "dpo", "--prompts", str(tmp_path / "mixed.txt"), "--out", "e1"]) == 0
    out = capsys.readouterr().out
    assert "note: 2 of the 5 prompts are prompts dpo was trained on" in out, out
    assert json.loads((tmp_path / "ws" / "runs" / "e1" / "eval.json").read_text())["n_prompts_trained_on"] == 2
    assert main(["eval", *common, "--model", "tiny", "--prompts", str(tmp_path / "mixed.txt"), "--out", "e2"]) == 0
    assert "trained on" not in capsys.readouterr().out  # no record: nothing said
    assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "60",
                 "--n-test", "30", "--layers", "1"]) == 0
    assert main(["attribute", "-w", ws, "-q", "--before", "tiny", "--after", "dpo", "--prompts",
                 str(tmp_path / "mixed.txt"), "--n", "5", "--max-new-tokens", "2", "--n-eval-prompts", "0",
                 "--mode", "shared", "--out", "a"]) == 0
    assert "note: 2 of the 5 prompts are prompts dpo was trained on" in capsys.readouterr().out
    groups = json.loads((tmp_path / "ws" / "runs" / "a" / "attribution-shared-groups.json").read_text())
    assert groups["n_prompts_trained_on"] == 2


def test_the_probe_check_after_training_leaves_out_the_probes_training_texts(ws, tmp_path, capsys):
    """The Goodhart check read its texts from the same file as the probes, and a probe scores its own
    training texts as training data: they are left out, and too few left is a note, not an error that
    would lose the trained model."""
    from mechtox.jobs import Context, execute, train
    from tests.test_training import pairs

    p = pairs(8)
    pair_file = tmp_path / "pairs.jsonl"
    pair_file.write_text("".join(json.dumps({"prompt": a, "chosen": b, "rejected": c}) + "\n"
                                 for a, b, c in zip(p.prompt, p.chosen, p.rejected, strict=True)))
    for name, n_train, n_test in (("some", "120", "60"), ("all", "all", "4")):
        assert main(["probe", "-w", ws, "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", n_train,
                     "--n-test", n_test, "--layers", "1", "--out", name]) == 0
    common = dict(objective="dpo", model="tiny", pairs=str(pair_file), steps=1, batch_size=4, data="builtin:toxicity",
                  goodhart_n=1000)
    ctx = Context(workspace=ws, quiet=True)
    capsys.readouterr()
    res = execute(train, train.TrainJobConfig(**common, held_out="some", out="m1"), ctx)
    assert res.goodhart_meta["n_texts"] == 120 and res.goodhart_meta["left_out"] == "120 texts a probe was fitted on"
    assert "on 120 texts no probe was fitted on (120 texts a probe was fitted on left out)" in capsys.readouterr().out
    res = execute(train, train.TrainJobConfig(**common, held_out="all", out="m2"), ctx)
    assert res.goodhart is None and (tmp_path / "ws" / "models" / "m2" / "config.json").is_file()
    out = capsys.readouterr().out
    assert "note: probe check left out: of the 240 texts of " in out
    assert "toxicity_small.csv, 4 are not among the probes' training texts, fewer than 4 of one label or both" in out
