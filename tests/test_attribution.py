import copy

import numpy as np
import pandas as pd
import pytest
import torch

from mechtox.attribution import REDUCING, attribute, classify
from mechtox.errors import IncompatibleError

PROMPTS = ["you are a stupid", "thanks for the", "the river and the city", "shut up you", "my friend is", "the book"]


def perturbed(model, seed=1, scale=0.3, w_out=False):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in other.blocks:
            b.mlp.W_in.add_(scale * torch.randn(b.mlp.W_in.shape, generator=g))
            if w_out:
                b.mlp.W_out.add_(scale * torch.randn(b.mlp.W_out.shape, generator=g))
                b.attn.W_O.add_(scale * torch.randn(b.attn.W_O.shape, generator=g))
    return other


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_hook_attribution_equals_direct_computation(fixture, request):
    before = request.getfixturevalue(fixture)
    after = perturbed(before)  # same value vectors, different activations
    w = torch.randn(before.cfg.d_model)
    w_hat = w / w.norm()
    res = attribute(before, after, w, PROMPTS, mode="shared", max_new_tokens=5, progress=False)
    # direct: mean activations over the generated positions with run_with_cache, times W_out @ w
    from mechtox.generation import generate

    g = generate(before, PROMPTS, 5, stop_at_eos=False, progress=False)
    sums = {"b": 0, "a": 0}
    n = 0
    for p, c in zip(g.prompt_ids, g.continuation_ids, strict=True):
        t = torch.tensor([p + c])
        sl = slice(len(p) - 1, len(p) + len(c) - 1)
        for key, m in (("b", before), ("a", after)):
            _, cache = m.run_with_cache(t)
            sums[key] = sums[key] + torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0, sl].sum(0) for l in range(2)])
        n += len(c)
    d = torch.stack([before.blocks[l].mlp.W_out.detach() @ w_hat for l in range(2)])
    direct = ((sums["b"] - sums["a"]) / n) * d
    np.testing.assert_allclose(res.neurons["delta"].to_numpy(), direct.detach().numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(res.neurons["delta_weight"].to_numpy(), 0.0, atol=1e-6)
    assert res.n_tokens == {"before": n, "after": n} and res.mode == "shared"


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
@pytest.mark.parametrize("mode", ["own", "shared"])
def test_exactness_check_and_partition(fixture, mode, request):
    before = request.getfixturevalue(fixture)
    after = perturbed(before, w_out=True)
    w = torch.randn(before.cfg.d_model)
    res = attribute(before, after, w, PROMPTS, mode=mode, max_new_tokens=6, progress=False)
    assert abs(res.check["error"]) < 1e-4, res.check
    assert abs(res.check["total_change"]) > 1e-3  # the check is not vacuous
    assert res.groups["n"].sum() == 2 * before.cfg.d_mlp
    assert res.neurons["group"].notna().all()
    np.testing.assert_allclose(res.neurons["delta"], res.neurons["delta_act"] + res.neurons["delta_weight"], atol=1e-6)
    np.testing.assert_allclose(res.groups["contribution"].sum(), res.check["neurons"], rtol=1e-5, atol=1e-6)
    gross = res.groups.loc[res.groups["group"].isin(REDUCING), "contribution"].sum()
    np.testing.assert_allclose(res.groups.loc[res.groups["reduces"], "share_of_gross"].sum(), 1.0, rtol=1e-6)
    assert gross != 0
    assert set(res.per_layer["layer"]) == {0, 1}


def test_model_against_itself_is_zero(tiny):
    res = attribute(tiny, copy.deepcopy(tiny), torch.randn(64), PROMPTS, mode="own", max_new_tokens=5, progress=False)
    assert np.abs(res.neurons["delta"].to_numpy()).max() == 0.0
    assert res.check["total_change"] == 0.0


def test_classify_groups():
    cos = np.array([1, 1, -1, -1, 1, 1, -1, -1.0])
    a_b = np.array([1, -1, 1, -1, 1, -1, 1, -1.0])
    a_a = np.array([0, -2, 2, 0, 2, 0, 0, -2.0])
    assert list(classify(cos, a_b, a_a)) == ["TP-", "TN+", "AP+", "AN-", "TP+", "TN-", "AP-", "AN+"]
    assert list(classify(cos, a_b, a_b)) == ["unchanged"] * 8  # a tie was counted as a fall (TP-, TN+, AP-, AN+)


def test_a_layer_the_fine_tuning_left_alone_is_unchanged_not_dampened(tiny):
    """Only the last block trained, read on shared tokens: every neuron and head of block 0 has the
    same mean activation before and after. They were classified as falling, so "patch the dampened
    toxic neurons (TP-) to the after-mean" pinned unchanged neurons to constants."""
    from mechtox.attribution import ablation_vs_patching

    after = copy.deepcopy(tiny)
    with torch.no_grad():
        after.blocks[1].mlp.W_in.add_(0.3 * torch.randn(after.blocks[1].mlp.W_in.shape))
        after.blocks[1].attn.W_Q.add_(0.3 * torch.randn(after.blocks[1].attn.W_Q.shape))
    res = attribute(tiny, after, torch.randn(64), PROMPTS, mode="shared", max_new_tokens=5, progress=False)
    n = res.neurons
    assert set(n.loc[n["layer"] == 0, "group"]) == {"unchanged"}
    assert (n.loc[n["layer"] == 1, "group"] != "unchanged").all()
    assert set(res.heads.loc[res.heads["layer"] == 0, "group"]) == {"unchanged"}
    g = res.groups.set_index("group")
    assert g.loc["unchanged", "n"] == tiny.cfg.d_mlp and g.loc["unchanged", "contribution"] == 0.0
    assert g["n"].sum() == tiny.cfg.n_layers * tiny.cfg.d_mlp
    damp = next(iv for iv in ablation_vs_patching(n, 2, tiny.cfg.d_mlp, ks=(5,)) if "(TP-)" in iv.name)
    assert {name for name, _ in damp.fwd_hooks} <= {"blocks.1.mlp.hook_post"}


def test_ablation_labels_say_how_many_neurons_a_k_beyond_the_table_ablates(tiny):
    """A direction at block 0 gives a table of block 0's neurons only, and fewer of them have a positive
    activation. "ablate top-200" then ablated all 128 (or the 60-odd positive ones) under a top-200 label,
    and a second k repeated the same generation under another false label."""
    from mechtox.attribution import ablation_vs_patching

    d_mlp = tiny.cfg.d_mlp
    rng = np.random.default_rng(0)
    n = pd.DataFrame({"layer": 0, "neuron": np.arange(d_mlp), "cos_before": rng.normal(size=d_mlp),
                      "act_before": np.r_[np.ones(10), -np.ones(d_mlp - 10)], "act_after": 0.0, "group": "unchanged"})
    ivs = ablation_vs_patching(n, 2, d_mlp, ks=(5, 100, 200))
    names = [iv.name for iv in ivs if iv.name.startswith("ablate")]
    assert names == ["ablate top-5 toxic (cosine)", "ablate top-5 toxic with positive activation",
                     "ablate top-100 toxic (cosine)", "ablate all 10 toxic with positive activation",
                     f"ablate all {d_mlp} toxic (cosine)"]
    every = next(iv for iv in ivs if iv.name == f"ablate all {d_mlp} toxic (cosine)")
    assert every.params["n"] == d_mlp
    assert next(iv for iv in ivs if iv.name.startswith("ablate all 10")).params["n"] == 10


def test_errors(tiny, tiny_llama):
    with pytest.raises(IncompatibleError, match="different architectures"):
        attribute(tiny, tiny_llama, torch.randn(64), PROMPTS, progress=False)
    with pytest.raises(IncompatibleError, match=r"shape \(32,\)"):
        attribute(tiny, tiny, torch.randn(32), PROMPTS, progress=False)


# ----------------------------------------------------------------------------- conditions
# Each model reads its OWN tokens (sequences of unequal length, a different number of tokens per
# model), the models differ in weights AND activations, norm weights and biases are random.


def _gens(model, seed, n_tokens):
    from mechtox.generation import Generations

    g = torch.Generator().manual_seed(seed)
    prompts, conts = [], []
    for i, k in enumerate(n_tokens):
        prompts.append(torch.randint(3, model.cfg.d_vocab, (2 + i % 3,), generator=g).tolist())
        conts.append(torch.randint(3, model.cfg.d_vocab, (k,), generator=g).tolist())
    return Generations(["p"] * len(n_tokens), ["c"] * len(n_tokens), prompts, conts)


def _direct_means(model, gens, layer):
    """Per neuron, the mean activation over the positions that predict each continuation token
    (one unpadded forward pass per sequence), and the mean projection of the stream at ``layer``."""
    acts, n = 0, 0
    for p, c in zip(gens.prompt_ids, gens.continuation_ids, strict=True):
        _, cache = model.run_with_cache(torch.tensor([p + c]))
        sl = slice(len(p) - 1, len(p) + len(c) - 1)
        acts = acts + torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0, sl].sum(0) for l in range(layer + 1)])
        n += len(c)
    return acts / n, n


