import numpy as np
import pytest

from mechtox.errors import MechtoxError, OfflineError
from mechtox.scorers import PerspectiveScorer, ProfanityCheckScorer, get_scorer


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Perspective scores are cached under $MECHTOX_CACHE: a folder of each test's own here."""
    monkeypatch.setenv("MECHTOX_CACHE", str(tmp_path / "cache"))


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


def _fake_api(monkeypatch, answers):
    """urlopen answering from ``answers`` in turn (an int: that HTTP error with the API's JSON message;
    a float: a score for every attribute), on a fake clock that only time.sleep moves; returns the
    sleeps and the requests' times."""
    import io
    import json
    import time
    import urllib.error
    import urllib.request

    clock, sleeps, sent = [100.0], [], []
    answers = iter(answers)

    def answer(req, timeout):
        sent.append(clock[0])
        a = next(answers)
        if isinstance(a, int):
            body = json.dumps({"error": {"code": a, "message": f"message {a}"}}).encode()
            raise urllib.error.HTTPError(req.full_url, a, "err", {}, io.BytesIO(body))
        attrs = json.loads(req.data)["requestedAttributes"]
        return io.BytesIO(json.dumps({"attributeScores": {k: {"summaryScore": {"value": a}} for k in attrs}}).encode())

    def sleep(s):
        sleeps.append(s)
        clock[0] += s

    monkeypatch.setattr(urllib.request, "urlopen", answer)
    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    return sleeps, sent


def test_perspective_waits_and_tries_again_over_the_quota_and_keeps_its_rate(monkeypatch):
    """HTTP 429 (over the quota) or 5xx: the request goes again after 2, 4... s; requests are at
    least 1 / qps apart, and no wait follows the last one."""
    sleeps, sent = _fake_api(monkeypatch, [429, 503, 0.3, 0.7])
    s = PerspectiveScorer(api_key="k", qps=0.5)
    np.testing.assert_allclose(s(["a", "b"]), [0.3, 0.7])
    assert s.retried == 2
    assert np.diff(sent).tolist() == [2.0, 4.0, 2.0]  # the backoffs; then the 2 s of qps 0.5
    assert sum(sleeps) == sent[-1] - 100.0  # nothing slept after the last request


@pytest.mark.parametrize("code, error, match", [
    (403, OfflineError, r"refused the key \(HTTP 403: message 403\); check PERSPECTIVE_API_KEY"),
    (400, MechtoxError, r"refused the text 'a' \(HTTP 400: message 400\)"),
    (429, OfflineError, r"still answered HTTP 429 after 6 retries with waits: message 429; lower qps"),
])
def test_perspective_errors_say_what_the_api_said(monkeypatch, code, error, match):
    _fake_api(monkeypatch, [code] * 10)
    with pytest.raises(error, match=match):
        PerspectiveScorer(api_key="k", qps=1e6)(["a"])


def test_perspective_without_a_score_is_an_error_not_nan(monkeypatch):
    import io
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout: io.BytesIO(b'{"attributeScores": {}}'))
    with pytest.raises(MechtoxError, match="gave no score for the text 'a'"):
        PerspectiveScorer(api_key="k", qps=1e6)(["a"])


def test_perspective_keeps_each_score_and_asks_for_a_text_once(monkeypatch, tmp_path):
    """A text scored once (by this scorer, or one made later: an evaluation run again after a stop) is
    not sent again; a line cut short by a crash is asked for again; other attributes, another cache."""
    sleeps, sent = _fake_api(monkeypatch, [0.25, 0.5, 0.75, 0.125, 0.9])
    s = PerspectiveScorer(api_key="k", qps=1e6)
    np.testing.assert_allclose(s(["a", "b", "a"]), [0.25, 0.5, 0.25])
    assert len(sent) == 2 and s.from_cache == 1
    assert s.cache_file.parent == tmp_path / "cache"
    lines = s.cache_file.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith('{"sha1": "86f7e437')  # SHA-1 of "a", not the text itself
    again = PerspectiveScorer(api_key="k", qps=1e6)
    np.testing.assert_allclose(again(["b", "c"]), [0.5, 0.75])
    assert len(sent) == 3 and again.from_cache == 1
    s.cache_file.write_text("\n".join(lines[:1] + [lines[1][:20]]) + "\n")  # b's line cut short
    np.testing.assert_allclose(PerspectiveScorer(api_key="k", qps=1e6)(["a", "b"]), [0.25, 0.125])
    assert len(sent) == 4
    other = PerspectiveScorer(api_key="k", qps=1e6, attributes=("INSULT",))
    assert other.cache_file != s.cache_file and other(["a"]).tolist() == [0.9] and len(sent) == 5
    with pytest.raises(StopIteration):  # cache=False: asked again (and the fake API has no answer left)
        PerspectiveScorer(api_key="k", qps=1e6, cache=False)(["a"])


def test_perspective_shows_progress_when_asked(monkeypatch, capsys):
    """A request a second: 1,199 prompts take 20 minutes, so `mechtox eval` (without -q) shows a bar."""
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "k")
    assert get_scorer("perspective", progress=True).progress and not get_scorer("perspective").progress
    _fake_api(monkeypatch, [0.5, 0.5])
    PerspectiveScorer(qps=1e6, progress=True)(["a", "b"])
    assert "perspective" in capsys.readouterr().err


def test_perspective_keeps_scoring_where_its_cache_cannot_be_written(monkeypatch, tmp_path):
    """Each score is a request against a quota: a cache that cannot be written (read-only, full;
    here its folder is a file) warns once and scoring goes on uncached. It raised on the first score."""
    sleeps, sent = _fake_api(monkeypatch, [0.3, 0.7])
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    s = PerspectiveScorer(api_key="k", qps=1e6, cache=blocked / "scores.jsonl")
    with pytest.warns(UserWarning, match="not cached") as caught:
        np.testing.assert_allclose(s(["a", "b"]), [0.3, 0.7])
    assert len(caught) == 1 and len(sent) == 2
