import numpy as np
import pytest

from mechtox.errors import MechtoxError, OfflineError
from mechtox.scorers import PerspectiveScorer, ProfanityCheckScorer, get_scorer


def test_profanity_scorer_orders_texts():
    s = get_scorer("profanity")
    scores = s(["Thank you for the helpful edit.", "You are a fucking idiot.", ""])
    assert scores.shape == (3,) and scores.dtype == np.float64
    assert scores[1] > 0.5 > scores[0]
    assert scores[2] == 0.0
    assert isinstance(s, ProfanityCheckScorer)


def test_profanity_scorer_batches_agree():
    texts = [f"text number {i} you idiot" if i % 2 else f"text number {i}" for i in range(10)]
    np.testing.assert_allclose(ProfanityCheckScorer(batch_size=3)(texts), ProfanityCheckScorer()(texts))


def test_unknown_scorer():
    with pytest.raises(MechtoxError, match="unknown scorer 'nope'"):
        get_scorer("nope")


def test_perspective_without_key(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(OfflineError, match="PERSPECTIVE_API_KEY"):
        PerspectiveScorer()


def test_perspective_offline_is_clear(monkeypatch):
    import urllib.request

    def fail(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    s = PerspectiveScorer(api_key="k", qps=1000)
    with pytest.raises(OfflineError, match="could not be reached"):
        s(["hello"])


def test_detoxify_missing_or_offline():
    with pytest.raises(OfflineError, match="detoxify"):
        get_scorer("detoxify")


def test_probe_scorer_needs_workspace():
    with pytest.raises(MechtoxError, match="needs a workspace"):
        get_scorer("probe:probe")


def test_perspective_score_is_the_max_over_the_attributes_asked_for(monkeypatch):
    """What the API answers (a fake urlopen): the score is the largest attribute's, as in Lee et
    al.; an empty text scores 0 without a request."""
    import io
    import json
    import urllib.request

    sent = []

    def answer(req, timeout):
        body = json.loads(req.data)
        sent.append(body)
        value = {"a": 0.2, "b": 0.9}[body["comment"]["text"]]
        scores = {k: {"summaryScore": {"value": value * (0.5 if k == "INSULT" else 1.0)}} for k in body["requestedAttributes"]}
        return io.BytesIO(json.dumps({"attributeScores": scores}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", answer)
    s = PerspectiveScorer(api_key="k", attributes=("INSULT", "TOXICITY"), qps=1e6)
    np.testing.assert_allclose(s(["a", "  ", "b"]), [0.2, 0.0, 0.9])
    assert len(sent) == 2 and set(sent[0]["requestedAttributes"]) == {"INSULT", "TOXICITY"}


def test_detoxify_score_is_the_max_over_its_attributes_in_batches(monkeypatch):
    """Detoxify's predict (a fake module) gives one list per attribute; the score of each text is
    its largest attribute, whatever the batch size."""
    import sys
    import types

    class Fake:
        def __init__(self, variant, device):
            self.variant = variant

        def predict(self, texts):
            return {"toxicity": [len(t) / 10 for t in texts], "insult": [0.35] * len(texts)}

    monkeypatch.setitem(sys.modules, "detoxify", types.SimpleNamespace(Detoxify=Fake))
    s = get_scorer("detoxify:unbiased")
    assert s.name == "detoxify-unbiased"
    texts = ["ab", "abcdef", "a", "abcdefgh", "abc"]
    s.batch_size = 2
    np.testing.assert_allclose(s(texts), [0.35, 0.6, 0.35, 0.8, 0.35])
