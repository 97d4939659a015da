"""Bad input to the Python API (what a notebook user passes by hand) is a MechtoxError that says what
to pass, not a silent misfit or an error from deep inside scikit-learn, the tokenizer or torch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mechtox as mt
from mechtox.data import LabelledTexts
from mechtox.errors import MechtoxError

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture()
def xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 16)), np.array([0, 1] * 20)


@pytest.mark.parametrize("change, match", [
    (lambda X, y: (X, y[:30]), "X has 40 rows but there are 30 labels"),
    (lambda X, y: (X[:, :, None], y), "X must be 2-D"),
    (lambda X, y: (X, y * 2), "labels must be 0 or 1"),
    (lambda X, y: (X, np.where(np.arange(40) == 5, np.nan, y)), "labels must be 0 or 1"),
])
def test_fit_probe_refuses_misaligned_or_non_binary_data(xy, change, match):
    X, y = change(*xy)
    with pytest.raises(MechtoxError, match=match):
        mt.fit_probe(X, y, HOOK)


@pytest.mark.parametrize("kw, match", [
    ({"C": -1.0}, "C must be a positive number or 'cv'"),
    ({"C": 0}, "C must be a positive number"),
    ({"C": float("inf")}, "C must be a positive number"),
    ({"C": "auto"}, "C must be a positive number or 'cv'"),
    ({"method": "forest"}, "unknown probe method 'forest'; use logreg, diffmean, svm"),
    ({"text_index": np.zeros(39, dtype=int)}, r"text_index needs one text number in \[0, 40\) per row of X \(40\)"),
    ({"text_index": np.full(40, 40)}, "text_index needs one text number"),
])
def test_fit_probe_refuses_bad_settings(xy, kw, match):
    with pytest.raises(MechtoxError, match=match):
        mt.fit_probe(*xy, HOOK, **kw)


def test_fit_probe_takes_labels_as_floats_or_bools(xy):
    """The checks accept what is valid: 0./1. floats and booleans give the probe of the int labels."""
    X, y = xy
    ref = mt.fit_probe(X, y, HOOK)
    for labels in (y.astype(float), y.astype(bool), y.tolist()):
        assert torch.equal(mt.fit_probe(X, labels, HOOK).vector, ref.vector)


@pytest.mark.parametrize("texts, labels, match", [
    (["a", "b"], [1], "2 texts but 1 labels"),
    (["a", "b"], [1, float("nan")], "row 1 has nan"),
    (["a", "b"], [0, 0.7], "row 1 has 0.7"),
    (["a", "b"], ["toxic", 0], "labels must be numbers 0 or 1"),
    ("ab", [0, 1], "needs a list of strings"),
    (["a", 3], [0, 1], "needs a list of strings"),
])
def test_labelled_texts_built_by_hand_are_checked(texts, labels, match):
    with pytest.raises(MechtoxError, match=match):
        LabelledTexts(texts, labels, "by hand")


def test_labelled_texts_store_int_labels():
    data = LabelledTexts(["a", "b", "c"], [1.0, 0.0, True], "by hand")
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [1, 0, 1]
    assert data.subset([2, 1]).labels.tolist() == [1, 0]


def test_tokenize_one_string_is_one_text_and_nothing_is_an_error(tiny):
    one = mt.tokenize(tiny, "the cat sat")
    assert torch.equal(one.tokens, mt.tokenize(tiny, ["the cat sat"]).tokens)
    assert one.tokens.shape[0] == 1
    acts = mt.collect_activations(tiny, "the cat sat", [HOOK], progress=False)
    assert acts[HOOK].shape[0] == 1
    with pytest.raises(MechtoxError, match="no texts to tokenize"):
        mt.tokenize(tiny, [])
    with pytest.raises(MechtoxError, match="texts must be strings; got a int"):
        mt.tokenize(tiny, ["fine", 7])


def test_logit_lens_checks_the_vectors_width_and_takes_one_vector(tiny):
    v = tiny.W_U[:, 5].detach()
    assert mt.logit_lens(tiny, v, k=3) == mt.logit_lens(tiny, v[None], k=3)
    assert mt.logit_lens(tiny, v.tolist(), k=3) == mt.logit_lens(tiny, v[None], k=3)
    with pytest.raises(MechtoxError, match=r"d_model \(64\), not of shape \(2, 7\)"):
        mt.logit_lens(tiny, torch.randn(2, 7))


def test_decode_neurons_takes_a_ranking_or_pairs_and_checks_them(tiny):
    pairs = [(1, 3), (0, 7)]
    table = pd.DataFrame(pairs, columns=["layer", "neuron"])
    ref = mt.decode_neurons(tiny, table, k=3)
    assert mt.decode_neurons(tiny, pairs, k=3)["tokens"].tolist() == ref["tokens"].tolist()
    ranking = mt.rank_neurons(tiny, torch.randn(tiny.cfg.d_model))
    assert len(mt.decode_neurons(tiny, ranking, k=2)) == tiny.cfg.n_layers * tiny.cfg.d_mlp
    with pytest.raises(MechtoxError, match=r"neuron \(2, 0\) is outside the model \(2 layers of 128 neurons\)"):
        mt.decode_neurons(tiny, [(2, 0)])
    with pytest.raises(MechtoxError, match=r"neuron \(0, 128\) is outside"):
        mt.decode_neurons(tiny, [(0, 128)])
    with pytest.raises(MechtoxError, match="no layer or neuron column"):
        mt.decode_neurons(tiny, pd.DataFrame({"a": [1]}))
    with pytest.raises(MechtoxError, match=r"or \(layer, neuron\) pairs"):
        mt.decode_neurons(tiny, [1, 2])
