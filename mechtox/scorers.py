"""Toxicity scorers behind one interface: ``scorer(texts) -> np.ndarray`` of P(toxic) in [0, 1].

* ``profanity`` — alt-profanity-check (offline default; a calibrated linear model on ~200k
  human-labelled comments, mostly lexical);
* ``probe:NAME`` — a probe from the workspace (see :mod:`mechtox.probe`);
* ``detoxify`` — Detoxify (optional package; needs to download its checkpoint once);
* ``perspective`` — Google's Perspective API (needs internet and ``PERSPECTIVE_API_KEY``).

Detoxify and Perspective scores are the max over attributes, as in Lee et al. 2024.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mechtox import _io
from mechtox._flags import SCORER_NAMES, scorer_probe  # noqa: F401 (SCORER_NAMES re-exported: it was defined here)
from mechtox.data import one_or_many
from mechtox.errors import MechtoxError, OfflineError


@runtime_checkable
class Scorer(Protocol):
    """Anything with a ``name`` that maps texts to toxicity scores in [0, 1]."""

    name: str

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


class ProfanityCheckScorer:
    """alt-profanity-check's ``predict_prob``, batched; empty texts score 0."""

    name = "profanity-check"

    def __init__(self, batch_size: int = 1024):
        try:
            from profanity_check import predict_prob
        except ImportError as e:
            raise OfflineError("the profanity scorer needs alt-profanity-check: pip install alt-profanity-check") from e
        self._predict = predict_prob
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [t if isinstance(t, str) else "" for t in one_or_many(texts)]
        out = np.zeros(len(texts), dtype=np.float64)
        idx = [i for i, t in enumerate(texts) if t.strip()]
        for s in range(0, len(idx), self.batch_size):
            chunk = idx[s: s + self.batch_size]
            out[chunk] = self._predict([texts[i] for i in chunk])
        return out


class DetoxifyScorer:
    """Detoxify (``pip install detoxify``); score = max over its attributes."""

    def __init__(self, variant: str = "original", device: str = "cpu", batch_size: int = 64):
        try:
            from detoxify import Detoxify
        except ImportError as e:
            raise OfflineError("the detoxify scorer needs the detoxify package: pip install 'mechtox[detoxify]'") from e
        try:
            self._model = Detoxify(variant, device=device)
        except Exception as e:  # noqa: BLE001 - download failures come in many types
            raise OfflineError(
                f"Detoxify could not load its {variant!r} checkpoint (it downloads it once; are you offline?): "
                f"{type(e).__name__}"
            ) from None
        self.name = f"detoxify-{variant}"
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = one_or_many(texts)
        out = []
        for s in range(0, len(texts), self.batch_size):
            res = self._model.predict(list(texts[s: s + self.batch_size]))
            out.append(np.max(np.stack([np.asarray(v, dtype=float) for v in res.values()]), axis=0))
        return np.concatenate(out) if out else np.zeros(0)


PERSPECTIVE_ATTRIBUTES = ("TOXICITY", "SEVERE_TOXICITY", "IDENTITY_ATTACK", "INSULT", "PROFANITY", "THREAT",
                          "SEXUALLY_EXPLICIT", "FLIRTATION")


