"""Toxicity directions beyond the GPT-2 probe recipe, and outlier (massive) dimensions.

Each method returns a :class:`~mechtox.probe.Direction` (unit vector at a hook, with its
provenance), usable wherever a probe is accepted (ranking, interventions, attribution):

* ``probe`` — :func:`mechtox.probe.fit_probe` (Lee et al. 2024);
* ``unembed`` — mean unembedding, through the final norm's weight, of toxic tokens minus that
  of non-toxic tokens; the token sets come from data (:func:`token_log_odds`: tokens whose
  document log-odds of appearing in toxic vs non-toxic texts are highest) or from the user
  (Yang et al. v3 used an unembedding-based direction on Llama/Gemma/Mistral);
* ``gen-diffmean`` — difference of means of the stream at the model's OWN generated positions,
  between continuations scored toxic and non-toxic;
* ``gradient`` — the average gradient, with respect to the stream, of a toxicity objective
  (log-probability that the next token is toxic, or a probe's score).

Neurons can also be ranked by *contrast* (:func:`activation_contrast`): ``(a_toxic - a_nontoxic)
* (v . w)``, how much more a neuron writes along ``w`` at the model's own generated positions of
toxic than of non-toxic continuations. It respects the sign of the activation (a gated MLP's
``hook_post`` is often negative), which a cosine ranking cannot see.

Without any direction, :func:`neuron_attribution` ranks neurons by attribution patching: how
much the log-probability of the model's own toxic words (at its generated positions) depends on
each neuron, to first order. :func:`copy_stats` says how much of that toxicity repeats words of
the prompt (copying, which MLP value vectors do not do).

Value-vector cosines can be taken in a metric not dominated by massive dimensions
(:func:`metric_scale`): vectors are divided and covectors multiplied by a per-dimension scale,
which keeps every dot product and changes only the norms.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechtox.activations import collect_activations, parse_layers, pool
from mechtox.data import LabelledTexts, encode
from mechtox.errors import MechtoxError
from mechtox.neurons import unembed_basis
from mechtox.probe import Direction

DIRECTION_METHODS = ("probe", "unembed", "gen-diffmean", "gradient")


def final_resid_hook(model: HookedTransformer) -> str:
    """The residual stream that the final norm reads (after the last block)."""
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


# ----------------------------------------------------------------------------- token sets


_ALNUM = re.compile(r"[A-Za-z]")


def token_log_odds(model: HookedTransformer, data: LabelledTexts, max_length: int = 128, alpha: float = 0.5,
                   min_docs: int = 5) -> pd.DataFrame:
    """Per token: in how many toxic / non-toxic texts it appears, and the smoothed log-odds
    ratio with its z-score (sorted, most toxic first).

    Words split into several tokens are handled at the token level: a piece counts as toxic
    only when the piece itself is specific to toxic texts (``'uck'`` is, ``' f'`` is not).
    Tokens without a letter, or in fewer than ``min_docs`` texts, are dropped.
    """
    ids = encode(model, data.texts, max_length, prepend_bos=False)
    V = model.cfg.d_vocab
    tox = np.zeros(V, dtype=np.int64)
    non = np.zeros(V, dtype=np.int64)
    for x, y in zip(ids, data.labels, strict=True):
        u = np.unique(np.asarray(x, dtype=np.int64))
        (tox if y == 1 else non)[u] += 1
    n_t, n_n = int((data.labels == 1).sum()), int((data.labels == 0).sum())
    enough = (tox + non) >= min_docs
    enough[[i for i in model.tokenizer.all_special_ids if i < V]] = False
    keep = np.nonzero(enough)[0]
    yt, yn = tox[keep] + alpha, non[keep] + alpha
    lo = np.log(yt / (n_t - tox[keep] + alpha)) - np.log(yn / (n_n - non[keep] + alpha))
    var = 1 / yt + 1 / (n_t - tox[keep] + alpha) + 1 / yn + 1 / (n_n - non[keep] + alpha)
    strings = [model.tokenizer.decode([int(t)]) for t in keep]
    df = pd.DataFrame({"token_id": keep, "token": strings, "toxic_docs": tox[keep], "nontoxic_docs": non[keep],
                       "log_odds": lo, "z": lo / np.sqrt(var)})
    df = df[[bool(_ALNUM.search(s)) for s in strings]]
    return df.sort_values("z", ascending=False, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class TokenSets:
    toxic: list[int]
    nontoxic: list[int]
    table: pd.DataFrame | None = None

    def strings(self, model: HookedTransformer, which: str = "toxic") -> list[str]:
        return [model.tokenizer.decode([t]) for t in (self.toxic if which == "toxic" else self.nontoxic)]


def token_sets(stats: pd.DataFrame, k: int = 50, k_nontoxic: int | None = None, min_log_odds: float = 1.0) -> TokenSets:
    """The ``k`` most toxic and ``k_nontoxic`` (default ``k``) most non-toxic tokens of ``stats``
    by z-score, among tokens whose log-odds are at least ``min_log_odds`` in magnitude (so
    frequent function words with a small but significant skew stay out)."""
    kn = k_nontoxic or k
    tox = stats[stats["log_odds"] >= min_log_odds]
    non = stats[stats["log_odds"] <= -min_log_odds]
    if len(tox) < k or len(non) < kn:
        raise MechtoxError(f"only {len(tox)} toxic / {len(non)} non-toxic tokens pass the count and log-odds filters; "
                           "use more data or a smaller k")
    return TokenSets(tox["token_id"].head(k).astype(int).tolist(), non["token_id"].tail(kn).astype(int).tolist(), stats)


def words_to_tokens(model: HookedTransformer, words: Sequence[str]) -> list[int]:
    """User-given words -> the first token of ``" " + word`` and of ``word`` (the tokens that
    start the word), deduplicated."""
    out: list[int] = []
    for w in words:
        for variant in (" " + w.strip(), w.strip()):
            ids = model.tokenizer(variant, add_special_tokens=False)["input_ids"]
            if ids and ids[0] not in out:
                out.append(int(ids[0]))
    if not out:
        raise MechtoxError("no tokens for the given words")
    return out


# ----------------------------------------------------------------------------- methods


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


def _generations(model, prompts, max_new_tokens, batch_size, progress, generations):
    from mechtox.generation import generate

    return generations or generate(model, prompts, max_new_tokens, 32, batch_size, progress=progress)


def split_generations(gens, scorer, toxic_threshold: float = 0.5, nontoxic_threshold: float = 0.1
                      ) -> tuple[list[int], list[int]]:
    """Indices of the non-empty continuations scored toxic (>= ``toxic_threshold``) and
    non-toxic (< ``nontoxic_threshold``); at least 3 of each."""
    scores = np.asarray(scorer(gens.continuations))
    keep = [i for i, c in enumerate(gens.continuation_ids) if len(c) > 0]
    tox = [i for i in keep if scores[i] >= toxic_threshold]
    non = [i for i in keep if scores[i] < nontoxic_threshold]
    if len(tox) < 3 or len(non) < 3:
        raise MechtoxError(f"only {len(tox)} toxic and {len(non)} non-toxic continuations; use more or more toxic prompts")
    return tox, non


def _generated_means(model, gens, idx: Sequence[int], hooks: Sequence[str], progress: bool) -> dict[str, Tensor]:
    """Per sequence, the mean activation at each hook over its GENERATED positions only."""
    seqs = [gens.prompt_ids[i] + gens.continuation_ids[i] for i in idx]
    starts = [len(gens.prompt_ids[i]) for i in idx]
    return collect_activations(model, seqs, list(hooks), "mean", batch_size=16, max_length=10_000,
                               progress=progress, skip_first=starts).acts


@dataclass(frozen=True)
class ActivationContrast:
    """Mean activation of every neuron at the model's own generated positions of toxic and of
    non-toxic continuations (``[n_layers, d_mlp]`` each)."""

    toxic: Float[Tensor, "n_layers d_mlp"]
    nontoxic: Float[Tensor, "n_layers d_mlp"]
    n_toxic: int
    n_nontoxic: int

    @property
    def diff(self) -> Float[Tensor, "n_layers d_mlp"]:
        return self.toxic - self.nontoxic


def activation_contrast(model: HookedTransformer, prompts: Sequence[str], scorer, max_new_tokens: int = 20,
                        batch_size: int = 25, toxic_threshold: float = 0.5, nontoxic_threshold: float = 0.1,
                        progress: bool = True, generations=None) -> ActivationContrast:
    """Neuron activations on toxic vs non-toxic generations. With a direction ``w``, the
    *contrast* ranking orders neurons by ``(a_toxic - a_nontoxic) * (v . w)``: how much more the
    neuron writes along ``w`` when the model is being toxic. It accounts for the sign of the
    activation (a gated MLP's neurons are often negative), which cosine ranking ignores; pass
    ``diff`` as ``mean_acts`` to :func:`mechtox.neurons.rank_neurons` and sort by ``act_proj``."""
    from mechtox.neurons import mlp_post_hook

    gens = _generations(model, prompts, max_new_tokens, batch_size, progress, generations)
    tox, non = split_generations(gens, scorer, toxic_threshold, nontoxic_threshold)
    hooks = [mlp_post_hook(layer) for layer in range(model.cfg.n_layers)]
    acts = _generated_means(model, gens, tox + non, hooks, progress)
    A = torch.stack([acts[h] for h in hooks], 1)  # [n, L, M]
    return ActivationContrast(A[: len(tox)].mean(0), A[len(tox):].mean(0), len(tox), len(non))


_WORD_START = re.compile(r"[A-Za-z']")
_WORDS = re.compile(r"[A-Za-z']+")


def word_spans(model: HookedTransformer, token_ids: Sequence[int]) -> list[tuple[list[int], str]]:
    """Group a continuation's tokens into words: a word starts at a token that begins with
    whitespace or does not begin with a letter. Returns ``(token positions, word text)``."""
    ids = [int(t) for t in token_ids]
    prefixes = [model.tokenizer.decode(ids[:j]) for j in range(len(ids) + 1)]  # the text each piece adds, in context
    pieces = [prefixes[j + 1][len(prefixes[j]):] if prefixes[j + 1].startswith(prefixes[j]) else
              model.tokenizer.decode([ids[j]]) for j in range(len(ids))]
    spans: list[list[int]] = []
    for j, p in enumerate(pieces):
        if not spans or p[:1].isspace() or not _WORD_START.match(p.strip()[:1] or " "):
            spans.append([j])
        else:
            spans[-1].append(j)
    return [(s, "".join(pieces[j] for j in s).strip()) for s in spans]


def _word_set(text: str) -> set[str]:
    """The lower-cased words of ``text``."""
    return {w.lower() for w in _WORDS.findall(text)}


def toxic_word_mask(model: HookedTransformer, token_ids: Sequence[int], scorer, threshold: float = 0.5,
                    skip_words: set[str] = frozenset()) -> np.ndarray:
    """Which tokens of a continuation belong to a word that ``scorer`` scores ``>= threshold``
    on its own (all pieces of a split word: ``' f'`` and ``'uck'``), leaving out words with a
    part in ``skip_words`` (lower-cased; e.g. the prompt's words, :func:`_word_set`)."""
    spans = [(s, w) for s, w in word_spans(model, token_ids) if w and not (_word_set(w) & skip_words)]
    mask = np.zeros(len(token_ids), dtype=bool)
    if spans:
        for (pos, _), v in zip(spans, np.asarray(scorer([w for _, w in spans])), strict=True):
            if v >= threshold:
                mask[pos] = True
    return mask


@dataclass(frozen=True)
class CopyStats:
    """Of the toxic continuations: how many contain a word the scorer flags on its own, and how
    many of those repeat a flagged word (case-insensitively) that is already in the prompt."""

    n_toxic: int
    n_flagged: int
    n_copied: int

    @property
    def copied_share(self) -> float:
        return self.n_copied / self.n_flagged if self.n_flagged else float("nan")


def _flagged_words(texts: Sequence[str], scorer, threshold: float) -> list[set[str]]:
    """Per text, the lower-cased words that ``scorer`` scores ``>= threshold`` on their own
    (every word of every text scored in one call)."""
    words = [_WORDS.findall(t) for t in texts]
    flat = [w for ws in words for w in ws]
    scores = np.asarray(scorer(flat), dtype=float) if flat else np.zeros(0)
    out, start = [], 0
    for ws in words:
        out.append({w.lower() for w, v in zip(ws, scores[start: start + len(ws)], strict=True) if v >= threshold})
        start += len(ws)
    return out


def copy_stats(gens, idx: Sequence[int], scorer, threshold: float = 0.5) -> CopyStats:
    """How much of the generated toxicity is repetition of the prompt's own words. When most of
    it is, the toxic words come from copying (attention), and ablating MLP neurons that write
    toxic tokens cannot be expected to remove them."""
    bad = _flagged_words([gens.continuations[i] for i in idx], scorer, threshold)
    flagged = copied = 0
    for i, b in zip(idx, bad, strict=True):
        if b:
            flagged += 1
            copied += bool(b & _word_set(gens.prompts[i]))
    return CopyStats(len(idx), flagged, copied)


def unflagged_prompts(prompts: Sequence[str], scorer, threshold: float = 0.5) -> list[int]:
    """Indices of the prompts with no word that ``scorer`` flags on its own.

    Toxic continuations of these prompts cannot be copies of the prompt's words, so their
    toxicity is written by the model itself: the case where ablating toxic neurons can be
    expected to work (see :func:`copy_stats`). Every word of every prompt is scored in one call.
    """
    return [i for i, bad in enumerate(_flagged_words(prompts, scorer, threshold)) if not bad]


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
