"""Does a neuron ranking mean anything? Three checks, reported side by side per direction.

1. toxic-token precision@k: the share of the top-k neurons whose logit-lens top tokens include a
   token of the toxic set;
2. causal: ablate the top-k neurons and compare the drop in generation toxicity with the drop
   from k random neurons drawn with the same layer distribution (several draws: mean, spread);
3. agreement between methods: overlap of their top-k and rank correlation of their cosines.

:func:`goal_check` states whether a method passes: precision@20 of at least 0.5, and a top-100
drop at least 3x that of random neurons (their mean, or their spread when that is larger) at a
perplexity within 10% of the random sets' (a drop bought by breaking the model does not count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from mechtox.evaluate import perplexity, toxicity
from mechtox.interventions import NOOP, ablate, check_random_baseline, random_like
from mechtox.neurons import lens_hits, table_value_vectors


def precision_at_k(model: HookedTransformer, table: pd.DataFrame, toxic_ids: Sequence[int], k: int = 20,
                   lens_k: int = 10, signed: bool = False) -> float:
    """Fraction of the first ``k`` rows of ``table`` (layer, neuron) whose top-``lens_k``
    logit-lens tokens contain a token of ``toxic_ids``.

    ``signed``: decode ``sign(mean_act) * W_out[l, i]``, what the neuron adds with the sign
    its activation has in the table's ``mean_act`` column (for contrast and attribution
    rankings, whose neurons may matter through a negative activation)."""
    top = table.head(k)
    if len(top) == 0:
        return float("nan")
    return float(np.mean(lens_hits(model, table_value_vectors(model, top, signed), toxic_ids, lens_k)))


def agreement(rankings: dict[str, pd.DataFrame], k: int = 100) -> pd.DataFrame:
    """Pairwise overlap of top-k (|A ∩ B| / k) and Spearman correlation, over the neurons both
    tables hold (all of them for full rankings), of the scores the rankings sort by (``score``
    when a table has it, else ``cosine``)."""
    from scipy.stats import spearmanr

    names = list(rankings)
    keyed = {n: rankings[n].set_index(["layer", "neuron"])["score" if "score" in rankings[n] else "cosine"].sort_index()
             for n in names}
    tops = {n: set(map(tuple, rankings[n].head(k)[["layer", "neuron"]].to_numpy().tolist())) for n in names}
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = keyed[a].index.intersection(keyed[b].index)  # a re-ranked table holds a subset
            rho = spearmanr(keyed[a][common].to_numpy(), keyed[b][common].to_numpy()).statistic if len(common) > 1 else np.nan
            rows.append({"a": a, "b": b, f"overlap@{k}": len(tops[a] & tops[b]) / k, "spearman": float(rho)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class AblationComparison:
    """Toxicity (and PPL) after ablating each method's top-k vs random neurons."""

    table: pd.DataFrame
    baseline: dict[str, float]

    def summary(self) -> str:
        base = ", ".join(f"{k} {v:.3f}" for k, v in self.baseline.items())
        return f"{len(self.table)} ablations against the unablated model ({base})"

    def __repr__(self) -> str:
        return f"AblationComparison({self.summary()})"

    def _repr_html_(self) -> str:
        from mechtox.tables import notebook_html

        return notebook_html(f"AblationComparison: {self.summary()}", [("per method and k", self.table)], max_rows=50)


