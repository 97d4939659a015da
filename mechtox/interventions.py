"""Interventions: hook factories and reversible weight edits, applied only inside a scope.

Hook factories return ``fn(act, hook)`` for TransformerLens; they are attached only inside
:func:`applied` (or ``model.hooks(...)`` / ``run_with_hooks``), so no hook outlives its use.
Weight edits (zeroing value vectors, scaling key vectors) are context managers that restore
the original weights on exit, also after an exception.

An :class:`Intervention` bundles hooks and weight edits under a name; several compose::

    with applied(model, [subtract(w, alpha=20), ablate(neurons)]):
        generate(model, prompts)
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mechtox.errors import MechtoxError

HookFn = Callable[[Tensor, Any], Tensor | None]


# ----------------------------------------------------------------------------- hook factories


def make_add_hook(direction: Float[Tensor, " d_model"], alpha: float, newest_only: bool = False) -> HookFn:
    """``act + alpha * direction`` at every position (or only the last one: the newest token
    during KV-cached generation, whose first step is the whole prompt)."""
    d = direction.detach()

    def hook(act: Float[Tensor, "batch pos d_model"], hook) -> Tensor:
        if act.shape[-1] != d.shape[-1]:
            raise MechtoxError(f"a direction of size {d.shape[-1]} cannot be added at {hook.name}, "
                               f"whose activations have size {act.shape[-1]}; use a direction of this model")
        v = (alpha * d).to(act.device, act.dtype)
        if newest_only:
            act[:, -1] = act[:, -1] + v
            return act
        return act + v

    return hook


def make_subtract_hook(direction: Float[Tensor, " d_model"], alpha: float, newest_only: bool = False) -> HookFn:
    """``act - alpha * direction`` (Lee et al.'s "subtract W_toxic")."""
    return make_add_hook(direction, -alpha, newest_only)


def make_neuron_hook(neurons: Int[Tensor, " k"] | Sequence[int],
                     values: Float[Tensor, " k"] | float = 0.0, width: int | None = None) -> HookFn:
    """Set activations ``act[..., neurons]`` to ``values`` (0 = zero-ablation; per-neuron means
    = mean-ablation; another model's means = constant patching). For ``mlp.hook_post``.
    ``width``: the number of neurons per layer that ``values`` were taken from (checked against
    the layer's, so another model's means are an error, not silently wrong constants)."""
    idx = torch.as_tensor(list(neurons) if not isinstance(neurons, Tensor) else neurons, dtype=torch.long)
    bounds = _bounds(idx)  # once, not at every forward pass

    def hook(act: Float[Tensor, "batch pos d_mlp"], hook) -> Tensor:
        _check_neurons(bounds, act.shape[-1], hook.name)
        if width is not None and width != act.shape[-1]:
            raise MechtoxError(f"the means are for layers of {width} neurons, but {hook.name} has {act.shape[-1]}; "
                               "take them from this model (mean_activations)")
        i = idx.to(act.device)
        v = values.to(act.device, act.dtype) if isinstance(values, Tensor) else values
        act[..., i] = v
        return act

    return hook


def _bounds(idx: Tensor) -> tuple[int, int] | None:
    """The smallest and largest neuron of ``idx`` (None when it is empty)."""
    return (int(idx.min()), int(idx.max())) if len(idx) else None


def _check_neurons(bounds: tuple[int, int] | None, size: int, where: str) -> None:
    if bounds is not None and (bounds[0] < 0 or bounds[1] >= size):
        bad = bounds[1] if bounds[1] >= size else bounds[0]
        raise MechtoxError(f"neuron {bad} does not exist at {where}, which has {size} neurons")


def make_scale_neuron_hook(neurons: Sequence[int] | Tensor, factor: float) -> HookFn:
    """Multiply activations of ``neurons`` by ``factor`` (for ``mlp.hook_post``)."""
    idx = torch.as_tensor(list(neurons) if not isinstance(neurons, Tensor) else neurons, dtype=torch.long)

    def hook(act: Tensor, hook) -> Tensor:
        i = idx.to(act.device)
        act[..., i] = act[..., i] * factor
        return act

    return hook


def make_patch_hook(source: Float[Tensor, "batch pos d"], neurons: Sequence[int] | Tensor | None = None) -> HookFn:
    """Replace the activation (or only ``neurons`` of it) by ``source``, recorded from another
    model (or another input) on the SAME tokens, position by position."""
    idx = None if neurons is None else torch.as_tensor(list(neurons) if not isinstance(neurons, Tensor) else neurons)

    def hook(act: Tensor, hook) -> Tensor:
        if source.shape != act.shape:
            raise MechtoxError(f"patch source shape {tuple(source.shape)} != activation shape {tuple(act.shape)} at {hook.name}")
        src = source.to(act.device, act.dtype)
        if idx is None:
            return src.clone()
        i = idx.to(act.device)
        act[..., i] = src[..., i]
        return act

    return hook


# ----------------------------------------------------------------------------- weight edits


@contextlib.contextmanager
def edited_weights(model: HookedTransformer, edits: Sequence[tuple[str, Callable[[Tensor], None]]]) -> Iterator[None]:
    """Apply in-place edits ``(param_name, fn(param))`` and restore the originals on exit."""
    params = dict(model.named_parameters())
    saved = {}
    try:
        for name, fn in edits:
            if name not in params:
                raise MechtoxError(f"the model has no parameter {name} (it has {model.cfg.n_layers} layers)")
            p = params[name]
            if name not in saved:
                saved[name] = p.detach().clone()
            with torch.no_grad():
                fn(p)
        yield
    finally:
        with torch.no_grad():
            for name, orig in saved.items():
                params[name].copy_(orig)


def _by_layer(neurons: pd.DataFrame | Sequence[tuple[int, int]], col: str = "neuron") -> dict[int, list[int]]:
    if isinstance(neurons, pd.DataFrame):
        pairs = zip(neurons["layer"].astype(int), neurons[col].astype(int), strict=True)
    else:
        pairs = ((int(a), int(b)) for a, b in neurons)
    out: dict[int, list[int]] = {}
    for layer, n in pairs:
        out.setdefault(layer, []).append(n)
    return out


def _neuron_edit(where: str, idx: list[int], axis: int, factor: float) -> Callable[[Tensor], None]:
    """An edit of ``where`` (a ``W_out`` or ``W_in``) that multiplies the neurons ``idx`` along
    ``axis`` by ``factor`` (0 zeroes them), after checking they exist."""
    ii = torch.tensor(idx)
    bounds = _bounds(ii)

    def fn(p: Tensor) -> None:
        _check_neurons(bounds, p.shape[axis], where)
        if factor == 0:
            p.index_fill_(axis, ii.to(p.device), 0.0)
        else:
            p.index_copy_(axis, ii.to(p.device), p.index_select(axis, ii.to(p.device)) * factor)

    return fn


def zero_value_vectors_edits(neurons) -> list[tuple[str, Callable[[Tensor], None]]]:
    """Edits that zero ``W_out[l, i]`` (the neuron writes nothing)."""
    return [(f"blocks.{layer}.mlp.W_out", _neuron_edit(f"blocks.{layer}.mlp.W_out", idx, 0, 0.0))
            for layer, idx in _by_layer(neurons).items()]


def scale_keys_edits(neurons, factor: float) -> list[tuple[str, Callable[[Tensor], None]]]:
    """Edits that scale key vectors ``W_in[l, :, i]`` by ``factor`` (Lee et al.'s un-align edit).
    For gated MLPs the up projection is scaled, which scales the activation by ``factor``."""
    return [(f"blocks.{layer}.mlp.W_in", _neuron_edit(f"blocks.{layer}.mlp.W_in", idx, 1, factor))
            for layer, idx in _by_layer(neurons).items()]


# ----------------------------------------------------------------------------- interventions


@dataclass(frozen=True)
class Intervention:
    """A named set of hooks and reversible weight edits."""

    name: str
    fwd_hooks: list[tuple[str, HookFn]] = field(default_factory=list)
    weight_edits: list[tuple[str, Callable[[Tensor], None]]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


NOOP = Intervention("none")


@contextlib.contextmanager
def applied(model: HookedTransformer, interventions: Intervention | Sequence[Intervention]) -> Iterator[HookedTransformer]:
    """Attach the hooks and weight edits of ``interventions`` for the ``with`` block only."""
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    hooks = [h for iv in interventions for h in iv.fwd_hooks]
    edits = [e for iv in interventions for e in iv.weight_edits]
    missing = sorted({name for name, _ in hooks if name not in model.hook_dict})
    if missing:
        raise MechtoxError(f"the model has no hook {', '.join(missing)} (it has {model.cfg.n_layers} layers); "
                           "names look like blocks.0.hook_resid_post or blocks.0.mlp.hook_post")
    with edited_weights(model, edits), model.hooks(fwd_hooks=hooks):
        yield model


def subtract(direction, alpha: float, hook_name: str | None = None, newest_only: bool = False) -> Intervention:
    """Subtract ``alpha * w`` (unit) at the direction's hook (or ``hook_name``)."""
    _finite(alpha, "alpha")
    w, hook = _unit_and_hook(direction, hook_name)
    return Intervention(f"subtract {getattr(direction, 'name', '') or 'direction'} x{alpha:g}",
                        [(hook, make_subtract_hook(w, alpha, newest_only))], params={"alpha": alpha, "hook": hook})


def steer(direction, alpha: float, hook_name: str | None = None, newest_only: bool = False) -> Intervention:
    """Add ``alpha * w`` (unit) at the direction's hook (steering)."""
    _finite(alpha, "alpha")
    w, hook = _unit_and_hook(direction, hook_name)
    return Intervention(f"steer {getattr(direction, 'name', '') or 'direction'} x{alpha:g}",
                        [(hook, make_add_hook(w, alpha, newest_only))], params={"alpha": alpha, "hook": hook})


def _finite(value: float, what: str) -> None:
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise MechtoxError(f"{what} must be a finite number, not {value!r}")


def _unit_and_hook(direction, hook_name):
    w = getattr(direction, "vector", direction)
    hook = hook_name or getattr(direction, "hook_name", None)
    if hook is None:
        raise MechtoxError("give hook_name for a plain tensor direction")
    w = torch.as_tensor(w).detach().float()
    if w.ndim != 1 or not torch.isfinite(w).all() or w.norm() == 0:
        raise MechtoxError(f"a direction must be one finite, non-zero vector (got shape {tuple(w.shape)})")
    return w / w.norm(), hook


def ablate(neurons, mode: Literal["zero", "mean", "value"] = "zero", means: Tensor | None = None,
           name: str | None = None) -> Intervention:
    """Ablate neurons (a DataFrame with ``layer``/``neuron`` or (layer, neuron) pairs).

    ``zero``: activation set to 0; ``mean``: set to ``means[layer, neuron]`` (e.g. from
    :func:`mechtox.neurons.mean_activations`); ``value``: zero the value vector ``W_out[l, i]``
    (a weight edit; same output as ``zero``, but the activation stays observable).
    """
    groups = _by_layer(neurons)
    n = sum(len(v) for v in groups.values())
    label = name or f"ablate {n} neurons ({mode})"
    if mode == "value":
        return Intervention(label, weight_edits=zero_value_vectors_edits(neurons), params={"n": n, "mode": mode})
    if mode == "mean":
        if means is None or means.ndim != 2:
            raise MechtoxError("mean ablation needs means [n_layers, d_mlp]"
                               + ("" if means is None else f", not of shape {tuple(means.shape)}"))
        outside = _outside(groups, means.shape)
        if outside is not None:
            raise MechtoxError(f"a neuron of layer {outside} has no mean in means of shape "
                               f"{tuple(means.shape)} [n_layers, d_mlp]; take them from this model (mean_activations)")
    elif mode != "zero":
        raise MechtoxError(f"unknown ablation mode {mode!r}; use zero, mean or value")
    hooks = []
    for layer, idx in groups.items():
        if mode == "mean":
            assert means is not None
            hooks.append((f"blocks.{layer}.mlp.hook_post",
                          make_neuron_hook(idx, means[layer, idx].float(), width=means.shape[1])))
        else:
            hooks.append((f"blocks.{layer}.mlp.hook_post", make_neuron_hook(idx, 0.0)))
    return Intervention(label, hooks, params={"n": n, "mode": mode})


def _outside(groups: dict[int, list[int]], shape: tuple[int, ...]) -> int | None:
    """The first layer of ``groups`` (layer -> neuron or head numbers) that constants of ``shape``
    ``[n_layers, n_units, ...]`` do not cover, or None."""
    return next((layer for layer, idx in groups.items()
                 if not (0 <= layer < shape[0] and 0 <= min(idx) and max(idx) < shape[1])), None)


def set_neurons(neurons, values: Float[Tensor, "n_layers d_mlp"], name: str = "patch neurons to constants") -> Intervention:
    """Set each neuron to the constant ``values[layer, neuron]`` (e.g. the after-model's mean
    activation: Yang et al.'s patching of dampened neurons)."""
    return ablate(neurons, "mean", values, name=name)


def set_heads(heads: pd.DataFrame, values: Float[Tensor, "n_layers n_heads d_head"],
              name: str = "patch heads to constants") -> Intervention:
    """Set each head's output ``z`` (``blocks.L.attn.hook_z``, before ``W_O``) to the constant
    ``values[layer, head]`` at every position (e.g. the after model's mean z)."""
    groups = _by_layer(heads, "head")
    if values.ndim != 3 or _outside(groups, values.shape) is not None:
        raise MechtoxError(f"set_heads needs values [n_layers, n_heads, d_head] covering every head given, not of "
                           f"shape {tuple(values.shape)}; take them from this model")
    hooks = []
    for layer, idx in sorted(groups.items()):
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        v = values[layer, idx_t].detach().float()

        def hook(z, hook, idx_t=idx_t, v=v):
            if z.shape[-2:] != values.shape[1:]:
                raise MechtoxError(f"the head values are for {values.shape[1]} heads of size {values.shape[2]}, "
                                   f"but {hook.name} has {z.shape[-2]} of size {z.shape[-1]}; take them from this model")
            z = z.clone()
            z[..., idx_t, :] = v.to(z.device, z.dtype)
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    return Intervention(name, fwd_hooks=hooks, params={"n_heads": len(heads)})


def combined(name: str, *interventions: Intervention) -> Intervention:
    """One intervention with the hooks and weight edits of all of ``interventions``."""
    return Intervention(name, fwd_hooks=[h for iv in interventions for h in iv.fwd_hooks],
                        weight_edits=[e for iv in interventions for e in iv.weight_edits],
                        params={iv.name: iv.params for iv in interventions})


def scale_keys(neurons, factor: float, name: str | None = None) -> Intervention:
    """Scale key vectors of ``neurons`` by ``factor`` (reversible weight edit)."""
    _finite(factor, "the key scale factor")
    n = len(neurons)
    return Intervention(name or f"scale keys of {n} neurons x{factor:g}", weight_edits=scale_keys_edits(neurons, factor),
                        params={"n": n, "factor": factor})


def random_like(neurons: pd.DataFrame, d_mlp: int, seed: int, exclude: pd.DataFrame | None = None) -> pd.DataFrame:
    """Random neurons with the same count per layer as ``neurons`` (a baseline for ablations)."""
    rng = np.random.default_rng(seed)
    rows = []
    excl = _by_layer(exclude) if exclude is not None else {}
    check_random_baseline(neurons, d_mlp, exclude)
    for layer, idx in sorted(_by_layer(neurons).items()):
        pool = np.setdiff1d(np.arange(d_mlp), np.asarray(excl.get(layer, []), dtype=int))
        pick = rng.choice(pool, size=len(idx), replace=False)
        rows += [(layer, int(i)) for i in pick]
    return pd.DataFrame(rows, columns=["layer", "neuron"])


def check_random_baseline(neurons: pd.DataFrame, d_mlp: int, exclude: pd.DataFrame | None = None) -> None:
    """Raise :class:`MechtoxError` unless :func:`random_like` can draw for ``neurons``: each layer
    needs as many neurons outside ``exclude`` as ``neurons`` has there."""
    excl = _by_layer(exclude) if exclude is not None else {}
    for layer, idx in sorted(_by_layer(neurons).items()):
        pool = d_mlp - len(set(excl.get(layer, [])) & set(range(d_mlp)))
        if len(idx) > pool:
            raise MechtoxError(f"no random baseline for these {len(neurons)} neurons: {len(idx)} of them are in layer "
                               f"{layer}, which has only {pool} other neurons of its {d_mlp} to draw from; "
                               "compare fewer neurons with random ones")
