"""Attribution of a fine-tuning change to individual neurons (Yang et al. 2024, "Ablation is
Not Enough to Emulate DPO").

For every MLP neuron, its projection onto the unit direction ``w`` is
``p[l, i] = mean over evaluation tokens of a[l, i] * (v[l, i] . w)``, each model with its OWN
activations ``a`` and its OWN value vectors ``v``. The neuron's contribution to the change is
``delta = p_before - p_after`` (positive = the neuron lowered the projection, i.e. toxicity),
split exactly into an activation part ``(mean a_before - mean a_after) * d_before`` and a weight
part ``mean a_after * (d_before - d_after)`` with ``d = v . w``.

Attention heads are attributed the same way: head ``h`` of layer ``l`` writes
``p[l, h] = mean over tokens of (z[l, h] W_O[l, h]) . w = mean z[l, h] . u[l, h]`` with
``u = W_O w``, each model with its own ``z`` and ``W_O``; ``delta = p_before - p_after`` splits
exactly into a pattern/value part ``(mean z_before - mean z_after) . u_before`` and a weight part
``mean z_after . (u_before - u_after)``.

Only per-neuron and per-head SUMS are accumulated over batches (no activation cache is kept), so
memory does not grow with the number of tokens. The exactness check (:attr:`Attribution.check`)
closes over everything, each part computed on its own: embeddings (their projection sums) +
every head (its z sums and W_O) + the attention output biases (``b_O . w``) + every neuron (its
activation sums and value vectors) + the MLP output biases (``b_out . w``) = the change of the
residual stream's projection at the direction's layer (its own projection sums). No part is
defined as what the others leave, so a wrong neuron or head term shows in the error.

Post-norm models (Gemma 2 / 3, OLMo 2 / 3) add ``g * x / s`` for each attention and MLP output
``x``, with the norm's weight ``g`` and the token's RMS scale ``s``: there every activation and z is
divided by its token's ``s`` before it is averaged (so ``a`` above is that scaled activation), the
value vectors and ``W_O`` are multiplied by ``g``, and each bias counts ``1 / s`` per token, which
keeps the split exact (:func:`post_norms`).

Token modes: ``own`` — each model's own greedy continuations, evaluated at the positions that
generated them (as in the paper); ``shared`` — both models read the same text (the before
model's continuations), so only the models differ, not the tokens.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechtox.data import pad, pad_id
from mechtox.errors import IncompatibleError, MechtoxError
from mechtox.generation import Generations, generate
from mechtox.models import same_architecture
from mechtox.neurons import norm_weight, unit_vector, value_vector_rows

Mode = Literal["own", "shared"]

REDUCING = ("TP-", "TN+", "AP+", "AN-")
INCREASING = ("TP+", "TN-", "AP-", "AN+")
GROUP_MEANING = {
    "TP-": "toxic value vector, positive activation, activation falls",
    "TN+": "toxic value vector, negative activation, becomes more negative",
    "AP+": "anti-toxic value vector, positive activation, activation rises",
    "AN-": "anti-toxic value vector, negative activation, becomes less negative",
    "TP+": "toxic, positive, activation rises (increases toxicity)",
    "TN-": "toxic, negative, becomes less negative (increases toxicity)",
    "AP-": "anti-toxic, positive, activation falls (increases toxicity)",
    "AN+": "anti-toxic, negative, becomes more negative (increases toxicity)",
    "unchanged": "mean activation exactly the same before and after (a layer the fine-tuning left alone, read "
                 "on shared tokens); any contribution is from its weights",
}
NEURON_GROUPS = (*REDUCING, *INCREASING, "unchanged")


def target_layer(model: HookedTransformer, hook_name: str) -> int:
    """The last block whose output the residual stream a direction reads holds:
    ``blocks.L.hook_resid_post`` -> L, ``blocks.L.hook_resid_pre`` -> L - 1 (the same stream);
    the final norm's hooks -> the last block (the pre-norm stream is projected). Any other hook
    (``hook_resid_mid``, a block's output, the embeddings, ``blocks.0.hook_resid_pre``) is an
    :class:`IncompatibleError`: the attribution closes over whole blocks, so a stream between
    them, or no block at all, would be attributed as another one."""
    m = re.match(r"^blocks\.(\d+)\.hook_resid_(post|pre)$", hook_name)
    if m and int(m.group(1)) < model.cfg.n_layers:
        layer = int(m.group(1))
        layer = layer if m.group(2) == "post" else layer - 1
        if layer >= 0:
            return layer
    if re.match(r"^ln_final\.hook_(normalized|scale)$", hook_name):
        return model.cfg.n_layers - 1
    raise IncompatibleError(
        f"a direction at {hook_name} cannot be attributed: attribution splits the residual stream after a whole block "
        f"into its parts, and {hook_name} is "
        + ("the stream before any block" if hook_name == "blocks.0.hook_resid_pre" else "not such a stream")
        + "; use one at blocks.L.hook_resid_post (what mechtox probe saves), blocks.L.hook_resid_pre (L >= 1) or "
        "ln_final.hook_normalized")


def check_decomposable(model: HookedTransformer) -> None:
    """Raise :class:`IncompatibleError` unless the residual stream of ``model`` is the sum the
    attribution splits: embeddings + each head's ``z W_O`` + ``b_O`` + each neuron's ``a W_out`` +
    ``b_out``, or, where each attention and MLP output passes an RMS norm before it is added (Gemma 2 /
    3, OLMo 2 / 3), the same with every term divided by its token's norm scale and multiplied by the
    norm's weight (:func:`post_norms`). Refused: post-norms that centre (LayerNorm), embeddings that
    are normalised (BLOOM's ``post_embedding_ln``) and attention-only models: there a head's or
    neuron's write is not what reaches the stream, and every share would be wrong."""
    c = model.cfg
    norms = [n for pair in post_norms(model, c.n_layers) for n in pair if n is not None]
    why = ("it normalises each attention and MLP output with a norm that centres it (LayerNorm) before adding it "
           "to the residual stream" if any(not _is_rms(n) for n in norms)
           else "it normalises the embeddings before the first block (post_embedding_ln)" if c.post_embedding_ln
           else "it has no MLP neurons (attention only)" if c.attn_only else "")
    if why:
        raise IncompatibleError(f"model {c.model_name!r} cannot be attributed neuron by neuron: {why}, so a "
                                "neuron's or head's write is not what reaches the stream")


def _is_rms(norm) -> bool:
    from transformer_lens.components import RMSNorm, RMSNormPre

    return isinstance(norm, (RMSNorm, RMSNormPre))


def post_norms(model: HookedTransformer, L: int) -> list[tuple]:
    """Per block ``< L``: the norms its attention and MLP outputs pass before they are added to the
    residual stream (None for none). Such a norm makes each term's write ``g * x / s``, with weight
    ``g`` and the token's scale ``s``: the attribution divides the activations and z by ``s`` (the
    norm's ``hook_scale``) token by token and multiplies the value vectors and ``W_O`` by ``g``."""
    from mechtox.neurons import post_attn_norm, post_mlp_norm

    return [(post_attn_norm(model, i), post_mlp_norm(model, i)) for i in range(L)]


CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
"""the exactness check's allowed error, relative to the size of the change and its parts (the sum of
their absolute values). Other dtypes: 0.25, a coarse check: bfloat16 rounding alone leaves errors of
about 5% of that size on SmolLM2 (float32: 1e-5 or less); attribute in float32 for an exact one."""

CHECK_ROUNDING = {torch.float32: 1e-6, torch.float64: 1e-13}
"""the exactness check's allowance for rounding, relative to the size of the two models' own parts
(each model's neurons and heads, in absolute value: :attr:`Attribution.check_scale`): the change is a
difference of those, so where it is near 0 (a model against its own reloaded copy, a short
fine-tuning) their rounding is all its error. Without it, a model and its saved-and-reloaded copy
failed the check (error 5.9e-8 on the tiny model, 1e-9 allowed). Other dtypes: 1e-2."""


@dataclass
class _Sums:
    act: Tensor  # [L, M] sum of activations over evaluation tokens (each divided by its post-norm scale)
    n_tokens: int
    resid: float  # sum of projection of the target residual stream
    parts: dict[str, float]  # sums of projections of the embeddings
    z: Tensor  # [L, H, d_head] sum of each head's z over evaluation tokens (the same)
    act_raw: Tensor  # [L, M] the activations' sums as they are (to patch to)
    z_raw: Tensor  # [L, H, d_head] the same for z
    inv_scale: Tensor  # [L, 2] sums of 1 / scale of the post-attention and post-MLP norms (no norm: 1 a token)


def _predicting_batches(model: HookedTransformer, seqs: Sequence[Sequence[int]], starts: Sequence[int],
                        batch_size: int, dtype: torch.dtype, progress: bool):
    """Right-padded batches of ``seqs`` (shortest first) on the model's device, each with a
    [B, T] mask of ``dtype`` that is 1 at the positions ``start-1 .. len-2`` of each sequence:
    the positions that predict tokens ``start..``."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    pid = pad_id(model)
    for s in tqdm(range(0, len(order), batch_size), desc="attribution", disable=not progress, leave=False):
        idx = order[s: s + batch_size]
        batch = pad([list(seqs[i]) for i in idx], pid, "right").to(model.cfg.device)
        mask = torch.zeros_like(batch.attention_mask, dtype=dtype)
        for r, i in enumerate(idx):
            mask[r, starts[i] - 1: len(seqs[i]) - 1] = 1.0
        yield batch, mask


@torch.inference_mode()
def projection_sums(model: HookedTransformer, seqs: Sequence[Sequence[int]], starts: Sequence[int], w: Tensor,
                    layer: int, batch_size: int = 16, progress: bool = True) -> _Sums:
    """Per-neuron activation sums and component projection sums over the positions
    ``start-1 .. len-2`` of each sequence (the positions that predict tokens ``start..``)."""
    L, M = layer + 1, model.cfg.d_mlp
    dev = model.cfg.device
    w = w.to(dev, torch.float32)
    act = torch.zeros(L, M, dtype=torch.float64, device=dev)
    zsum = torch.zeros(L, model.cfg.n_heads, model.cfg.d_head, dtype=torch.float64, device=dev)
    norms = post_norms(model, L)
    scaled = {(i, which) for i, pair in enumerate(norms) for which, n in enumerate(pair) if n is not None}
    act_eff, z_eff = (torch.zeros_like(act), torch.zeros_like(zsum)) if scaled else (act, zsum)
    inv = torch.zeros(L, 2, dtype=torch.float64, device=dev)
    parts: dict[str, float] = {}
    state: dict[str, Tensor] = {}

    def add_part(name: str, x: Tensor) -> None:
        m = state["mask"]
        parts[name] = parts.get(name, 0.0) + float(((x.float() @ w) * m).sum())

    def mlp_hook(a, hook):
        l_ = int(hook.name.split(".")[1])
        s = (a.float() * state["mask"][..., None]).sum((0, 1)).double()
        act[l_] += s
        if (l_, 1) in scaled:  # divided by the post-norm's scale at its hook
            state[f"mlp{l_}"] = a
        elif scaled:
            act_eff[l_] += s

    def part_hook(x, hook):
        add_part(hook.name, x)

    def z_hook(z, hook):
        l_ = int(hook.name.split(".")[1])
        s = (z.float() * state["mask"][..., None, None]).sum((0, 1)).double()
        zsum[l_] += s
        if (l_, 0) in scaled:
            state[f"attn{l_}"] = z
        elif scaled:
            z_eff[l_] += s

    def scale_hook(scale, hook, layer: int, which: int):
        # the post-norm's scale s [B, T, 1] of this block's attention (0) or MLP (1) output
        m = state["mask"] / scale[..., 0].float()
        inv[layer, which] += m.sum().double()
        x = state.pop(f"{('attn', 'mlp')[which]}{layer}").float()
        if which == 0:
            z_eff[layer] += (x * m[..., None, None]).sum((0, 1)).double()
        else:
            act_eff[layer] += (x * m[..., None]).sum((0, 1)).double()

    hooks: list[tuple[str | Callable, Callable]] = [(f"blocks.{i}.mlp.hook_post", mlp_hook) for i in range(L)]
    hooks += [(f"blocks.{i}.attn.hook_z", z_hook) for i in range(L)]
    hooks += [(norms[i][which].hook_scale.name, functools.partial(scale_hook, layer=i, which=which))
              for i, which in sorted(scaled)]
    hooks += [("hook_embed", part_hook)]
    if "hook_pos_embed" in model.hook_dict and model.cfg.positional_embedding_type == "standard":
        hooks.append(("hook_pos_embed", part_hook))
    hooks += [(f"blocks.{layer}.hook_resid_post", part_hook)]
    n_tok = 0
    for batch, mask in _predicting_batches(model, seqs, starts, batch_size, torch.float32, progress):
        state["mask"] = mask
        n_tok += int(mask.sum())
        with model.hooks(fwd_hooks=hooks):
            model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=layer + 1)
    for i in range(L):  # no norm: each term counts once per token
        for which in (0, 1):
            if (i, which) not in scaled:
                inv[i, which] = n_tok
    resid = parts.pop(f"blocks.{layer}.hook_resid_post")
    return _Sums(act_eff.float().cpu(), n_tok, resid, parts, z_eff.cpu(), act.float().cpu(), zsum.cpu(),
                 inv.cpu())


@dataclass(frozen=True)
class Attribution:
    """Per-neuron attribution of the change between two models along a direction."""

    neurons: pd.DataFrame
    """layer, neuron, cos_before, d_before, d_after, act_before, act_after, p_before, p_after,
    delta, delta_act, delta_weight, group"""
    groups: pd.DataFrame
    """per group: n, contribution, share_of_gross (of the summed reducing groups), share_of_net"""
    per_layer: pd.DataFrame
    """contribution per layer and group"""
    check: dict[str, float]
    """total change of the residual projection, each part (embeddings, heads, attention biases,
    neurons, MLP biases) computed on its own, and the error"""
    mode: str
    n_tokens: dict[str, int]
    direction: str
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)
    """layer, head, p_before, p_after, delta, delta_pattern_value, delta_weight, group"""
    head_groups: pd.DataFrame = field(default_factory=pd.DataFrame)
    """per head group: n, contribution, share_of_gross, share_of_net (as for neurons)"""
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)
    """per layer: neurons, heads, attention_bias, mlp_bias (the check's parts by layer)"""
    z_after: Tensor | None = None
    """[L, H, d_head]: each head's mean z in the after model as ``hook_z`` reads it (to patch heads to)"""
    check_limit: float = float("inf")
    """the largest error the check allows (:data:`CHECK_TOLERANCE` times the change and its parts' sizes,
    plus :data:`CHECK_ROUNDING` times :attr:`check_scale`)"""
    act_after_mean: Tensor | None = None
    """[L, d_mlp]: each neuron's mean activation in the after model as ``hook_post`` reads it (to patch
    neurons to). The table's ``act_after`` is the same except in a post-norm model, where it is
    divided by each token's norm scale first"""
    check_scale: float = 0.0
    """the two models' own parts in absolute value (the neurons' ``p_before`` and ``p_after``, the
    heads' the same): the check allows :data:`CHECK_ROUNDING` of it for rounding"""

    @property
    def check_passed(self) -> bool:
        """Whether the parts add up to the change within :attr:`check_limit`: where not, the
        decomposition does not describe these models and the tables are not to be trusted."""
        return abs(self.check["error"]) <= self.check_limit  # NaN fails

    def summary(self) -> str:
        """One line: the change of the projection, what neurons and heads carry of it, the check's error."""
        c = self.check
        total, other = c["total_change"], c["total_change"] - c["neurons"] - c["heads"] - c["error"]
        failed = "" if self.check_passed else f" > {self.check_limit:.1g} allowed: the EXACTNESS CHECK FAILED"
        return (f"{self.mode} tokens, direction {self.direction!r}: the mean projection {'fell' if total >= 0 else 'rose'} "
                f"by {abs(total):.4g} (before - after {total:+.4g} = neurons {c['neurons']:+.4g} + heads "
                f"{c['heads']:+.4g} + other parts {other:+.4g}; error {c['error']:.1g}{failed})")

    def __repr__(self) -> str:
        return f"Attribution({self.summary()})"

    def _repr_html_(self) -> str:
        from mechtox.tables import notebook_html

        return notebook_html(f"Attribution: {self.summary()}", [
            ("neuron groups", self.groups), ("head groups", self.head_groups),
            ("neurons, largest contribution first", self.neurons.sort_values("delta", ascending=False))])


HEAD_GROUPS = {
    "T-": "writes toward the direction, less after (lowers the projection)",
    "A+": "writes away from it, more so after (lowers the projection)",
    "T+": "writes toward the direction, more after (raises it)",
    "A-": "writes away from it, less so after (raises it)",
    "unchanged": "the same projection before and after, exactly",
}


def _u(model: HookedTransformer, w: Tensor, L: int) -> Tensor:
    """``W_O[l, h] @ (g * w)`` per layer and head, ``g`` the post-attention norm's weight (1 without): [L, H, d_head]."""
    return torch.stack([model.blocks[i].attn.W_O.detach().float().cpu() @ _weighted(w, norm)
                        for i, (norm, _) in enumerate(post_norms(model, L))])


def _weighted(w: Tensor, norm) -> Tensor:
    g = norm_weight(norm)
    return w if g is None else w * g.float().cpu()


def _bias_proj(model: HookedTransformer, w: Tensor, L: int, which: str) -> Tensor:
    """``b . (g * w)`` per layer for the attention (``b_O``) or MLP (``b_out``) output biases, ``g``
    the weight of the norm the output passes (1 without): [L]."""
    out = []
    for i, norms in enumerate(post_norms(model, L)):
        b = model.blocks[i].attn.b_O if which == "attn" else model.blocks[i].mlp.b_out
        out.append(b.detach().float().cpu() @ _weighted(w, norms[which != "attn"]))
    return torch.stack(out)


def _head_table(zb: Tensor, za: Tensor, ub: Tensor, ua: Tensor) -> pd.DataFrame:
    p_b, p_a = (zb * ub).sum(-1), (za * ua).sum(-1)
    L, H = p_b.shape
    t = pd.DataFrame({
        "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
        "p_before": p_b.numpy().ravel(), "p_after": p_a.numpy().ravel(), "delta": (p_b - p_a).numpy().ravel(),
        "delta_pattern_value": ((zb - za) * ub).sum(-1).numpy().ravel(),
        "delta_weight": (za * (ub - ua)).sum(-1).numpy().ravel(),
    })
    toward, lower = t["p_before"] >= 0, t["delta"] > 0
    t["group"] = np.where(t["delta"] == 0, "unchanged",
                          np.where(toward, np.where(lower, "T-", "T+"), np.where(lower, "A+", "A-")))
    return t


def _group_table(table: pd.DataFrame, order: Sequence[str], reducing: Sequence[str], meaning: dict[str, str],
                 parts: tuple[str, str]) -> pd.DataFrame:
    gross = float(table.loc[table["group"].isin(reducing), "delta"].sum())
    net = float(table["delta"].sum())
    rows = []
    for g in order:
        sel = table[table["group"] == g]
        if g == "unchanged" and not len(sel):  # listed only where some are
            continue
        c = float(sel["delta"].sum())
        rows.append({"group": g, "reduces": g in reducing, "n": len(sel), "contribution": c,
                     parts[0]: float(sel[parts[0]].sum()), parts[1]: float(sel[parts[1]].sum()),
                     "share_of_gross": c / gross if gross else float("nan"),
                     "share_of_net": c / net if net else float("nan"), "meaning": meaning[g]})
    return pd.DataFrame(rows)


def _d(model: HookedTransformer, w: Tensor, L: int) -> tuple[Tensor, Tensor]:
    V = torch.stack([value_vector_rows(model, i).cpu() for i in range(L)])
    return V @ w, V.norm(dim=-1)


def classify(cos_before: np.ndarray, act_before: np.ndarray, act_after: np.ndarray) -> np.ndarray:
    """The group of each neuron: T/A by the sign of cos(v_before, w), P/N by the sign of the
    mean activation before (P: >= 0), then the direction of the activation change; ``unchanged``
    where the mean activation is exactly the same (a tie was counted as a fall: every neuron of
    a layer the fine-tuning did not reach landed in TP-, TN+, AP- or AN+)."""
    T = cos_before > 0
    P = act_before >= 0
    up = act_after > act_before
    down = act_after < act_before
    out = np.full(len(cos_before), "unchanged", dtype=object)
    out[T & P & down] = "TP-"
    out[T & ~P & down] = "TN+"
    out[~T & P & up] = "AP+"
    out[~T & ~P & up] = "AN-"
    out[T & P & up] = "TP+"
    out[T & ~P & up] = "TN-"
    out[~T & P & down] = "AP-"
    out[~T & ~P & down] = "AN+"
    return out


def attribute(before: HookedTransformer, after: HookedTransformer, direction, prompts: Sequence[str] | None = None,
              mode: Mode = "own", max_new_tokens: int = 20, max_prompt_tokens: int = 32, batch_size: int = 16,
              generations: dict[str, Generations] | None = None, progress: bool = True) -> Attribution:
    """Attribute the change of the projection on ``direction`` from ``before`` to ``after``.

    ``generations`` may pass precomputed continuations (``{"before": ..., "after": ...}``).
    """
    same_architecture(before, after)
    check_decomposable(before)
    vec = getattr(direction, "vector", direction)
    if not isinstance(vec, Tensor):
        raise MechtoxError("direction must be a tensor or a Direction")
    if vec.shape != (before.cfg.d_model,):
        raise IncompatibleError(f"direction has shape {tuple(vec.shape)} but the models have d_model {before.cfg.d_model}")
    hook = getattr(direction, "hook_name", f"blocks.{before.cfg.n_layers - 1}.hook_resid_post")
    w = unit_vector(vec.float().cpu())  # a zero or NaN direction had given NaN throughout
    layer = target_layer(before, hook)
    gens = dict(generations or {})
    if "before" not in gens:
        if prompts is None:
            raise MechtoxError("attribution needs prompts (or generations)")
        gens["before"] = generate(before, prompts, max_new_tokens, max_prompt_tokens, 25, stop_at_eos=False,
                                  progress=progress)
    if mode == "own" and "after" not in gens:
        gens["after"] = generate(after, gens["before"].prompts, max_new_tokens, max_prompt_tokens, 25,
                                 stop_at_eos=False, progress=progress)
    elif mode == "shared":
        gens["after"] = gens["before"]
    elif mode != "own":
        raise MechtoxError(f"unknown token mode {mode!r}; use own or shared")

    def seqs(g: Generations):
        keep = [i for i, c in enumerate(g.continuation_ids) if c]
        if not keep:
            raise MechtoxError("no generated tokens to attribute over")
        return [g.prompt_ids[i] + g.continuation_ids[i] for i in keep], [len(g.prompt_ids[i]) for i in keep]

    sb = projection_sums(before, *seqs(gens["before"]), w, layer, batch_size, progress)
    sa = projection_sums(after, *seqs(gens["after"]), w, layer, batch_size, progress)
    L = layer + 1
    d_b, norm_b = _d(before, w, L)
    d_a, _ = _d(after, w, L)
    a_b = sb.act / sb.n_tokens
    a_a = sa.act / sa.n_tokens
    p_b, p_a = a_b * d_b, a_a * d_a
    delta = p_b - p_a
    cos_b = (d_b / norm_b.clamp_min(1e-12)).numpy().ravel()
    table = pd.DataFrame({
        "layer": np.repeat(np.arange(L), before.cfg.d_mlp), "neuron": np.tile(np.arange(before.cfg.d_mlp), L),
        "cos_before": cos_b, "d_before": d_b.numpy().ravel(), "d_after": d_a.numpy().ravel(),
        "act_before": a_b.numpy().ravel(), "act_after": a_a.numpy().ravel(),
        "p_before": p_b.numpy().ravel(), "p_after": p_a.numpy().ravel(), "delta": delta.numpy().ravel(),
        "delta_act": ((a_b - a_a) * d_b).numpy().ravel(), "delta_weight": (a_a * (d_b - d_a)).numpy().ravel(),
    })
    table["group"] = classify(table["cos_before"].to_numpy(), table["act_before"].to_numpy(), table["act_after"].to_numpy())

    # heads: each model's own mean z and W_O
    ub, ua = _u(before, w, L), _u(after, w, L)
    heads = _head_table(sb.z / sb.n_tokens, sa.z / sa.n_tokens, ub, ua)
    head_groups = _group_table(heads, tuple(HEAD_GROUPS), ("T-", "A+"), HEAD_GROUPS,
                               ("delta_pattern_value", "delta_weight"))
    # exactness: every part on its own (means over each model's tokens)
    # each bias counts once per token, divided by the token's post-norm scale where there is one
    sc_b, sc_a = sb.inv_scale / sb.n_tokens, sa.inv_scale / sa.n_tokens
    attn_bias = _bias_proj(before, w, L, "attn") * sc_b[:, 0] - _bias_proj(after, w, L, "attn") * sc_a[:, 0]
    mlp_bias = _bias_proj(before, w, L, "mlp") * sc_b[:, 1] - _bias_proj(after, w, L, "mlp") * sc_a[:, 1]
    emb = sum(sb.parts[k] / sb.n_tokens - sa.parts[k] / sa.n_tokens for k in sb.parts)
    total = sb.resid / sb.n_tokens - sa.resid / sa.n_tokens
    neuron_sum = float(delta.sum())
    head_sum = float(heads["delta"].sum())
    check = {"total_change": total, "embeddings": emb, "heads": head_sum, "attention_biases": float(attn_bias.sum()),
             "neurons": neuron_sum, "mlp_biases": float(mlp_bias.sum())}
    check["error"] = total - sum(v for k, v in check.items() if k != "total_change")
    size = abs(total) + sum(abs(v) for k, v in check.items() if k not in ("total_change", "error"))
    own = float(p_b.abs().sum() + p_a.abs().sum()) + float(heads["p_before"].abs().sum() + heads["p_after"].abs().sum())
    limit = CHECK_TOLERANCE.get(before.cfg.dtype, 0.25) * size + CHECK_ROUNDING.get(before.cfg.dtype, 1e-2) * own + 1e-12
    layers = pd.DataFrame({"layer": np.arange(L), "neurons": delta.sum(1).numpy(),
                           "heads": heads.groupby("layer")["delta"].sum().to_numpy(),
                           "attention_bias": attn_bias.numpy(), "mlp_bias": mlp_bias.numpy()})

    groups = _group_table(table, NEURON_GROUPS, REDUCING, GROUP_MEANING, ("delta_act", "delta_weight"))
    groups = groups.rename(columns={"delta_act": "from_activation", "delta_weight": "from_weights"})
    per_layer = table.pivot_table(index="layer", columns="group", values="delta", aggfunc="sum", fill_value=0.0)
    per_layer = per_layer.reindex(columns=[g for g in NEURON_GROUPS if g in per_layer.columns]).reset_index()
    res = Attribution(table, groups, per_layer, check, mode, {"before": sb.n_tokens, "after": sa.n_tokens},
                      getattr(direction, "name", "") or "direction", heads, head_groups, layers,
                      (sa.z_raw / sa.n_tokens).float(), limit, sa.act_raw / sa.n_tokens, own)
    if not res.check_passed:
        import warnings

        warnings.warn(f"the attribution's exactness check failed: the parts add up to the change of the projection "
                      f"with an error of {check['error']:.3g} (at most {limit:.1g} allowed); the neuron and head tables "
                      f"do not describe {before.cfg.model_name!r}", stacklevel=2)
    return res


def head_sources(model: HookedTransformer, gens: Generations, heads: pd.DataFrame, keep: Sequence[int] | None = None,
                 k: int = 5, batch_size: int = 16) -> pd.DataFrame:
    """What each head in ``heads`` (rows with ``layer``, ``head``) attends to: its attention
    pattern at the positions that predict the continuation tokens of ``gens`` (those listed in
    ``keep``, default all), summed per source token id. Returns ``heads`` plus ``first_share``
    (the share of attention on each sequence's first position, where heads rest) and
    ``attends_to``: the ``k`` source tokens with the most attention and their shares.

    GQA models share keys and values between query heads but each query head has its own
    pattern (TransformerLens' ``hook_pattern``), which is the one read here."""
    if len(heads) == 0:
        return heads.assign(first_share=[], attends_to=[])
    pairs = [(int(a), int(b)) for a, b in zip(heads["layer"], heads["head"], strict=True)]
    share, first = source_shares(model, gens, pairs, keep, batch_size)
    top = share.topk(min(k, share.shape[1]), dim=1)
    out = heads.copy()
    out["first_share"] = first.numpy()
    out["attends_to"] = [" | ".join(f"{repr(model.to_string([t]))[1:-1]} {v:.0%}" for t, v in zip(ids, vals, strict=True) if v > 0)
                         for ids, vals in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
    return out


@torch.inference_mode()
def source_shares(model: HookedTransformer, gens: Generations, heads: Sequence[tuple[int, int]],
                  keep: Sequence[int] | None = None, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """For each (layer, head): the share of its attention, summed over the continuation-predicting
    positions, that lands on each source token id ([n_heads, d_vocab]), and on the first position
    ([n_heads]). Batches are right-padded; padding gets no attention (it lies after every query)."""
    idx = [i for i in (range(len(gens)) if keep is None else keep) if gens.continuation_ids[i]]
    if not idx:
        raise MechtoxError("no generated tokens to read attention patterns on")
    dev = model.cfg.device
    mass = torch.zeros(len(heads), model.cfg.d_vocab, dtype=torch.float64, device=dev)
    first = torch.zeros(len(heads), dtype=torch.float64, device=dev)
    state: dict[str, Tensor] = {}
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for j, (layer, h) in enumerate(heads):
        by_layer.setdefault(layer, []).append((j, h))

    def pattern_hook(pat, hook):
        q = state["mask"]                                   # [B, Tq]: the evaluation positions
        for j, h in by_layer[int(hook.name.split(".")[1])]:
            w = (pat[:, h].double() * q[..., None]).sum(1)  # [B, Tk]: attention summed over them
            mass[j].scatter_add_(0, state["tokens"].reshape(-1), w.reshape(-1))
            first[j] += w[:, 0].sum()

    hooks = [(f"blocks.{layer}.attn.hook_pattern", pattern_hook) for layer in by_layer]
    seqs = [gens.prompt_ids[i] + gens.continuation_ids[i] for i in idx]
    starts = [len(gens.prompt_ids[i]) for i in idx]
    for batch, mask in _predicting_batches(model, seqs, starts, batch_size, torch.float64, progress=False):
        state["mask"], state["tokens"] = mask, batch.tokens
        with model.hooks(fwd_hooks=hooks):
            model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=max(by_layer) + 1)
    total = mass.sum(1).clamp_min(1e-30)
    return (mass / total[:, None]).float().cpu(), (first / total).float().cpu()


def after_means(neurons: pd.DataFrame, n_layers: int, d_mlp: int, col: str = "act_after") -> Tensor:
    """A [n_layers, d_mlp] tensor of ``neurons[col]`` (neurons not in the table: 0)."""
    out = torch.zeros(n_layers, d_mlp)
    rows = torch.tensor(neurons["layer"].to_numpy(dtype="int64", copy=True))
    cols = torch.tensor(neurons["neuron"].to_numpy(dtype="int64", copy=True))
    out[rows, cols] = torch.tensor(neurons[col].to_numpy(dtype="float32", copy=True))
    return out


def ablation_vs_patching(neurons: pd.DataFrame, n_layers: int, d_mlp: int, ks: Sequence[int] = (100, 200, 1000),
                         heads: pd.DataFrame | None = None, z_after: Tensor | None = None,
                         head_ks: Sequence[int] = (10,), act_after: Tensor | None = None) -> list:
    """Yang et al.'s comparison on the before model: zero-ablating the top-k toxic neurons (by
    cosine; and only those with a positive activation) against patching each reducing group's
    neurons to their mean activation in the after model. With ``heads`` and ``z_after`` (from an
    :class:`Attribution`), also the top-k reducing heads patched to the after model's mean z,
    every reducing head, and all reducing heads and neurons together. ``neurons`` is an
    attribution's neuron table; ``act_after`` the values to patch neurons to (default the table's
    ``act_after``; pass :attr:`Attribution.act_after_mean` for a post-norm model, whose table holds
    the activations divided by the norm's scale); the list starts with the no-op."""
    import dataclasses

    from mechtox.interventions import NOOP, ablate, combined, set_heads, set_neurons

    by_cos = neurons.sort_values("cos_before", ascending=False)
    pos = by_cos[by_cos["act_before"] > 0]
    means = after_means(neurons, n_layers, d_mlp)
    if act_after is not None:
        means[: act_after.shape[0]] = act_after
    ivs = [NOOP]
    for k in ks:
        for pool, what in ((by_cos, "toxic (cosine)"), (pos, "toxic with positive activation")):
            # the table holds only the layers that write the direction's hook, and fewer neurons may have a
            # positive activation: a k above what there is ablates them all, and says so (once)
            top = pool.head(k)
            name = f"ablate top-{k} {what}" if len(top) == k else f"ablate all {len(top)} {what}"
            if len(top) and name not in {iv.name for iv in ivs}:
                ivs.append(dataclasses.replace(ablate(top), name=name))
    damp = neurons[neurons["group"] == "TP-"]
    ivs.append(set_neurons(damp, means, name=f"patch {len(damp)} dampened toxic neurons (TP-) to after-mean"))
    for g in REDUCING[1:]:  # TP- is the dampened-toxic patch above
        sel = neurons[neurons["group"] == g]
        if len(sel):
            ivs.append(set_neurons(sel, means, name=f"patch group {g} ({len(sel)}) to after-mean"))
    if heads is not None and z_after is not None:
        red = heads[heads["delta"] > 0].sort_values("delta", ascending=False)
        for k in head_ks:
            if 0 < k < len(red):
                ivs.append(set_heads(red.head(k), z_after, name=f"patch top-{k} reducing heads to after-mean z"))
        if len(red):
            all_heads = set_heads(red, z_after, name=f"patch all {len(red)} reducing heads to after-mean z")
            ivs.append(all_heads)
            red_n = neurons[neurons["group"].isin(REDUCING)]
            ivs.append(combined(f"patch all reducing heads ({len(red)}) and neurons ({len(red_n)}) to after-means",
                                all_heads, set_neurons(red_n, means)))
    return ivs