def causal_validation(model: HookedTransformer, rankings: dict[str, pd.DataFrame], prompts: Sequence[str], scorer,
                      ks: Sequence[int] = (10, 100, 1000), random_ks: Sequence[int] = (100,), draws: int = 3,
                      text: str | None = None, ppl_tokens: int = 4000, mode: str = "zero", seed: int = 0,
                      max_new_tokens: int = 20, batch_size: int = 25, progress: bool = True,
                      means: torch.Tensor | None = None) -> AblationComparison:
    """For each ranking and k: generation toxicity with its top-k neurons ablated, the drop from
    the unablated model, and (for k in ``random_ks``) the drop from ``draws`` random sets with
    the same per-layer counts (paired: same prompts), with mean and standard deviation, and the
    random sets' mean perplexity. ``mode="mean"`` sets neurons to ``means[layer, neuron]``."""
    d_mlp = int(model.cfg.d_mlp or 0)
    for table in rankings.values():  # a random baseline that cannot be drawn is an error before any generation
        for k in random_ks:
            if k in ks:
                check_random_baseline(table.head(k)[["layer", "neuron"]], d_mlp, exclude=table.head(k))
    base = toxicity(model, prompts, scorer, NOOP, max_new_tokens, batch_size=batch_size, progress=progress)
    base_ppl = perplexity(model, text, NOOP, max_tokens=ppl_tokens, progress=progress)["ppl"] if text else float("nan")
    rows = []
    for name, table in rankings.items():
        for k in ks:
            top = table.head(k)[["layer", "neuron"]]
            t = toxicity(model, prompts, scorer, ablate(top, mode, means), max_new_tokens, batch_size=batch_size,
                         progress=progress)
            ppl = perplexity(model, text, ablate(top, mode, means), max_tokens=ppl_tokens, progress=progress)["ppl"] if text else float("nan")
            row = {"method": name, "k": k, "toxicity": t.mean, "drop": base.mean - t.mean, "toxic_frac": t.frac_toxic,
                   "ppl": ppl}
            if k in random_ks:
                drops, ppls = [], []
                for dr in range(draws):
                    rnd = random_like(top, model.cfg.d_mlp, seed + 1000 * dr + k, exclude=top)
                    tr = toxicity(model, prompts, scorer, ablate(rnd, mode, means), max_new_tokens,
                                  batch_size=batch_size, progress=progress)
                    drops.append(base.mean - tr.mean)
                    if text:
                        ppls.append(perplexity(model, text, ablate(rnd, mode, means), max_tokens=ppl_tokens,
                                               progress=progress)["ppl"])
                row |= {"random_drop_mean": float(np.mean(drops)), "random_drop_std": float(np.std(drops, ddof=1)) if draws > 1 else 0.0,
                        "random_drops": drops, "random_ppl_mean": float(np.mean(ppls)) if ppls else float("nan"),
                        "ratio_vs_random": _ratio(base.mean - t.mean, drops)}
            rows.append(row)
    return AblationComparison(pd.DataFrame(rows), {"toxicity": base.mean, "toxic_frac": base.frac_toxic, "ppl": base_ppl})


def _ratio(drop: float, random_drops: Sequence[float]) -> float:
    """``drop / max(mean, sd)`` of the random drops (the bar of :func:`goal_check`); NaN when
    both are zero or below (no scale to compare with)."""
    sd = float(np.std(random_drops, ddof=1)) if len(random_drops) > 1 else 0.0
    bar = max(float(np.mean(random_drops)), sd)
    return drop / bar if bar > 0 else float("nan")


def goal_check(precision20: float, drop: float, random_mean: float, random_std: float, ppl: float, random_ppl: float,
               min_precision: float = 0.5, min_ratio: float = 3.0, ppl_tolerance: float = 1.10) -> dict[str, bool]:
    """The three parts of the goal, each a bool, and ``goal`` (all three).

    ``causal``: ``drop >= min_ratio * max(random_mean, random_std)`` and ``drop > 0``: a random
    baseline at or below zero does not make any positive drop pass, its spread sets the bar.
    ``specific``: ``ppl <= ppl_tolerance * random_ppl`` (NaN perplexities fail).
    """
    bar = min_ratio * max(random_mean, random_std)
    causal = bool(drop > 0 and drop >= bar)
    specific = bool(np.isfinite(ppl) and np.isfinite(random_ppl) and ppl <= ppl_tolerance * random_ppl)
    precise = bool(np.isfinite(precision20) and precision20 >= min_precision)
    return {"precise": precise, "causal": causal, "specific": specific, "goal": precise and causal and specific}
