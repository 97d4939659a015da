"""Intervention specs for the CLI: ``KIND:ARG:ARG`` strings -> :class:`Intervention` objects; and the
names of the direction methods. Nothing heavy is imported, so flags are checked before torch loads."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechtox.errors import MechtoxError

if TYPE_CHECKING:
    from mechtox.interventions import Intervention

DIRECTION_METHODS = ("probe", "unembed", "gen-diffmean", "gradient")
"""what ``mechtox directions --methods`` accepts (:mod:`mechtox.directions`)"""

SPEC_FORMS = (
    "none",
    "subtract:DIRECTION:ALPHA (ALPHA 'auto': the largest power of 2 from 1/16 raising perplexity <= 10%)",
    "steer:DIRECTION:ALPHA",
    "subtract-value:DIRECTION:ALPHA (the top value vector by cosine)",
    "subtract-svd:DIRECTION:ALPHA (U[0] of the top-128 value vectors)",
    "ablate:DIRECTION:K[:zero|mean]",
    "ablate-random:DIRECTION:K[:SEED] (same layer distribution as the top K)",
    "scale-keys:DIRECTION:K:FACTOR",
)


def _bad(spec: str, why: str) -> MechtoxError:
    return MechtoxError(f"bad intervention {spec!r} ({why}); valid forms: " + "; ".join(SPEC_FORMS))


_ALPHA_KINDS = ("subtract", "steer", "subtract-value", "subtract-svd")
_NEURON_KINDS = ("ablate", "ablate-random", "scale-keys")


@dataclass(frozen=True)
class Spec:
    """A parsed intervention spec: its kind, direction name and numbers, checked for form only
    (no model, no workspace), so that a command refuses a bad one before anything loads."""

    text: str
    kind: str
    direction: str = ""
    alpha: float | None = None
    """subtract / steer kinds; None for 'auto'"""
    k: int = 0
    mode: str = "zero"
    seed: int = 0
    factor: float = 1.0


def _num(spec: str, s: str, kind=float):
    try:
        x = kind(s)
    except ValueError:
        raise _bad(spec, f"{s!r} is not a number") from None
    if not math.isfinite(x):
        raise _bad(spec, f"{s!r} is not a finite number")
    return x


def parse_spec(spec: str) -> Spec:
    """``KIND:ARG:ARG`` -> :class:`Spec`, or a one-line error listing the valid forms."""
    kind, *args = spec.split(":")
    if kind == "none":
        if args:
            raise _bad(spec, "none takes no arguments")
        return Spec(spec, kind)
    if kind not in _ALPHA_KINDS + _NEURON_KINDS:
        raise _bad(spec, f"unknown kind {kind!r}")
    if not args or not args[0]:
        raise _bad(spec, "missing DIRECTION")
    if kind in _ALPHA_KINDS:
        if len(args) != 2:
            raise _bad(spec, f"{kind} takes DIRECTION:ALPHA")
        if args[1] == "auto" and kind == "steer":
            raise _bad(spec, "ALPHA auto works for the subtract kinds")
        return Spec(spec, kind, args[0], alpha=None if args[1] == "auto" else _num(spec, args[1]))
    if len(args) < 2:
        raise _bad(spec, f"{kind} needs DIRECTION:K")
    k = _num(spec, args[1], int)
    if k <= 0:
        raise _bad(spec, "K must be positive")
    if kind == "ablate":
        if len(args) > 3 or (len(args) == 3 and args[2] not in ("zero", "mean")):
            raise _bad(spec, "ablate takes DIRECTION:K, DIRECTION:K:zero or DIRECTION:K:mean")
        return Spec(spec, kind, args[0], k=k, mode=args[2] if len(args) == 3 else "zero")
    if kind == "ablate-random":
        if len(args) > 3:
            raise _bad(spec, "ablate-random takes DIRECTION:K or DIRECTION:K:SEED")
        return Spec(spec, kind, args[0], k=k, seed=_num(spec, args[2], int) if len(args) == 3 else 0)
    if len(args) != 3:
        raise _bad(spec, "scale-keys takes DIRECTION:K:FACTOR")
    return Spec(spec, kind, args[0], k=k, factor=_num(spec, args[2]))


def build_intervention(spec: str, model, workspace, text_for_means=None) -> Intervention:
    """Parse ``spec`` into an intervention on ``model``, with directions from ``workspace``."""
    from mechtox.directions.tokens import final_resid_hook
    from mechtox.interventions import NOOP, ablate, random_like, scale_keys, steer, subtract
    from mechtox.neurons import rank_neurons, toxic_svd
    from mechtox.probe import Direction

    s = parse_spec(spec)
    if s.kind == "none":
        return NOOP
    direction = Direction.load(workspace.require_direction(s.direction), model)
    if s.kind in _ALPHA_KINDS:
        if s.alpha is None:
            if text_for_means is None:
                raise _bad(spec, "ALPHA auto needs text for perplexity")
            from mechtox.evaluate import calibrate_alpha

            alpha, trace = calibrate_alpha(model, lambda a: build_intervention(f"{s.kind}:{s.direction}:{a}", model,
                                                                               workspace), text_for_means[0])
            iv = build_intervention(f"{s.kind}:{s.direction}:{alpha}", model, workspace)
            return dataclasses.replace(iv, name=f"{s.kind}:{s.direction}:{alpha:g} (auto)",
                                       params={**iv.params, "alpha_trace": trace})
        if s.kind == "steer":
            return dataclasses.replace(steer(direction, s.alpha), name=spec)
        if s.kind == "subtract":
            return dataclasses.replace(subtract(direction, s.alpha), name=spec)
        ranking = rank_neurons(model, direction, chance_draws=0)
        if s.kind == "subtract-value":
            top = ranking.table.iloc[0]
            from mechtox.neurons import value_vector

            v = value_vector(model, int(top.layer), int(top.neuron))
            iv = subtract(v, s.alpha, hook_name=final_resid_hook(model))
            return dataclasses.replace(iv, name=spec, params={**iv.params, "neuron": (int(top.layer), int(top.neuron))})
        svd = toxic_svd(model, ranking, direction, top_n=128)
        iv = subtract(svd.vectors[0], s.alpha, hook_name=final_resid_hook(model))
        return dataclasses.replace(iv, name=spec)
    n_neurons = model.cfg.n_layers * model.cfg.d_mlp
    if s.k > n_neurons:  # head(k) would take every neuron, under a "K" label
        raise _bad(spec, f"K {s.k}: the model has {n_neurons:,} MLP neurons; give K up to that")
    ranking = rank_neurons(model, direction, chance_draws=0)
    top = ranking.table.head(s.k)[["layer", "neuron"]]
    if s.kind == "ablate":
        means = None
        if s.mode == "mean":
            if text_for_means is None:
                raise _bad(spec, "mean ablation needs text for the means")
            from mechtox.neurons import mean_activations

            means = mean_activations(model, text_for_means, progress=False)
        return dataclasses.replace(ablate(top, s.mode, means), name=spec)
    if s.kind == "ablate-random":
        return dataclasses.replace(ablate(random_like(top, model.cfg.d_mlp, s.seed, exclude=top)), name=spec)
    return dataclasses.replace(scale_keys(top, s.factor), name=spec)
