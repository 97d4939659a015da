"""Models to and from the ecosystem: transformers directories as model specs, `mechtox export`,
and training that changes only the parameters the architecture has (so the export is the model)."""

from __future__ import annotations

import json

import pytest
import torch

from mechtox import models as M
from mechtox.cli import main
from mechtox.errors import IncompatibleError, ModelNotFoundError
from tests.conftest import LLAMA, randomize_norms_and_biases, zero_foreign


def _gpt2_like():
    model = randomize_norms_and_biases(M.tiny_model(), seed=3)
    model.cfg.original_architecture = "GPT2LMHeadModel"  # the tiny default is GPT-2-shaped (LN, gelu_new, positions)
    return model


def _llama_like():
    return randomize_norms_and_biases(M.tiny_model(**LLAMA), seed=3)


def _same_logits(a, b, tol=1e-4):
    toks = torch.randint(3, a.cfg.d_vocab, (2, 9))
    with torch.no_grad():
        assert (a(toks) - b(toks)).abs().max() < tol


@pytest.mark.parametrize("make", [_gpt2_like, _llama_like], ids=["gpt2", "llama-gqa"])
def test_hf_directory_round_trip(make, tmp_path):
    model = zero_foreign(make())
    out = M.export_hf(model, tmp_path / "hf")
    assert M.is_hf_dir(out) and (out / "generation_config.json").is_file()
    back = M.load_hf_dir(out)
    assert back.cfg.original_architecture == model.cfg.original_architecture
    _same_logits(model, back)
    text = "you are a stupid idiot"
    assert back.to_str_tokens(text, prepend_bos=False) == model.to_str_tokens(text, prepend_bos=False)


def test_hf_directory_with_only_a_torch_file_and_as_a_cli_model(tmp_path, capsys):
    import transformers

    model = zero_foreign(_llama_like())
    hf = transformers.LlamaForCausalLM.from_pretrained(M.export_hf(model, tmp_path / "st"))
    bin_dir = tmp_path / "bin"  # what older transformers and many released models have: a pickled torch file
    hf.config.save_pretrained(bin_dir)
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
    model.tokenizer.save_pretrained(bin_dir)
    assert [p.name for p in bin_dir.glob("*.bin")] == ["pytorch_model.bin"] and not list(bin_dir.glob("*.safetensors"))
    _same_logits(model, M.load_hf_dir(bin_dir))
    ws = tmp_path / "ws"
    assert main(["models", "-w", str(ws), "--set-base", str(bin_dir)]) == 0
    assert main(["probe", "-w", str(ws), "-q", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "40",
                 "--layers", "last"]) == 0
    assert "saved probe 'probe'" in capsys.readouterr().out


