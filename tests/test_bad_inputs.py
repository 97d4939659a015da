"""Every bad input is one line on stderr and exit status 2, without a traceback, and a bad flag is
refused before any model loads (issue 17). The model loader is replaced by one that fails, so a
command that reaches it before checking its flags fails these tests."""

from __future__ import annotations

import pytest

from mechtox.cli import main


@pytest.fixture()
def no_loading(monkeypatch):
    from mechtox.workspace import Workspace

    def fail(self, spec, device=None, dtype="float32"):
        raise AssertionError(f"the model loader was reached for {spec!r}")

    monkeypatch.setattr(Workspace, "load_model", fail)


def _one_line_error(capsys, argv, match: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and err.startswith("mechtox: error: "), err
    assert "Traceback" not in err and "loader was reached" not in err
    assert match in err, (match, err)
    return err


def _binary(tmp_path):
    p = tmp_path / "binary.csv"
    p.write_bytes(bytes(range(256)) * 40)
    return str(p)


BAD = [  # (command line after `-w WS`, a fragment of the message); {tmp} is a scratch folder
    (["models", "--set-base", "no-such-model"], "no model 'no-such-model'"),
    (["probe", "--model", "{tmp}/cfgonly"], "cfgonly has a config.json but no weights (model.safetensors, "),
    (["probe", "--model", "{tmp}/absent.gguf"], "absent.gguf: no such file or directory"),
    (["probe", "--model", "base@{tmp}/one.jsonl"], "BASE@FILE loads a state-dict file (.safetensors, .pt, .pth, "
                                                   ".bin), and {tmp}/one.jsonl is none of these"),
    (["probe", "--model", "someone/gpt2-dpo"], "for a hub model that TransformerLens does not list, pass "
                                               "hf:someone/gpt2-dpo"),
    (["probe", "--model", "tiny", "--data", "{binary}"], "UTF-8"),
    (["probe", "--model", "tiny", "--save", "top"], "--save must be"),
    (["probe", "--model", "tiny", "--n-train", "0"], "--n-train 0"),
    (["probe", "--model", "tiny", "--n-test", "1"], "--n-test 1: a stratified split needs a text of each label"),
    (["probe", "--model", "tiny", "--data", "{small}"],  # the message says what would fit
     "has 5 rows, fewer than --n-train 3000 + --n-test 1000; pass smaller ones, e.g. --n-train 4 --n-test 1, "
     "or --n-train all --n-test 1"),
    (["probe", "--model", "tiny", "--data", "{small}", "--n-train", "all"],
     "has 5 rows: --n-test 1000 leaves 0 to fit on (at least 2 needed); pass a smaller --n-test, e.g. 1"),
    (["probe", "--model", "tiny", "--data", "{tmp}/two.csv"], "has 2 rows; a probe needs at least 2 to fit on and 1"),
    (["probe", "--model", "tiny", "--data", "{lone}", "--n-train", "2", "--n-test", "2"],
     "4 texts (3 non-toxic, 1 toxic) cannot be split into 2 + 2 with both labels on each side"),
    (["probe", "--model", "tiny", "--data", "{small}", "--n-train", "3", "--n-test", "2", "--C", "cv"],
     "--C cv: cross-validation needs at least 2 training texts of each label"),
    (["probe", "--model", "tiny", "--out", "a/b"], "invalid probe name"),
    (["rank", "--model", "tiny", "--probe", "missing"], "no direction or probe 'missing'"),
    (["rank", "--model", "tiny", "--top", "-1"], "--top -1"),
    (["directions", "--model", "tiny", "--ks", "10,x"], "--ks '10,x'"),
    (["directions", "--model", "tiny", "--methods", "probe,nope"], "unknown direction method(s) ['nope']"),
    (["directions", "--model", "tiny", "--methods", "probe", "--contrast", "gradient"], "--contrast ['gradient']"),
    (["directions", "--model", "tiny", "--rerank", "gradient", "--methods", "probe"], "--rerank ['gradient']"),
    (["directions", "--model", "tiny", "--fit-prompts", "flagged"], "add --prompt-filter unflagged"),
    (["directions", "--model", "tiny", "--benign-tokens", "-1"], "--benign-tokens"),
    (["eval", "--model", "tiny", "--text", "{tmp}/empty.txt"], "empty.txt has no text"),
    (["eval", "--model", "tiny", "--wiki", "{tmp}/half.jsonl"], "needs string fields prompt and gold"),
    (["eval", "--model", "tiny", "--limit", "-5"], "--limit -5"),
    (["eval", "--model", "tiny", "--limit", "0"], "--limit 0"),
    (["eval", "--model", "tiny", "--probe", "missing"], "no direction or probe 'missing'"),
    (["eval", "--model", "tiny", "-i", "explode:p:1"], "unknown kind 'explode'"),
    (["eval", "--model", "tiny", "-i", "ablate:p:5:median"], "ablate takes DIRECTION:K, DIRECTION:K:zero"),
    (["eval", "--model", "tiny", "-i", "none", "-i", "subtract:missing:2"], "no direction or probe 'missing'"),
    (["pairs", "--model", "tiny", "--out", "a/b"], "invalid pairs name"),
    (["pairs", "--model", "tiny", "--direction", "missing"], "no direction or probe 'missing'"),
    (["train", "dpo", "--model", "tiny", "--out", "a/b"], "invalid model name"),
    (["train", "dpo", "--model", "tiny", "--out", "base"], "--out base"),
    (["train", "dpo", "--model", "tiny", "--limit", "0"], "--limit 0"),
    (["train", "dpo", "--model", "tiny", "--pairs", "missing"], "no pairs 'missing'"),
    (["train", "dpo", "--model", "tiny", "--pairs", "{tmp}/half.jsonl"], "half.jsonl: no column 'rejected'"),
    (["train", "dpo", "--model", "tiny", "--pairs", "{tmp}/one.jsonl"], "one.jsonl has 1 example(s); training needs at least 2"),
    (["train", "sft", "--model", "tiny", "--task", "{tmp}/half.jsonl"], "half.jsonl: no column 'rejected'"),
    # a wiki-samples task whose gold is not text was read as a pair set: "no column 'chosen'"
    (["train", "sft", "--model", "tiny", "--task", "{tmp}/numgold.jsonl"], "numgold.jsonl:1: needs string fields"),
    (["train", "dpo-probe", "--model", "tiny"], "needs --probe"),
    # plain DPO does not train against a probe: it had been listed as "trained against" after training
    (["train", "dpo", "--model", "tiny", "--probe", "p"], "--probe: a setting of train sft-probe and dpo-probe; "
                                                         "train dpo does not use it (to measure a probe"),
    (["train", "dpo", "--model", "tiny", "--batch-size", "0"], "batch_size"),
    (["train", "dpo", "--model", "tiny", "--fsdp"], "launch with torchrun"),
    (["train", "sap", "--model", "tiny", "--fsdp"], "--fsdp cannot train sap"),
    (["train", "dpo", "--model", "tiny", "--fsdp", "--lora-r", "8"], "drop --backend hooked, --lora-r"),
    (["attribute", "--before", "tiny", "--after", "tiny", "--ablate-ks", "100,x"], "--ablate-ks '100,x'"),
    (["attribute", "--before", "tiny", "--after", "nope"], "no model 'nope'"),
    (["attribute", "--before", "tiny", "--after", "tiny"], "no direction or probe 'probe'"),
    (["report"], "no workspace at"),
    (["run", "--model", "tiny", "--data-dir", "{tmp}/no-such-folder"], "--data-dir"),
    (["run", "--model", "tiny", "--out", "a/b"], "invalid run name prefix"),
    (["probe", "--model", "nope-model"], "no model 'nope-model'"),
    (["probe", "--model", "tiny", "--C", "nan"], "--C 'nan': give a positive number or 'cv'"),
    (["probe", "--model", "tiny", "--C", "inf"], "--C 'inf'"),
    (["probe", "--model", "tiny", "--seed", "-1"], "--seed -1: give a whole number from 0 to 2**32 - 1"),
    (["pairs", "--model", "tiny", "--alpha", "nan"], "--alpha nan: give a finite number"),
    (["run", "--model", "tiny", "--alpha", "inf"], "--alpha inf: give a finite number"),
    # 0 dropped every pair after generating them all; a negative alpha inverted the preference silently
    (["pairs", "--model", "tiny", "--alpha", "0"], "--alpha 0: must be above 0 (the rejected continuation is steered "
                                                   "toward toxicity by alpha x the direction; 0 leaves both sides the same)"),
    (["run", "--model", "tiny", "--alpha", "-2"], "--alpha -2: must be above 0 (the rejected continuation is steered "
                                                  "toward toxicity by alpha x the direction; a negative one steers away"),
    (["train", "dpo", "--model", "tiny", "--checkpoint-every", "0"], "checkpoint_every must be at least 1"),
    (["train", "dpo", "--model", "tiny", "--beta", "0"], "beta (the DPO temperature) must be a positive number"),
    (["export", "tiny", "--hf", "{tmp}/afile/out"], "--hf {tmp}/afile/out cannot be created: {tmp}/afile is a file"),
    # read after the model had loaded, or (a range going down) 'layers [] out of range'
    (["probe", "--model", "tiny", "--layers", "5-2"], "bad layers '5-2': a range goes up, e.g. 2-5"),
    (["probe", "--model", "tiny", "--layers", "1,,2"], "bad layers '1,,2'; use 'all', 'last'"),
    (["eval", "--model", "tiny", "--scorer", "nope"], "unknown scorer 'nope'; use one of profanity, detoxify"),
    (["eval", "--model", "tiny", "--scorer", "probe:missing"], "no direction or probe 'missing'"),
    (["train", "dpo", "--model", "tiny", "--lora-r", "4", "--lora-targets", "zz"],
     "lora_targets 'zz': use comma-separated names from attention.dense, attn.c_proj"),
    # settings the run ignored silently
    (["probe", "--model", "tiny", "--limit", "5"], "--limit 5 samples the texts of --eval or --eval-data"),
    (["train", "dpo", "--model", "tiny", "--lora-targets", "q,k"], "--lora-targets set LoRA adapters: add --lora-r N"),
    (["train", "sft", "--model", "tiny", "--beta", "0.2"], "--beta: a setting of train dpo and dpo-probe; train sft"),
    (["train", "dpo", "--model", "tiny", "--sap-rho", "0.1"], "--sap-rho: a setting of train sap; train dpo does not"),
    (["train", "sap", "--model", "tiny", "--probe-lambda", "2"], "--probe-lambda: a setting of train sft-probe"),
    (["run", "--model", "tiny", "--alpha", "4"], "--alpha 4 steers generated pairs, and with real data the main job "
                                                 "trains on ParaDetox's human pairs: it would do nothing"),
    (["pairs", "--model", "tiny", "--paradetox", "data:paradetox.tsv", "--alpha", "4", "--direction", "probe"],
     "--direction, --alpha: a setting of generated pairs; --paradetox converts a file and does not use it"),
]


@pytest.mark.parametrize(("argv", "match"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flag_is_one_line_before_any_model_loads(argv, match, tmp_path, capsys, no_loading):
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "cfgonly").mkdir()
    (tmp_path / "cfgonly" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "small.csv").write_text("text,label\nyou idiot,1\nhello,0\nnice day,0\nstupid,1\nthanks,0\n")
    (tmp_path / "one.jsonl").write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n')
    (tmp_path / "numgold.jsonl").write_text('{"prompt": "a", "gold": 3}\n')
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "half.jsonl").write_text('{"prompt": "a", "chosen": " b"}\n')  # no rejected
    (tmp_path / "lone.csv").write_text("text,label\nyou idiot,1\nhello,0\nnice day,0\nthanks,0\n")
    (tmp_path / "two.csv").write_text("text,label\nyou idiot,1\nhello,0\n")
    argv = [a.format(tmp=tmp_path, binary=_binary(tmp_path) if "{binary}" in a else "", small=tmp_path / "small.csv",
                     lone=tmp_path / "lone.csv") for a in argv]
    _one_line_error(capsys, [argv[0], "-w", str(tmp_path / "ws"), *argv[1:]], match.format(tmp=tmp_path))


def test_workspace_that_cannot_be_created(tmp_path, capsys, no_loading):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for cmd in (["models"], ["probe", "--model", "tiny"], ["run", "--model", "tiny"]):
        _one_line_error(capsys, [*cmd, "-w", str(blocker / "ws")], "cannot be created")
        _one_line_error(capsys, [*cmd, "-w", str(blocker)], "is a file")


def test_device_that_is_not_there(tmp_path, capsys, no_loading):
    import torch

    _one_line_error(capsys, ["probe", "-w", str(tmp_path), "--model", "tiny", "--device", "tpu-9"], "no torch device")
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["probe", "-w", str(tmp_path), "--model", "tiny", "--device", "cuda"],
                        "CUDA is not available")
    else:
        n = torch.cuda.device_count()
        _one_line_error(capsys, ["probe", "-w", str(tmp_path), "--model", "tiny", "--device", f"cuda:{n}"],
                        "CUDA device(s)")


