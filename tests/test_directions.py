import numpy as np
import pandas as pd
import pytest
import torch

from mechtox.activations import collect_activations
from mechtox.data import encode
from mechtox.directions import (
    activation_contrast,
    final_resid_hook,
    generation_diffmean_direction,
    gradient_direction,
    metric_scale,
    outlier_dims,
    token_log_odds,
    token_sets,
    unembedding_direction,
    words_to_tokens,
)
from mechtox.errors import MechtoxError
from mechtox.generation import Generations
from mechtox.neurons import rank_neurons, unembed_basis
from mechtox.probe import fit_probe
from mechtox.validation import agreement, precision_at_k

from .conftest import BAD_WORDS, GOOD_WORDS, synthetic_labelled

BAD, GOOD = BAD_WORDS, GOOD_WORDS


def labelled(n=200, seed=0):
    return synthetic_labelled(n, seed)


@pytest.fixture
def planted(tiny_llama):
    """Neuron (1, 5) fires on toxic tokens and writes the toxic unembedding direction."""
    m = tiny_llama
    tok = m.tokenizer
    bad = [tok.convert_tokens_to_ids(w) for w in BAD]
    good = [tok.convert_tokens_to_ids(w) for w in GOOD]
    B = unembed_basis(m)
    u = B[:, bad].mean(1) - B[:, good].mean(1)
    u = u / u.norm()
    g = torch.Generator().manual_seed(1)
    e = torch.randn(m.cfg.d_model, generator=g)
    e = e / e.norm()
    with torch.no_grad():
        m.W_E[bad] += 4.0 * e
        m.blocks[1].mlp.W_in[:, 5] = 3.0 * e
        m.blocks[1].mlp.W_gate[:, 5] = 3.0 * e
        m.blocks[1].mlp.W_out[5] = 6.0 * u
    return m, bad, good


def top_neuron(model, direction, **kw):
    r = rank_neurons(model, direction, chance_draws=0, **kw)
    return tuple(r.table.iloc[0][["layer", "neuron"]].astype(int)), r


def test_token_log_odds_finds_toxic_tokens(tiny_llama):
    stats = token_log_odds(tiny_llama, labelled(), min_docs=3)
    top = set(stats["token"].head(6))
    assert top == set(BAD)
    assert set(stats["token"].tail(6)) == set(GOOD)
    row = stats.iloc[0]
    assert row["toxic_docs"] > 0 and row["nontoxic_docs"] == 0 and row["z"] > 2
    sets = token_sets(stats, k=6)
    assert repr(sets) == f"TokenSets({len(sets.toxic)} toxic and {len(sets.nontoxic)} non-toxic token ids)"
    assert sets.strings(tiny_llama) and len(sets.toxic) == len(sets.nontoxic) == 6
    with pytest.raises(MechtoxError, match="pass the count and log-odds filters"):
        token_sets(stats, k=1000)


def test_words_to_tokens(tiny_llama):
    ids = words_to_tokens(tiny_llama, ["idiot", "moron"])
    assert tiny_llama.tokenizer.convert_tokens_to_ids("idiot") in ids


def test_unembedding_direction_finds_planted_neuron(planted):
    m, bad, good = planted
    from mechtox.directions import TokenSets

    d = unembedding_direction(m, TokenSets(bad, good))
    assert d.hook_name == final_resid_hook(m) and d.method == "unembed"
    (layer, neuron), r = top_neuron(m, d)
    assert (layer, neuron) == (1, 5)
    assert precision_at_k(m, r.table, bad, k=1, lens_k=6) == 1.0


def test_probe_finds_planted_neuron(planted):
    m, *_ = planted
    data = labelled()
    h = final_resid_hook(m)
    acts = collect_activations(m, data.texts, [h], progress=False)[h]
    p = fit_probe(acts, data.labels, h, method="diffmean")
    assert top_neuron(m, p)[0] == (1, 5)


class WordScorer:
    """1 for a text with a toxic word of the tiny vocabulary, else 0."""

    name = "words"

    def __call__(self, texts):
        return np.array([1.0 if any(b in t for b in BAD) else 0.0 for t in texts])


