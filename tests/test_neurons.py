import numpy as np
import pytest
import torch

from mechtox.errors import IncompatibleError, MechtoxError
from mechtox.neurons import (
    decode_neurons,
    expected_max_cosine,
    logit_lens,
    mean_activations,
    random_cosine_range,
    rank_neurons,
    toxic_svd,
    unembed_basis,
)


def unit(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    return w / w.norm()


def test_ranking_equals_direct_computation(tiny):
    w = unit(64)
    r = rank_neurons(tiny, w, chance_draws=0)
    W = torch.stack([b.mlp.W_out.detach() for b in tiny.blocks])  # [L, M, D]
    cos = torch.nn.functional.cosine_similarity(W, w.expand_as(W), dim=-1)
    assert len(r.table) == 2 * 128
    for row in r.table.head(20).itertuples():
        assert abs(row.cosine - float(cos[row.layer, row.neuron])) < 1e-5
        assert abs(row.dot - float(W[row.layer, row.neuron] @ w)) < 1e-5
    assert (np.diff(r.table["cosine"].to_numpy()) <= 0).all()
    assert r.table["rank"].tolist() == list(range(256))


def test_planted_neuron_ranks_first(tiny):
    w = unit(64, 1)
    with torch.no_grad():
        tiny.blocks[1].mlp.W_out[5] = 3.0 * w
    r = rank_neurons(tiny, w, chance_draws=0)
    top = r.table.iloc[0]
    assert (top.layer, top.neuron) == (1, 5) and top.cosine == pytest.approx(1.0, abs=1e-5)


def test_activation_weighted_ranking(tiny):
    w = unit(64, 2)
    texts = ["you are a stupid idiot", "shut up loser"]
    acts = mean_activations(tiny, texts, progress=False)
    from mechtox.data import encode

    toks = encode(tiny, texts)
    per = [tiny.run_with_cache(torch.tensor([t]))[1]["blocks.0.mlp.hook_post"][0] for t in toks]
    torch.testing.assert_close(acts[0], torch.cat(per).mean(0), atol=1e-5, rtol=1e-5)
    r = rank_neurons(tiny, w, acts, chance_draws=0)
    row = r.table.iloc[0]
    assert row["act_proj"] == pytest.approx(row["mean_act"] * row["dot"], rel=1e-5)


def test_svd_orientation(tiny):
    w = unit(64, 3)
    r = rank_neurons(tiny, w, chance_draws=0)
    svd = toxic_svd(tiny, r, w, top_n=32, k=8)
    assert (svd.cos_with_direction >= 0).all()
    torch.testing.assert_close(svd.vectors @ svd.vectors.T, torch.eye(8), atol=1e-4, rtol=0)
    # flipping the direction flips every singular vector
    svd2 = toxic_svd(tiny, r, -w, top_n=32, k=8)
    torch.testing.assert_close(svd2.vectors, -svd.vectors)


def test_logit_lens_finds_planted_token(tiny_llama):
    B = unembed_basis(tiny_llama)
    target = tiny_llama.tokenizer.convert_tokens_to_ids("idiot")
    v = B[:, target] / B[:, target].norm()
    assert logit_lens(tiny_llama, v.unsqueeze(0), k=1)[0] == ["idiot"]
    with torch.no_grad():
        tiny_llama.blocks[0].mlp.W_out[7] = 10 * v
    import pandas as pd

    df = decode_neurons(tiny_llama, pd.DataFrame({"layer": [0], "neuron": [7]}), k=3)
    assert df["tokens"].iloc[0].split(" | ")[0] == "idiot"
    # signed: a neuron whose activation goes negative writes -v, whose top token is not "idiot"
    with torch.no_grad():
        tiny_llama.blocks[0].mlp.W_out[7] = -10 * v
    neg = pd.DataFrame({"layer": [0], "neuron": [7], "mean_act": [-0.5]})
    assert decode_neurons(tiny_llama, neg, k=1, signed=True)["tokens"].iloc[0] == "idiot"
    assert decode_neurons(tiny_llama, neg, k=1)["tokens"].iloc[0] != "idiot"
    with pytest.raises(MechtoxError, match="mean_act"):
        decode_neurons(tiny_llama, neg.drop(columns="mean_act"), signed=True)


def test_chance_range_matches_theory():
    lo, hi = random_cosine_range(576, 46080, draws=5)
    assert 0.12 < lo <= hi < 0.22
    assert abs(expected_max_cosine(576, 46080) - (lo + hi) / 2) < 0.04


def test_wrong_dimension(tiny):
    with pytest.raises(IncompatibleError, match="d_model 64"):
        rank_neurons(tiny, torch.ones(32))


# ----------------------------------------------------------------------------- conditions


def test_logit_lens_reads_through_the_models_own_final_norm(rich):
    from mechtox.neurons import logit_lens_ids

    V = torch.randn(12, rich.cfg.d_model) * 3 + 0.5
    got = logit_lens_ids(rich, V, k=5)
    with torch.no_grad():
        normed = rich.ln_final(V[None])[0]  # the model's own norm: its scale, its centring
        if getattr(rich.ln_final, "b", None) is not None:
            normed = normed - rich.ln_final.b  # the lens reads what the vector adds, not the norm's bias
        expected = (normed @ rich.W_U).topk(5, dim=-1).indices.tolist()
    assert got == expected
    plain = (V @ rich.W_U.detach()).topk(5, dim=-1).indices.tolist()
    assert got != plain  # the norm's weight (and centring) matters for these vectors


def test_lens_hits_screened_equal_every_vector_read_in_full(rich):
    """The screen (a few high-norm tokens first) against reading every vector's whole lens, and
    against a float64 count: for value vectors and random vectors alike, hits and misses."""
    from mechtox.neurons import _lens_inputs, lens_hits

    g = torch.Generator().manual_seed(3)
    V = torch.cat([rich.W_out.detach().reshape(-1, rich.cfg.d_model) * 40, torch.randn(400, rich.cfg.d_model, generator=g)])
    ids = [5, 17, 40, 41, 96, 96, 300, -1]  # repeats and ids outside the vocabulary count once / never
    full = lens_hits(rich, V, ids, k=10, screen=0)
    for screen in (4, 16, 40):
        assert np.array_equal(lens_hits(rich, V, ids, k=10, chunk=128, screen=screen), full)
    logits = _lens_inputs(rich, V).double() @ unembed_basis(rich).double()
    tox = torch.tensor([5, 17, 40, 41, 96])
    above = (logits > logits[:, tox].amax(-1, keepdim=True)).sum(-1)
    assert np.array_equal(full, (above < 10).numpy())
    assert 0.05 < full.mean() < 0.95  # both kinds present
    assert not lens_hits(rich, V, [300, -1]).any() and not lens_hits(rich, V, []).any()


def test_lens_screen_keeps_vectors_whose_rivals_win_only_by_rounding(rich):
    """Ten tokens whose unembedding is the toxic token's times (1 + 2e-7) outscore it in float32 by
    less than rounding could change: the screen must leave such vectors to the full read."""
    from mechtox.neurons import _lens_inputs, _lens_screen

    basis = torch.zeros_like(unembed_basis(rich))  # the other tokens' logits are 0
    basis[:, 3] = unembed_basis(rich)[:, 3]
    basis[:, 10:20] = basis[:, [3]] * (1 + 2e-7)
    g = torch.Generator().manual_seed(4)
    vecs = _lens_inputs(rich, torch.randn(300, rich.cfg.d_model, generator=g))
    up = (vecs @ basis[:, 3]) > 0  # there the rivals' logits are the larger in exact arithmetic
    kept = set(_lens_screen(vecs, basis, [3], 10, 64, basis.shape[1] - 1).tolist())
    assert up.sum() > 100 and set(torch.nonzero(up).flatten().tolist()) <= kept
    # rivals 1e-3 ahead where the logit is a tenth of its largest value: no rounding, screened out
    basis[:, 10:20] = basis[:, [3]] * (1 + 1e-3)
    clear = (vecs @ basis[:, 3]) > 0.1 * vecs.norm(dim=-1) * basis[:, 3].norm()
    kept = set(_lens_screen(vecs, basis, [3], 10, 64, basis.shape[1] - 1).tolist())
    assert clear.sum() > 50 and not kept & set(torch.nonzero(clear).flatten().tolist())


def test_lens_screen_margin_reads_the_toxic_tokens_norm_too(rich):
    """The rounding margin scales with the largest unembedding norm, the toxic tokens' included: a
    toxic token of norm 100 rounds 100 times more than a rival of norm 1 that leads it by less."""
    from mechtox.neurons import _lens_screen

    d = rich.cfg.d_model
    g = torch.Generator().manual_seed(5)
    basis = torch.zeros(d, 20)
    basis[:, 3] = 100 * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    basis[:, 10] = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    diff = basis[:, 10] - basis[:, 3]
    x = torch.randn(50, d, generator=g)
    lead = 50 * 4 * d * torch.finfo(torch.float32).eps * x.norm(dim=-1)  # within 100x the norm-1 margin
    x = x + ((lead - x @ diff) / diff.dot(diff))[:, None] * diff  # the rival leads by `lead` exactly
    assert torch.allclose(x @ diff, lead, rtol=0.05)
    assert len(_lens_screen(x, basis, [3], 1, 64, 1)) == 50  # left to the full read
    far = x + (4 * lead / diff.dot(diff))[:, None] * diff  # 5x the lead: beyond the margin
    assert len(_lens_screen(far, basis, [3], 1, 64, 1)) == 0


def test_mean_activations_over_real_tokens_of_unequal_texts(rich):
    from mechtox.neurons import mean_activations

    texts = ["you are a stupid idiot and a fool", "thanks", "the city river book"]
    got = mean_activations(rich, texts, batch_size=3, progress=False)
    from mechtox.data import encode

    tot, n = 0, 0
    for ids in encode(rich, texts):
        _, cache = rich.run_with_cache(torch.tensor([ids]))
        tot = tot + torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0].sum(0) for l in range(2)])
        n += len(ids)
    torch.testing.assert_close(got, tot / n, atol=1e-5, rtol=1e-4)


