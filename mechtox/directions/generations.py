"""The model's own generations: toxic / non-toxic split, activation contrast, toxic-word masks and
how much toxicity is copied from the prompt."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mechtox.activations import collect_activations
from mechtox.errors import MechtoxError


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