def fixed_generations(m):
    """Three toxic and three non-toxic 'generated' continuations."""
    prompts = ["the city is", "you are a", "the day is", "so very", "a book and", "the music"]
    conts = ["stupid idiot", "moron loser", "jerk trash", "nice friend", "thanks help", "good book"]
    p_ids, c_ids = encode(m, prompts), encode(m, conts)
    return prompts, p_ids, c_ids, Generations(prompts, conts, p_ids, c_ids)


def test_generation_diffmean_matches_hand_computation_and_finds_neuron(planted):
    m, bad, good = planted
    prompts, p_ids, c_ids, gens = fixed_generations(m)
    d = generation_diffmean_direction(m, prompts, WordScorer(), generations=gens, progress=False)
    h = final_resid_hook(m)
    means = []
    for p, c in zip(p_ids, c_ids, strict=True):
        _, cache = m.run_with_cache(torch.tensor([p + c]), names_filter=h)
        means.append(cache[h][0, len(p):].mean(0))
    ref = torch.stack(means[:3]).mean(0) - torch.stack(means[3:]).mean(0)
    torch.testing.assert_close(d.vector, ref / ref.norm(), atol=1e-5, rtol=1e-4)
    assert d.provenance["n_toxic"] == 3
    assert top_neuron(m, d)[0] == (1, 5)


def test_activation_contrast_matches_hand_computation_and_ranks_planted_neuron_first(planted):
    m, bad, good = planted
    prompts, p_ids, c_ids, gens = fixed_generations(m)
    c = activation_contrast(m, prompts, WordScorer(), generations=gens, progress=False)
    assert (c.n_toxic, c.n_nontoxic) == (3, 3)
    h = "blocks.1.mlp.hook_post"
    means = []
    for p, q in zip(p_ids, c_ids, strict=True):
        _, cache = m.run_with_cache(torch.tensor([p + q]), names_filter=h)
        means.append(cache[h][0, len(p):].mean(0))
    torch.testing.assert_close(c.toxic[1], torch.stack(means[:3]).mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c.diff[1], torch.stack(means[:3]).mean(0) - torch.stack(means[3:]).mean(0),
                               atol=1e-5, rtol=1e-4)
    u = unembedding_direction(m, token_sets_for(bad, good))
    r = rank_neurons(m, u, mean_acts=c.diff, chance_draws=0)
    top = r.table.sort_values("act_proj", ascending=False).iloc[0]
    assert (int(top.layer), int(top.neuron)) == (1, 5)
    # the neuron's sign is respected: flipping its output AND its activation keeps it on top
    with torch.no_grad():
        m.blocks[1].mlp.W_out[5] *= -1
        m.blocks[1].mlp.W_in[:, 5] *= -1
    c2 = activation_contrast(m, prompts, WordScorer(), generations=gens, progress=False)
    assert float(c2.diff[1, 5]) < 0
    r2 = rank_neurons(m, u, mean_acts=c2.diff, chance_draws=0)
    top2 = r2.table.sort_values("act_proj", ascending=False).iloc[0]
    assert (int(top2.layer), int(top2.neuron)) == (1, 5)
    assert r2.table.set_index(["layer", "neuron"]).loc[(1, 5), "cosine"] < 0  # cosine ranking would put it last


def token_sets_for(bad, good):
    from mechtox.directions import TokenSets

    return TokenSets(list(bad), list(good))


def test_gradient_direction_finds_planted_neuron(planted):
    m, bad, good = planted
    texts = labelled(40).texts
    d = gradient_direction(m, texts, toxic_ids=bad, progress=False)
    (layer, neuron), r = top_neuron(m, d)
    assert (layer, neuron) == (1, 5)
    assert d.provenance["objective"] == "toxic_tokens"
    # the probe objective runs too, and needs a probe
    with pytest.raises(MechtoxError, match="needs a probe"):
        gradient_direction(m, texts, objective="probe")


