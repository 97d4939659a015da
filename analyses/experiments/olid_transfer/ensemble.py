"""Two models' Jigsaw-fitted probes together: the CLI's best recipe fitted on SmolLM2 (layer 15) and
on Gemma 3 270M (layer 9; gemma.py), each scoring all 11,916 tweets of olid_train.csv as
``mechtox probe --eval`` does. Their tweet logits are standardised over the tweets (no labels) and
averaged, or their ranks averaged. No OLID label in any fit.

Usage (from this folder, after the two probe commands in gemma.py's docstring and docs/results.md):
    SMOL_WS=ws GEMMA_WS=wsg GEMMA=/tmp/gemma/ckpt python ensemble.py > ensemble.log   # 13 min 50 s"""
import os

import numpy as np
from scipy.stats import rankdata

from mechtox.data import load_labelled
from mechtox.models import load_checkpoint, load_gguf
from mechtox.probe import Direction, ProbeScorer, bootstrap_metrics

DATA = os.environ.get("DATA", "../../../../shared/data")
olid = load_labelled(DATA + "/olid_train.csv")
y = np.asarray(olid.labels)


def logits(model, ws, name):
    probe = Direction.load(f"{ws}/directions/{name}", model, several_layers_ok=True)
    p = np.clip(ProbeScorer(model, probe, batch_size=16, max_length=64, aggregate="pooled")(olid.texts), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def line(tag, s):
    a = bootstrap_metrics(y, 1 / (1 + np.exp(-s)), seed=0).set_index("metric").loc["auroc"]
    print(f"{tag:60s} OLID AUROC {a['value']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})", flush=True)


def z(s):
    return (s - s.mean()) / s.std()


if __name__ == "__main__":
    smol = logits(load_gguf(device="cpu"), os.environ["SMOL_WS"], "probe-shaped")
    gem = logits(load_checkpoint(os.environ.get("GEMMA", "/tmp/gemma/ckpt"), device="cpu"), os.environ["GEMMA_WS"], "probe-gemma")
    print(f"# {len(y)} tweets, {int(y.sum())} offensive; correlation of the two probes' logits "
          f"{np.corrcoef(smol, gem)[0, 1]:.3f}, of their ranks {np.corrcoef(rankdata(smol), rankdata(gem))[0, 1]:.3f}")
    line("SmolLM2-135M-Instruct, layer 15", smol)
    line("Gemma 3 270M, layer 9", gem)
    for w in (0.3, 0.5, 0.7):
        line(f"standardised logits, {w:g} x SmolLM2 + {1 - w:g} x Gemma", w * z(smol) + (1 - w) * z(gem))
    line("mean rank", z(rankdata(smol) + rankdata(gem)))