class PerspectiveScorer:
    """Perspective API; score = max over ``attributes`` (Lee et al.). The key is read from
    ``PERSPECTIVE_API_KEY`` when the scorer is created, never stored anywhere.

    Every score is kept in ``cache`` (a JSONL file of text SHA-1s and scores, one per set of
    attributes; default under :func:`mechtox._io.cache_dir`; ``False``: none) as it arrives, and a
    text already there is not sent again: an evaluation stopped halfway picks up where it was, and
    continuations two models share are asked for once."""

    name = "perspective"
    URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"

    RETRIES = 6
    """Tries again after HTTP 429 (over the quota) or 5xx, waiting 2, 4, 8... seconds."""

    def __init__(self, api_key: str | None = None, attributes: Sequence[str] = PERSPECTIVE_ATTRIBUTES,
                 qps: float = 1.0, timeout: float = 20.0, cache: str | os.PathLike[str] | bool | None = None,
                 progress: bool = False):
        self._key = api_key or os.environ.get("PERSPECTIVE_API_KEY")
        if not self._key:
            raise OfflineError("the perspective scorer needs an API key in PERSPECTIVE_API_KEY (and internet)")
        self.attributes = tuple(attributes)
        self.qps, self.timeout, self.progress = qps, timeout, progress  # progress: a bar over the texts
        self.retried = 0  # requests sent again after a 429 or 5xx answer
        self.from_cache = 0  # texts whose score the cache had
        self._next = 0.0  # time.monotonic() at which the next request may go
        which = hashlib.sha1(",".join(sorted(self.attributes)).encode()).hexdigest()[:10]
        self.cache_file = (None if cache is False else
                           Path(cache) if isinstance(cache, (str, os.PathLike)) else
                           _io.cache_dir() / f"perspective-{which}.jsonl")
        self._scores = self._read_cache()

    def _read_cache(self) -> dict[str, float]:
        import json

        if self.cache_file is None or not self.cache_file.is_file():
            return {}
        scores = {}
        for line in self.cache_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:  # a line cut short by a crash is skipped: its text is asked for again
                row = json.loads(line)
                scores[str(row["sha1"])] = float(row["score"])
            except (ValueError, KeyError, TypeError):
                continue
        return scores

    def _remember(self, h: str, score: float) -> None:
        import json

        self._scores[h] = score
        if self.cache_file is not None:
            try:
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"sha1": h, "score": score}) + "\n")
            except OSError as e:  # a read-only or full cache: keep scoring (each score was a request), uncached
                import warnings

                warnings.warn(f"Perspective scores are not cached in {self.cache_file} ({type(e).__name__}: {e}); "
                              "set MECHTOX_CACHE to a writable folder to keep them", stacklevel=2)
                self.cache_file = None

    def _request(self, body: bytes, text: str) -> dict:
        import json
        import urllib.error
        import urllib.request

        for attempt in range(self.RETRIES + 1):
            time.sleep(max(0.0, self._next - time.monotonic()))  # at most qps requests a second
            self._next = time.monotonic() + 1.0 / self.qps
            req = urllib.request.Request(f"{self.URL}?key={self._key}", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                if (e.code == 429 or e.code >= 500) and attempt < self.RETRIES:
                    self.retried += 1
                    time.sleep(2.0 ** (attempt + 1))
                    continue
                try:
                    said = json.loads(e.read()).get("error", {}).get("message", "")
                except Exception:  # noqa: BLE001 - an error page that is not the API's JSON
                    said = ""
                said = f": {said}" if said else ""
                if e.code in (401, 403):
                    raise OfflineError(f"the Perspective API refused the key (HTTP {e.code}{said}); check "
                                       "PERSPECTIVE_API_KEY and that the API is enabled for it") from None
                if e.code == 429 or e.code >= 500:
                    raise OfflineError(f"the Perspective API still answered HTTP {e.code} after {self.RETRIES} retries "
                                       f"with waits{said}; lower qps or ask for a larger quota") from None
                raise MechtoxError(f"the Perspective API refused the text {text[:40]!r} (HTTP {e.code}{said})") from None
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                raise OfflineError(f"the Perspective API could not be reached ({type(e).__name__}); are you offline?") from None
        raise AssertionError("unreachable")

    def _one(self, text: str) -> float:
        import json

        if not text.strip():
            return 0.0
        h = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if h in self._scores:
            self.from_cache += 1
            return self._scores[h]
        body = json.dumps({"comment": {"text": text}, "languages": ["en"],
                           "requestedAttributes": {a: {} for a in self.attributes}}).encode()
        res = self._request(body, text)
        scores = [v["summaryScore"]["value"] for v in res.get("attributeScores", {}).values()]
        if not scores:
            raise MechtoxError(f"the Perspective API gave no score for the text {text[:40]!r} (it answered "
                               f"{json.dumps(res)[:80]})")
        self._remember(h, float(max(scores)))
        return self._scores[h]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        texts = one_or_many(texts)
        return np.asarray([self._one(t) for t in tqdm(texts, desc="perspective", leave=False,
                                                         disable=not self.progress or len(texts) < 2)])


def get_scorer(name: str = "profanity", workspace=None, model=None, progress: bool = False) -> Scorer:
    """A scorer by name: ``profanity``, ``detoxify[:variant]``, ``perspective`` or ``probe:NAME``
    (``probe:NAME`` needs the ``workspace`` and the ``model`` whose activations it reads).
    ``progress``: a progress bar where scoring is slow (Perspective: a request a second)."""
    probe_name = scorer_probe(name)  # an unknown name is a one-line error
    if probe_name:
        if workspace is None or model is None:
            raise MechtoxError("a probe scorer needs a workspace and a model")
        from mechtox.probe import Probe, ProbeScorer

        return ProbeScorer(model, Probe.load(workspace.require_direction(probe_name)))
    if name.startswith("detoxify"):
        return DetoxifyScorer(name.split(":", 1)[1] if ":" in name else "original")
    return PerspectiveScorer(progress=progress) if name == "perspective" else ProfanityCheckScorer()
