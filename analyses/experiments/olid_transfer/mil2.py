"""mil.py's token-aggregated (log-mean-exp) probes, widened: more L2 strengths and temperatures,
layers concatenated, and the in-domain ceiling by 5-fold cross-validation over the 1,500 OLID
tweets (out-of-fold AUROC). Reads mil.py's cache ($MILFEATS); run mil.py first.
Usage: python mil2.py"""
import warnings

import numpy as np
import torch
from mil import NO, F, agg, fit
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

warnings.filterwarnings("ignore")


def feats(name, layers, stats=None):
    X = np.concatenate([F[f"{name}|blocks.{layer}.hook_resid_post"] for layer in layers], axis=1)
    mu, sd = stats if stats is not None else (X.mean(0), X.std(0) + 1e-6)
    return torch.as_tensor((X - mu) / sd, dtype=torch.float64), (mu, sd)


def score(w, b, X, row, n, T):
    with torch.no_grad():
        return agg(X @ w + b, row, n, T).numpy()


rows = {k: torch.as_tensor(F[f"row|{k}"], dtype=torch.long) for k in ("jtr", "jte", "olid")}
ys = {k: F[f"y|{k}"] for k in ("jtr", "jte", "olid")}
for layers in ([15], [18], [21], [15, 21], [15, 18, 21]):
    Xtr, stats = feats("jtr", layers)
    Xte, _ = feats("jte", layers, stats)
    Xo, _ = feats("olid", layers, stats)
    for lam in (0.03, 0.1, 0.3, 1.0):
        line = []
        for T in (np.inf, 4.0, 2.0, 1.0):
            w, b = fit(Xtr, rows["jtr"], ys["jtr"], T, lam)
            a = roc_auc_score(ys["jte"], score(w, b, Xte, rows["jte"], len(ys["jte"]), T))
            o = roc_auc_score(ys["olid"], score(w, b, Xo, rows["olid"], NO, T))
            line.append(f"T {T:g} jte {a:.3f} olid {o:.3f}")
        print("+".join(map(str, layers)), f"lam {lam:g}: " + " | ".join(line), flush=True)

# in domain, 5-fold CV over the 1,500 OLID tweets
folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(NO), ys["olid"]))
row = rows["olid"].numpy()
for layers in ([15], [18]):
    raw = np.concatenate([F[f"olid|blocks.{layer}.hook_resid_post"] for layer in layers], axis=1)
    for lam in (0.01, 0.03, 0.1, 0.3):
        line = []
        for T in (np.inf, 4.0, 2.0, 1.0):
            oof = np.zeros(NO)
            for tr, te in folds:
                keep_tr, keep_te = np.isin(row, tr), np.isin(row, te)
                mu, sd = raw[keep_tr].mean(0), raw[keep_tr].std(0) + 1e-6
                remap = -np.ones(NO, dtype=np.int64)
                remap[tr] = np.arange(len(tr))
                w, b = fit(torch.as_tensor((raw[keep_tr] - mu) / sd, dtype=torch.float64),
                           torch.as_tensor(remap[row[keep_tr]]), ys["olid"][tr], T, lam)
                remap[te] = np.arange(len(te))
                oof[te] = score(w, b, torch.as_tensor((raw[keep_te] - mu) / sd, dtype=torch.float64),
                                torch.as_tensor(remap[row[keep_te]]), len(te), T)
            line.append(f"T {T:g} {roc_auc_score(ys['olid'], oof):.3f}")
        print("+".join(map(str, layers)), f"in-domain 5-fold lam {lam:g}: " + " | ".join(line), flush=True)