def test_outlier_dims_finds_planted_massive_dimension(tiny_llama):
    with torch.no_grad():
        tiny_llama.blocks[0].mlp.b_out[7] = 500.0  # every token gets a massive dim 7 from layer 0 on
    df = outlier_dims(tiny_llama, labelled(20).texts, progress=False)
    assert set(df["dim"]) == {7} and set(df["layer"]) == {0, 1}
    assert (df["ratio"] > 20).all() and (df["frac_tokens"] > 0.99).all()


def test_metric_scale_keeps_dots_and_removes_outlier(tiny_llama):
    m = tiny_llama
    w = torch.randn(m.cfg.d_model)
    r_raw = rank_neurons(m, w, chance_draws=0)
    s = metric_scale(m, "whitened", labelled(20).texts, progress=False)
    r_w = rank_neurons(m, w, chance_draws=0, scale=s)
    a = r_raw.table.set_index(["layer", "neuron"]).sort_index()
    b = r_w.table.set_index(["layer", "neuron"]).sort_index()
    np.testing.assert_allclose(a["dot"], b["dot"], rtol=1e-5)
    assert metric_scale(m, "raw") is None
    fn = metric_scale(m, "final_norm")
    torch.testing.assert_close(fn, 1 / m.ln_final.w.detach().abs().clamp_min(1e-3))
    # a scale that shrinks dimension 0 makes a vector living there look orthogonal
    with torch.no_grad():
        m.blocks[0].mlp.W_out[0] = 0
        m.blocks[0].mlp.W_out[0, 0] = 1.0
        m.blocks[0].mlp.W_out[0, 1] = 0.01
    w2 = torch.zeros(m.cfg.d_model)
    w2[1] = 1
    big = torch.ones(m.cfg.d_model)
    big[0] = 1000.0
    raw = rank_neurons(m, w2, chance_draws=0).table.query("layer == 0 and neuron == 0")["cosine"].item()
    scaled = rank_neurons(m, w2, chance_draws=0, scale=big).table.query("layer == 0 and neuron == 0")["cosine"].item()
    assert raw < 0.02 and scaled > 0.99


def test_precision_at_k_on_constructed_case(tiny_llama):
    m = tiny_llama
    B = unembed_basis(m)
    target = m.tokenizer.convert_tokens_to_ids("idiot")
    with torch.no_grad():
        m.blocks[0].mlp.W_out[3] = 50 * B[:, target] / B[:, target].norm()
        m.blocks[0].mlp.W_out[4] = -50 * B[:, target] / B[:, target].norm()
    table = pd.DataFrame({"layer": [0, 0], "neuron": [3, 4]})
    assert precision_at_k(m, table, [target], k=2, lens_k=1) == 0.5
    assert precision_at_k(m, table, [target], k=1, lens_k=1) == 1.0


def test_agreement():
    a = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "cosine": [0.4, 0.3, 0.2, 0.1]})
    b = pd.DataFrame({"layer": [0, 1, 0, 1], "neuron": [0, 0, 1, 1], "cosine": [0.9, 0.5, 0.2, 0.1]})
    df = agreement({"a": a, "b": b}, k=2)
    assert df["overlap@2"].item() == 0.5
    assert df["spearman"].item() == pytest.approx(0.8)


def test_unembed_metric_is_logit_zscore(tiny_llama):
    """With the unembedding metric, cos(v, w) with the vocabulary-baseline direction equals the
    z-score of the toxic tokens' mean logit among the logits v writes (up to a constant)."""
    from mechtox.directions import TokenSets

    m = tiny_llama
    tox = [m.tokenizer.convert_tokens_to_ids(w) for w in BAD]
    d = unembedding_direction(m, TokenSets(tox, tox[:1]), baseline="vocab")
    M = metric_scale(m, "unembed")
    r = rank_neurons(m, d, chance_draws=0, scale=M).table.set_index(["layer", "neuron"]).sort_index()
    B = unembed_basis(m).double()
    V = torch.stack([b.mlp.W_out.detach() for b in m.blocks]).double().reshape(-1, m.cfg.d_model)
    logits = V @ B
    z = (logits[:, tox].mean(1) - logits.mean(1)) / logits.std(1, unbiased=False)
    ratio = torch.tensor(r["cosine"].to_numpy()) / z
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)



