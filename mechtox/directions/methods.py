"""The direction methods beyond the probe: unembedding, generation difference of means, gradient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechtox.activations import pool
from mechtox.data import encode
from mechtox.directions.generations import _generated_means, _generations, split_generations
from mechtox.directions.tokens import TokenSets, final_resid_hook
from mechtox.errors import MechtoxError
from mechtox.neurons import unembed_basis
from mechtox.probe import Direction


def unembedding_direction(model: HookedTransformer, sets: TokenSets, name: str = "unembed",
                          baseline: Literal["vocab", "nontoxic"] = "vocab") -> Direction:
    """``g * (mean W_U[:, toxic] - mean W_U[:, baseline])`` at the final residual stream: the
    direction whose addition most raises toxic logits relative to the baseline (the whole
    vocabulary, or the non-toxic set) through the final norm (centred for LayerNorm models)."""
    B = unembed_basis(model).cpu()  # g[:, None] * W_U
    base = B.mean(1) if baseline == "vocab" else B[:, sets.nontoxic].mean(1)
    d = B[:, sets.toxic].mean(1) - base
    if model.cfg.normalization_type in ("LN", "LNPre"):
        d = d - d.mean()
    prov = {"n_toxic_tokens": len(sets.toxic), "n_nontoxic_tokens": len(sets.nontoxic), "baseline": baseline,
            "toxic_tokens": [model.tokenizer.decode([t]) for t in sets.toxic[:50]]}
    return Direction(d / d.norm(), final_resid_hook(model), "unembed", model.cfg.model_name, name=name, provenance=prov)


def generation_diffmean_direction(model: HookedTransformer, prompts: Sequence[str], scorer, hook_name: str | None = None,
                                  max_new_tokens: int = 20, batch_size: int = 25, toxic_threshold: float = 0.5,
                                  nontoxic_threshold: float = 0.1, name: str = "gen-diffmean", progress: bool = True,
                                  generations=None) -> Direction:
    """Mean stream at the model's own generated positions of toxic continuations (score >=
    ``toxic_threshold``) minus that of non-toxic ones (score < ``nontoxic_threshold``)."""
    hook_name = hook_name or final_resid_hook(model)
    gens = _generations(model, prompts, max_new_tokens, batch_size, progress, generations)
    tox, non = split_generations(gens, scorer, toxic_threshold, nontoxic_threshold)
    acts = _generated_means(model, gens, tox + non, [hook_name], progress)[hook_name]
    d = acts[: len(tox)].mean(0) - acts[len(tox):].mean(0)
    prov = {"n_toxic": len(tox), "n_nontoxic": len(non), "n_prompts": len(prompts), "scorer": scorer.name,
            "toxic_threshold": toxic_threshold, "nontoxic_threshold": nontoxic_threshold}
    return Direction(d / d.norm(), hook_name, "gen-diffmean", model.cfg.model_name, name=name, provenance=prov)


def gradient_direction(model: HookedTransformer, texts: Sequence[str], hook_name: str | None = None,
                       objective: Literal["toxic_tokens", "probe"] = "toxic_tokens", toxic_ids: Sequence[int] | None = None,
                       probe: Direction | None = None, max_length: int = 64, batch_size: int = 8,
                       name: str = "gradient", progress: bool = True) -> Direction:
    """Average over real tokens of ``d objective / d stream`` at ``hook_name``.

    ``toxic_tokens``: log P(next token in ``toxic_ids``) at every position;
    ``probe``: the probe's logit on its own (pooled) activations.
    """
    from mechtox.data import pad, pad_id

    hook_name = hook_name or final_resid_hook(model)
    if objective == "toxic_tokens" and not toxic_ids:
        raise MechtoxError("the toxic_tokens objective needs toxic_ids")
    if objective == "probe" and (probe is None or probe.weight is None):
        raise MechtoxError("the probe objective needs a probe")
    ids = encode(model, texts, max_length)
    total = torch.zeros(model.cfg.d_model)
    n_tok = 0
    tox_idx = torch.as_tensor(list(toxic_ids or []), dtype=torch.long, device=model.cfg.device)
    store: dict[str, Tensor] = {}

    def grab(act, hook):
        act.retain_grad()
        store["act"] = act
        return act

    def grab_probe(act, hook):
        store["probe_act"] = act
        return act

    hooks = [(hook_name, grab)]
    if objective == "probe":
        hooks.append((probe.hook_name, grab_probe))
    for s in tqdm(range(0, len(ids), batch_size), desc="gradient", disable=not progress, leave=False):
        batch = pad(ids[s: s + batch_size], pad_id(model), "right").to(model.cfg.device)
        mask = batch.attention_mask.float()
        with model.hooks(fwd_hooks=hooks):
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
        if objective == "toxic_tokens":
            logp = logits.float().log_softmax(-1)
            obj = (logp[..., tox_idx].logsumexp(-1) * mask).sum()
        else:
            obj = probe.logits(pool(store["probe_act"].float(), mask, "mean")).sum()
        obj.backward()
        g = store["act"].grad.float()
        total += (g * mask[..., None]).sum((0, 1)).detach().cpu()
        n_tok += int(mask.sum())
        model.zero_grad(set_to_none=True)
    d = total / max(n_tok, 1)
    if not torch.isfinite(d).all() or d.norm() == 0:
        raise MechtoxError("the gradient direction is zero or not finite")
    prov = {"objective": objective, "n_texts": len(texts), "n_tokens": n_tok,
            "n_toxic_tokens": len(toxic_ids or [])}
    return Direction(d / d.norm(), hook_name, "gradient", model.cfg.model_name, name=name, provenance=prov)


# ----------------------------------------------------------------------------- outliers and metrics


