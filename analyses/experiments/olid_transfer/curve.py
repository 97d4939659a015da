import os
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

warnings.filterwarnings("ignore")
F = np.load(os.environ.get("FEATS", "feats.npz"))
y = F["y|jtr"]
for key in ["P|{}|blocks.12.hook_resid_post|mean", "P|{}|blocks.18.hook_resid_post|mean", "T|{}|blocks.12.hook_resid_post|mean"]:
    X = F[key.format("jtr")].astype(np.float64); Xo = F[key.format("olid")].astype(np.float64); Xt = F[key.format("jte")].astype(np.float64)
    for n in (375, 750, 1500):
        mu, sd = X[:n].mean(0), X[:n].std(0) + 1e-6
        clf = LogisticRegression(C=1e-2, max_iter=3000).fit((X[:n] - mu) / sd, y[:n])
        print(key, n, f"jte {roc_auc_score(F['y|jte'], clf.decision_function((Xt-mu)/sd)):.3f} olid {roc_auc_score(F['y|olid'], clf.decision_function((Xo-mu)/sd)):.3f}", flush=True)