def test_word_spans_and_toxic_word_mask(tiny_llama):
    from mechtox.directions import toxic_word_mask, word_spans

    m = tiny_llama
    ids = encode(m, ["the stupid day"], prepend_bos=False)[0]
    spans = word_spans(m, ids)
    assert [w for _, w in spans] == ["the", "stupid", "day"]
    mask = toxic_word_mask(m, ids, WordScorer())
    assert mask.tolist() == [w == "stupid" for pos, w in spans for _ in pos]


def test_copy_stats_counts_repeated_prompt_words():
    from mechtox.directions import copy_stats

    gens = Generations(["you stupid", "the day", "a city"], ["stupid idiot", "moron", "nice"], [[1]] * 3, [[1]] * 3)
    c = copy_stats(gens, [0, 1, 2], WordScorer())
    assert (c.n_toxic, c.n_flagged, c.n_copied) == (3, 2, 1)
    assert c.copied_share == 0.5


def test_unflagged_prompts_keeps_prompts_without_a_flagged_word_in_one_scorer_call():
    from mechtox.directions import unflagged_prompts

    calls = []

    class Counting(WordScorer):
        def __call__(self, texts):
            calls.append(len(texts))
            return super().__call__(texts)

    prompts = ["you stupid", "the day", "", "a city of morons", "nice", "idiot"]
    assert unflagged_prompts(prompts, Counting()) == [1, 2, 4]
    assert calls == [10]  # every word of every prompt at once
    assert unflagged_prompts(["", "..."], Counting()) == [0, 1]
    assert calls == [10]  # no words, no call


def test_neuron_attribution_is_the_first_order_ablation_effect_and_finds_planted_neuron(planted):
    """The score of a neuron equals d/d(alpha) of the objective with the neuron's activation set
    to r + alpha * (a - r), at alpha = 1 (checked by autograd on a scaling hook)."""
    from mechtox.directions import neuron_attribution

    m, bad, good = planted
    with torch.no_grad():  # out of saturation: at full strength the toxic tokens' log-probs are already ~0
        m.blocks[1].mlp.W_out[5] *= 0.01
    prompts, p_ids, c_ids, gens = fixed_generations(m)
    ref = torch.randn(m.cfg.n_layers, m.cfg.d_mlp) * 0.1
    att = neuron_attribution(m, gens, [0, 1, 2], WordScorer(), reference=ref, progress=False)
    assert att.n_sequences == 3 and att.n_tokens == sum(len(c) for c in c_ids[:3])
    assert tuple(att.table().iloc[0][["layer", "neuron"]].astype(int)) == (1, 5)
    for layer, n in [(1, 5), (0, 3), (1, 17)]:
        total = 0.0
        for i in range(3):
            alpha = torch.ones((), requires_grad=True)

            def scale(act, hook, n=n, layer=layer, alpha=alpha):
                r = ref[layer, n]
                act = act.clone()
                act[..., n] = r + alpha * (act[..., n] - r)
                return act

            toks = torch.tensor([p_ids[i] + c_ids[i]])
            logits = m.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", scale)])
            logp = logits[0, :-1].log_softmax(-1).gather(-1, toks[0, 1:, None])[:, 0]
            (g,) = torch.autograd.grad(logp[len(p_ids[i]) - 1:].sum(), alpha)
            total += float(g)
        assert float(att.scores[layer, n]) == pytest.approx(total / 3, rel=1e-3, abs=1e-5)
    assert all(p.requires_grad for p in m.parameters())  # restored
    with pytest.raises(MechtoxError, match="flags"):
        neuron_attribution(m, gens, [3, 4, 5], WordScorer(), progress=False)


