import os
import sys
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

warnings.filterwarnings("ignore")
F = np.load(os.environ.get("FEATS", "feats.npz"))
S = ("jte", "olid", "olids")
y = {k: F[f"y|{k}"] for k in ("jtr",) + S}
keys = sorted({k.split("|", 2)[2] for k in F.files if k.startswith("P|jtr|")})
for tag in ("P", "T"):
    print(tag, "zeroshot yes-no AUROC " + " ".join(f"{s} {roc_auc_score(y[s], F[f'{tag}|{s}|zeroshot']):.3f}" for s in S))
def evals(score):
    return "/".join(f"{roc_auc_score(y[s], score(s)):.3f}" for s in S)
only = sys.argv[1] if len(sys.argv) > 1 else ""
for tag in ("P", "T"):
    for k in keys:
        if k == "zeroshot" or only not in f"{tag}|{k}": continue
        X = {s: F[f"{tag}|{s}|{k}"].astype(np.float64) for s in ("jtr",) + S}
        mu, sd = X["jtr"].mean(0), X["jtr"].std(0) + 1e-6
        out = []
        for C in (1e-3, 1e-2, 1e-1):
            clf = LogisticRegression(C=C, max_iter=3000).fit((X["jtr"] - mu) / sd, y["jtr"])
            out.append(f"C{C:g}=" + evals(lambda s: clf.decision_function((X[s] - mu) / sd)))
            out.append(f"a{C:g}=" + evals(lambda s: clf.decision_function((X[s] - X[s].mean(0)) / (X[s].std(0) + 1e-6))))
        d = (X["jtr"][y["jtr"] == 1].mean(0) - X["jtr"][y["jtr"] == 0].mean(0))
        out.append("dm=" + evals(lambda s: X[s] @ d))
        out.append("dmz=" + evals(lambda s: X[s] @ (d / sd ** 2)))
        print(f"{tag} {k:45s} " + " ".join(out), flush=True)
