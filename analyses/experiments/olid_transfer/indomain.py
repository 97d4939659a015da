import os
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

warnings.filterwarnings("ignore")
F = np.load(os.environ.get("FEATS", "feats.npz"))
y = F["y|olid"]
for key in ["P|olid|blocks.12.hook_resid_post|mean", "P|olid|blocks.18.hook_resid_post|mean", "T|olid|blocks.12.hook_resid_post|mean"]:
    X = F[key].astype(np.float64)
    for C in (1e-3, 1e-2, 1e-1):
        p = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)), X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="decision_function")
        print(key, C, f"OLID-fitted 5-fold AUROC {roc_auc_score(y, p):.3f}", flush=True)