def test_own_tokens_of_unequal_length_equal_a_direct_computation(rich):
    before = rich
    after = perturbed(before, seed=3, scale=0.2, w_out=True)
    gb, ga = _gens(before, 0, [3, 5, 2, 6]), _gens(before, 1, [4, 1, 7])  # 16 vs 12 tokens
    w = torch.randn(before.cfg.d_model)
    w_hat = w / w.norm()
    res = attribute(before, after, w, mode="own", generations={"before": gb, "after": ga}, progress=False)
    a_b, n_b = _direct_means(before, gb, 1)
    a_a, n_a = _direct_means(after, ga, 1)
    assert res.n_tokens == {"before": n_b, "after": n_a} == {"before": 16, "after": 12}
    V_b = torch.stack([before.blocks[l].mlp.W_out.detach() for l in range(2)])
    V_a = torch.stack([after.blocks[l].mlp.W_out.detach() for l in range(2)])
    d_b, d_a = V_b @ w_hat, V_a @ w_hat
    t = res.neurons
    np.testing.assert_allclose(t["act_before"], a_b.detach().numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(t["act_after"], a_a.detach().numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(t["d_after"], d_a.numpy().ravel(), atol=1e-6)
    cos_b = (d_b / V_b.norm(dim=-1)).numpy().ravel()
    np.testing.assert_allclose(t["cos_before"], cos_b, atol=1e-6)
    delta = (a_b * d_b - a_a * d_a).detach().numpy().ravel()
    np.testing.assert_allclose(t["delta"], delta, atol=1e-5)
    # groups, from the direct values: T/A by cos(v_before), P/N by the mean activation BEFORE
    ab, aa = a_b.detach().numpy().ravel(), a_a.detach().numpy().ravel()
    for name, sel in {"TP-": (cos_b > 0) & (ab >= 0) & (aa <= ab), "TN+": (cos_b > 0) & (ab < 0) & (aa <= ab),
                      "AP+": (cos_b <= 0) & (ab >= 0) & (aa > ab), "AN-": (cos_b <= 0) & (ab < 0) & (aa > ab)}.items():
        assert set(np.flatnonzero(t["group"].to_numpy() == name)) == set(np.flatnonzero(sel)), name
        row = res.groups.set_index("group").loc[name]
        assert row["contribution"] == pytest.approx(float(delta[sel].sum()), abs=1e-4)
        assert row["share_of_net"] == pytest.approx(float(delta[sel].sum() / delta.sum()), rel=1e-4)
    assert abs(res.check["error"]) < 1e-4
    assert {"TN+", "AN-"} <= set(t["group"])  # negative activations are exercised (gated MLP or not)


def test_a_resid_pre_direction_is_attributed_to_the_blocks_before_it(rich):
    from transformer_lens.utilities import get_act_name

    before = rich
    after = perturbed(before, seed=4, scale=0.2, w_out=True)
    gb = _gens(before, 2, [3, 4])
    w = torch.randn(before.cfg.d_model)
    hook = get_act_name("resid_pre", 1)

    class D:
        vector, hook_name, name = w, hook, "pre"

    res = attribute(before, after, D(), mode="shared", generations={"before": gb}, progress=False)
    assert set(res.neurons["layer"]) == {0}  # block 1's neurons write after blocks.1.hook_resid_pre
    w_hat = w / w.norm()

    def mean_proj(model):
        tot, n = 0.0, 0
        for p, c in zip(gb.prompt_ids, gb.continuation_ids, strict=True):
            _, cache = model.run_with_cache(torch.tensor([p + c]))
            tot += float((cache[hook][0, len(p) - 1: len(p) + len(c) - 1] @ w_hat).sum())
            n += len(c)
        return tot / n

    assert res.check["total_change"] == pytest.approx(mean_proj(before) - mean_proj(after), abs=1e-4)


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_mid", "blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out",
                                  "blocks.0.hook_attn_out", "hook_embed", "blocks.7.hook_resid_post"])
