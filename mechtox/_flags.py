"""Flag values read without a model and without heavy imports, so the CLI checks them before torch
loads: the ``--layers`` spec (:func:`mechtox.activations.parse_layers` checks the numbers against a
model) and the scorer names (:func:`mechtox.scorers.get_scorer`)."""

from __future__ import annotations

from mechtox.errors import MechtoxError


def layer_numbers(spec: str) -> list[int] | None:
    """The layers of a ``--layers`` spec (``'5'``, ``'0,4,8'``, ``'10-20'``; None for ``all`` and
    ``last``), read without the model: a malformed spec is a one-line error before anything loads."""
    s = spec.strip().lower()
    if s in ("all", "last"):
        return None
    out: list[int] = []
    try:
        for part in s.split(","):
            if "-" in part:
                a, b = (int(x) for x in part.split("-"))
                if a > b:
                    raise MechtoxError(f"bad layers {spec!r}: a range goes up, e.g. {b}-{a}")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise MechtoxError(f"bad layers {spec!r}; use 'all', 'last', '5', '0,4,8' or '10-20'") from None
    return out


SCORER_NAMES = ("profanity", "detoxify", "perspective", "probe:NAME")
"""what ``mechtox eval --scorer`` accepts (:func:`mechtox.scorers.get_scorer`; ``detoxify:VARIANT`` too)"""


def scorer_probe(name: str) -> str | None:
    """The probe a scorer name reads (``probe:NAME``), None for the other scorers; an unknown name is
    a one-line error."""
    if name in ("profanity", "profanity-check", "perspective") or name == "detoxify" or name.startswith("detoxify:"):
        return None
    if name.startswith("probe:") and name[6:]:
        return name[6:]
    raise MechtoxError(f"unknown scorer {name!r}; use one of {', '.join(SCORER_NAMES)}")