def test_gguf_path_that_is_no_gguf(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    err = _one_line_error(capsys, ["probe", "-w", str(tmp_path / "ws"), "--model", str(fake)], "is no GGUF file")
    assert str(fake) in err
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)  # the magic, then a header cut short
    _one_line_error(capsys, ["probe", "-w", str(tmp_path / "ws"), "--model", str(truncated)], "cannot be read")


def test_unexpected_error_is_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    from mechtox.jobs import models

    def boom(cfg, ctx):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(models, "run", boom)
    monkeypatch.delenv("MECHTOX_DEBUG", raising=False)
    assert main(["models", "-w", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: something inside broke" in err
    assert "MECHTOX_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("MECHTOX_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something inside broke"):
        main(["models", "-w", str(tmp_path)])


def test_a_file_system_refusal_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """Disk full, no permission, a read-only or vanished folder: the file system's reason and the
    file, exit status 1, no traceback (not an 'unexpected error': nothing in mechtox broke)."""
    from mechtox.jobs import models

    def full(cfg, ctx):
        raise OSError(28, "No space left on device", str(tmp_path / "models" / "dpo"))

    monkeypatch.setattr(models, "run", full)
    monkeypatch.delenv("MECHTOX_DEBUG", raising=False)
    assert main(["models", "-w", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"mechtox: error: No space left on device: {tmp_path / 'models' / 'dpo'} (run with MECHTOX_DEBUG=1 for the traceback)\n"
    monkeypatch.setenv("MECHTOX_DEBUG", "1")
    with pytest.raises(OSError, match="No space left"):
        main(["models", "-w", str(tmp_path)])


def _wrong_value(annotation: str):
    """A value of the wrong type for a field annotated ``annotation`` (None where none is wrong)."""
    if annotation == "bool":
        return "yes"
    if annotation in ("int", "int | None", "float", "float | None"):
        return "3"
    if annotation in ("str", "str | None", "tuple[str, ...]") or annotation.startswith("Literal"):
        return 3
    if annotation.startswith("list["):
        return "you"  # one string where a list of them is wanted (--match-cue, -i)
    return None


def _required(cls) -> dict:
    """A string for each field that has no default or that its command requires."""
    import dataclasses

    return {f.name: "x" for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING or f.metadata.get("cli", {}).get("required")}


def test_job_configs_made_in_python_refuse_values_of_the_wrong_type():
    """`ProbeConfig(n_test="500")` (a number as a string, as from a notebook widget) failed inside the
    config's own checks with "'<' not supported between 'str' and 'int'"; a string for a list, or a
    number for a name, with AttributeErrors. Each field is tried on every command's config."""
    import dataclasses

    from mechtox.errors import MechtoxError
    from mechtox.jobs import COMMANDS, Context

    tried = 0
    for _, cls in [*COMMANDS.values(), (None, Context)]:
        required = _required(cls)
        for f in dataclasses.fields(cls):
            bad = _wrong_value(str(f.type))
            if bad is None or f.name in required or f.name == "workspace":
                continue
            meta = f.metadata.get("cli")
            shown = "" if meta is None or meta["positional"] else rf" \({(meta['flags'] or ['--' + f.name.replace('_', '-')])[0]}\)"
            with pytest.raises(MechtoxError, match=rf"^{cls.__name__}\.{f.name}{shown} must be .*, not {bad!r}$"):
                cls(**required, **{f.name: bad})
            tried += 1
    assert tried > 100


def test_job_configs_take_what_the_command_line_and_python_give(tmp_path):
    """The check accepts every default, ints for floats, and --C as a number or a string."""
    import numpy as np

    from mechtox.jobs import COMMANDS, Context, probe

    for _, cls in COMMANDS.values():
        cls(**_required(cls))
    assert probe.ProbeConfig(C=0.01).C == 0.01 and probe.ProbeConfig(C="cv", n_train="all").n_train == "all"
    assert Context(workspace=str(tmp_path), seed=np.int64(3)).seed == 3
    from mechtox.jobs import pairs

    assert pairs.PairsConfig(alpha=8).alpha == 8


def _damage(d, how):
    """Damage the saved probe in folder ``d`` one way (what a disk, a copy cut short or an edit leaves)."""
    import json

    from safetensors.torch import load_file, save_file

    meta_file, tensor_file = d / "direction.json", d / "direction.safetensors"
    meta, t = json.loads(meta_file.read_text()), load_file(str(tensor_file))
    if how == "json cut short":
        meta_file.write_text(meta_file.read_text()[:15])
    elif how == "no tensors":
        tensor_file.unlink()
    elif how == "tensors cut short":
        tensor_file.write_bytes(tensor_file.read_bytes()[:100])
    elif how in ("unknown field", "missing field"):
        meta.update(future=1) if how == "unknown field" else meta.pop("hook_name")
        meta_file.write_text(json.dumps(meta))
    else:
        if how == "short vector":
            t["vector"] = t["vector"][:10]
        else:
            t["weight"][3] = float("nan")
        save_file(t, str(tensor_file))


DAMAGE = [("json cut short", "direction.json is damaged (Expecting"),
          ("no tensors", "has no direction.safetensors beside its direction.json"),
          ("tensors cut short", "direction.safetensors is damaged (Error while deserializing header"),
          ("unknown field", "direction.json has unknown fields ['future'] (written by another version"),
          ("missing field", "direction.json has missing fields ['hook_name']"),
          ("short vector", "tensors vector (10,), weight (64,)"),
          ("nan weight", "direction.safetensors holds NaN, inf or a zero vector")]


@pytest.mark.parametrize(("how", "match"), DAMAGE, ids=[h for h, _ in DAMAGE])
def test_a_damaged_saved_probe_is_one_line_before_any_model_loads(how, match, tmp_path, capsys, no_loading):
    """Each of these was an 'unexpected error' (JSONDecodeError, FileNotFoundError, SafetensorError,
    TypeError), after the model had loaded, or (a NaN weight) a ValueError from scikit-learn."""
    import torch

    from mechtox.probe import Probe

    d = tmp_path / "ws" / "directions" / "p"
    Probe(vector=torch.randn(64), hook_name="blocks.1.hook_resid_post", method="logreg", name="p",
          weight=torch.randn(64)).save(d)
    _damage(d, how)
    for argv in (["rank", "--probe", "p"], ["probe", "--eval", "p", "--data", "builtin:toxicity"]):
        _one_line_error(capsys, [argv[0], "-w", str(tmp_path / "ws"), "--model", "tiny", *argv[1:]], match)


@pytest.mark.parametrize(("content", "match"), [
    (b'{"base": ', "workspace.json is not valid JSON"),
    (b"\xff\xfe", "workspace.json is not valid JSON ('utf-8' codec"),   # was a UnicodeDecodeError
    (b"[1]", 'workspace.json should be an object like {"base": "MODEL"}, not [1]'),  # was an AttributeError
    (b'{"base": 5}', 'not {"base": 5}; fix or delete it'),                        # was an AttributeError
])
def test_a_damaged_workspace_file_is_one_line(content, match, tmp_path, capsys, no_loading):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "workspace.json").write_bytes(content)
    for argv in (["models"], ["probe", "--n-train", "20"]):
        _one_line_error(capsys, [argv[0], "-w", str(tmp_path / "ws"), *argv[1:]], match)
