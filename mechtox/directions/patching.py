"""Attribution patching of the model's own toxic words to MLP neurons (not the DPO decomposition,
which is :mod:`mechtox.attribution`), and the rankings it gives."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechtox.directions.generations import _word_set, toxic_word_mask
from mechtox.errors import MechtoxError


@dataclass(frozen=True)
class NeuronAttribution:
    """Attribution-patching scores ``[n_layers, d_mlp]`` and mean activations at the scored
    (toxic-word) positions.

    ``scores``: per continuation (summed over its toxic-word tokens), averaged over continuations;
    ``token_scores``: the same per toxic-word token (each continuation's sum divided by its number
    of toxic-word tokens, then averaged), in the units of :func:`benign_attribution`."""

    scores: Float[Tensor, "n_layers d_mlp"]
    mean_act: Float[Tensor, "n_layers d_mlp"]
    n_sequences: int
    n_tokens: int
    token_scores: Float[Tensor, "n_layers d_mlp"] | None = None

    def __repr__(self) -> str:
        L, d = self.scores.shape
        flat = int(self.scores.argmax())
        return (f"NeuronAttribution({L} layers x {d} neurons over {self.n_sequences} continuations, {self.n_tokens} "
                f"toxic-word tokens; top L{flat // d} N{flat % d} score {float(self.scores.max()):.4g})")

    def table(self) -> pd.DataFrame:
        """All neurons, highest score first: ``layer, neuron, score, mean_act, rank``."""
        L, M = self.scores.shape
        order = torch.argsort(self.scores.flatten(), descending=True, stable=True)
        return pd.DataFrame({"layer": (order // M).numpy(), "neuron": (order % M).numpy(),
                             "score": self.scores.flatten()[order].numpy(),
                             "mean_act": self.mean_act.flatten()[order].numpy(), "rank": np.arange(L * M)})

    def specific(self, benign: Float[Tensor, "n_layers d_mlp"]) -> NeuronAttribution:
        """Scores of use that ordinary text does not share: ``token_scores - max(benign, 0)``,
        the log-probability a zero-ablation takes from a toxic-word token minus what it takes from
        an ordinary token (:func:`benign_attribution`). Neurons every word needs (a layer-0 neuron
        whose ablation alone raises SmolLM2's perplexity by 17%) score low; neurons whose ablation
        would help ordinary text are not rewarded for it. ``benign`` is for zero ablation: compute
        this attribution with the default ``reference`` (zero) to compare like with like."""
        if self.token_scores is None:
            raise MechtoxError("this attribution has no per-token scores; recompute it with neuron_attribution")
        if benign.shape != self.token_scores.shape:
            raise MechtoxError(f"benign scores have shape {tuple(benign.shape)}, the attribution "
                               f"{tuple(self.token_scores.shape)}: compute both on the same model")
        return dataclasses.replace(self, scores=self.token_scores - benign.detach().float().cpu().clamp(min=0))


@contextmanager
def _mlp_grads(model: HookedTransformer) -> Iterator[tuple[list[str], dict[str, Tensor]]]:
    """Inside: every layer's ``mlp.hook_post`` is kept (in the returned dict, by hook name) with
    its gradient after a backward pass; the weights are frozen meanwhile and restored after."""
    from mechtox.neurons import mlp_post_hook

    hooks = [mlp_post_hook(layer) for layer in range(model.cfg.n_layers)]
    store: dict[str, Tensor] = {}

    def grab(act, hook):
        if not act.requires_grad:  # the first hooked activation, with the weights frozen below
            act.requires_grad_(True)
        act.retain_grad()
        store[hook.name] = act
        return act

    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), model.hooks(fwd_hooks=[(h, grab) for h in hooks]):
            yield hooks, store
    finally:
        for p, w in zip(model.parameters(), was, strict=True):
            p.requires_grad_(w)


def neuron_attribution(model: HookedTransformer, gens, idx: Sequence[int], scorer,
                       reference: Float[Tensor, "n_layers d_mlp"] | None = None, threshold: float = 0.5,
                       skip_copied: bool = False, progress: bool = True) -> NeuronAttribution:
    """Rank neurons by how much the model's OWN toxic words depend on them (attribution patching).

    Objective, per continuation in ``idx``: the log-probability of its tokens that belong to
    words ``scorer`` flags (:func:`toxic_word_mask`). Score of neuron ``i``: the average over
    continuations of ``sum_t (a_t - r) * d objective / d a_t`` over all positions, the
    first-order estimate of how much setting the neuron to ``r`` (``reference``; 0 = zero
    ablation) everywhere lowers that log-probability. Unlike a value-vector ranking it sees
    indirect paths, but it also finds neurons every word depends on: read it beside perplexity,
    or subtract what ordinary text needs (:meth:`NeuronAttribution.specific`).

    ``skip_copied``: leave out flagged words that already occur in the continuation's prompt
    (case-insensitively), so the objective is the toxicity the model writes rather than copies
    (copying is attention's work); continuations left with no token are skipped.
    """
    L, M = model.cfg.n_layers, model.cfg.d_mlp
    ref = torch.zeros(L, M) if reference is None else reference.detach().float().cpu()
    total, per_token, act_sum = torch.zeros(L, M), torch.zeros(L, M), torch.zeros(L, M)
    n_seq = n_tok = 0
    with _mlp_grads(model) as (hooks, store):
        for i in tqdm(idx, desc="attribution", disable=not progress, leave=False):
            cont = gens.continuation_ids[i]
            m = toxic_word_mask(model, cont, scorer, threshold,
                                skip_words=_word_set(gens.prompts[i]) if skip_copied else frozenset())
            if not m.any():
                continue
            s0 = len(gens.prompt_ids[i])
            toks = torch.tensor([gens.prompt_ids[i] + list(cont)], device=model.cfg.device)
            logits = model(toks)
            logp = logits[0, :-1].float().log_softmax(-1).gather(-1, toks[0, 1:, None])[:, 0]
            mask = torch.zeros(logp.shape[0], dtype=torch.bool, device=logp.device)
            mask[s0 - 1:] = torch.as_tensor(m, device=logp.device)
            logp[mask].sum().backward()
            for layer, h in enumerate(hooks):
                a = store[h][0].detach().float().cpu()
                contrib = ((a - ref[layer]) * store[h].grad[0].float().cpu()).sum(0)
                total[layer] += contrib
                per_token[layer] += contrib / int(mask.sum())
                act_sum[layer] += a[:-1][mask.cpu()].sum(0)
            n_seq += 1
            n_tok += int(mask.sum())
            store.clear()
    if n_seq == 0:
        raise MechtoxError("no continuation has a word the scorer flags on its own"
                           + (" that is not copied from its prompt" if skip_copied else "")
                           + "; use more or more toxic prompts")
    scores = total / n_seq
    if not torch.isfinite(scores).all():
        raise MechtoxError("attribution scores are not finite (NaN/inf in the model's activations or gradients)")
    return NeuronAttribution(scores, act_sum / n_tok, n_seq, n_tok, per_token / n_seq)


def benign_attribution(model: HookedTransformer, text: str, n_tokens: int = 4096, start: int = 0,
                       window: int = 256, batch_size: int = 4, progress: bool = True) -> Float[Tensor, "n_layers d_mlp"]:
    """How much ordinary text needs each neuron: per token, the first-order estimate of the
    log-probability a zero-ablation of the neuron takes from ``text`` (``sum_t a_t * d logp / d a_t``
    averaged over predicted tokens), on ``n_tokens`` tokens from token ``start`` on, in
    ``window``-token chunks. Start after the tokens a perplexity check uses, to keep them held out.
    The units are those of :attr:`NeuronAttribution.token_scores`."""
    from mechtox.evaluate import text_chunks

    chunks = text_chunks(model, text, window, start, n_tokens)
    size = max(map(len, chunks), default=0)
    chunks = [c for c in chunks if len(c) == size]  # whole chunks only, to batch them unpadded
    if size < min(window, model.cfg.n_ctx):
        raise MechtoxError(f"benign attribution: the text has fewer than {start} + one {window}-token window of "
                           "tokens; give a longer text or a smaller start")
    L, M = model.cfg.n_layers, model.cfg.d_mlp
    total, count = torch.zeros(L, M), 0
    with _mlp_grads(model) as (hooks, store):
        for s in tqdm(range(0, len(chunks), batch_size), desc="benign attribution", disable=not progress, leave=False):
            toks = torch.tensor(chunks[s: s + batch_size], device=model.cfg.device)
            logits = model(toks)
            logp = logits[:, :-1].float().log_softmax(-1).gather(-1, toks[:, 1:, None])[..., 0]
            logp.sum().backward()
            for layer, h in enumerate(hooks):
                total[layer] += (store[h].detach().float() * store[h].grad.float()).sum((0, 1)).cpu()
            count += logp.numel()
            store.clear()
    out = total / count
    if not torch.isfinite(out).all():
        raise MechtoxError("benign attribution scores are not finite (NaN/inf in the model's activations or gradients)")
    return out


def toxic_lens_neurons(model: HookedTransformer, toxic_ids: Sequence[int], mean_act: Float[Tensor, "n_layers d_mlp"],
                       lens_k: int = 10, chunk: int = 4096) -> pd.DataFrame:
    """Every neuron whose signed value vector ``sign(mean_act) * W_out[l, i]`` has a token of
    ``toxic_ids`` among its top-``lens_k`` logit-lens tokens (the neurons
    :func:`~mechtox.validation.precision_at_k` counts as precise), as ``layer, neuron, mean_act``
    in layer order: candidates for :func:`rerank_by_attribution` that need no direction."""
    from mechtox.neurons import activation_sign, lens_hits, value_vectors

    L, M = model.cfg.n_layers, model.cfg.d_mlp
    if tuple(mean_act.shape) != (L, M):
        raise MechtoxError(f"mean_act has shape {tuple(mean_act.shape)}, the model's MLPs ({L}, {M})")
    if not len(toxic_ids):
        raise MechtoxError("the toxic token set is empty")
    V = (value_vectors(model).cpu() * activation_sign(mean_act.detach().float().cpu())[..., None]).reshape(L * M, -1)
    flat = np.flatnonzero(lens_hits(model, V, toxic_ids, lens_k, chunk))
    return pd.DataFrame({"layer": flat // M, "neuron": flat % M, "mean_act": mean_act.flatten()[flat].numpy()})


def rerank_by_attribution(table: pd.DataFrame, att: NeuronAttribution, top_n: int | None = 1000) -> pd.DataFrame:
    """Candidate neurons ordered by how much the model's toxic words use them.

    Keeps the first ``top_n`` rows of ``table`` (all with ``None``): a direction's cosine ranking
    (neurons that write along the direction) or :func:`toxic_lens_neurons`. Adds the attribution
    ``score`` and ``mean_act`` of ``att`` (pass ``att.specific(benign)`` to score use that
    ordinary text does not share), and orders them by score, dropping those whose score is not
    positive (zero-ablating them would not lower the objective to first order). ``cosine_rank``
    keeps the neuron's place in a cosine table. The cosine filter keeps the neurons specific to
    the direction; the attribution orders them by use, which cosine alone ignores (most of a cosine
    top are silent when the model is toxic). Precision of the result should be read signed
    (``mean_act`` gives the sign).
    """
    if top_n is not None and top_n < 1:
        raise MechtoxError("top_n must be at least 1")
    top = table if top_n is None else table.head(top_n)
    layer = torch.as_tensor(top["layer"].to_numpy(dtype=np.int64).copy())
    neuron = torch.as_tensor(top["neuron"].to_numpy(dtype=np.int64).copy())
    out = top.assign(score=att.scores[layer, neuron].numpy(), mean_act=att.mean_act[layer, neuron].numpy())
    if "cosine" in top:
        out = out.assign(cosine_rank=top["rank"].to_numpy() if "rank" in top else np.arange(len(top)))
    out = out[out["score"] > 0].sort_values(["score", "layer", "neuron"], ascending=[False, True, True], kind="stable")
    return out.assign(rank=np.arange(len(out))).reset_index(drop=True)


