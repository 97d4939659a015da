import json

import pytest
import torch

from mechtox import models as M
from mechtox.cli import main
from mechtox.errors import IncompatibleError, ModelNotFoundError


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
    ws = tmp_path / "ws"
    M.save_checkpoint(tiny, ws / "models" / "dpo")
    assert main(["models", "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "base -> smollm2-135m-instruct" in out and "model dpo" in out


def test_invalid_alias_name(workspace):
    with pytest.raises(Exception, match="invalid model name"):
        workspace.model_dir("../evil")
