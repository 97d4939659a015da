"""Massive residual dimensions and the metric that value-vector cosines are taken in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mechtox.activations import collect_activations, parse_layers
from mechtox.directions.tokens import final_resid_hook
from mechtox.errors import MechtoxError
from mechtox.neurons import unembed_basis
from mechtox.probe import Direction


def outlier_dims(model: HookedTransformer, texts: Sequence[str], layers: str | Sequence[int] = "all",
                 factor: float = 20.0, max_length: int = 64, progress: bool = True) -> pd.DataFrame:
    """Residual dimensions of massive magnitude, per layer.

    A dimension is flagged at a layer when its largest |activation| over all tokens is more
    than ``factor`` times the median (over dimensions) of that statistic. Columns: layer, dim,
    max_abs, ratio (to the median), mean_abs, frac_tokens (share of tokens where |x| exceeds
    ``factor`` x the median |x| of that token).
    """
    layer_ids = parse_layers(layers, model.cfg.n_layers)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layer_ids]
    acts = collect_activations(model, texts, hooks, "tokens", max_length=max_length, progress=progress)
    rows = []
    for layer, h in zip(layer_ids, hooks, strict=True):
        x = acts[h].abs()
        mx = x.max(0).values
        med = mx.median()
        tok_med = x.median(1, keepdim=True).values
        big = x > factor * tok_med
        for d in torch.nonzero(mx > factor * med).flatten().tolist():
            rows.append({"layer": layer, "dim": d, "max_abs": float(mx[d]), "ratio": float(mx[d] / med),
                         "mean_abs": float(x[:, d].mean()), "frac_tokens": float(big[:, d].float().mean())})
    return pd.DataFrame(rows, columns=["layer", "dim", "max_abs", "ratio", "mean_abs", "frac_tokens"])


Metric = Literal["raw", "final_norm", "whitened", "unembed"]


def metric_scale(model: HookedTransformer, metric: Metric, texts: Sequence[str] | None = None,
                 max_length: int = 64, progress: bool = True) -> Float[Tensor, " d_model"] | None:
    """Per-dimension scale ``s`` for cosines in another metric: vectors ``v / s``, covectors
    ``w * s`` (dot products unchanged).

    ``final_norm``: ``s = 1 / g`` (g = the final norm's weight): value vectors are compared
    as the final norm passes them on to the unembedding;
    ``whitened``: ``s`` = per-dimension std of the final residual stream on ``texts``
    (diagonal whitening: a massive, high-variance dimension no longer dominates |v|);
    ``unembed`` (a matrix ``M = Sigma^1/2``, Sigma = covariance over the vocabulary of the
    unembedding vectors through the final norm): ``|v @ M|`` is the spread of the logits that
    ``v`` writes, so the cosine of a value vector with the unembedding direction (vocabulary
    baseline) ranks neurons by the z-score of the toxic tokens among the logits they promote.
    """
    if metric == "raw":
        return None
    if metric == "final_norm":
        g = getattr(model.ln_final, "w", None)
        if g is None:
            raise MechtoxError("final_norm metric needs a model with a final norm weight")
        g = g.detach().float().cpu().abs().clamp_min(1e-3)
        return 1.0 / g
    if metric == "unembed":
        B = unembed_basis(model).cpu().double()  # [d_model, d_vocab]
        Bc = B - B.mean(1, keepdim=True)
        cov = Bc @ Bc.T / B.shape[1]
        evals, evecs = torch.linalg.eigh(cov)
        return (evecs * evals.clamp_min(1e-12 * evals.max()).sqrt()) @ evecs.T
    if metric == "whitened":
        if not texts:
            raise MechtoxError("whitened metric needs texts to estimate the activation scale")
        h = final_resid_hook(model)
        acts = collect_activations(model, texts, [h], "tokens", max_length=max_length, progress=progress)[h]
        return acts.std(0).clamp_min(1e-6)
    raise MechtoxError(f"unknown metric {metric!r}; use raw, final_norm, whitened or unembed")


def rescaled(direction: Direction, scale: Tensor | None) -> Direction:
    """The direction as a covector in the scaled metric (``w * s``, renormalised)."""
    import dataclasses

    if scale is None:
        return direction
    w = direction.vector * scale
    return dataclasses.replace(direction, vector=w / w.norm())
