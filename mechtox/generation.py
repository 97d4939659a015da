"""Batched greedy generation with left padding, attention masks and a KV cache.

Results do not depend on batch composition: every prompt is left-padded with an explicit
attention mask (never inferred from the pad id, which for many tokenizers equals EOS), rotary
and learned positions are offset per row by TransformerLens from that mask, and each new token
is appended with mask 1. Hooks given in ``fwd_hooks`` are attached only for the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, TransformerLensKeyValueCache

from mechtox.data import pad, pad_id, token_ids
from mechtox.errors import MechtoxError


@dataclass(frozen=True)
class Generations:
    """Greedy continuations. ``prompt_ids[i]`` are the (truncated) prompt tokens;
    ``continuation_ids[i]`` the generated tokens (cut at EOS when ``stop_at_eos``)."""

    prompts: list[str]
    continuations: list[str]
    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        from mechtox.tables import shorten

        first = f"; first: {shorten(self.prompts[0], 40)!r} -> {shorten(self.continuations[0], 40)!r}" if len(self) else ""
        return f"Generations({len(self):,} greedy continuation{'' if len(self) == 1 else 's'}{first})"


@torch.inference_mode()
def generate(model: HookedTransformer, prompts: Sequence[str] | Sequence[Sequence[int]], max_new_tokens: int = 20,
             max_prompt_tokens: int = 32, batch_size: int = 25, fwd_hooks: Sequence = (),
             stop_at_eos: bool = True, progress: bool = True) -> Generations:
    """Greedy continuations of ``prompts`` (texts or token-id lists).

    Prompts longer than ``max_prompt_tokens`` keep their last tokens (Lee et al. truncate to
    32). Batches group prompts of similar length; the output is in input order.
    """
    if isinstance(prompts, str):
        prompts = [prompts]  # one prompt, not one per character
    if len(prompts) == 0:
        raise MechtoxError("no prompts to generate from")
    if max_new_tokens < 1:
        raise MechtoxError("max_new_tokens must be at least 1")
    if max_prompt_tokens < 1 or batch_size < 1:
        raise MechtoxError(f"max_prompt_tokens and batch_size must be at least 1, not {max_prompt_tokens} and "
                           f"{batch_size}")
    if max_new_tokens >= model.cfg.n_ctx:
        raise MechtoxError(f"max_new_tokens {max_new_tokens} does not fit the model's context of {model.cfg.n_ctx}")
    max_prompt_tokens = min(max_prompt_tokens, model.cfg.n_ctx - max_new_tokens)
    ids = token_ids(model, prompts, max_prompt_tokens, truncate="left")
    if isinstance(prompts[0], str):
        texts = list(prompts)  # type: ignore[arg-type]
    else:
        texts = [model.tokenizer.decode(p) if model.tokenizer is not None else "" for p in ids]
    if any(len(x) == 0 for x in ids):
        raise MechtoxError("an empty prompt cannot be continued; drop it or prepend BOS")
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out_ids: list[list[int]] = [[] for _ in ids]
    device = model.cfg.device
    pid = pad_id(model)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for b in tqdm(batches, desc="generate", disable=not progress, leave=False):
            batch = pad([ids[i] for i in b], pid, "left").to(device)
            gen = _greedy(model, batch.tokens, batch.attention_mask, max_new_tokens)
            for row, i in enumerate(b):
                toks = gen[row].tolist()
                if stop_at_eos and eos is not None and eos in toks:
                    toks = toks[: toks.index(eos)]
                out_ids[i] = toks
    conts = [model.tokenizer.decode(t, skip_special_tokens=True) if model.tokenizer is not None else "" for t in out_ids]
    return Generations(texts, conts, ids, out_ids)


def _greedy(model: HookedTransformer, tokens: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    logits = model(tokens, attention_mask=mask, past_kv_cache=cache)
    new = []
    for step in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        if step == n - 1:
            break
        logits = model(nxt, attention_mask=torch.ones_like(nxt), past_kv_cache=cache)
    return torch.cat(new, 1).cpu()
