import math

import numpy as np
import pandas as pd
import pytest
import torch

from mechtox.evaluate import EvalConfig, evaluate, f1, perplexity, toxicity, word_f1
from mechtox.interventions import NOOP, ablate

PROMPTS = ["you are a stupid", "thanks for the", "the river and the city", "shut up you"]


class CountScorer:
    """Scores a text by the share of 'toxic' words: deterministic and checkable."""

    name = "count"
    BAD = {"idiot", "stupid", "dumb", "moron", "shut", "hate", "ugly", "loser", "jerk", "fool", "trash", "damn", "hell", "crap", "awful"}

    def __call__(self, texts):
        return np.array([sum(w in self.BAD for w in t.split()) / max(1, len(t.split())) for t in texts])


def test_perplexity_is_exp_mean_nll(tiny):
    text = " ".join(["the river and the city is good"] * 10)
    res = perplexity(tiny, text, window=16, max_tokens=None, progress=False)
    from mechtox.data import encode

    ids = encode(tiny, [text])[0]
    chunks = [ids[i: i + 16] for i in range(0, len(ids), 16)]
    nll, n = 0.0, 0
    for c in chunks:
        if len(c) < 2:
            continue
        t = torch.tensor([c])
        logp = tiny(t).log_softmax(-1)[0, :-1].gather(-1, t[0, 1:, None])[:, 0]
        nll -= float(logp.detach().sum())
        n += len(c) - 1
    assert res["tokens"] == n
    assert res["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_word_f1():
    assert word_f1("the cat sat", "the cat sat") == 1.0
    assert word_f1("", "x") == 0.0
    assert word_f1("a b", "b c") == pytest.approx(0.5)


def test_toxicity_scores_continuations_alone(tiny):
    res = toxicity(tiny, PROMPTS, CountScorer(), max_new_tokens=6, progress=False)
    np.testing.assert_allclose(res.scores, CountScorer()(res.generations.continuations))
    assert res.mean == pytest.approx(res.scores.mean())
    assert repr(res) == (f"ToxicityResult({len(PROMPTS)} continuations scored by {res.scorer}: mean {res.mean:.3f}, "
                         f"{res.frac_toxic:.1%} above 0.5)")


def test_evaluate_table_under_interventions(tiny):
    neurons = pd.DataFrame({"layer": [0, 1], "neuron": [1, 2]})
    table, raw = evaluate(tiny, [NOOP, ablate(neurons)], PROMPTS, CountScorer(), text="the river and the city " * 20,
                          wiki=(PROMPTS, ["good day", "help", "is good", "you"]),
                          config=EvalConfig(max_new_tokens=5, ppl_tokens=100, ppl_window=16, f1_prompts=4), progress=False)
    assert list(table["intervention"]) == ["none", "ablate 2 neurons (zero)"]
    assert {"toxicity", "toxic_frac", "ppl", "f1"} <= set(table.columns)
    assert set(raw) == {"none", "ablate 2 neurons (zero)"}
    assert f1(tiny, PROMPTS, ["a"] * 4, max_new_tokens=3, progress=False) >= 0


# ----------------------------------------------------------------------------- conditions


def test_perplexity_with_bos_chunks_of_unequal_length_in_one_batch(rich):
    """A model that prepends BOS: every window starts with BOS and holds window - 1 text tokens;
    the shorter last chunk shares a padded batch with full ones."""
    from mechtox.data import encode
    from mechtox.evaluate import text_chunks

    text = " ".join(["the river and the city is good and the book is nice"] * 4)
    ids = encode(rich, [text], prepend_bos=False)[0]
    bos = rich.tokenizer.bos_token_id
    chunks = text_chunks(rich, text, window=10)
    assert all(c[0] == bos and len(c) <= 10 for c in chunks) and len({len(c) for c in chunks}) > 1
    assert [t for c in chunks for t in c[1:]] == ids[: sum(len(c) - 1 for c in chunks)]
    res = perplexity(rich, text, window=10, max_tokens=None, batch_size=8, progress=False)
    nll, n = 0.0, 0
    for i in range(0, len(ids), 9):  # by hand: BOS + 9 text tokens, one unpadded pass each
        c = [bos] + ids[i: i + 9]
        if len(c) < 3:
            continue
        t = torch.tensor([c])
        with torch.no_grad():
            logp = rich(t).log_softmax(-1)[0, :-1].gather(-1, t[0, 1:, None])[:, 0]
        nll -= float(logp.sum())
        n += len(c) - 1
    assert res["tokens"] == n
    assert res["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert res["nll"] == pytest.approx(nll / n, rel=1e-5)


def test_perplexity_tokenizes_its_text_once_under_many_interventions(tiny, monkeypatch):
    """A causal check or an evaluation computes the perplexity of one text (all of Wikitext-2: about a
    second to tokenize) under many interventions; it was tokenized anew each time. Now once per
    tokenizer and text, and anew when the text, or the tokenizer's vocabulary, changes."""
    import copy
    import weakref

    import mechtox.evaluate as E

    calls = []
    real = E.encode
    monkeypatch.setattr(E, "encode", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(E, "_IDS_OF_TEXT", weakref.WeakKeyDictionary(), raising=False)  # nothing cached before
    text = " ".join(["the river and the city is good and the book is nice"] * 8)
    first = perplexity(tiny, text, window=16, max_tokens=None, progress=False)
    again = [perplexity(tiny, text, iv, window=16, max_tokens=None, progress=False)
             for iv in (NOOP, ablate([(0, 1), (1, 2)]), NOOP)]
    assert len(calls) == 1
    assert again[0] == first and again[2] == first and again[1] != first
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)  # the tokenizer's one-text call
    lead = 1 if tiny.cfg.default_prepend_bos else 0  # each chunk's BOS
    assert [t for c in E.text_chunks(tiny, text, window=16) for t in c[lead:]] == ids
    perplexity(tiny, text + " good", window=16, max_tokens=None, progress=False)
    assert len(calls) == 2
    other = copy.copy(tiny)  # another model with the same tokenizer and the same (last) text: no new pass
    perplexity(other, text + " good", window=16, max_tokens=None, progress=False)
    assert len(calls) == 2
    tiny.tokenizer.add_tokens(["river and"])  # a vocabulary that tokenizes the text differently
    chunks = E.text_chunks(tiny, text + " good", window=16)
    assert len(calls) == 3 and len(tiny.tokenizer) - 1 in {t for c in chunks for t in c}


def test_word_f1_by_hand():
    # prediction 4 words, gold 3, 2 in common: precision 1/2, recall 2/3, F1 = 4/7
    assert word_f1("The cat sat down", "a cat sat") == pytest.approx(4 / 7)


@pytest.mark.parametrize("nan_from", [None, 1.0])
def test_calibrate_alpha_takes_the_largest_doubling_within_the_rise(monkeypatch, nan_from):
    """Perplexity 10 + alpha (base 10): within 10% up to alpha 1, so 1 of 1/16 .. 4096. A NaN
    perplexity (half precision overflowing under a large alpha) had passed the test 'ppl > limit'
    and been taken as the best alpha; it stops the doubling now."""
    import mechtox.evaluate as E

    def fake_ppl(model, text, iv, max_tokens=0, progress=False):
        a = 0.0 if iv is E.NOOP else iv
        return {"ppl": float("nan") if nan_from is not None and a >= nan_from else 10.0 + a}

    monkeypatch.setattr(E, "perplexity", fake_ppl)
    best, trace = E.calibrate_alpha(None, lambda a: a, "text")
    assert best == (0.5 if nan_from else 1.0)
    assert [t["alpha"] for t in trace] == [0.0, 0.0625, 0.125, 0.25, 0.5, 1.0] + ([] if nan_from else [2.0])
    with pytest.raises(E.MechtoxError, match="even alpha 0.0625 raises perplexity by more than 0.1%"):
        E.calibrate_alpha(None, lambda a: a, "text", max_rise=0.001)