def test_attribution_can_leave_out_words_copied_from_the_prompt(planted):
    from mechtox.directions import neuron_attribution

    m, bad, good = planted
    prompts = ["you stupid", "the moron", "a jerk day"]
    conts = ["stupid idiot", "moron loser", "jerk trash"]
    p_ids, c_ids = encode(m, prompts), encode(m, conts)
    gens = Generations(prompts, conts, p_ids, c_ids)
    full = neuron_attribution(m, gens, [0, 1, 2], WordScorer(), progress=False)
    kept = neuron_attribution(m, gens, [0, 1, 2], WordScorer(), skip_copied=True, progress=False)
    copied = sum(len(encode(m, [w])[0]) for w in ["stupid", "moron", "jerk"])
    assert full.n_tokens == sum(len(c) for c in c_ids) and kept.n_tokens == full.n_tokens - copied
    assert not torch.allclose(full.scores, kept.scores)
    only_copies = Generations(["you stupid"], ["stupid"], encode(m, ["you stupid"]), encode(m, ["stupid"]))
    with pytest.raises(MechtoxError, match="not copied from its prompt"):
        neuron_attribution(m, only_copies, [0], WordScorer(), skip_copied=True, progress=False)


def test_rerank_by_attribution_keeps_the_cosine_top_and_orders_it_by_score():
    from mechtox.directions import NeuronAttribution, rerank_by_attribution

    scores = torch.tensor([[0.5, -1.0, 2.0], [0.1, 3.0, 0.0]])
    att = NeuronAttribution(scores, torch.tensor([[1.0, 2.0, -3.0], [4.0, 5.0, 6.0]]), 2, 7)
    assert repr(att) == "NeuronAttribution(2 layers x 3 neurons over 2 continuations, 7 toxic-word tokens; top L1 N1 score 3)"
    table = pd.DataFrame({"layer": [0, 1, 0, 1, 0, 1], "neuron": [1, 0, 0, 2, 2, 1],
                          "cosine": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "rank": range(6)})
    out = rerank_by_attribution(table, att, top_n=4)
    # (0,1) has a negative score, (1,2) zero; (0,2) and (1,1) are beyond the cosine top 4
    assert list(zip(out.layer, out.neuron, strict=True)) == [(0, 0), (1, 0)]
    assert out.score.tolist() == pytest.approx([0.5, 0.1]) and out.mean_act.tolist() == [1.0, 4.0]
    assert out.cosine_rank.tolist() == [2, 1] and out["rank"].tolist() == [0, 1]
    assert list(zip(*[rerank_by_attribution(table, att, 6)[c] for c in ("layer", "neuron")], strict=True)) == [(1, 1), (0, 2), (0, 0), (1, 0)]
    with pytest.raises(MechtoxError, match="top_n"):
        rerank_by_attribution(table, att, 0)


def plant_lens_token(m, token: str, neurons: dict[tuple[int, int], float]) -> int:
    """Set ``W_out[l, i] = scale * (unit unembedding of token)`` for each ``(l, i): scale``; the token id."""
    B = unembed_basis(m)
    target = m.tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        for (layer, n), scale in neurons.items():
            m.blocks[layer].mlp.W_out[n] = scale * B[:, target] / B[:, target].norm()
    return target


def test_signed_precision_uses_the_activation_sign(tiny_llama):
    m = tiny_llama
    target = plant_lens_token(m, "idiot", {(0, 4): -50})
    table = pd.DataFrame({"layer": [0], "neuron": [4], "mean_act": [-2.0]})
    assert precision_at_k(m, table, [target], k=1, lens_k=1) == 0.0
    assert precision_at_k(m, table, [target], k=1, lens_k=1, signed=True) == 1.0
    with pytest.raises(MechtoxError, match="mean_act"):
        precision_at_k(m, table.drop(columns="mean_act"), [target], k=1, signed=True)


def test_goal_check():
    from mechtox.validation import goal_check

    ok = goal_check(0.6, 0.09, 0.01, 0.02, 39.0, 38.0)
    assert ok == {"precise": True, "causal": True, "specific": True, "goal": True}
    # a random baseline below zero does not let a drop within its spread pass
    assert not goal_check(0.6, 0.05, -0.03, 0.03, 39.0, 38.0)["causal"]
    # a drop bought with a broken model is not specific
    assert goal_check(0.6, 0.2, 0.0, 0.01, 90.0, 38.0) == {"precise": True, "causal": True, "specific": False,
                                                            "goal": False}
    assert not goal_check(0.45, 0.2, 0.0, 0.01, 38.0, 38.0)["goal"]


