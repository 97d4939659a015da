"""Co-training across the two models (Blum & Mitchell 1998): OLID's texts, never its labels.

Self-training (``adapt.py``) added nothing: a probe's surest tweets are the ones it already ranks
right. Here each model's Jigsaw probe labels unlabelled tweets for the OTHER model, whose
representation (another family, another tokenizer; the two probes' tweet logits correlate 0.86,
``ensemble.log``) errs elsewhere, so the pseudo-labels can carry what the learner misses. Also
tried: pseudo-labels from the two probes' average (distilling the ensemble into each model).

Both models use the CLI's best recipe (docs/results.md: token probe, C 0.001, ``--drop-negatives
wikipedia``, ``--match-cue you / capitals / exclaim``; SmolLM2 layer 15, Gemma 3 270M layer 9), on a
stratified sample of its training texts (N_JIG, default 3,000; the recipe's weights computed on the
whole training split first). OLID: a stratified sample of N_POOL unlabelled tweets (pseudo-labels
only; their labels are read to say how right the pseudo-labels are) and N_EVAL other tweets scored
(AUROC with a bootstrap 95% interval). Tweets and texts read up to 64 tokens, as the CLI reads them.

Pseudo-labels: the tweets the labelling probe ranks highest (top ``hi`` share) are offensive, the
lowest (``lo`` share) not; each enters the fit with weight ``alpha`` (a Jigsaw text has weight 1
on average). Rounds: the refitted probes label again.

Usage (from this folder): GEMMA=/tmp/gemma/ckpt python cotrain.py > cotrain.log
(features cached in $COTRAINFEATS, default cotrain_feats.npz)."""
import itertools
import os
import time

import numpy as np
import torch

from mechtox.activations import collect_activations
from mechtox.data import load_labelled
from mechtox.models import load_checkpoint, load_gguf
from mechtox.probe import (
    TOKEN_AGGREGATE,
    aggregate_tokens,
    bootstrap_metrics,
    cue_weights,
    fit_token_weights,
    matching,
    split_indices,
    stratified_subset,
)

DATA = os.environ.get("DATA", "../../../../shared/data")
FEATS = os.environ.get("COTRAINFEATS", "cotrain_feats.npz")
N_JIG, N_POOL, N_EVAL = (int(os.environ.get(k, d)) for k, d in (("N_JIG", 3000), ("N_POOL", 3000), ("N_EVAL", 3000)))
C = 0.001
ALPHA = float(os.environ.get("ALPHA", 0.5))
MODELS = {"smol": "blocks.15.hook_resid_post", "gemma": "blocks.9.hook_resid_post"}


