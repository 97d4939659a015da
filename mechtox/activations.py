"""Collect activations at any set of hook points in ONE forward pass per batch.

The pass stops after the last block that a requested hook needs (``stop_at_layer``), pools on
the fly inside the hooks (mean over real tokens from the attention mask, last real token, or
every real token) and streams the pooled result to CPU, so memory is bounded by one batch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from mechtox.data import TokenBatch, pad, pad_id, token_ids
from mechtox.errors import MechtoxError

Pooling = Literal["mean", "last", "tokens"]

FINAL_HOOK = "ln_final.hook_normalized"
"""The final normalised residual stream (input of the unembedding)."""

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def resid_hooks(model: HookedTransformer, layers: str | Sequence[int] = "all", site: str = "resid_post") -> list[str]:
    """Hook names of ``site`` at ``layers`` (``"all"``, ``"last"``, ``"0,5,10"`` or a list)."""
    return [get_act_name(site, layer) for layer in parse_layers(layers, model.cfg.n_layers)]


def parse_layers(layers: str | Sequence[int], n_layers: int) -> list[int]:
    """``"all"`` / ``"last"`` / ``"3"`` / ``"0,4,8"`` / ``"10-20"`` / a list, checked against ``n_layers``."""
    if isinstance(layers, str):
        from mechtox._flags import layer_numbers

        numbers = layer_numbers(layers)
        if numbers is None:
            return list(range(n_layers)) if layers.strip().lower() == "all" else [n_layers - 1]
        layers = numbers
    layers = [int(x) + (n_layers if int(x) < 0 else 0) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise MechtoxError(f"layers {bad or layers} out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    return sorted(set(layers))


def hook_layer(hook_name: str, n_layers: int) -> int:
    """The number of blocks a forward pass must run to reach ``hook_name`` (for ``stop_at_layer``)."""
    m = _BLOCK_RE.match(hook_name)
    if m:
        return int(m.group(1)) + 1
    if hook_name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return n_layers + 1  # ln_final / unembed: the full model


def check_hooks(model: HookedTransformer, hook_names: Sequence[str]) -> None:
    known = model.hook_dict
    bad = [h for h in hook_names if h not in known]
    if bad:
        raise MechtoxError(f"unknown hook name(s) {bad}; examples: blocks.0.hook_resid_post, blocks.0.mlp.hook_post, {FINAL_HOOK}")


def pool(act: Float[Tensor, "batch pos d"], mask: Tensor, pooling: str = "mean") -> Float[Tensor, "batch d"]:
    """Pool per-token activations over the real tokens of a right-padded batch: their mean, or
    the last one. ``mask`` is 1 on real tokens (the attention mask, possibly with skipped
    positions zeroed)."""
    if pooling == "last":
        last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)  # right padding: the last 1
        return act[torch.arange(act.shape[0], device=act.device), last]
    if pooling != "mean":
        raise MechtoxError(f"unknown pooling {pooling!r}; use mean or last")
    m = mask.unsqueeze(-1).to(act.dtype)
    return (act * m).sum(1) / m.sum(1).clamp_min(1)


@dataclass(frozen=True)
class Activations:
    """Pooled activations per hook name (CPU float32).

    For ``pooling="tokens"`` each tensor is ``[n_tokens, d]`` and ``token_index`` gives, per
    row, (text index, position) of the token.
    """

    acts: dict[str, Tensor]
    pooling: str
    n_texts: int
    token_index: Int[Tensor, "n 2"] | None = None
    n_tokens: int = 0

    def __getitem__(self, hook_name: str) -> Tensor:
        return self.acts[hook_name]

    def numpy(self, hook_name: str) -> np.ndarray:
        return self.acts[hook_name].numpy()

    def __repr__(self) -> str:
        hooks = list(self.acts)
        shown = ", ".join(f"{h} {list(self.acts[h].shape)}" for h in hooks[:3])
        more = f", ... ({len(hooks)} hooks)" if len(hooks) > 3 else ""
        tokens = f", {self.n_tokens:,} tokens" if self.pooling == "tokens" else ""
        return f"Activations({self.n_texts:,} texts{tokens}, {self.pooling} pooling: {shown}{more})"


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (deterministic: stable sort)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def collect_activations(
    model: HookedTransformer,
    data: Sequence[str] | Sequence[Sequence[int]] | TokenBatch,
    hook_names: str | Sequence[str],
    pooling: Pooling = "mean",
    batch_size: int = 16,
    max_length: int = 64,
    progress: bool = True,
    skip_first: int | Sequence[int] = 0,
) -> Activations:
    """Activations of ``data`` at every hook in ``hook_names``, in one pass per batch.

    Args:
        data: texts (tokenised with the model's BOS convention, truncated to ``max_length``),
            lists of token ids, or a right-padded :class:`TokenBatch`.
        hook_names: TransformerLens hook names (or one name); any mix of layers and sites.
        pooling: ``"mean"`` over real tokens (the attention mask, never padding), ``"last"``
            real token, or ``"tokens"`` (every real token, concatenated).
        skip_first: leave out the first ``skip_first`` positions of each sequence from pooling
            (e.g. a BOS token whose massive activations would dominate a mean), or one count per
            sequence (e.g. prompt lengths, to pool over generated positions only).
    """
    hook_names = list(dict.fromkeys([hook_names] if isinstance(hook_names, str) else hook_names))
    if not hook_names:
        raise MechtoxError("no hook names given")
    check_hooks(model, hook_names)
    max_length = min(max_length, model.cfg.n_ctx)
    ids = ([data.tokens[i, data.attention_mask[i].bool()].tolist() for i in range(len(data.tokens))]
           if isinstance(data, TokenBatch) else token_ids(model, data, max_length))
    if not ids:
        raise MechtoxError("no data to collect activations on")
    skips = [int(skip_first)] * len(ids) if isinstance(skip_first, int) else [int(k) for k in skip_first]
    if len(skips) != len(ids):
        raise MechtoxError(f"skip_first has {len(skips)} entries for {len(ids)} sequences")
    if any(len(x) <= k for x, k in zip(ids, skips, strict=True)):
        raise MechtoxError("a text has no tokens left to pool after skipping (empty text?)")
    n = len(ids)
    stop = max(hook_layer(h, model.cfg.n_layers) for h in hook_names)
    stop_at_layer = None if stop > model.cfg.n_layers else stop
    device = model.cfg.device
    pid = pad_id(model)

    out: dict[str, Tensor] = {}
    tok_chunks: dict[str, list[Tensor]] = {h: [] for h in hook_names}
    tok_index: list[Tensor] = []
    state: dict[str, Tensor] = {}

    def hook_fn(act: Float[Tensor, "batch pos d"], hook) -> None:
        mask = state["mask"]
        idx = state["idx"]
        act = act.float()
        if pooling == "tokens":
            tok_chunks[hook.name].append(act[mask.bool()].cpu())
            return
        pooled = pool(act, mask, pooling)
        if hook.name not in out:
            out[hook.name] = torch.empty((n,) + tuple(pooled.shape[1:]), dtype=torch.float32)
        out[hook.name][idx] = pooled.cpu()

    fwd_hooks = [(h, hook_fn) for h in hook_names]
    batches = _batches([len(x) for x in ids], batch_size)
    n_tokens = 0
    for b in tqdm(batches, desc="activations", disable=not progress, leave=False):
        batch = pad([ids[i] for i in b], pid, "right").to(device)
        mask = batch.attention_mask.clone()
        for row, i in enumerate(b):
            mask[row, : skips[i]] = 0
        state["mask"], state["idx"] = mask, torch.as_tensor(b)
        if pooling == "tokens":
            rows, cols = mask.bool().nonzero(as_tuple=True)
            tok_index.append(torch.stack([torch.as_tensor(b)[rows.cpu()], cols.cpu()], 1))
        n_tokens += int(batch.attention_mask.sum())
        with model.hooks(fwd_hooks=fwd_hooks):
            model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop_at_layer,
                  **({} if stop_at_layer is not None else {"return_type": None}))
    if pooling == "tokens":
        out = {h: torch.cat(v) for h, v in tok_chunks.items()}
        return Activations(out, pooling, n, torch.cat(tok_index), n_tokens)
    return Activations({h: out[h] for h in hook_names}, pooling, n, None, n_tokens)