def test_ratio_vs_random_uses_the_spread_when_the_random_mean_is_not_positive():
    from mechtox.validation import _ratio

    assert _ratio(0.09, [0.01, 0.02, 0.03]) == pytest.approx(0.09 / 0.02)
    assert _ratio(0.08, [-0.04, -0.03, -0.02]) == pytest.approx(0.08 / 0.01)
    assert np.isnan(_ratio(0.08, [-0.02]))


def test_token_scores_are_per_toxic_token(planted):
    from mechtox.directions import neuron_attribution

    m, bad, good = planted
    prompts, p_ids, c_ids, gens = fixed_generations(m)
    one = neuron_attribution(m, gens, [0], WordScorer(), progress=False)
    assert torch.allclose(one.token_scores, one.scores / one.n_tokens)
    both = neuron_attribution(m, gens, [0, 1], WordScorer(), progress=False)
    per = [neuron_attribution(m, gens, [i], WordScorer(), progress=False).token_scores for i in (0, 1)]
    assert torch.allclose(both.token_scores, (per[0] + per[1]) / 2, atol=1e-6)


def test_benign_attribution_is_the_per_token_first_order_ablation_effect(tiny_llama):
    """Equals d/d(alpha) of the mean log-prob of the text's tokens with the neuron's activation
    scaled by alpha, at alpha = 1 (zero ablation is alpha = 0)."""
    from mechtox.directions import benign_attribution

    m = tiny_llama
    rng = np.random.default_rng(0)
    text = " ".join(rng.choice(GOOD + ["the", "a", "day", "city"], 200))
    ids = encode(m, [text], prepend_bos=False)[0]
    got = benign_attribution(m, text, n_tokens=40, start=5, window=11, batch_size=3, progress=False)
    assert all(p.requires_grad for p in m.parameters())  # restored
    bos = [m.tokenizer.bos_token_id] if m.cfg.default_prepend_bos else []
    step = 11 - len(bos)
    chunks = [bos + ids[5 + i: 5 + i + step] for i in range(0, 40 - step + 1, step)]  # whole chunks only
    for layer, n in [(0, 3), (1, 17)]:
        alpha = torch.ones((), requires_grad=True)

        def scale(act, hook, n=n, alpha=alpha):
            act = act.clone()
            act[..., n] = alpha * act[..., n].clone()
            return act

        toks = torch.tensor(chunks)
        logits = m.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", scale)])
        logp = logits[:, :-1].log_softmax(-1).gather(-1, toks[:, 1:, None])[..., 0]
        (g,) = torch.autograd.grad(logp.mean(), alpha)
        assert float(got[layer, n]) == pytest.approx(float(g), rel=1e-3, abs=1e-6)
    with pytest.raises(MechtoxError, match="fewer than"):
        benign_attribution(m, "the day", start=0, window=64, progress=False)


def test_specific_scores_subtract_only_what_ordinary_text_needs():
    from mechtox.directions import NeuronAttribution

    att = NeuronAttribution(torch.tensor([[9.0, 9.0, 9.0]]), torch.zeros(1, 3), 2, 4, torch.tensor([[0.5, 0.2, -0.1]]))
    spec = att.specific(torch.tensor([[0.1, 0.4, -0.3]]))
    # benign use 0.1 and 0.4 are subtracted; a neuron whose ablation would help ordinary text is not rewarded
    assert spec.scores.tolist()[0] == pytest.approx([0.4, -0.2, -0.1])
    assert spec.n_tokens == 4 and torch.equal(spec.token_scores, att.token_scores)
    with pytest.raises(MechtoxError, match="same model"):
        att.specific(torch.zeros(2, 3))
    with pytest.raises(MechtoxError, match="per-token"):
        NeuronAttribution(att.scores, att.mean_act, 2, 4).specific(torch.zeros(1, 3))


