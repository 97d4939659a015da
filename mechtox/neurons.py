"""Toxic-neuron ranking (Lee et al. 2024, item 2).

MLP neuron ``i`` of layer ``l`` writes ``a[l, i] * v[l, i]`` into the residual stream, with
value vector ``v[l, i] = W_out[l, i, :]``. Neurons are ranked by ``cos(v, w)`` with a toxicity
direction ``w``; value vectors are decoded through the final norm's weight and the unembedding
(logit lens); the top-N toxic value vectors are summarised by an SVD whose singular vectors are
oriented to have a positive dot product with ``w``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mechtox._typecheck import is_whole_number
from mechtox.activations import collect_activations
from mechtox.errors import IncompatibleError, MechtoxError


def mlp_post_hook(layer: int) -> str:
    """The hook of neuron activations ``a[l, :]`` (for gated MLPs ``act(gate) * up``)."""
    return f"blocks.{layer}.mlp.hook_post"


def post_mlp_norm(model: HookedTransformer, layer: int):
    """The norm each MLP output passes through before it is added to the residual stream (Gemma 2 / 3,
    TransformerLens' ``use_normalization_before_and_after``: ``ln2_post``; OLMo 2 / 3, which
    normalise only after: ``ln2``), or None where the MLP output is added as it is."""
    return _post_norm(model, layer, 2)


def post_attn_norm(model: HookedTransformer, layer: int):
    """The norm each attention output passes through before it is added to the residual stream
    (``ln1_post`` where TransformerLens' ``use_normalization_before_and_after``, ``ln1`` for OLMo 2 /
    3), or None where the attention output is added as it is."""
    return _post_norm(model, layer, 1)


def _post_norm(model: HookedTransformer, layer: int, sublayer: int):
    """``ln{sublayer}_post`` or, for TransformerLens' post-norm architectures, ``ln{sublayer}`` of
    block ``layer`` (1: attention, 2: MLP); None where there is none or it is the identity."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    if model.cfg.use_normalization_before_and_after:
        norm = getattr(model.blocks[layer], f"ln{sublayer}_post")
    elif model.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        norm = getattr(model.blocks[layer], f"ln{sublayer}")
    else:
        return None
    return None if isinstance(norm, torch.nn.Identity) else norm


def norm_weight(norm) -> Tensor | None:
    """A post-norm's weight ``g`` (detached), or None for none or a norm without one (RMSNormPre)."""
    w = getattr(norm, "w", None)
    return None if w is None else w.detach()


def value_vector(model: HookedTransformer, layer: int, neuron: int) -> Float[Tensor, " d_model"]:
    """The direction neuron ``neuron`` of ``layer`` writes into the residual stream: ``W_out[l, i]``,
    times the post-MLP norm's weight where the model has one (Gemma 2 / 3 add
    ``g * (sum_i a_i W_out[i] + b_out) / rms``, so neuron i writes along ``g * W_out[i]``, scaled by
    the token's positive ``a_i / rms``)."""
    v = model.blocks[layer].mlp.W_out[neuron].detach()
    g = norm_weight(post_mlp_norm(model, layer))
    return v if g is None else v * g.to(v)


def value_vectors(model: HookedTransformer) -> Float[Tensor, "n_layers d_mlp d_model"]:
    """All value vectors (:func:`value_vector`) stacked over layers, detached, in float32."""
    return torch.stack([value_vector_rows(model, i) for i in range(model.cfg.n_layers)])