def test_a_direction_between_blocks_is_refused_not_attributed_as_another_stream(tiny, hook):
    """The attribution splits the stream after a whole block. A direction at blocks.1.hook_resid_mid
    had been attributed as blocks.0.hook_resid_post (block 1's attention left out), one at a block's
    output or the embeddings as the final stream, silently; blocks.0.hook_resid_pre was a KeyError."""
    from mechtox.probe import Direction

    d = Direction(vector=torch.randn(tiny.cfg.d_model), hook_name=hook, method="x", name="d")
    with pytest.raises(IncompatibleError, match=f"a direction at {hook} cannot be attributed"):
        attribute(tiny, perturbed(tiny), d, PROMPTS[:2], max_new_tokens=2, progress=False)


@pytest.mark.parametrize("overrides,why", [
    (dict(original_architecture="Olmo2ForCausalLM", normalization_type="LN"), "with a norm that centres it"),
    (dict(attn_only=True), "no MLP neurons")])
def test_a_model_whose_stream_is_not_the_sum_of_its_writes_is_refused(overrides, why):
    """A post-norm that centres (LayerNorm) or an attention-only model: no exact split into neuron and
    head writes (Gemma 2 / 3 and OLMo 2 / 3, whose post-norms are RMS norms, are attributed: below)."""
    from mechtox.models import tiny_model

    model = tiny_model(**overrides)
    with pytest.raises(IncompatibleError, match=f"cannot be attributed neuron by neuron: it .*{why}"):
        attribute(model, perturbed(model) if not overrides.get("attn_only") else model, torch.randn(64), PROMPTS[:2],
                  max_new_tokens=2, progress=False)


