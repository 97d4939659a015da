"""Intervention specs for the CLI: ``KIND:ARG:ARG`` strings -> :class:`Intervention` objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechtox.errors import MechtoxError

if TYPE_CHECKING:
    from mechtox.interventions import Intervention

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


def _num(spec: str, s: str, kind=float):
    try:
        return kind(s)
    except ValueError:
        raise _bad(spec, f"{s!r} is not a number") from None


def build_intervention(spec: str, model, workspace, text_for_means=None) -> Intervention:
    """Parse ``spec`` into an intervention on ``model``, with directions from ``workspace``."""
    import dataclasses

    from mechtox.directions import final_resid_hook
    from mechtox.interventions import NOOP, ablate, random_like, scale_keys, steer, subtract
    from mechtox.neurons import rank_neurons, toxic_svd
    from mechtox.probe import Direction

    parts = spec.split(":")
    kind, args = parts[0], parts[1:]
    if kind == "none":
        if args:
            raise _bad(spec, "none takes no arguments")
        return NOOP
    if kind not in {"subtract", "steer", "subtract-value", "subtract-svd", "ablate", "ablate-random", "scale-keys"}:
        raise _bad(spec, f"unknown kind {kind!r}")
    if not args:
        raise _bad(spec, "missing DIRECTION")
    direction = Direction.load(workspace.require_direction(args[0]), model)
    if kind in ("subtract", "steer", "subtract-value", "subtract-svd"):
        if len(args) != 2:
            raise _bad(spec, f"{kind} takes DIRECTION:ALPHA")
        if args[1] == "auto":
            if text_for_means is None or kind == "steer":
                raise _bad(spec, "ALPHA auto needs text for perplexity and works for the subtract kinds")
            from mechtox.evaluate import calibrate_alpha

            alpha, trace = calibrate_alpha(model, lambda a: build_intervention(f"{kind}:{args[0]}:{a}", model, workspace),
                                           text_for_means[0])
            iv = build_intervention(f"{kind}:{args[0]}:{alpha}", model, workspace)
            return dataclasses.replace(iv, name=f"{kind}:{args[0]}:{alpha:g} (auto)",
                                       params={**iv.params, "alpha_trace": trace})
        alpha = _num(spec, args[1])
        if kind == "steer":
            return dataclasses.replace(steer(direction, alpha), name=spec)
        if kind == "subtract":
            return dataclasses.replace(subtract(direction, alpha), name=spec)
        ranking = rank_neurons(model, direction, chance_draws=0)
        if kind == "subtract-value":
            top = ranking.table.iloc[0]
            v = model.blocks[int(top.layer)].mlp.W_out[int(top.neuron)].detach()
            iv = subtract(v, alpha, hook_name=final_resid_hook(model))
            return dataclasses.replace(iv, name=spec, params={**iv.params, "neuron": (int(top.layer), int(top.neuron))})
        svd = toxic_svd(model, ranking, direction, top_n=128)
        iv = subtract(svd.vectors[0], alpha, hook_name=final_resid_hook(model))
        return dataclasses.replace(iv, name=spec)
    if len(args) < 2:
        raise _bad(spec, f"{kind} needs DIRECTION:K")
    k = _num(spec, args[1], int)
    if k <= 0:
        raise _bad(spec, "K must be positive")
    ranking = rank_neurons(model, direction, chance_draws=0)
    top = ranking.table.head(k)[["layer", "neuron"]]
    if kind == "ablate":
        mode = args[2] if len(args) > 2 else "zero"
        if mode not in ("zero", "mean"):
            raise _bad(spec, f"mode {mode!r}")
        means = None
        if mode == "mean":
            if text_for_means is None:
                raise _bad(spec, "mean ablation needs text for the means")
            from mechtox.neurons import mean_activations

            means = mean_activations(model, text_for_means, progress=False)
        return dataclasses.replace(ablate(top, mode, means), name=spec)
    if kind == "ablate-random":
        seed = _num(spec, args[2], int) if len(args) > 2 else 0
        return dataclasses.replace(ablate(random_like(top, model.cfg.d_mlp, seed, exclude=top)), name=spec)
    if len(args) != 3:
        raise _bad(spec, "scale-keys takes DIRECTION:K:FACTOR")
    return dataclasses.replace(scale_keys(top, _num(spec, args[2])), name=spec)