def test_toxic_lens_neurons_read_the_value_vector_with_the_activation_sign(tiny_llama):
    from mechtox.directions import NeuronAttribution, rerank_by_attribution, toxic_lens_neurons

    m = tiny_llama
    target = plant_lens_token(m, "idiot", {(0, 4): -50, (1, 7): 50})
    mean_act = torch.ones(m.cfg.n_layers, m.cfg.d_mlp)
    found = set(zip(*[toxic_lens_neurons(m, [target], mean_act, lens_k=1, chunk=7)[c] for c in ("layer", "neuron")],
                    strict=True))
    assert (1, 7) in found and (0, 4) not in found
    mean_act[0, 4] = -2.0
    cands = toxic_lens_neurons(m, [target], mean_act, lens_k=1)
    found = set(zip(cands.layer, cands.neuron, strict=True))
    assert {(0, 4), (1, 7)} <= found
    assert precision_at_k(m, cands, [target], k=len(cands), lens_k=1, signed=True) == 1.0
    scores = torch.zeros(m.cfg.n_layers, m.cfg.d_mlp)
    scores[1, 7], scores[0, 4] = 0.5, 2.0
    out = rerank_by_attribution(cands, NeuronAttribution(scores, mean_act, 1, 1), None)
    assert list(zip(out.layer, out.neuron, strict=True)) == [(0, 4), (1, 7)] and "cosine_rank" not in out
    with pytest.raises(MechtoxError, match="empty"):
        toxic_lens_neurons(m, [], mean_act)
    with pytest.raises(MechtoxError, match="shape"):
        toxic_lens_neurons(m, [target], mean_act[:1])


# ----------------------------------------------------------------------------- conditions


def test_token_scores_and_mean_act_on_continuations_mixing_toxic_and_other_words(planted):
    from mechtox.directions import neuron_attribution

    m, bad, good = planted
    prompts = ["the city is", "you are a"]
    conts = ["the stupid city and idiot", "a moron day"]
    p_ids, c_ids = encode(m, prompts), encode(m, conts)
    gens = Generations(prompts, conts, p_ids, c_ids)
    both = neuron_attribution(m, gens, [0, 1], WordScorer(), progress=False)
    singles = [neuron_attribution(m, gens, [i], WordScorer(), progress=False) for i in (0, 1)]
    assert [s.n_tokens for s in singles] == [2, 1] and both.n_tokens == 3  # of 5 and 3 tokens
    expected = (singles[0].scores / 2 + singles[1].scores / 1) / 2
    torch.testing.assert_close(both.token_scores, expected, atol=1e-6, rtol=1e-5)
    # mean_act: at the positions that PREDICT a toxic-word token, over all of them
    acts = []
    for p, c in zip(p_ids, c_ids, strict=True):
        _, cache = m.run_with_cache(torch.tensor([p + c]))
        for j, t in enumerate(c):
            if t in bad:
                acts.append(torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0, len(p) - 1 + j] for l in range(2)]))
    assert len(acts) == 3
    torch.testing.assert_close(both.mean_act, torch.stack(acts).mean(0).detach(), atol=1e-5, rtol=1e-4)


def test_gradient_direction_equals_per_text_gradients_over_real_tokens(rich):
    texts = ["you stupid idiot", "the city river and the book is nice", "thanks"]
    tox = [rich.tokenizer.convert_tokens_to_ids(w) for w in BAD]
    # a middle layer: a pad position's objective would reach real positions through block 1's attention
    h = "blocks.0.hook_resid_post"
    d = gradient_direction(rich, texts, h, toxic_ids=tox, batch_size=3, progress=False)
    total, n = torch.zeros(rich.cfg.d_model), 0
    for ids in encode(rich, texts):  # one unpadded text at a time
        store = {}

        def grab(act, hook, store=store):
            act.retain_grad()
            store["a"] = act
            return act

        logits = rich.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(h, grab)])
        logits.log_softmax(-1)[0][:, tox].logsumexp(-1).sum().backward()
        total += store["a"].grad[0].sum(0)
        n += len(ids)
        rich.zero_grad(set_to_none=True)
    ref = total / n
    torch.testing.assert_close(d.vector, ref / ref.norm(), atol=1e-5, rtol=1e-4)
    assert d.provenance["n_tokens"] == n


