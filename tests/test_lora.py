"""LoRA through peft on the hf backend: only the adapters train, the saved model has them merged
(an ordinary checkpoint), a run resumes exactly, and SAP perturbs only the adapters."""

from __future__ import annotations

import pytest
import torch

from mechtox import models as M
from mechtox.errors import MechtoxError
from mechtox.hf_backend import HFBackend, LoraSpec, lora_target_modules
from mechtox.training import DPOObjective, SAPObjective, TrainConfig, train
from tests.test_hf_backend import _make, _pairs

ARCHS = ["gpt2", "llama", "qwen2", "qwen3", "gemma-1", "gemma-3", "gpt_neox", "opt", "olmo2"]


def _cfg(**kw):
    base = dict(lr=2e-2, batch_size=4, max_steps=6, warmup_steps=0, eval_every=3, checkpoint_every=3, lora_r=4,
                lora_alpha=8.0, lora_targets="q,v", val_fraction=0.2)
    base.update(kw)
    return TrainConfig(**base)


def _adapter_size(model) -> int:
    c, r = model.cfg, 4
    if c.original_architecture in ("GPT2LMHeadModel", "GPTNeoXForCausalLM"):  # q,v -> the fused c_attn / query_key_value
        return c.n_layers * r * (c.d_model + 3 * c.d_model)
    kv = c.n_key_value_heads or c.n_heads
    return c.n_layers * r * ((c.d_model + c.n_heads * c.d_head) + (c.d_model + kv * c.d_head))


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_only_the_adapters_and_saves_them_merged(arch, tmp_path):
    model = _make(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg()
    res = train(model, DPOObjective(model, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    assert res.backend == "hf" and res.trainable_params == _adapter_size(model)
    opt = torch.load(tmp_path / "run" / "state" / "optimizer.pt", weights_only=False)
    assert sum(s["exp_avg"].numel() for s in opt["state"].values()) == _adapter_size(model)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    fused = {"attn.W_Q", "attn.W_K", "attn.W_V", "attn.b_Q"}  # q and v adapt the fused module: k moves too
    want = fused if arch in ("gpt2", "gpt_neox") else {"attn.W_Q", "attn.W_V", "attn._W_V"}
    assert moved and {k.split(".", 2)[2] for k in moved} <= want, moved
    # the merged HookedTransformer computes what the adapted transformers model computes
    adapted = HFBackend(_make(arch), lora=LoraSpec(4, 8.0, 0.0, "q,v"))
    adapted.load_adapters(
        __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "run/state/adapter.safetensors")))
    adapted.eval()
    toks = torch.randint(3, model.cfg.d_vocab, (2, 9))
    with torch.no_grad():
        assert (adapted(toks) - model(toks)).abs().max() < 1e-4
    import transformers

    back = transformers.AutoModelForCausalLM.from_pretrained(M.export_hf(model, tmp_path / "hf")).eval()
    with torch.no_grad():
        assert (back(toks).logits - model(toks)).abs().max() < 1e-4 * max(1.0, float(model(toks).abs().max()))


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_run_resumes_exactly(arch, tmp_path):
    cfg = _cfg()
    a = _make(arch)
    train(a, DPOObjective(a, _pairs(), cfg), cfg, tmp_path / "a", progress=False)
    b = _make(arch)
    train(b, DPOObjective(b, _pairs(), cfg), cfg, tmp_path / "b", progress=False, stop_after=3)
    c = _make(arch)  # the run restarts from the base model, as the command line does
    res = train(c, DPOObjective(c, _pairs(), cfg), cfg, tmp_path / "b", resume=True, progress=False)
    assert res.steps == 6
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k
    other = _make(arch, seed=9)
    with pytest.raises(MechtoxError, match="another base model"):
        train(other, DPOObjective(other, _pairs(), cfg), cfg, tmp_path / "b", resume=True, progress=False)
    # a base that differs only in its last block's MLP (fine-tuned there), or in the order of two
    # of its neurons, is another base too
    last = _make(arch)
    mlp = last.blocks[-1].mlp
    with torch.no_grad():
        mlp.W_out[[0, 1]] = mlp.W_out[[1, 0]].clone()
    tuned = _make(arch)
    with torch.no_grad():
        tuned.blocks[-1].mlp.W_in.mul_(1.01)
    for base in (last, tuned):
        with pytest.raises(MechtoxError, match="another base model"):
            train(base, DPOObjective(base, _pairs(), cfg), cfg, tmp_path / "b", resume=True, progress=False)
    # a run saved by an older mechtox kept the sums of the first four parameters only: still resumable
    import json

    meta_path = tmp_path / "b" / "state" / "trainer.json"
    meta = json.loads(meta_path.read_text())
    meta["base_model"] = meta["base_model"][:4]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(MechtoxError, match="another base model"):
        train(other, DPOObjective(other, _pairs(), cfg), cfg, tmp_path / "b", resume=True, progress=False)
    same = _make(arch)
    assert train(same, DPOObjective(same, _pairs(), cfg), cfg, tmp_path / "b", resume=True, progress=False).steps == 6


def test_sap_with_lora_perturbs_only_the_adapters(tmp_path):
    model = _make("llama")
    cfg = _cfg(objective="sap", sap_layers="0", sap_rho=0.05, max_steps=2, eval_every=0, checkpoint_every=2)
    p = _pairs()
    obj = SAPObjective(model, p.prompt, p.chosen, p, cfg)
    backend = HFBackend(model, lora=LoraSpec(4, 8.0, 0.0, "q,v"))
    with torch.no_grad():
        for n, q in backend.hf.named_parameters():
            if "lora_B" in n:
                q.normal_(0, 0.1)  # B starts at zero; give the adapters a size to perturb
    state = {n: q.detach().clone() for n, q in backend.hf.named_parameters()}
    seen = []
    orig = obj.lm_loss

    def spy(m, batch, fwd_hooks=()):
        seen.append({n: q.detach().clone() for n, q in backend.hf.named_parameters()})
        return orig(m, batch, fwd_hooks)

    obj.lm_loss = spy
    batch = obj._batch(backend, [0, 1, 2, 3])
    obj.probe_vectors(backend, batch, obj.safety_batch([0, 1, 2, 3]))
    perturbed = seen[0]  # the task loss is evaluated under the harmful perturbation
    changed = {n for n in state if not torch.equal(state[n], perturbed[n])}
    assert changed and all("lora_" in n for n in changed)
    for n, q in backend.hf.named_parameters():  # and everything is restored afterwards
        assert torch.equal(q.detach(), state[n]), n
    res = train(model, obj.__class__(model, p.prompt, p.chosen, p, cfg), cfg, tmp_path / "sap", progress=False)
    assert res.trainable_params == _adapter_size(model)


def test_lora_settings_are_checked():
    assert lora_target_modules("LlamaForCausalLM", "q,v") == ["q_proj", "v_proj"]
    assert lora_target_modules("GPT2LMHeadModel", "q,v,down") == ["c_attn", "mlp.c_proj"]
    assert lora_target_modules("GPTNeoXForCausalLM", "q,v,o") == ["attention.dense", "query_key_value"]
    with pytest.raises(MechtoxError, match="use comma-separated names"):
        lora_target_modules("LlamaForCausalLM", "q,attention")
    with pytest.raises(MechtoxError, match="lora_r"):
        TrainConfig(lora_r=-1)
    model = _make("llama")
    cfg = _cfg(backend="hooked")
    with pytest.raises(MechtoxError, match="LoRA runs on the hf backend only"):
        train(model, DPOObjective(model, _pairs(), cfg), cfg, "/nonexistent/never-written", progress=False)
    tiny = M.tiny_model()  # not a transformers architecture
    with pytest.raises(MechtoxError, match="LoRA runs on the hf backend only"):
        train(tiny, DPOObjective(tiny, _pairs(), _cfg()), _cfg(), "/nonexistent/never-written", progress=False)