def test_bad_hf_directories_are_one_line(tmp_path, capsys):
    model = zero_foreign(_llama_like())
    cut = M.export_hf(model, tmp_path / "cut")
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    (bert / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelNotFoundError, match="cannot load these weights"):
        M.load_hf_dir(cut)
    with pytest.raises(IncompatibleError, match="LlamaForCausalLM, GPT2LMHeadModel"):
        M.load_hf_dir(bert)
    for d, match in ((cut, "cannot load these weights"), (bert, "'bert' model")):
        argv = ["probe", "-w", str(tmp_path / "ws"), "--model", str(d), "--data", "builtin:toxicity", "--n-train", "60",
                "--n-test", "40"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err and "Traceback" not in err


def _pairs(n=12):
    from mechtox.data import PreferencePairs

    return PreferencePairs(["you are"] * n, ["a good friend"] * n, ["a stupid idiot"] * n, "test")


@pytest.mark.parametrize("make", [_gpt2_like, _llama_like], ids=["gpt2", "llama-gqa"])
def test_trained_model_exports_exactly(make, tmp_path):
    """20 steps at lr 1e-2 train only what the architecture has: the export gives the trained logits."""
    from mechtox.training import DPOObjective, TrainConfig, train

    model = zero_foreign(make())
    cfg = TrainConfig(lr=1e-2, max_steps=20, batch_size=4, warmup_steps=0, eval_every=0, checkpoint_every=20)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, DPOObjective(model, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    keep = set(M.architecture_parameters(model))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= keep and keep - moved <= {"pos_embed.W_pos"} | {n for n in keep if "W_E" in n}
    assert M.foreign_parameters_in_use(model) == []
    _same_logits(model, M.load_hf_dir(M.export_hf(model, tmp_path / "hf")))


@pytest.mark.parametrize("arch,trained_biases", [
    ("Gemma3ForCausalLM", set()), ("MistralForCausalLM", set()), ("Qwen2ForCausalLM", {"b_Q", "_b_K", "_b_V"}),
    ("GPTNeoXForCausalLM", {"b_Q", "_b_K", "_b_V", "b_O", "b_in", "b_out"})])
def test_training_leaves_the_biases_an_architecture_lacks_at_zero(arch, trained_biases, tmp_path):
    """TransformerLens gives every model zero b_Q .. b_out and b_U. Before session 28 only Llama's and
    GPT-2's were held at zero: a DPO run on Gemma 3 270M moved all 109 of them, so it fine-tuned
    parameters the real model does not have (and an export could not carry them)."""
    from mechtox.training import DPOObjective, TrainConfig, train

    model = M.tiny_model(**{**LLAMA, "original_architecture": arch})
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_steps=3, warmup_steps=0, eval_every=0, checkpoint_every=3)
    was = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, DPOObjective(model, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    moved = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters()
             if n.rsplit(".", 1)[-1].startswith(("b_", "_b_")) and not torch.equal(p.detach(), was[n])}
    assert moved == trained_biases
    assert not torch.equal(model.blocks[0].mlp.W_out.detach(), was["blocks.0.mlp.W_out"])
    assert M.foreign_parameters_in_use(model) == []


def test_checkpoint_with_foreign_biases_warns(tmp_path):
    model = _llama_like()  # randomised biases, which Llama does not have
    path = M.save_checkpoint(model, tmp_path / "ckpt")
    with pytest.warns(UserWarning, match="export cannot be exact"):
        M.load_checkpoint(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        M.load_checkpoint(M.save_checkpoint(zero_foreign(_llama_like()), tmp_path / "clean"))


def test_export_command(tmp_path, capsys):
    """`mechtox export NAME --hf DIR`: transformers loads it and generates the workspace model's greedy text."""
    import transformers

    from mechtox.generation import generate

    ws = tmp_path / "ws"
    model = zero_foreign(_llama_like())
    M.save_checkpoint(model, ws / "models" / "mine")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out), "--force"]) == 0
    assert "logits differ from 'mine' by at most" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and M.is_hf_dir(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    prompts = ["you are a", "the history of"]
    ours = generate(model, prompts, 6, 32, 2, stop_at_eos=False, progress=False).continuations
    for p, c in zip(prompts, ours, strict=True):
        ids = model.to_tokens(p, prepend_bos=model.cfg.default_prepend_bos)
        g = hf.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert tok.decode(g[0, ids.shape[1]:]) == c
    gen = transformers.GenerationConfig.from_pretrained(out)  # what hf.generate(ids) does without arguments
    assert (gen.eos_token_id, gen.bos_token_id, gen.do_sample) == (tok.eos_token_id, tok.bos_token_id, False)
    assert gen.pad_token_id == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def test_export_that_is_not_the_model_writes_nothing(tmp_path, capsys, monkeypatch):
    """The export's check (transformers loads the folder and gives the model's logits) only printed
    the difference: an export that was not the model (here a conversion slip: one layer's down
    projection left out) said 'differ by at most 1.2e+00' and exited 0. Now it is an error, checked
    before the folder takes DIR's place, and an earlier export there is kept."""
    ws = tmp_path / "ws"
    M.save_checkpoint(zero_foreign(_llama_like()), ws / "models" / "mine")
    out = tmp_path / "hf"
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out), "-q"]) == 0
    good = (out / "model.safetensors").read_bytes()
    # a model loaded in bfloat16 is checked against its weights in float32 (bfloat16 arithmetic alone
    # differs by far more than the check allows)
    capsys.readouterr()
    assert main(["--dtype", "bfloat16", "export", "mine", "-w", str(ws), "--hf", str(tmp_path / "bf16"), "-q"]) == 0
    diff = float(capsys.readouterr().out.rsplit("by at most ", 1)[1])
    assert diff < 1e-4
    real = M.tl_to_hf

    def slip(state, cfg):
        sd = real(state, cfg)
        sd["model.layers.0.mlp.down_proj.weight"] = torch.zeros_like(sd["model.layers.0.mlp.down_proj.weight"])
        return sd

    monkeypatch.setattr(M, "tl_to_hf", slip)
    capsys.readouterr()
    assert main(["export", "mine", "-w", str(ws), "--hf", str(out), "--force", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the export of 'mine' is not the model: transformers' logits differ" in err, err
    assert (out / "model.safetensors").read_bytes() == good
    assert not any(p.name.startswith(".") or "tmp" in p.name for p in tmp_path.iterdir())  # no temporary folder left


def test_hub_id_spec_loads_through_transformers_and_is_one_line_offline(tmp_path, capsys):
    from mechtox.workspace import Workspace

    model = zero_foreign(_gpt2_like())
    out = M.export_hf(model, tmp_path / "released")
    ws = Workspace(tmp_path / "ws")
    assert ws.resolve_model(f"hf:{out}").kind == "hub"
    _same_logits(model, ws.load_model(f"hf:{out}"))  # transformers reads a local path where it takes a hub id
    import time

    t = time.perf_counter()  # no hub here: the local cache is tried first, then one quick reachability check
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        ws.load_model("hf:nobody-here/gpt2-medium-dpo-never-cached")
    assert time.perf_counter() - t < 10
    capsys.readouterr()
    assert main(["probe", "-w", str(tmp_path / "ws"), "--model", "hf:nobody-here/never-cached", "--data",
                 "builtin:toxicity", "--n-train", "60", "--n-test", "40"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf:nobody-here/never-cached" in err and "Traceback" not in err


@pytest.mark.parametrize("names", ["transformerlens", "transformers"])
def test_released_state_dict_over_a_base_model(names, tmp_path, capsys):
    """BASE@FILE: Lee et al. released their DPO gpt2-medium as a state-dict file over the base."""
    from mechtox.training import DPOObjective, TrainConfig, train
    from mechtox.workspace import Workspace

    base = zero_foreign(_gpt2_like())
    ws = Workspace(tmp_path / "ws")
    M.save_checkpoint(base, ws.model_dir("gpt2ish"))
    trained = M.load_checkpoint(ws.model_dir("gpt2ish"))
    cfg = TrainConfig(lr=1e-2, max_steps=4, batch_size=4, warmup_steps=0, eval_every=0, checkpoint_every=4)
    train(trained, DPOObjective(trained, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    if names == "transformers":  # a transformers GPT2LMHeadModel state dict, as torch.save writes it
        f = tmp_path / "dpo.pt"
        torch.save({k.removeprefix("transformer."): v for k, v in M.to_hf_state_dict(trained).items()}, f)
    else:
        from safetensors.torch import save_file

        f = tmp_path / "dpo.safetensors"
        save_file({k: v.contiguous() for k, v in trained.state_dict().items() if "IGNORE" not in k and "mask" not in k},
                  str(f))
    loaded = ws.load_model(f"gpt2ish@{f}")
    _same_logits(trained, loaded)
    capsys.readouterr()
    assert main(["models", "-w", str(ws.root), "--set-base", f"gpt2ish@{f}"]) == 0
    assert main(["probe", "-w", str(ws.root), "-q", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "40",
                 "--layers", "last"]) == 0
    out = capsys.readouterr().out
    assert "saved probe 'probe'" in out


def test_bad_weight_files_are_one_line(tmp_path, capsys):
    from mechtox.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    M.save_checkpoint(zero_foreign(_llama_like()), ws.model_dir("llamaish"))
    other = zero_foreign(M.tiny_model(**{**LLAMA, "d_mlp": 96}))
    wrong = tmp_path / "wrong.pt"
    torch.save(M.to_hf_state_dict(other), wrong)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    for f, match in ((wrong, "shapes"), (junk, "no readable state dict"), (tmp_path / "absent.pt", "no weights file")):
        assert main(["probe", "-w", str(ws.root), "--model", f"llamaish@{f}", "--data", "builtin:toxicity",
                     "--n-train", "60", "--n-test", "40"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err and "Traceback" not in err, err


def test_quiet_hides_the_transformers_progress_bars(tmp_path, capsys, monkeypatch):
    """``--quiet`` sets TQDM_DISABLE, which tqdm reads only at import; transformers' own bars
    (loading weights) must follow it too (the GGUF file's: test_smollm2.py)."""
    from transformers.utils import logging as hf_logging

    out = M.export_hf(zero_foreign(_llama_like()), tmp_path / "hf")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # a CLI test before this one may have set it
    hf_logging.enable_progress_bar()
    capsys.readouterr()
    try:
        M.load_hf_dir(out)
        assert "Loading weights" in capsys.readouterr().err  # the bar this test is about, shown by default
        monkeypatch.setenv("TQDM_DISABLE", "1")
        M.load_hf_dir(out)
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        hf_logging.enable_progress_bar()


def test_quiet_export_check_prints_no_loading_bar(tmp_path, capsys, monkeypatch):
    """The export job's own transformers load follows --quiet too, also for a model passed in (no
    mechtox loader ran before it to switch transformers' bars off)."""
    from transformers.utils import logging as hf_logging

    from mechtox.jobs import Context, execute, export

    hf_logging.enable_progress_bar()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    try:
        execute(export, export.ExportConfig(name="mine", hf=str(tmp_path / "hf")), Context(workspace=str(tmp_path / "ws")),
                model=zero_foreign(_llama_like()))
    finally:
        hf_logging.enable_progress_bar()
    err = capsys.readouterr().err
    assert "Loading weights" not in err, err[:300]
