"""Token statistics: which tokens toxic texts use more, as sets, and the hook directions are fitted at."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from transformer_lens import HookedTransformer

from mechtox.data import LabelledTexts, encode
from mechtox.errors import MechtoxError


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

    def __repr__(self) -> str:
        return f"TokenSets({len(self.toxic)} toxic and {len(self.nontoxic)} non-toxic token ids)"

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


