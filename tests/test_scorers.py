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
