"""The hf training backend against the HookedTransformer: the same activations at every mapped
TransformerLens hook name, the same effect of writing them, and the same training step (loss,
gradients of every weight, weights after 3 steps) for DPO, probe-SFT and SAP, fp32, on tiny
GPT-2-like and Llama-like (GQA) models with non-trivial norm weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechtox import models as M
from mechtox.errors import MechtoxError
from mechtox.hf_backend import HFBackend, choose_backend
from mechtox.training import (
    DPOObjective,
    ProbeSFTObjective,
    SAPObjective,
    TrainConfig,
    collate,
    completion_logits,
    pair_logps,
    train,
)
from tests.conftest import LLAMA, foreign_hf, randomize_norms_and_biases, tiny_gemma, zero_foreign


def _make(arch: str, seed: int = 5):
    torch.manual_seed(seed)
    if arch in ("mistral", "qwen2", "qwen3", "gpt_neox", "opt", "olmo2", "olmo3"):  # from transformers, every weight, norm and bias random
        hf = foreign_hf(arch, seed)
        cfg = M._tl_config(hf.config, arch, None)
        model = M._attach_tokenizer(M._build(cfg, M.hf_to_tl_state_dict(hf, cfg)), M.tiny_tokenizer())
        model.cfg.default_prepend_bos = True
        return model
    if arch.startswith("gemma"):  # TransformerLens' official Gemma configs shrunk (soft caps, post-norms, windows)
        model = tiny_gemma(arch, seed)
        model.cfg.default_prepend_bos = True
        return model
    if arch == "llama":
        model = M.tiny_model(default_prepend_bos=True, **LLAMA)
    else:
        model = M.tiny_model(default_prepend_bos=True)
        model.cfg.original_architecture = "GPT2LMHeadModel"
    return zero_foreign(randomize_norms_and_biases(model, seed=seed))


ARCHS = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma-1", "gemma-2", "gemma-3", "gpt_neox", "opt", "olmo2", "olmo3"]
LAYER_NAMES = ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",
               "hook_resid_post"]


def _names(model):
    """Every name the hf backend maps for ``model`` (Pythia has no resid_mid: attention and MLP read
    the same stream)."""
    from mechtox.hf_backend import supported_hook

    names = [f"blocks.{L}.{n}" for L in range(model.cfg.n_layers) for n in LAYER_NAMES] + ["ln_final.hook_normalized"]
    return [n for n in names if supported_hook(n, model.cfg)]


def _batch(model):
    texts = ["you are a good friend", "the city is very nice and the river is big", "shut up"]
    seqs = [(model.tokenizer.encode(t), 1) for t in texts]
    return collate(seqs, 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_hook_name_reads_the_hooked_transformer_activation(arch):
    model = _make(arch)
    hf = HFBackend(model)
    b = _batch(model)
    names = _names(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(b.tokens, attention_mask=b.attention_mask, names_filter=names)
        got = {}
        with hf.hooks([(n, lambda a, hook: got.__setitem__(hook.name, a.clone())) for n in names]):
            hf(b.tokens, attention_mask=b.attention_mask)
    real = b.attention_mask.bool()
    for n in names:
        assert got[n].shape == cache[n].shape, n
        diff = (got[n] - cache[n])[real].abs().max()
        assert diff < 2e-5 * max(1.0, float(cache[n][real].abs().max())), (n, float(diff))  # Gemma's logits reach 50


@pytest.mark.parametrize("arch", ARCHS)
def test_lm_head_runs_on_completion_positions_only_with_the_same_log_probs(arch):
    model = _make(arch)
    hf = HFBackend(model)
    seqs = [(model.tokenizer.encode(t), p) for t, p in [("you are a good friend", 3), ("the city is very nice", 4)]]
    b = collate(seqs, 0)
    assert b.start == 2
    with torch.no_grad():
        kept = completion_logits(hf, b)
        full = model(b.tokens, attention_mask=b.attention_mask)
        assert kept.shape[1] == b.tokens.shape[1] - 2
        assert (kept - full[:, 2:]).abs().max() < 2e-5 * max(1.0, float(full.abs().max()))
        assert torch.allclose(torch.stack(pair_logps(hf, seqs[:1], seqs[1:], 0)),
                              torch.stack(pair_logps(model, seqs[:1], seqs[1:], 0)), atol=2e-5)


@pytest.mark.parametrize("arch,layer_name", [(a, n) for a in ARCHS for n in LAYER_NAMES + ["ln_final.hook_normalized"]
                                             if not (a == "gpt_neox" and n == "hook_resid_mid")])
def test_writing_a_hook_changes_the_logits_as_in_the_hooked_transformer(arch, layer_name):
    model = _make(arch)
    hf = HFBackend(model)
    b = _batch(model)
    name = layer_name if layer_name.startswith("ln_final") else f"blocks.0.{layer_name}"  # read again by block 1
    shift = 0.3 * torch.randn(model.cfg.d_head if "hook_z" in name else model.cfg.d_model if "hook_post" not in name
                              else model.cfg.d_mlp, generator=torch.Generator().manual_seed(2))

    def edit(act, hook):
        return act * 1.5 + shift

    with torch.no_grad():
        plain = model(b.tokens, attention_mask=b.attention_mask)
        with model.hooks(fwd_hooks=[(name, edit)]):
            want = model(b.tokens, attention_mask=b.attention_mask)
        with hf.hooks([(name, edit)]):
            got = hf(b.tokens, attention_mask=b.attention_mask)
        after = hf(b.tokens, attention_mask=b.attention_mask)  # the slot is empty again
    real = b.attention_mask.bool()
    assert (want - plain)[real].abs().max() > 1e-2, "the edit must matter"
    assert (got - want)[real].abs().max() < 1e-4
    assert (after - plain)[real].abs().max() < 1e-4



@pytest.mark.parametrize("arch", ARCHS)
def test_several_hooks_compose_as_in_the_hooked_transformer(arch):
    """Two functions at one site run in order, each on the one before's result; a resid_mid hook
    sees the residual after a resid_pre hook of the same block changed it."""
    model = _make(arch)
    hf = HFBackend(model)
    b = _batch(model)
    g = torch.Generator().manual_seed(4)
    s1, s2, s3 = (0.3 * torch.randn(model.cfg.d_model, generator=g) for _ in range(3))
    seen = {}

    def keep(tag):
        def fn(act, hook):
            seen[tag] = act.clone()
        return fn

    mid = "blocks.1.hook_attn_out" if model.cfg.parallel_attn_mlp else "blocks.1.hook_resid_mid"  # Pythia has none
    hooks = [("blocks.0.hook_resid_pre", lambda a, hook: a + s1),
             (mid, lambda a, hook: a * 1.5),
             (mid, lambda a, hook: a + s2),  # on the first one's result
             (mid, keep("mid")),
             ("blocks.1.hook_resid_pre", lambda a, hook: a - s3)]
    with torch.no_grad():
        with model.hooks(fwd_hooks=hooks):
            want = model(b.tokens, attention_mask=b.attention_mask)
        want_mid = seen.pop("mid")
        with hf.hooks(hooks):
            got = hf(b.tokens, attention_mask=b.attention_mask)
    real = b.attention_mask.bool()
    assert (got - want)[real].abs().max() < 1e-4
    assert (seen["mid"] - want_mid)[real].abs().max() < 1e-4


def _pairs(n=12):
    from mechtox.data import PreferencePairs

    good = ["a good friend", "very nice and kind", "thanks for the help", "a great day"]
    bad = ["a stupid idiot", "shut up loser", "ugly dumb jerk", "trash fool"]
    return PreferencePairs(["you are", "the team is", "my friend said"] * (n // 3), [good[i % 4] for i in range(n)],
                           [bad[(i + 1) % 4] for i in range(n)], "test")


def _probe(model, layer: int):
    from mechtox.probe import fit_probe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, model.cfg.d_model))
    return fit_probe(X, (X[:, 0] - X[:, 3] > 0).astype(int), f"blocks.{layer}.hook_resid_post")


def _objective(kind: str, model, cfg):
    p = _pairs()
    if kind == "dpo":
        return DPOObjective(model, p, cfg)
    if kind == "sft-probe":
        return ProbeSFTObjective(model, p.prompt, p.chosen, [_probe(model, 0)], cfg)
    return SAPObjective(model, p.prompt, p.chosen, p, cfg)


def _cfg(kind, backend, **kw):
    base = dict(objective=kind, lr=3e-3, batch_size=4, max_steps=3, warmup_steps=0, eval_every=0, checkpoint_every=3,
                backend=backend, sap_layers="0", sap_rho=0.01, val_fraction=0.2)
    base.update(kw)
    return TrainConfig(**base)


# Gemma's weights are held in other units by TransformerLens (embeddings times sqrt(d_model), norms as
# 1 + w): SAP's perturbation (rho |theta| g / |g|) and AdamW's steps on the embeddings depend on the units,
# so on Gemma only the forward and backward match between the backends (the hf one trains in the
# model's own units, as transformers does): test_gemma_trains_on_the_hf_backend_in_its_own_units
UNITS_AGREE = [a for a in ARCHS if not a.startswith("gemma")]


@pytest.mark.parametrize("arch,kind", [(a, k) for a in ARCHS for k in ("dpo", "sft-probe", "sap")
                                       if k != "sap" or a in UNITS_AGREE])
def test_same_step_on_both_backends(arch, kind, tmp_path):
    """One loss and backward on each backend: the same loss and the same gradient of every weight
    (Gemma's: of the weights in the model's own units)."""
    a = _make(arch)
    hf = HFBackend(_make(arch))
    cfg = _cfg(kind, "hooked")
    oa, ob = _objective(kind, a, cfg), _objective(kind, a, cfg)
    oa.prepare(a, False)
    ob.prepare(hf, False)
    keep = set(M.architecture_parameters(a))
    for n, p in a.named_parameters():
        p.requires_grad_(n in keep)
    idx = [0, 3, 5, 7]
    la, _ = oa.loss(a, idx)
    lb, _ = ob.loss(hf, idx)
    assert float(la.detach()) == pytest.approx(float(lb.detach()), rel=1e-5)
    la.backward()
    lb.backward()
    ga = M.tl_to_hf({n: p.grad for n, p in a.named_parameters() if n in keep}, a.cfg, gradients=True)
    gb = {n: p.grad for n, p in hf.hf.named_parameters()}
    assert set(ga) == set(gb)
    for n in gb:
        if n.endswith("k_proj.bias") and a.cfg.positional_embedding_type != "rotary":
            # unrotated (OPT), softmax ignores a key bias: its exact gradient is 0, both are rounding noise
            q = gb[n.replace("k_proj", "q_proj")].abs().max()
            assert ga[n].abs().max() < 1e-5 * q and gb[n].abs().max() < 1e-5 * q, n
            continue
        scale = float(gb[n].abs().max()) + 1e-8
        assert (ga[n] - gb[n]).abs().max() / scale < 1e-4, n


@pytest.mark.parametrize("arch", UNITS_AGREE)
@pytest.mark.parametrize("kind", ["dpo", "sft-probe", "sap"])
def test_three_steps_give_the_same_weights_on_both_backends(arch, kind, tmp_path):
    a, b = _make(arch), _make(arch)
    ra = train(a, _objective(kind, a, _cfg(kind, "hooked")), _cfg(kind, "hooked"), tmp_path / "a", progress=False)
    rb = train(b, _objective(kind, b, _cfg(kind, "hf")), _cfg(kind, "hf"), tmp_path / "b", progress=False)
    assert (ra.backend, rb.backend) == ("hooked", "hf")
    for x, y in zip(ra.history, rb.history, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    sa, sb = a.state_dict(), b.state_dict()
    moved = 0
    for n in M.architecture_parameters(a):
        if n.endswith("attn.b_K"):
            # softmax ignores a key bias (it adds one constant per query row): its exact gradient is
            # 0, so each backend's is rounding noise, which AdamW scales up to lr-sized steps
            continue
        # AdamW moves each weight by up to lr = 3e-3 per step; rounding differences of small
        # gradients change a step by a few percent of that, except for the odd weight whose
        # gradient is near 0, where AdamW's g / sqrt(v) magnifies them (one of W_in's 8192 moved
        # 2.7e-4 apart on a CPU without AVX2, whose kernels round otherwise): a slip in either
        # backend moves whole tensors apart
        diff = (sa[n] - sb[n]).abs()
        assert int((diff > 1e-4).sum()) <= max(1, diff.numel() // 1000) and diff.max() < 1e-3, n
        moved += int(not torch.equal(sb[n], _make(arch).state_dict()[n]))
    assert moved > 10  # the hf run's weights were written back into the HookedTransformer


@pytest.mark.parametrize("arch", ["gemma-1", "gemma-2", "gemma-3"])
def test_gemma_trains_on_the_hf_backend_in_its_own_units(arch, tmp_path):
    """Gemma 1-3 train on the hf backend by default. Its weights go back into the HookedTransformer
    through TransformerLens' own conversion (norms plus 1, embeddings times sqrt(d_model)): at lr 1e-30
    three steps leave every weight as it was, and a trained model's export gives its logits in
    transformers. The first step's loss is the hooked backend's; AdamW's steps on the embeddings are
    sqrt(d_model) times larger in TransformerLens' units there, as transformers' training would take them."""
    import transformers

    kind = "sft-probe"  # (a DPO loss is log 2 at the first step on any backend: the policy is the reference)
    still = _make(arch)
    r0 = train(still, _objective(kind, still, _cfg(kind, "auto", lr=1e-30)), _cfg(kind, "auto", lr=1e-30), tmp_path / "z",
               progress=False)
    assert r0.backend == "hf"
    for n, v in _make(arch).state_dict().items():
        assert torch.allclose(still.state_dict()[n], v, rtol=1e-6, atol=1e-6), n
    a, b = _make(arch), _make(arch)
    ra = train(a, _objective(kind, a, _cfg(kind, "hooked")), _cfg(kind, "hooked"), tmp_path / "a", progress=False)
    rb = train(b, _objective(kind, b, _cfg(kind, "hf")), _cfg(kind, "hf"), tmp_path / "b", progress=False)
    assert ra.history[0]["loss"] == pytest.approx(rb.history[0]["loss"], rel=1e-5)
    w0 = _make(arch).embed.W_E.detach()
    step_a, step_b = (a.embed.W_E.detach() - w0).abs().max(), (b.embed.W_E.detach() - w0).abs().max()
    assert step_b / step_a == pytest.approx(b.cfg.d_model ** 0.5, rel=0.2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(M.export_hf(b, tmp_path / "hf")).eval()
    toks = torch.randint(3, b.cfg.d_vocab, (2, 20))
    with torch.no_grad():
        ours = b(toks)
        assert (hf(toks).logits - ours).abs().max() < 1e-4 * ours.abs().max()


def test_the_default_backend_says_why():
    neox = _make("gpt_neox")  # Pythia's parallel attention and MLP: no resid_mid to read or write
    assert choose_backend("auto", neox.cfg, ("blocks.1.hook_resid_post",))[0] == "hf"
    backend, why = choose_backend("auto", neox.cfg, ("blocks.1.hook_resid_mid",))
    assert backend == "hooked" and "blocks.1.hook_resid_mid" in why
    llama = _make("llama")
    assert choose_backend("auto", llama.cfg, ("blocks.1.hook_resid_post",))[0] == "hf"
    backend, why = choose_backend("auto", llama.cfg, ("blocks.0.ln1.hook_scale",))
    assert backend == "hooked" and "blocks.0.ln1.hook_scale" in why
    tiny = M.tiny_model()  # no original architecture
    assert choose_backend("auto", tiny.cfg, ())[0] == "hooked"
    with pytest.raises(MechtoxError, match="--backend hooked"):
        choose_backend("hf", tiny.cfg, ())
    with pytest.raises(MechtoxError, match="TrainConfig.backend must be one of 'auto', 'hf', 'hooked', not 'fast'"):
        TrainConfig(backend="fast")