def texts():
    """The recipe's Jigsaw training texts (sampled, with their weights) and the two tweet sets."""
    jig = stratified_subset(load_labelled(DATA + "/jigsaw_balanced.csv"), 12180, 0)
    train, _ = split_indices(jig.labels, 600, 0, 12180 - 600)  # the CLI's split (--n-train all --n-test 600)
    y = np.asarray(jig.labels).astype(int)
    keep = np.zeros(len(y), bool)
    keep[train] = True
    keep &= ~(matching(jig.texts, "wikipedia") & (y == 0))
    w = cue_weights(jig.texts, y, ["you", "capitals", "exclaim"], keep)
    rng = np.random.default_rng(0)
    idx = np.flatnonzero(w > 0)
    idx = np.sort(np.concatenate([rng.choice(idx[y[idx] == c], N_JIG // 2, replace=False) for c in (0, 1)]))
    olid = load_labelled(DATA + "/olid_train.csv")
    oy = np.asarray(olid.labels).astype(int)
    perm = rng.permutation(len(oy))
    pool, ev = perm[:N_POOL], perm[N_POOL:N_POOL + N_EVAL]
    return ([jig.texts[i] for i in idx], y[idx], w[idx] / w[idx].mean(),
            [olid.texts[i] for i in pool], oy[pool], [olid.texts[i] for i in ev], oy[ev])


def features(jt, pt, et):
    if os.path.exists(FEATS):
        f = np.load(FEATS)
        return {k: f[k] for k in f.files}
    out = {}
    for name, hook in MODELS.items():
        t0 = time.time()
        model = load_gguf(device="cpu") if name == "smol" else load_checkpoint(os.environ.get("GEMMA", "/tmp/gemma/ckpt"),
                                                                               device="cpu")
        for part, tx in (("jig", jt), ("pool", pt), ("eval", et)):
            a = collect_activations(model, tx, hook, "tokens", 16, 64, progress=False)
            out[f"{name}_{part}_X"] = a.acts[hook].numpy().astype(np.float32)
            out[f"{name}_{part}_t"] = a.token_index[:, 0].numpy()
        print(f"# {name}: features in {time.time() - t0:.0f} s", flush=True)
        del model
    np.savez(FEATS, **out)
    return out


def logits(F, name, part, n, wb):
    z = torch.from_numpy(F[f"{name}_{part}_X"].astype(np.float64)) @ torch.from_numpy(wb[0]) + wb[1]
    return aggregate_tokens(z, torch.from_numpy(F[f"{name}_{part}_t"]), n, TOKEN_AGGREGATE).numpy()


def fit(F, name, jy, jw, pseudo=None, alpha=1.0, init=None):
    """Token probe on the Jigsaw sample, plus ``pseudo`` = (pool indices, 0/1 labels) at weight alpha."""
    X, t, y, w = F[f"{name}_jig_X"], F[f"{name}_jig_t"], jy, jw
    if pseudo is not None and len(pseudo[0]):
        idx, lab = pseudo
        order = np.argsort(idx)
        idx, lab = idx[order], lab[order]
        pt = F[f"{name}_pool_t"]
        keep = np.isin(pt, idx)
        renum = np.full(int(pt.max()) + 1, -1)
        renum[idx] = np.arange(len(idx)) + len(jy)
        X = np.concatenate([X, F[f"{name}_pool_X"][keep]])
        t = np.concatenate([t, renum[pt[keep]]])
        y = np.concatenate([jy, lab])
        w = np.concatenate([jw, np.full(len(idx), alpha)])
    return fit_token_weights(X, t, y, C=C, sample_weight=w, init=init)


def z(s):
    return (s - s.mean()) / s.std()


def auroc(y, s):
    a = bootstrap_metrics(y, 1 / (1 + np.exp(-np.clip(s, -30, 30))), seed=0).set_index("metric").loc["auroc"]
    return f"{a['value']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})"


def pseudo_labels(score, hi, lo):
    order = np.argsort(score)
    n = len(score)
    neg, pos = order[:int(lo * n)], order[n - int(hi * n):]
    return np.concatenate([pos, neg]), np.concatenate([np.ones(len(pos), int), np.zeros(len(neg), int)])


if __name__ == "__main__":
    jt, jy, jw, pt, py, et, ey = texts()
    print(f"# Jigsaw sample {len(jt)} ({int(jy.sum())} toxic); unlabelled pool {len(pt)} tweets "
          f"({py.mean():.0%} offensive); scored {len(et)} tweets ({int(ey.sum())} offensive)", flush=True)
    F = features(jt, pt, et)
    base = {m: fit(F, m, jy, jw) for m in MODELS}
    ev = {m: logits(F, m, "eval", len(et), base[m]) for m in MODELS}
    pool = {m: logits(F, m, "pool", len(pt), base[m]) for m in MODELS}
    print(f"# correlation of the two probes' eval logits {np.corrcoef(ev['smol'], ev['gemma'])[0, 1]:.3f}")
    print(f"{'Jigsaw only':58s} smol {auroc(ey, ev['smol'])}  gemma {auroc(ey, ev['gemma'])}  "
          f"average {auroc(ey, z(ev['smol']) + z(ev['gemma']))}", flush=True)
    other = {"smol": "gemma", "gemma": "smol"}
    for how, (hi, lo), alpha in itertools.product(("co", "ensemble", "self"), ((0.1, 0.3), (0.2, 0.5)), (ALPHA,)):
        cur = dict(pool)
        for rnd in range(1, 3):
            teach = {m: (cur[m] if how == "self" else cur[other[m]] if how == "co" else z(cur["smol"]) + z(cur["gemma"]))
                     for m in MODELS}
            ps = {m: pseudo_labels(teach[m], hi, lo) for m in MODELS}
            right = {m: (py[ps[m][0]] == ps[m][1]).mean() for m in MODELS}
            new = {m: fit(F, m, jy, jw, ps[m], alpha, init=base[m]) for m in MODELS}
            e = {m: logits(F, m, "eval", len(et), new[m]) for m in MODELS}
            cur = {m: logits(F, m, "pool", len(pt), new[m]) for m in MODELS}
            tag = f"{how}, top {hi:.0%} / bottom {lo:.0%}, alpha {alpha}, round {rnd}"
            print(f"{tag:58s} smol {auroc(ey, e['smol'])}  gemma {auroc(ey, e['gemma'])}  "
                  f"average {auroc(ey, z(e['smol']) + z(e['gemma']))}  pseudo right {right['smol']:.2f}/"
                  f"{right['gemma']:.2f}", flush=True)
