"""Errors mechtox raises for bad input.

Every error a user can cause by what they pass (an unknown model, a malformed file, a
probe of the wrong dimension) is a :class:`MechtoxError` whose message is one line that says
what is wrong and what to do. The CLI prints it as ``mechtox: error: <message>`` and exits
with status 2, without a traceback.
"""

from __future__ import annotations


class MechtoxError(Exception):
    """A user-facing error: one line, saying what is wrong and what to do."""


class DataError(MechtoxError, ValueError):
    """A data file or data set that cannot be used (missing column, empty, bad line...)."""


class ModelNotFoundError(MechtoxError, LookupError):
    """A model spec that names no alias, TransformerLens model or path."""


class IncompatibleError(MechtoxError, ValueError):
    """Two objects that must agree do not (architectures, d_model of a probe and a model)."""


class OfflineError(MechtoxError, RuntimeError):
    """Something needs the internet or an optional package that is not there."""


def closest(name: str, candidates, cutoff: float = 0.75) -> str | None:
    """The candidate ``name`` is most likely a typo of (case ignored), or None: the "did you mean"
    of an error about an unknown model, probe, pair set or option."""
    import difflib

    by_lower = {c.lower(): c for c in candidates}
    hit = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[hit[0]] if hit else None
