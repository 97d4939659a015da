"""The causal check of a neuron ranking and its agreement numbers, against direct computations."""

import numpy as np
import pandas as pd
import pytest

from mechtox import validation
from mechtox.evaluate import toxicity
from mechtox.interventions import ablate
from mechtox.validation import agreement, causal_validation

PROMPTS = ["you are a stupid", "thanks for the", "the river and the city", "shut up you", "my friend is"]


class LetterScorer:
    """A deterministic score that ablations move: the share of letters 'e' in the continuation."""

    name = "e-share"

    def __call__(self, texts):
        return np.array([t.count("e") / max(1, len(t)) for t in texts])


def test_drop_is_base_minus_ablated_and_random_draws_avoid_the_ranked_neurons(rich, monkeypatch):
    top = pd.DataFrame({"layer": [0] * 60 + [1] * 60, "neuron": list(range(60)) * 2})
    seen = []
    real = validation.random_like

    def spy(neurons, d_mlp, seed, exclude=None):
        out = real(neurons, d_mlp, seed, exclude)
        seen.append(out)
        return out

    monkeypatch.setattr(validation, "random_like", spy)
    res = causal_validation(rich, {"r": top}, PROMPTS, LetterScorer(), ks=(120,), random_ks=(120,), draws=2,
                            max_new_tokens=6, progress=False)
    base = toxicity(rich, PROMPTS, LetterScorer(), max_new_tokens=6, progress=False).mean
    ablated = toxicity(rich, PROMPTS, LetterScorer(), ablate(top), max_new_tokens=6, progress=False).mean
    row = res.table.iloc[0]
    assert row["drop"] == pytest.approx(base - ablated, abs=1e-12) and base != ablated
    assert len(seen) == 2
    assert repr(res).startswith(f"AblationComparison({len(res.table)} ablations against the unablated model (")
    assert "<table" in res._repr_html_()
    ranked = set(map(tuple, top.to_numpy().tolist()))
    for rnd in seen:
        assert not set(map(tuple, rnd[["layer", "neuron"]].to_numpy().tolist())) & ranked
    drops = []
    for rnd in seen:
        drops.append(base - toxicity(rich, PROMPTS, LetterScorer(), ablate(rnd), max_new_tokens=6, progress=False).mean)
    assert row["random_drop_mean"] == pytest.approx(np.mean(drops), abs=1e-12)


def test_a_random_baseline_that_cannot_be_drawn_fails_before_any_generation(rich, monkeypatch):
    from mechtox.errors import MechtoxError

    def no_generation(*a, **k):
        raise AssertionError("generated before the random baseline was checked")

    monkeypatch.setattr(validation, "toxicity", no_generation)
    top = pd.DataFrame({"layer": [0] * 70 + [1] * 10, "neuron": list(range(70)) + list(range(10))})  # d_mlp 128
    with pytest.raises(MechtoxError, match="70 of them are in layer 0, which has only 58 other neurons"):
        causal_validation(rich, {"r": top}, PROMPTS, LetterScorer(), ks=(80,), random_ks=(80,), progress=False)


def test_agreement_overlap_and_spearman_by_hand():
    a = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "cosine": [0.9, 0.5, 0.2, 0.1]})
    b = pd.DataFrame({"layer": [0, 1, 0, 1], "neuron": [0, 0, 1, 1], "cosine": [0.8, 0.7, 0.1, 0.0]})
    row = agreement({"a": a, "b": b}, k=2).iloc[0]
    assert row["overlap@2"] == 0.5  # {(0,0),(0,1)} and {(0,0),(1,0)} share one neuron of 2
    # ranks by neuron (0,0),(0,1),(1,0),(1,1): a = 4,3,2,1; b = 4,2,3,1 -> rho = 1 - 6*2/(4*15) = 0.8
    assert row["spearman"] == pytest.approx(0.8)
