import json
import re

import numpy as np
import pytest
import torch

from mechtox import models as M
from mechtox.cli import main
from mechtox.errors import IncompatibleError, MechtoxError, ModelNotFoundError


def test_tiny_model_builds_with_tokenizer(tiny):
    assert tiny.cfg.n_layers == 2 and tiny.cfg.d_model == 64
    ids = tiny.tokenizer("you are a stupid idiot", add_special_tokens=False).input_ids
    assert 2 not in ids  # every word is in the vocabulary (2 = <unk>)
    logits = tiny(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), tiny.cfg.d_vocab)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_checkpoint_roundtrip_same_logits(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    path = M.save_checkpoint(model, tmp_path / "ckpt", extra={"origin": "test"})
    assert M.is_checkpoint(path)
    assert M.checkpoint_info(path)["origin"] == "test"
    loaded = M.load_checkpoint(path, device="cpu")
    toks = torch.randint(3, model.cfg.d_vocab, (2, 7))
    torch.testing.assert_close(loaded(toks), model(toks), rtol=0, atol=0)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.decode([10]) == model.tokenizer.decode([10])


def test_checkpoint_written_atomically(tiny, tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        M.save_checkpoint(tiny, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary left behind


def test_missing_weights_is_clear_error(tiny, tmp_path):
    path = M.save_checkpoint(tiny, tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="not fully written"):
        M.load_checkpoint(path)


def _edit_config(path, change):
    meta = json.loads((path / "config.json").read_text())
    change(meta)
    (path / "config.json").write_text(json.dumps(meta))


CHECKPOINT_DAMAGE = [  # what was raised before, then the change and the message now
    ("KeyError 'cfg'", lambda p: _edit_config(p, lambda m: m.pop("cfg")), r"has no model config \('cfg'\)"),
    ("torch RuntimeError", lambda p: _edit_config(p, lambda m: m["cfg"].update(d_model=32)),
     r"model.safetensors does not fit its config.json, so recreate the checkpoint: shapes \['blocks.0.attn.W_K"),
    ("torch RuntimeError", lambda p: _edit_config(p, lambda m: m["cfg"].update(d_head=-1)),
     "d_head -1: sizes must be whole numbers of at least 1"),
    ("TypeError", lambda p: _edit_config(p, lambda m: m["cfg"].update(bogus=3)),
     r"config fields \['bogus'\] are unknown to this TransformerLens"),
    ("read as version 1", lambda p: _edit_config(p, lambda m: m.update(version=99)),
     r"format version 99, newer than this mechtox reads \(1\); upgrade mechtox"),
    ("SafetensorError", lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:1000]),
     "model.safetensors is no readable state dict"),
    ("JSONDecodeError", lambda p: (p / "tokenizer" / "tokenizer.json").write_text("junk"),
     "holds no readable tokenizer"),
]


@pytest.mark.parametrize(("before", "damage", "match"), CHECKPOINT_DAMAGE,
                         ids=[f"{m[:30]} (was {b})" for b, _, m in CHECKPOINT_DAMAGE])
def test_a_damaged_checkpoint_is_one_line_naming_what(tiny, tmp_path, before, damage, match):
    path = M.save_checkpoint(tiny, tmp_path / "ckpt")
    damage(path)
    with pytest.raises(MechtoxError, match=match) as e:
        M.load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_same_architecture(tiny, tiny_llama):
    M.same_architecture(tiny, tiny)
    with pytest.raises(IncompatibleError, match="different architectures"):
        M.same_architecture(tiny, tiny_llama)


@pytest.mark.parametrize("fixture,hf_class", [("tiny_llama", "LlamaForCausalLM"), ("tiny", "GPT2LMHeadModel")])
def test_export_hf_matches_hooked(fixture, hf_class, request, tmp_path):
    import transformers

    model = request.getfixturevalue(fixture)
    if fixture == "tiny":
        # GPT-2 export needs the GPT-2 architecture: gelu_new MLP, LN, learned positions.
        model.cfg.original_architecture = "GPT2LMHeadModel"
    out = M.export_hf(model, tmp_path / "hf")
    hf = getattr(transformers, hf_class).from_pretrained(out).eval()
    toks = torch.randint(3, model.cfg.d_vocab, (2, 9))
    with torch.no_grad():
        ours = model(toks)
        theirs = hf(toks).logits
    assert (ours - theirs).abs().max() < 1e-4


def test_default_device_from_torch():
    assert M.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_dtype():
    with pytest.raises(Exception, match="unknown dtype"):
        M._dtype("float8")


def test_cfg_json_roundtrip(tiny_llama):
    d = M._cfg_to_json(tiny_llama.cfg)
    json.dumps(d)
    cfg = M.HookedTransformerConfig(**d)
    assert cfg.n_key_value_heads == 2 and cfg.gated_mlp and cfg.positional_embedding_type == "rotary"


# ---------------------------------------------------------------- workspace / specs


def test_resolve_specs(workspace, tiny, tmp_path):
    assert workspace.resolve_model("base").kind == "default"
    assert workspace.resolve_model("smollm2-135m-instruct").kind == "default"
    assert workspace.resolve_model("gpt2-medium").kind == "pretrained"
    M.save_checkpoint(tiny, workspace.model_dir("dpo"))
    ref = workspace.resolve_model("dpo")
    assert ref.kind == "checkpoint" and ref.name == "dpo"
    assert workspace.models() == ["base", "dpo"]
    workspace.set_base("dpo")
    assert workspace.resolve_model("base").kind == "checkpoint"
    # a path to a checkpoint works too
    assert workspace.resolve_model(str(workspace.model_dir("dpo"))).kind == "checkpoint"


def test_unknown_spec_error_names_what_exists_and_how_to_create(workspace):
    with pytest.raises(ModelNotFoundError) as e:
        workspace.resolve_model("dpo")
    msg = str(e.value)
    assert "\n" not in msg
    assert "no model 'dpo'" in msg and "it has: base" in msg and "mechtox train dpo --out dpo" in msg


def test_path_that_is_not_a_model(workspace, tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a mechtox checkpoint"):
        workspace.resolve_model(str(tmp_path / "junk"))


def test_cli_unknown_model_one_line_exit_2(tmp_path, capsys):
    code = main(["probe", "--workspace", str(tmp_path / "ws"), "--model", "nope-model", "--data", "builtin:toxicity"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("mechtox: error: no model 'nope-model'")
    assert "Traceback" not in err


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("models", "probe", "rank", "run"):
        assert cmd in out


def test_cli_models_lists_workspace(tmp_path, tiny, capsys):
    from mechtox.probe import fit_probe

    ws = tmp_path / "ws"
    assert main(["models", "-w", str(ws)]) == 0
    assert "nothing else yet" in capsys.readouterr().out and not ws.exists()  # listing creates nothing
    M.save_checkpoint(tiny, ws / "models" / "dpo")
    X = np.random.default_rng(0).normal(size=(40, tiny.cfg.d_model))
    fit_probe(X, (X[:, 0] > 0).astype(int), "blocks.1.hook_resid_post", name="p").save(ws / "directions" / "p")
    (ws / "pairs").mkdir()
    (ws / "pairs" / "pp.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 7)
    (ws / "runs" / "r1" / "sub").mkdir(parents=True)
    (ws / "runs" / "r1" / "a.md").write_text("x")
    (ws / "runs" / "r1" / "sub" / "b.json").write_text("{}")
    for name, step in (("dpo", 40), ("sft", 12)):
        (ws / "training" / name / "state").mkdir(parents=True)
        (ws / "training" / name / "state" / "trainer.json").write_text(json.dumps({"step": step,
                                                                                   "config": {"max_steps": 40}}))
    assert main(["models", "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "base -> smollm2-135m-instruct" in out
    assert "\n| dpo | tiny |" in out and "models (1)" in out
    auroc = json.loads((ws / "directions" / "p" / "direction.json").read_text())["metrics"]["test_auroc"]
    assert f"| p | probe | blocks.1.hook_resid_post | logreg | {auroc:.3f} |  |" in out
    assert "| pp | 7 |" in out and "| r1 | 2 |" in out
    assert "| dpo | 40 of 40 | saved as a model; `mechtox models --drop-state dpo` deletes this state | 0.0 MB |" in out
    assert "| sft | 12 of 40 | interrupted: continue with `mechtox train ... --out sft --resume` | 0.0 MB |" in out
    size = sum(p.stat().st_size for p in (ws / "models" / "dpo").rglob("*") if p.is_file())
    assert f"| {size / 1e6:.1f} MB |" in out.split("models (1)")[1].split("directions")[0]


def test_cli_models_drop_state_frees_a_saved_trainings_disk(tmp_path, tiny, capsys):
    """`mechtox models --drop-state NAME` deletes the resumable state of a training saved as a model
    (GBs: weights, optimizer moments, reference log-probs) and keeps the model and the metrics; it
    refuses, deleting nothing, an unknown name or an interrupted training (whose state is its only copy)."""
    ws = tmp_path / "ws"
    M.save_checkpoint(tiny, ws / "models" / "dpo")
    for name, step in (("dpo", 40), ("sft", 12)):
        (ws / "training" / name / "state").mkdir(parents=True)
        (ws / "training" / name / "state" / "trainer.json").write_text(json.dumps({"step": step,
                                                                                   "config": {"max_steps": 40}}))
        (ws / "training" / name / "state" / "optimizer.pt").write_bytes(bytes(3_000_000))
        (ws / "training" / name / "metrics.jsonl").write_text("{}\n")
    for bad, said in ((["dpo", "nope"], "no training state of that name in .* \\(there: dpo, sft\\)"),
                      (["dpo", "sft"], "sft: that training was interrupted and its state is its only copy")):
        capsys.readouterr()
        assert main(["models", "-w", str(ws)] + [x for n in bad for x in ("--drop-state", n)]) == 2
        err = capsys.readouterr().err
        assert re.search(said, err) and err.count("\n") == 1
        assert (ws / "training" / "dpo" / "state" / "optimizer.pt").is_file()
    assert main(["models", "-w", str(ws), "--drop-state", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "dropped the training state of dpo (3.0 MB freed); the model stays" in out
    assert not (ws / "training" / "dpo" / "state").exists() and (ws / "training" / "dpo" / "metrics.jsonl").is_file()
    assert M.is_checkpoint(ws / "models" / "dpo") and (ws / "training" / "sft" / "state" / "optimizer.pt").is_file()
    assert "training states (1)" in out and "| dpo | 40 of 40 |" not in out
    # without its state, nothing stopped `train --out dpo` from replacing the model silently: refused
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi", "chosen": " nice one", "rejected": " bad word"}\n' * 4)
    assert main(["train", "dpo", "-w", str(ws), "-q", "--model", "dpo",
                 "--pairs", str(tmp_path / "p.jsonl"), "--steps", "1", "--out", "dpo"]) == 2
    err = capsys.readouterr().err
    assert "the workspace has a model named 'dpo' already" in err and err.count("\n") == 1
    assert "trained_from" not in M.checkpoint_info(ws / "models" / "dpo")


def test_invalid_alias_name(workspace):
    with pytest.raises(Exception, match="invalid model name"):
        workspace.model_dir("../evil")


def test_official_names_read_without_transformer_lens_match_transformer_lens():
    """model_files reads TransformerLens' name list from its data module alone; TransformerLens'
    own lookup (get_official_model_name) must agree on every name and alias, in any case."""
    from transformer_lens.loading_from_pretrained import (
        get_official_model_name,
        make_model_alias_map,
    )

    from mechtox.model_files import is_official_name

    def tl_knows(name):
        try:
            get_official_model_name(name)
        except ValueError:
            return False
        return True

    names = list(make_model_alias_map())
    assert len(names) > 300
    probes = names + [n.upper() for n in names[::7]] + ["gpt2-MEDIUM", "GPT2", "smollm2-135m-instruct", "nope-model",
                                                         "gpt2-medium-dpo", "meta-llama/llama-2-7b-hf", ""]
    assert [is_official_name(n) for n in probes] == [tl_knows(n) for n in probes]


def test_listing_and_refusing_models_import_no_torch(tmp_path, tiny):
    """`mechtox models` and the errors for an unknown model, a path that is no model and a missing
    weights file read names and files only (0.1-0.2 s instead of 7-9 s)."""
    import subprocess
    import sys

    ws = tmp_path / "ws"
    M.save_checkpoint(tiny, ws / "models" / "dpo")
    (tmp_path / "junk").mkdir()
    script = f"""
import sys
from mechtox.cli import main
assert main(["models", "-w", {str(ws)!r}]) == 0
assert main(["models", "-w", {str(ws)!r}, "--set-base", "dpo"]) == 0
for spec in ["nope-model", {str(tmp_path / 'junk')!r}, "base@/no/such.safetensors", "hf:"]:
    assert main(["eval", "-w", {str(ws)!r}, "--model", spec]) == 2, spec
assert main(["attribute", "-w", {str(ws)!r}, "--before", "gpt2-medium", "--after", "nope-model"]) == 2
print("HEAVY", sorted(m for m in ("torch", "transformer_lens", "transformers", "numpy") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HEAVY []" in r.stdout and "| dpo | tiny |" in r.stdout and "base is now dpo" in r.stdout, r.stdout[-500:]
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 5 and all(e.startswith("mechtox: error: ") for e in errors), errors
    assert "no model 'nope-model'" in errors[0] and "neither a mechtox checkpoint" in errors[1]


def test_official_name_offline_and_not_cached_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    """gpt2-medium with no hub and no cached copy: one line naming what to do, without asking
    TransformerLens to download (before: ~30 s of retries, then an OSError)."""
    import huggingface_hub.constants
    from transformer_lens import HookedTransformer

    import mechtox.data

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(mechtox.data, "_hub_reachable", lambda: False)

    def no_download(*a, **k):
        raise AssertionError("TransformerLens was asked to download")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", no_download)
    with pytest.raises(ModelNotFoundError, match="not reachable, and it is not in the local cache") as e:
        M.load_pretrained("gpt2-MEDIUM")
    assert "\n" not in str(e.value) and "huggingface-cli download gpt2-medium" in str(e.value)
    code = main(["eval", "-w", str(tmp_path / "ws"), "--model", "gpt2-medium", "--limit", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "smollm2-135m-instruct" in err, err


def test_a_typo_gets_the_name_it_was_probably_meant_to_be(workspace, tiny, capsys):
    M.save_checkpoint(tiny, workspace.model_dir("dpo-probe"))
    for typo, meant in (("smollm2-135m-instrct", "smollm2-135m-instruct"), ("GPT2-Medum", "gpt2-medium"),
                        ("dpo-prob", "dpo-probe")):
        with pytest.raises(ModelNotFoundError, match=f"; did you mean '{meant}'\\?$"):
            workspace.resolve_model(typo)
    with pytest.raises(ModelNotFoundError, match="create it with `mechtox train dpo --out zzqx`$"):
        workspace.resolve_model("zzqx")  # nothing near: how to make it instead
    from mechtox.probe import fit_probe

    X = np.random.default_rng(0).normal(size=(30, tiny.cfg.d_model))
    fit_probe(X, (X[:, 0] > 0).astype(int), "blocks.0.hook_resid_post").save(workspace.direction_dir("probe-tok"))
    with pytest.raises(MechtoxError, match="did you mean 'probe-tok'\\?$"):
        workspace.require_direction("probe_tok")
    workspace.pairs_path("pairs").parent.mkdir(parents=True)
    workspace.pairs_path("paradetox").write_text("")
    with pytest.raises(MechtoxError, match="did you mean 'paradetox'\\?$"):
        workspace.require_pairs("paradetx")
    with pytest.raises(MechtoxError, match="or pass a .jsonl/.tsv path$"):
        workspace.require_pairs("zzqx")


def test_gguf_cache_tells_apart_files_that_share_their_first_megabytes(tmp_path, monkeypatch):
    """Two GGUF files of one size and name whose first 4 MiB agree (the header, the tokenizer and
    the token embeddings: a fine-tune with LoRA on attention keeps them) are two models: the second
    is converted, not served from the first one's cache. The conversion itself is faked here."""
    import os

    import numpy as np

    from mechtox import models as M

    converted = _fake_gguf_conversion(monkeypatch, tmp_path)
    head = b"GGUF" + np.random.default_rng(0).bytes((5 << 20) - 4)
    paths = []
    for i, tail in enumerate((b"\x01" * (3 << 20), b"\x02" * (3 << 20))):
        p = tmp_path / f"run{i}" / "model.gguf"
        p.parent.mkdir()
        p.write_bytes(head + tail)
        os.utime(p, ns=(1, 10**18))  # the same times too: only the contents differ
        paths.append(p)
    a, b = (M.load_gguf(p) for p in paths)
    assert converted == paths
    assert not torch.equal(a.W_E, b.W_E)
    assert torch.equal(M.load_gguf(paths[1]).W_E, b.W_E) and len(converted) == 2  # now from the cache


def _fake_gguf_conversion(monkeypatch, tmp_path):
    """GGUF conversion faked (a tiny model seeded by the file's last byte); returns the list of the
    files converted."""
    from mechtox import models as M

    monkeypatch.setenv("MECHTOX_CACHE", str(tmp_path / "cache"))
    converted = []

    def fake_convert(gguf, name, n_ctx):
        converted.append(gguf)
        return M.tiny_model(seed=gguf.read_bytes()[-1])

    monkeypatch.setattr(M, "_convert_gguf", fake_convert)
    return converted


def test_gguf_reinstalled_elsewhere_is_served_from_the_cache(tmp_path, monkeypatch):
    """The same GGUF file installed in a second environment (new path, new modification time, same
    bytes) is the same model: it loads from the first one's conversion. The cache key held the
    modification time, so every fresh virtual environment converted SmolLM2 again and left another
    626 MB copy (20 copies, 13 GB, on this machine after a day of CI runs)."""
    import os

    from mechtox import models as M

    converted = _fake_gguf_conversion(monkeypatch, tmp_path)
    data = b"GGUF" + bytes(range(256)) * 64 + b"\x07"
    venvs = [tmp_path / f"venv{i}" / "model.gguf" for i in range(2)]
    for i, p in enumerate(venvs):
        p.parent.mkdir()
        p.write_bytes(data)
        os.utime(p, ns=(10**18 + i, 10**18 + i))
    a = M.load_gguf(venvs[0])
    b = M.load_gguf(venvs[1])
    assert converted == venvs[:1]
    assert torch.equal(a.W_E, b.W_E)
    assert len(list(M.cache_dir().iterdir())) == 1


def test_gguf_loads_where_its_conversion_cannot_be_cached(tmp_path, monkeypatch):
    """The cache only saves time: where it cannot be written (a read-only home, a full disk; here
    $MECHTOX_CACHE is a file), the converted model is returned with a warning that says what to do.
    It was an OSError traceback after the conversion's work."""
    from mechtox import models as M

    converted = _fake_gguf_conversion(monkeypatch, tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("MECHTOX_CACHE", str(blocked))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100) + b"\x03")
    with pytest.warns(UserWarning, match="not cached .* set MECHTOX_CACHE to a writable folder"):
        model = M.load_gguf(gguf)
    assert torch.equal(model.W_E, M.tiny_model(seed=3).W_E) and converted == [gguf]


def test_gguf_cache_drops_conversions_nothing_can_load(tmp_path, monkeypatch):
    """A new conversion removes the cached ones of the same name that nothing can load again: their
    source file is gone (a deleted environment), it now holds other bytes, or they were keyed the
    old way (no recorded digest). The conversion of a file that still exists is kept."""
    import shutil

    from mechtox import models as M

    converted = _fake_gguf_conversion(monkeypatch, tmp_path)

    def gguf(where, last):
        p = tmp_path / where / "model.gguf"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"GGUF" + bytes(1000) + bytes([last]))
        return p

    kept, gone, changed, other_name = gguf("kept", 1), gguf("gone", 2), gguf("changed", 3), gguf("other", 4)
    for p in (kept, gone, changed):
        M.load_gguf(p)
    renamed = other_name.with_name("other.gguf")
    other_name.rename(renamed)
    M.load_gguf(renamed)  # another name: never pruned by "model" conversions
    old_key = M.cache_dir() / "model-0123456789abcdef-ctx2048"  # the old key: no digest recorded
    M.save_checkpoint(M.tiny_model(), old_key, extra={"source": str(kept)})
    shutil.rmtree(gone.parent)
    changed.write_bytes(b"GGUF" + bytes(1000) + bytes([5]))
    assert len(list(M.cache_dir().iterdir())) == 5
    M.load_gguf(changed)
    assert len(converted) == 5
    left = sorted(M.checkpoint_info(d)["source"] for d in M.cache_dir().iterdir())
    assert left == sorted(str(p.resolve()) for p in (kept, changed, renamed))
    assert torch.equal(M.load_gguf(kept).W_E, M.tiny_model(seed=1).W_E) and len(converted) == 5