def test_ranking_in_a_diagonal_metric_by_hand(rich):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(rich.cfg.d_model, generator=g)
    s = torch.rand(rich.cfg.d_model, generator=g) * 3 + 0.2
    r = rank_neurons(rich, w, scale=s, chance_draws=0).table.sort_values(["layer", "neuron"])
    V = torch.stack([b.mlp.W_out.detach() for b in rich.blocks]).reshape(-1, rich.cfg.d_model)
    cos = torch.nn.functional.cosine_similarity(V / s, (w / w.norm() * s)[None], dim=-1)
    np.testing.assert_allclose(r["cosine"].to_numpy(), cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(r["dot"].to_numpy(), (V @ (w / w.norm())).numpy(), atol=1e-5)


@pytest.mark.parametrize("overrides,norm", [
    (dict(use_normalization_before_and_after=True, normalization_type="RMS"), "ln2_post"),  # Gemma 2 / 3
    (dict(original_architecture="Olmo2ForCausalLM", normalization_type="RMS"), "ln2")])  # OLMo 2 / 3: after only
def test_a_post_norm_models_value_vectors_are_what_reaches_the_stream(overrides, norm):
    """Gemma 2 / 3 multiply each MLP output by the post-MLP norm's weight g before adding it: a
    neuron writes along g * W_out[i], not W_out[i] (the ranking had used W_out[i], so its cosines,
    logit-lens tokens and SVD were of vectors the model never adds). Checked against the hooked MLP
    output, token by token: (a @ (W_out * g) + b_out * g) / rms."""
    from mechtox.models import tiny_model
    from mechtox.neurons import decode_neurons, rank_neurons, value_vectors

    model = tiny_model(**overrides)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in model.blocks:
            getattr(b, norm).w.copy_(torch.rand(getattr(b, norm).w.shape, generator=g) * 3)
    _, cache = model.run_with_cache(model.to_tokens(["you are a stupid idiot", "thanks for the help"]))
    V = value_vectors(model)
    for layer, b in enumerate(model.blocks):
        a, scale = cache[f"blocks.{layer}.mlp.hook_post"], cache[f"blocks.{layer}.{norm}.hook_scale"]
        written = (a @ V[layer] + b.mlp.b_out.detach() * getattr(b, norm).w.detach()) / scale
        torch.testing.assert_close(written, cache[f"blocks.{layer}.hook_mlp_out"], rtol=1e-4, atol=1e-5)
    w = torch.randn(model.cfg.d_model, generator=g)
    table = rank_neurons(model, w, chance_draws=0).table.sort_values(["layer", "neuron"])
    want = torch.nn.functional.cosine_similarity(V.reshape(-1, V.shape[-1]), w[None], dim=-1)
    np.testing.assert_allclose(table["cosine"], want.numpy(), atol=1e-5)
    raw = torch.stack([b.mlp.W_out.detach() for b in model.blocks]).reshape(-1, V.shape[-1])
    assert not np.allclose(table["cosine"], torch.nn.functional.cosine_similarity(raw, w[None], dim=-1).numpy(),
                           atol=1e-2)
    top = rank_neurons(model, w, chance_draws=0).top(3)
    lens = decode_neurons(model, top, 3)["tokens"].tolist()
    from mechtox.neurons import logit_lens

    assert lens == [" | ".join(repr(t)[1:-1] for t in toks)
                    for toks in logit_lens(model, torch.stack([V[int(r.layer), int(r.neuron)] for r in top.itertuples()]), 3)]