def test_token_log_odds_and_sets_by_hand(tiny):
    data = labelled(120, seed=2)
    stats = token_log_odds(tiny, data, min_docs=5)
    ids = encode(tiny, data.texts, prepend_bos=False)
    n_t, n_n = int(data.labels.sum()), int((1 - data.labels).sum())
    row = stats.iloc[0]
    t = int(row.token_id)
    k_t = sum(t in set(x) for x, y in zip(ids, data.labels, strict=True) if y == 1)
    k_n = sum(t in set(x) for x, y in zip(ids, data.labels, strict=True) if y == 0)
    lo = np.log((k_t + 0.5) / (n_t - k_t + 0.5)) - np.log((k_n + 0.5) / (n_n - k_n + 0.5))
    assert (row.toxic_docs, row.nontoxic_docs) == (k_t, k_n)
    assert row.log_odds == pytest.approx(lo, rel=1e-9)
    sets = token_sets(stats, k=3, min_log_odds=1.0)
    neg = stats[stats.log_odds <= -1.0].sort_values("z")
    assert set(sets.nontoxic) == set(neg.token_id.head(3))  # the three most non-toxic by z
    pos = stats[stats.log_odds >= 1.0].sort_values("z", ascending=False)
    assert sets.toxic == pos.token_id.head(3).tolist()


def test_unembedding_direction_baselines_by_hand(rich):
    from mechtox.directions import TokenSets

    sets = TokenSets([10, 20, 30], [40, 50])
    with torch.no_grad():
        B = rich.W_U.detach() * rich.ln_final.w.detach()[:, None]
    for baseline, base in (("vocab", B.mean(1)), ("nontoxic", B[:, [40, 50]].mean(1))):
        d = B[:, [10, 20, 30]].mean(1) - base
        if rich.cfg.normalization_type == "LN":
            d = d - d.mean()
        got = unembedding_direction(rich, sets, baseline=baseline).vector
        torch.testing.assert_close(got, d / d.norm(), atol=1e-5, rtol=1e-4)


def test_split_generations_leaves_out_the_scores_between_the_thresholds(tiny):
    from mechtox.directions import split_generations

    scores = [0.9, 0.6, 0.3, 0.05, 0.0, 0.09, 0.5, 0.2, 0.01]

    class Fixed:
        name = "fixed"

        def __call__(self, texts):
            return np.array(scores)

    gens = Generations(["p"] * 9, ["c"] * 9, [[3]] * 9, [[4]] * 9)
    tox, non = split_generations(gens, Fixed(), 0.5, 0.1)
    assert tox == [0, 1, 6] and non == [3, 4, 5, 8]


def test_final_norm_metric_compares_vectors_as_the_norm_passes_them_on(rich):
    g = rich.ln_final.w.detach().float()
    assert g.std() > 0.1  # a norm weight that is not 1
    w = torch.randn(rich.cfg.d_model)
    r = rank_neurons(rich, w, scale=metric_scale(rich, "final_norm"), chance_draws=0).table.sort_values(["layer", "neuron"])
    V = torch.stack([b.mlp.W_out.detach() for b in rich.blocks]).reshape(-1, rich.cfg.d_model)
    gg = g.abs().clamp_min(1e-3)
    cos = torch.nn.functional.cosine_similarity(V * gg, (w / gg)[None], dim=-1)  # v as the norm scales it
    np.testing.assert_allclose(r["cosine"].to_numpy(), cos.numpy(), atol=1e-5)


def test_goal_check_no_drop_does_not_pass_a_zero_random_bar():
    from mechtox.validation import goal_check

    # random draws that never lower toxicity (mean -0.01, spread 0) set a bar of 0: a drop of 0 is no effect
    assert not goal_check(1.0, 0.0, -0.01, 0.0, 30.0, 30.0)["causal"]
    assert goal_check(1.0, 0.001, -0.01, 0.0, 30.0, 30.0)["causal"]