def value_vector_rows(model: HookedTransformer, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """The value vectors (:func:`value_vector`) of every neuron of ``layer``, detached, in float32."""
    V = model.blocks[layer].mlp.W_out.detach().float()
    g = norm_weight(post_mlp_norm(model, layer))
    return V if g is None else V * g.float()


def unit_vector(w: Tensor) -> Tensor:
    """``w`` at norm 1; a zero or non-finite ``w`` is an error."""
    n = w.norm()
    if not torch.isfinite(n) or n == 0:
        raise MechtoxError("the direction is zero or not finite")
    return w / n


def random_cosine_range(d_model: int, n_vectors: int, draws: int = 10, seed: int = 0) -> tuple[float, float]:
    """Range (min, max over ``draws``) of the largest cosine between one direction and
    ``n_vectors`` random Gaussian vectors in ``d_model`` dims: what top cosines look like by chance."""
    g = torch.Generator().manual_seed(seed)
    maxes = []
    chunk = 8192
    for _ in range(draws):
        w = unit_vector(torch.randn(d_model, generator=g))
        m = -1.0
        for s in range(0, n_vectors, chunk):
            v = torch.randn(min(chunk, n_vectors - s), d_model, generator=g)
            m = max(m, float((v @ w / v.norm(dim=1)).max()))
        maxes.append(m)
    return float(min(maxes)), float(max(maxes))


def expected_max_cosine(d_model: int, n_vectors: int) -> float:
    """Gaussian approximation of the largest chance cosine: ``sqrt(2 ln n / d)``."""
    return math.sqrt(2 * math.log(max(n_vectors, 2)) / d_model)


@dataclass(frozen=True)
class NeuronRanking:
    """Every neuron of every layer, sorted by cosine with the direction (most toxic first).

    ``table`` columns: ``layer, neuron, cosine, dot, norm`` (+ ``mean_act, act_proj`` when
    activations were given), ``rank`` (0 = most toxic).
    """

    table: pd.DataFrame
    direction_name: str
    chance_range: tuple[float, float]

    def top(self, k: int = 100, by: str = "cosine") -> pd.DataFrame:
        """The ``k`` neurons with the largest ``by`` (a column of :attr:`table`)."""
        if not (is_whole_number(k) and k >= 0):
            raise MechtoxError(f"k must be a whole number of at least 0, not {k!r}")
        if by not in self.table.columns or by in ("layer", "neuron", "rank"):
            raise MechtoxError(f"cannot rank by {by!r}; use one of "
                               f"{', '.join(c for c in self.table.columns if c not in ('layer', 'neuron', 'rank'))}")
        return self.table.nlargest(k, by)

    @property
    def above_chance(self) -> int:
        """How many neurons have a cosine above the largest expected by chance."""
        return int((self.table["cosine"] > self.chance_range[1]).sum())

    def summary(self) -> str:
        """One line: how many neurons, against which direction, how many above chance, the top three."""
        top = self.table.head(3)
        tops = ", ".join(f"L{int(r.layer)} N{int(r.neuron)} {r.cosine:+.3f}" for r in top.itertuples())
        name = f" {self.direction_name!r}" if self.direction_name else ""
        return (f"{len(self.table):,} neurons by cosine with{name or ' the direction'}; {self.above_chance} above "
                f"chance (> {self.chance_range[1]:.3f}); top: {tops}")

    def __repr__(self) -> str:
        return f"NeuronRanking({self.summary()})"

    def _repr_html_(self) -> str:
        from mechtox.tables import notebook_html

        return notebook_html(f"NeuronRanking: {self.summary()}", [("most toxic first", self.table)])


def rank_neurons(model: HookedTransformer, direction: Float[Tensor, " d_model"] | object,
                 mean_acts: Float[Tensor, "n_layers d_mlp"] | None = None, name: str = "",
                 chance_draws: int = 10, scale: Float[Tensor, " d_model"] | None = None) -> NeuronRanking:
    """Rank all neurons by ``cos(W_out[l, i], w)`` (the value vector :func:`value_vector`: for
    Gemma 2 / 3 times the post-MLP norm's weight).

    Args:
        direction: a ``d_model`` tensor or a :class:`~mechtox.probe.Direction`.
        mean_acts: mean activation of each neuron (e.g. on toxic text, from
            :func:`mean_activations`); adds ``mean_act`` and ``act_proj = mean_act * dot``, the
            activation-weighted ranking (how much the neuron writes along ``w`` on average).
        scale: another metric (:func:`mechtox.directions.metric_scale`): a vector ``s`` (cosines of
            ``v / s`` with ``w * s``) or a symmetric matrix ``M`` (cosines of ``v @ M`` with
            ``w @ M^-1``). ``dot`` stays ``v . w_hat`` (unchanged by the metric).
    """
    w = getattr(direction, "vector", direction)
    if not isinstance(w, Tensor):
        raise MechtoxError("direction must be a tensor or a Direction")
    if w.shape != (model.cfg.d_model,):
        raise IncompatibleError(f"direction has shape {tuple(w.shape)} but the model has d_model {model.cfg.d_model}")
    w = unit_vector(w.float().cpu())
    V = value_vectors(model).cpu()  # [L, M, D]
    norm = V.norm(dim=-1)
    dot = V @ w
    if scale is None:
        cos = dot / norm.clamp_min(1e-12)
    elif scale.dim() == 1:  # diagonal metric: vectors v / s, covectors w * s
        s = scale.float().cpu()
        cos = dot / ((V / s).norm(dim=-1).clamp_min(1e-12) * (w * s).norm())
    else:  # full metric: vectors v @ M, covectors w @ M^-T (dot products unchanged)
        M = scale.float().cpu()
        wm = torch.linalg.solve(M, w)  # = w @ M^-T for symmetric M
        cos = dot / ((V @ M).norm(dim=-1).clamp_min(1e-12) * wm.norm())
    L, M = cos.shape
    table = pd.DataFrame({
        "layer": np.repeat(np.arange(L), M),
        "neuron": np.tile(np.arange(M), L),
        "cosine": cos.flatten().numpy(),
        "dot": dot.flatten().numpy(),
        "norm": norm.flatten().numpy(),
    })
    if mean_acts is not None:
        if tuple(mean_acts.shape) != (L, M):
            raise IncompatibleError(f"mean_acts has shape {tuple(mean_acts.shape)}, expected {(L, M)}")
        table["mean_act"] = mean_acts.flatten().float().cpu().numpy()
        table["act_proj"] = table["mean_act"] * table["dot"]
    table = table.sort_values(["cosine", "layer", "neuron"], ascending=[False, True, True], kind="stable")
    table["rank"] = np.arange(len(table))
    table = table.reset_index(drop=True)
    rng = random_cosine_range(model.cfg.d_model, L * M, draws=chance_draws) if chance_draws else (float("nan"),) * 2
    return NeuronRanking(table, name or getattr(direction, "name", "") or "direction", rng)


def mean_activations(model: HookedTransformer, texts: Sequence[str], layers: Sequence[int] | None = None,
                     batch_size: int = 16, max_length: int = 64, progress: bool = True) -> Float[Tensor, "n_layers d_mlp"]:
    """Mean of every neuron's activation over all real tokens of ``texts`` (one pass)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    hooks = [mlp_post_hook(layer) for layer in layers]
    acts = collect_activations(model, texts, hooks, "tokens", batch_size, max_length, progress)
    return torch.stack([acts[h].mean(0) for h in hooks])


def unembed_basis(model: HookedTransformer) -> Float[Tensor, "d_model d_vocab"]:
    """``W_U`` scaled row-wise by the final norm's weight: what a residual direction promotes
    when read through the final norm (the norm's scale does not change the ranking)."""
    W_U = model.W_U.detach().float()
    ln = getattr(model, "ln_final", None)
    w = getattr(ln, "w", None)
    if w is not None:
        W_U = w.detach().float().unsqueeze(1) * W_U
    return W_U


def _lens_inputs(model: HookedTransformer, vectors) -> Tensor:
    """``vectors`` as ``n x d_model`` floats on the unembedding's device, centred where the final
    norm centres (LayerNorm)."""
    vecs = torch.as_tensor(vectors).detach().float().to(model.W_U.device)
    if vecs.ndim == 1:
        vecs = vecs[None]
    if vecs.ndim != 2 or vecs.shape[-1] != model.cfg.d_model:
        raise MechtoxError(f"logit lens needs vectors of the model's d_model ({model.cfg.d_model}), "
                           f"not of shape {tuple(vecs.shape)}")
    if model.cfg.normalization_type in ("LN", "LNPre"):
        vecs = vecs - vecs.mean(-1, keepdim=True)
    return vecs


def logit_lens_ids(model: HookedTransformer, vectors: Float[Tensor, "n d_model"], k: int = 10,
                   bottom: bool = False) -> list[list[int]]:
    """Ids of the top-``k`` tokens each vector promotes through the final norm and the unembedding
    (``vectors``: ``n x d_model``, or one vector)."""
    logits = _lens_inputs(model, vectors) @ unembed_basis(model)
    return logits.topk(k, dim=-1, largest=not bottom).indices.cpu().tolist()


def logit_lens(model: HookedTransformer, vectors: Float[Tensor, "n d_model"], k: int = 10,
               bottom: bool = False) -> list[list[str]]:
    """Top-``k`` tokens each vector promotes through the final norm and the unembedding."""
    if model.tokenizer is None:
        raise MechtoxError("logit lens needs a model with a tokenizer")
    return [[model.tokenizer.decode([t]) for t in row] for row in logit_lens_ids(model, vectors, k, bottom)]


def lens_hits(model: HookedTransformer, vectors: Float[Tensor, "n d_model"], token_ids, k: int = 10,
              chunk: int = 4096, screen: int = 2048) -> np.ndarray:
    """For each vector, whether a token of ``token_ids`` is among its top-``k`` logit-lens tokens
    (computed ``chunk`` vectors at a time).

    Read against the whole vocabulary only where needed: the ``screen`` tokens of largest
    unembedding norm are read first, and a vector of which ``k`` of them outscore every token of
    ``token_ids`` (by more than float32 rounding could change) has none in its top ``k``. On
    SmolLM2's 46,080 value vectors a fifth of them are then read in full, and the whole takes 5 s
    instead of 24 s on 2 CPU cores (``screen=0``: every vector in full)."""
    vecs = _lens_inputs(model, vectors)
    basis = unembed_basis(model)
    ids = sorted({int(t) for t in token_ids} & set(range(basis.shape[1])))  # others are never in a top k
    hits = np.zeros(len(vecs), dtype=bool)
    if not ids or not len(vecs):
        return hits
    rows = torch.arange(len(vecs))
    if 0 < screen and screen + len(ids) < basis.shape[1]:
        rows = _lens_screen(vecs, basis, ids, k, chunk, screen)
    found = set(ids)
    for s in range(0, len(rows), chunk):
        part = rows[s: s + chunk]
        tops = (vecs[part.to(vecs.device)] @ basis).topk(k, dim=-1).indices.cpu().tolist()
        hits[part.numpy()] = [bool(found & set(row)) for row in tops]
    return hits


def _lens_screen(vecs: Tensor, basis: Tensor, ids: list[int], k: int, chunk: int, screen: int) -> Tensor:
    """Rows of ``vecs`` that may have a token of ``ids`` in their top ``k``: those of which fewer
    than ``k`` of the ``screen`` tokens of largest norm outscore every token of ``ids`` by more
    than the float32 rounding of the two products could change (so the full product, which may
    round otherwise, cannot reorder them)."""
    norms = basis.norm(dim=0)
    slack = 4 * basis.shape[0] * torch.finfo(torch.float32).eps * norms.max()  # the toxic tokens' norms included
    norms[ids] = -1.0
    others = norms.topk(screen).indices
    sub = basis[:, torch.cat([torch.as_tensor(ids, device=basis.device), others])]
    keep = []
    for s in range(0, len(vecs), chunk):
        x = vecs[s: s + chunk]
        logits = x @ sub
        best = logits[:, :len(ids)].amax(-1, keepdim=True) + slack * x.norm(dim=-1, keepdim=True)
        keep.append(((logits[:, len(ids):] > best).sum(-1) < k).cpu())
    return torch.nonzero(torch.cat(keep)).flatten()


def activation_sign(mean_act: Tensor) -> Tensor:
    """``-1`` where ``mean_act < 0``, else ``+1``: the sign that reads a value vector the way its
    neuron writes it."""
    return torch.where(torch.as_tensor(mean_act) < 0, -1.0, 1.0)


def neuron_table(model: HookedTransformer, neurons: Any) -> pd.DataFrame:
    """``neurons`` as a table with ``layer`` and ``neuron`` columns: a table already, a
    :class:`NeuronRanking` (its table) or ``(layer, neuron)`` pairs; every neuron checked against
    the model's size."""
    if isinstance(neurons, NeuronRanking):
        neurons = neurons.table
    if not isinstance(neurons, pd.DataFrame):
        try:
            neurons = pd.DataFrame([(int(a), int(b)) for a, b in neurons], columns=["layer", "neuron"])
        except (TypeError, ValueError):
            raise MechtoxError("neurons must be a table with layer and neuron columns, a NeuronRanking, "
                               "or (layer, neuron) pairs") from None
    missing = {"layer", "neuron"} - set(neurons.columns)
    if missing:
        raise MechtoxError(f"the neuron table has no {' or '.join(sorted(missing))} column "
                           f"(columns: {', '.join(map(str, neurons.columns))})")
    n_layers, d_mlp = model.cfg.n_layers, int(model.cfg.d_mlp or 0)
    out = neurons[~(neurons["layer"].between(0, n_layers - 1) & neurons["neuron"].between(0, d_mlp - 1))]
    if len(out):
        r = out.iloc[0]
        raise MechtoxError(f"neuron ({r['layer']}, {r['neuron']}) is outside the model "
                           f"({n_layers} layers of {d_mlp} neurons)")
    return neurons


def table_value_vectors(model: HookedTransformer, table: pd.DataFrame, signed: bool = False) -> Float[Tensor, "n d_model"]:
    """The value vector (:func:`value_vector`) of each row (``layer``, ``neuron``) of ``table``;
    ``signed``: times the sign of the row's ``mean_act`` (what the neuron adds when its activation
    moves that way)."""
    table = neuron_table(model, table)
    V = torch.stack([value_vector(model, int(r.layer), int(r.neuron)) for r in table.itertuples()])
    if signed:
        if "mean_act" not in table:
            raise MechtoxError("signed decoding needs a mean_act column (rank_neurons with mean_acts)")
        V = V * activation_sign(torch.tensor(table["mean_act"].to_numpy(dtype=float))).to(V)[:, None]
    return V


def decode_neurons(model: HookedTransformer, table: pd.DataFrame, k: int = 8, signed: bool = False) -> pd.DataFrame:
    """``table`` (with ``layer``, ``neuron``; or a :class:`NeuronRanking`, or ``(layer, neuron)``
    pairs) plus a ``tokens`` column of logit-lens tokens.

    ``signed``: decode ``sign(mean_act) * W_out[l, i]`` (what the neuron adds when its activation
    moves the way the table's ``mean_act`` column says, e.g. the toxic-minus-non-toxic contrast),
    not the raw value vector."""
    table = neuron_table(model, table)
    if len(table) == 0:
        return table.assign(tokens=[])
    V = table_value_vectors(model, table, signed)
    out = table.copy()
    out["tokens"] = [" | ".join(repr(t)[1:-1] for t in toks) for toks in logit_lens(model, V, k)]
    return out


@dataclass(frozen=True)
class ToxicSVD:
    """SVD of the top-N toxic value vectors; ``vectors[j]`` is the j-th right singular vector,
    oriented so that ``vectors[j] @ w >= 0``."""

    vectors: Float[Tensor, "k d_model"]
    singular_values: Float[Tensor, " k"]
    cos_with_direction: Float[Tensor, " k"]
    n_neurons: int

    def __repr__(self) -> str:
        cos = ", ".join(f"{c:.2f}" for c in self.cos_with_direction[:4].tolist())
        return (f"ToxicSVD(top {self.n_neurons} neurons, {len(self.vectors)} vectors of dim {self.vectors.shape[-1]}; "
                f"cosine with the direction {cos}{', ...' if len(self.vectors) > 4 else ''})")


def toxic_svd(model: HookedTransformer, ranking: NeuronRanking, direction: Float[Tensor, " d_model"] | object,
              top_n: int = 128, k: int = 10) -> ToxicSVD:
    """SVD of the value vectors of the ``top_n`` neurons of ``ranking``, signs fixed."""
    w = unit_vector(getattr(direction, "vector", direction).float().cpu())
    top = ranking.table.head(top_n)
    if len(top) == 0:
        raise MechtoxError("the ranking is empty")
    V = torch.stack([value_vector(model, int(r.layer), int(r.neuron)).float().cpu() for r in top.itertuples()])
    _, S, Vh = torch.linalg.svd(V, full_matrices=False)
    k = min(k, Vh.shape[0])
    vecs = Vh[:k].clone()
    signs = torch.sign(vecs @ w)
    signs[signs == 0] = 1
    vecs = vecs * signs.unsqueeze(1)
    return ToxicSVD(vecs, S[:k].clone(), vecs @ w, len(top))