POST_NORM = {"gemma-like": (dict(use_normalization_before_and_after=True, normalization_type="RMS"), "ln1_post", "ln2_post"),
             "olmo2-like": (dict(original_architecture="Olmo2ForCausalLM", normalization_type="RMS"), "ln1", "ln2")}


@pytest.mark.parametrize("kind", POST_NORM)
def test_a_post_norm_model_is_attributed_by_what_reaches_the_stream(kind):
    """Gemma 2 / 3 and OLMo 2 / 3 pass each attention and MLP output through an RMS norm before adding
    it: neuron i writes ``g * a_i W_out[i] / s`` with the token's scale ``s``, head h ``g * z_h W_O[h] / s``.
    Before session 28 such models were refused (before session 27, split as if ``s = g = 1``: on Gemma 3
    270M an error of -6.3 on a change of -6.2). Direct: from run_with_cache, one unpadded sequence at a
    time, each term's write checked against TransformerLens' hook_mlp_out / hook_attn_out first."""
    from mechtox.models import tiny_model

    from .conftest import randomize_norms_and_biases

    overrides, attn_norm, mlp_norm = POST_NORM[kind]
    before = randomize_norms_and_biases(tiny_model(**overrides), seed=3)
    after = randomize_norms_and_biases(perturbed(before, w_out=True), seed=4, scale=0.6)
    gb, ga = _gens(before, 3, [3, 5, 2]), _gens(before, 4, [4, 2, 6])  # own tokens, unequal counts
    w = torch.randn(before.cfg.d_model)
    w_hat = w / w.norm()
    res = attribute(before, after, w, mode="own", generations={"before": gb, "after": ga}, progress=False)

    def direct(model, gens):
        neurons, heads, raw, n = 0, 0, 0, 0
        for p, c in zip(gens.prompt_ids, gens.continuation_ids, strict=True):
            _, cache = model.run_with_cache(torch.tensor([p + c]))
            sl = slice(len(p) - 1, len(p) + len(c) - 1)
            nw, hw, rw = [], [], []
            for l, b in enumerate(model.blocks):
                a = cache[f"blocks.{l}.mlp.hook_post"][0, sl]                           # [t, M]
                s2 = cache[f"blocks.{l}.{mlp_norm}.hook_scale"][0, sl]                  # [t, 1]
                g2 = getattr(b, mlp_norm).w
                write = a[:, :, None] * b.mlp.W_out * g2 / s2[:, :, None]               # [t, M, D]
                torch.testing.assert_close(write.sum(1) + g2 * b.mlp.b_out / s2, cache[f"blocks.{l}.hook_mlp_out"][0, sl])
                z = cache[f"blocks.{l}.attn.hook_z"][0, sl]
                s1 = cache[f"blocks.{l}.{attn_norm}.hook_scale"][0, sl]
                g1 = getattr(b, attn_norm).w
                hwrite = torch.einsum("thd,hdm->thm", z, b.attn.W_O) * g1 / s1[:, :, None]
                torch.testing.assert_close(hwrite.sum(1) + g1 * b.attn.b_O / s1, cache[f"blocks.{l}.hook_attn_out"][0, sl])
                nw.append((write @ w_hat).sum(0))
                hw.append((hwrite @ w_hat).sum(0))
                rw.append(a.sum(0))
            neurons, heads, raw = neurons + torch.stack(nw), heads + torch.stack(hw), raw + torch.stack(rw)
            n += len(c)
        return (neurons / n).detach(), (heads / n).detach(), (raw / n).detach()

    nb, hb, _ = direct(before, gb)
    na, ha, raw_after = direct(after, ga)
    np.testing.assert_allclose(res.neurons["p_before"], nb.numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(res.neurons["delta"], (nb - na).numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(res.heads["p_before"], hb.numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(res.heads["delta"], (hb - ha).numpy().ravel(), atol=1e-5)
    torch.testing.assert_close(res.act_after_mean, raw_after, atol=1e-5, rtol=1e-5)  # what a patch sets hook_post to
    assert not torch.allclose(res.act_after_mean, torch.tensor(res.neurons["act_after"].to_numpy()).view(2, -1).float())
    assert res.check_passed and abs(res.check["error"]) < 1e-4, res.check
    assert min(abs(res.check["attention_biases"]), abs(res.check["mlp_biases"])) > 1e-3  # the biases count too
    from mechtox.attribution import ablation_vs_patching
    from mechtox.interventions import applied

    ivs = ablation_vs_patching(res.neurons, 2, before.cfg.d_mlp, ks=(5,), act_after=res.act_after_mean)
    patch = next(iv for iv in ivs if iv.name.startswith("patch group"))
    group = res.neurons[res.neurons["group"] == patch.name.split()[2]]
    with applied(before, patch):
        _, cache = before.run_with_cache(torch.tensor([gb.prompt_ids[0] + gb.continuation_ids[0]]))
    for r in group.itertuples():
        torch.testing.assert_close(cache[f"blocks.{r.layer}.mlp.hook_post"][0, :, r.neuron],
                                   raw_after[r.layer, r.neuron].expand(cache["hook_embed"].shape[1]))
    np.testing.assert_allclose(res.neurons["delta"], res.neurons["delta_act"] + res.neurons["delta_weight"], atol=1e-6)


def test_the_exactness_check_fails_where_the_parts_do_not_add_up(monkeypatch):
    """With a post-norm model's norms ignored (here patched in: what the attribution computed before
    session 27), the parts do not add up to the change: check_passed is False, a warning says so, and
    so does the summary."""
    import mechtox.attribution as A
    import mechtox.neurons as N
    from mechtox.models import tiny_model

    model = tiny_model(use_normalization_before_and_after=True, normalization_type="RMS")
    with torch.no_grad():
        for b in model.blocks:
            b.ln1_post.w.mul_(3.0)
            b.ln2_post.w.mul_(0.3)
    monkeypatch.setattr(A, "post_norms", lambda m, L: [(None, None)] * L)
    monkeypatch.setattr(N, "post_mlp_norm", lambda m, layer: None)
    with pytest.warns(UserWarning, match="exactness check failed"):
        res = attribute(model, perturbed(model, w_out=True), torch.randn(64), PROMPTS, mode="shared",
                        max_new_tokens=3, progress=False)
    assert not res.check_passed and abs(res.check["error"]) > res.check_limit > 0
    assert "EXACTNESS CHECK FAILED" in res.summary()


def test_the_exactness_check_passes_in_float32_and_is_coarse_in_bfloat16(rich):
    after = perturbed(rich, seed=3, scale=0.2, w_out=True)
    res = attribute(rich, after, torch.randn(64), PROMPTS, mode="own", max_new_tokens=3, progress=False)
    assert res.check_passed and "FAILED" not in res.summary()
    size = abs(res.check["total_change"]) + sum(abs(v) for k, v in res.check.items() if k not in ("total_change", "error"))
    own = sum(float(t[c].abs().sum()) for t in (res.neurons, res.heads) for c in ("p_before", "p_after"))
    assert res.check_scale == pytest.approx(own, rel=1e-6) and own > 1  # the tables hold float32
    assert res.check_limit == pytest.approx(1e-3 * size + 1e-6 * own + 1e-12)
    half = copy.deepcopy(rich).to(torch.bfloat16, print_details=False)
    res16 = attribute(half, copy.deepcopy(after).to(torch.bfloat16, print_details=False), torch.randn(64), PROMPTS,
                      mode="shared", max_new_tokens=3, progress=False)
    size16 = abs(res16.check["total_change"]) + sum(abs(v) for k, v in res16.check.items()
                                                    if k not in ("total_change", "error"))
    assert res16.check_limit == pytest.approx(0.25 * size16 + 1e-2 * res16.check_scale + 1e-12)


def test_a_model_and_its_reloaded_copy_pass_the_exactness_check(tmp_path):
    """The same weights saved and loaded again: the change is 0 but for float32 rounding (5.9e-8
    here, 1.8e-9 through the command), which the check, scaled by the change alone (1e-9 allowed),
    called a failure: "the tables above do not describe these models". It allows rounding relative to the models' own
    parts now (a real error still fails: test_attribute_says_when_the_exactness_check_fails)."""
    from mechtox.models import load_checkpoint, save_checkpoint, tiny_model

    save_checkpoint(tiny_model(), tmp_path / "copy")
    prompts = ["the river was", "she said that", "a small time", "new talk"]
    res = attribute(load_checkpoint(tmp_path / "copy"), tiny_model(), torch.randn(64, generator=torch.Generator().manual_seed(0)),
                    prompts, mode="shared", max_new_tokens=4, progress=False)
    assert 0 < abs(res.check["error"]) and abs(res.check["total_change"]) < 1e-6
    assert res.check_passed and "FAILED" not in res.summary()
    assert abs(res.check["error"]) < 1e-7 * res.check_scale  # rounding: far below the allowance


def _perturb_heads(model, seed=5, scale=0.3):
    """W_Q, W_O and b_O changed: head patterns, values' write and the attention bias all move."""
    other = perturbed(model, seed=seed, scale=scale, w_out=True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for b in other.blocks:
            b.attn.W_Q.add_(scale * torch.randn(b.attn.W_Q.shape, generator=g))
            b.attn.b_O.add_(0.1 * torch.randn(b.attn.b_O.shape, generator=g))
            b.mlp.b_out.add_(0.1 * torch.randn(b.mlp.b_out.shape, generator=g))
    return other


def test_head_attribution_equals_direct_computation(rich):
    """Per head: mean over each model's own tokens of (z_h W_O,h) . w_hat, from run_with_cache, one
    unpadded sequence at a time (GPT-2-like, and Llama-like with grouped-query attention)."""
    before = rich
    after = _perturb_heads(before)
    gb, ga = _gens(before, 3, [3, 5, 2]), _gens(before, 4, [4, 2, 6])  # own tokens, unequal counts
    w = torch.randn(before.cfg.d_model)
    w_hat = w / w.norm()
    res = attribute(before, after, w, mode="own", generations={"before": gb, "after": ga}, progress=False)

    def per_head(model, gens):
        tot, n = 0, 0
        for p, c in zip(gens.prompt_ids, gens.continuation_ids, strict=True):
            _, cache = model.run_with_cache(torch.tensor([p + c]))
            sl = slice(len(p) - 1, len(p) + len(c) - 1)
            writes = torch.stack([torch.einsum("thd,hdm->thm", cache[f"blocks.{l}.attn.hook_z"][0, sl],
                                               model.blocks[l].attn.W_O) for l in range(2)])  # [L, t, H, d_model]
            tot = tot + (writes @ w_hat).sum(1)
            n += len(c)
        return (tot / n).detach()

    p_before = per_head(before, gb).numpy().ravel()
    direct = per_head(before, gb) - per_head(after, ga)
    np.testing.assert_allclose(res.heads["delta"].to_numpy(), direct.numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(res.heads["p_before"].to_numpy(), p_before, atol=1e-5)
    # groups from the direct values: T/A by the head's write along w BEFORE, -/+ by whether it fell
    toward, fell = p_before >= 0, direct.numpy().ravel() > 0
    want = np.where(toward, np.where(fell, "T-", "T+"), np.where(fell, "A+", "A-"))
    assert res.heads["group"].tolist() == want.tolist()
    assert (toward != (res.heads["p_after"].to_numpy() >= 0)).any(), "some head must change sides for the test to bite"
    np.testing.assert_allclose(res.heads["delta"], res.heads["delta_pattern_value"] + res.heads["delta_weight"],
                               atol=1e-6)
    assert len(res.heads) == 2 * before.cfg.n_heads and res.head_groups["n"].sum() == len(res.heads)
    assert abs(res.check["error"]) < 1e-4, res.check
    assert abs(res.check["heads"]) > 1e-3 and abs(res.check["attention_biases"]) > 1e-3
    layers = res.layers.set_index("layer")
    np.testing.assert_allclose(layers["heads"].sum(), res.check["heads"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layers["neurons"].sum(), res.check["neurons"], rtol=1e-6, atol=1e-7)


def test_exactness_check_exposes_a_wrong_neuron_term(rich, monkeypatch):
    """The two bugs the old check could not see: the after model's mean activations divided by the
    before model's token count, and the after model's value vectors taken from the before model."""
    import mechtox.attribution as A

    before = rich
    after = _perturb_heads(before)
    gb, ga = _gens(before, 3, [3, 5, 2]), _gens(before, 4, [4, 2, 6])
    w = torch.randn(before.cfg.d_model)
    res = lambda: attribute(before, after, w, mode="own", generations={"before": gb, "after": ga},  # noqa: E731
                            progress=False)

    def run():  # each wrong term fails the check, and says so
        with pytest.warns(UserWarning, match="exactness check failed"):
            out = res()
        assert not out.check_passed
        return out.check

    assert res().check_passed
    good = res().check
    assert abs(good["error"]) < 1e-4
    real = A.projection_sums
    counts = {}

    def wrong_count(model, seqs, starts, *a, **k):
        s = real(model, seqs, starts, *a, **k)
        counts[model is before] = s.n_tokens
        if model is after:  # act / n_before where act / n_after belongs
            s.act = s.act * s.n_tokens / counts[True]
        return s

    monkeypatch.setattr(A, "projection_sums", wrong_count)
    assert abs(run()["error"]) > 100 * max(abs(good["error"]), 1e-6)
    monkeypatch.setattr(A, "projection_sums", real)
    real_d = A._d
    monkeypatch.setattr(A, "_d", lambda model, w_, L: real_d(before, w_, L))  # the after model's v from before
    assert abs(run()["error"]) > 100 * max(abs(good["error"]), 1e-6)


def test_head_sources_equal_a_direct_computation(rich):
    """What a head attends to: its pattern at the continuation-predicting positions, summed per source
    token id, from run_with_cache one unpadded sequence at a time (GPT-2-like; Llama-like with GQA,
    whose query heads share keys but have their own patterns)."""
    from mechtox.attribution import head_sources, source_shares

    gens = _gens(rich, 3, [3, 5, 2, 4])
    gens.prompt_ids[1][1] = gens.prompt_ids[0][0]  # a token id repeated across sequences
    heads = [(0, 1), (1, 0), (1, rich.cfg.n_heads - 1)]
    keep = [0, 1, 3]
    share, first = source_shares(rich, gens, heads, keep, batch_size=2)  # padded batches of unequal lengths
    mass = torch.zeros(len(heads), rich.cfg.d_vocab, dtype=torch.float64)
    first_mass = torch.zeros(len(heads), dtype=torch.float64)
    for i in keep:
        p, c = gens.prompt_ids[i], gens.continuation_ids[i]
        toks = torch.tensor([p + c])
        _, cache = rich.run_with_cache(toks)
        sl = slice(len(p) - 1, len(p) + len(c) - 1)
        for j, (layer, h) in enumerate(heads):
            w = cache[f"blocks.{layer}.attn.hook_pattern"][0, h, sl].sum(0).double()  # [Tk]
            for pos, t in enumerate(toks[0].tolist()):
                mass[j, t] += w[pos]
            first_mass[j] += w[0]
    total = mass.sum(1)
    torch.testing.assert_close(share, (mass / total[:, None]).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(first, (first_mass / total).float(), atol=1e-6, rtol=0)
    assert torch.allclose(share.sum(1), torch.ones(len(heads)))
    assert not torch.allclose(share[0], share[1])  # different heads, different patterns
    import pandas as pd

    table = head_sources(rich, gens, pd.DataFrame({"layer": [h[0] for h in heads], "head": [h[1] for h in heads]}),
                         keep, k=3)
    best = share[0].argmax().item()
    assert table["attends_to"][0].startswith(repr(rich.to_string([best]))[1:-1] + " ")
    assert table["attends_to"][0].count("|") <= 2


def test_heads_of_a_model_against_itself_are_zero(tiny_llama):
    res = attribute(tiny_llama, copy.deepcopy(tiny_llama), torch.randn(64), PROMPTS, mode="own", max_new_tokens=4,
                    progress=False)
    assert np.abs(res.heads["delta"].to_numpy()).max() == 0.0
    assert res.check["heads"] == 0.0 and res.check["attention_biases"] == 0.0 and res.check["error"] == 0.0


def test_patching_heads_to_the_after_models_mean_z(rich):
    from mechtox.attribution import ablation_vs_patching
    from mechtox.interventions import applied

    before = rich
    after = _perturb_heads(before)
    gb, ga = _gens(before, 3, [3, 5, 2]), _gens(before, 4, [4, 2, 6])
    res = attribute(before, after, torch.randn(before.cfg.d_model), mode="own",
                    generations={"before": gb, "after": ga}, progress=False)
    zsum, n = 0, 0  # the after model's mean z over its own tokens, by hand
    for p, c in zip(ga.prompt_ids, ga.continuation_ids, strict=True):
        _, cache = after.run_with_cache(torch.tensor([p + c]))
        zsum = zsum + torch.stack([cache[f"blocks.{l}.attn.hook_z"][0, len(p) - 1: len(p) + len(c) - 1].sum(0)
                                   for l in range(2)])
        n += len(c)
    torch.testing.assert_close(res.z_after, (zsum / n).detach(), atol=1e-5, rtol=1e-5)
    ivs = ablation_vs_patching(res.neurons, 2, before.cfg.d_mlp, ks=(5,), heads=res.heads, z_after=res.z_after,
                               head_ks=(1,))
    names = [iv.name for iv in ivs]
    assert (res.heads["delta"] > 0).sum() >= 2, "the perturbation must leave several reducing heads"
    top = ivs[names.index("patch top-1 reducing heads to after-mean z")]
    assert any("reducing heads" in x and "neurons" in x for x in names)
    red = res.heads[res.heads["delta"] > 0].sort_values("delta", ascending=False).head(1)
    toks = torch.tensor([gb.prompt_ids[0] + gb.continuation_ids[0]])
    with applied(before, top):
        _, cache = before.run_with_cache(toks)
    for r in red.itertuples():
        z = cache[f"blocks.{r.layer}.attn.hook_z"][0, :, r.head]
        torch.testing.assert_close(z, res.z_after[r.layer, r.head].expand_as(z))
