"""Token-level scoring: probes fitted on mean-pooled Jigsaw features, applied per token, aggregated."""
import os
import re
import sys
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mechtox.activations import collect_activations
from mechtox.data import load_labelled
from mechtox.models import load_gguf

warnings.filterwarnings("ignore")
F = np.load(os.environ.get("FEATS", "feats.npz"))
LAYERS = [int(x) for x in sys.argv[1].split(",")]
C = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-2
model = load_gguf(device="cpu", dtype="float32")
rng = np.random.default_rng(0)
jig = load_labelled(os.environ.get("DATA", "../../../../shared/data") + "/jigsaw_balanced.csv"); olid = load_labelled(os.environ.get("DATA", "../../../../shared/data") + "/olid_train.csv")
def strat(y, n):
    idx = []
    for c in (0, 1):
        w = np.flatnonzero(y == c); idx += list(rng.choice(w, n // 2, replace=False))
    return np.array(sorted(idx))
NJ, NT, NO = 1500, 500, 1500
ji = strat(np.asarray(jig.labels), NJ + NT); rng.shuffle(ji); jte = ji[NJ:]
oi = rng.choice(len(olid.texts), NO, replace=False)
def strip(t):
    t = re.sub(r"(@user\s*)+", "", t, flags=re.I).replace("URL", "").strip()
    return t or "."
sets = {"jte": [jig.texts[i] for i in jte], "olid": [olid.texts[i] for i in oi], "olids": [strip(olid.texts[i]) for i in oi]}
ys = {k: F[f"y|{k}"] for k in sets}
hooks = [f"blocks.{l}.hook_resid_post" for l in LAYERS]
probes = {}
for l, h in zip(LAYERS, hooks):
    X = F[f"P|jtr|{h}|mean"].astype(np.float64); y = F["y|jtr"]
    mu, sd = X.mean(0), X.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=3000).fit((X - mu) / sd, y)
    probes[h] = (clf.coef_[0] / sd, clf.intercept_[0] - (clf.coef_[0] / sd) @ mu)
for name, texts in sets.items():
    acts = collect_activations(model, texts, hooks, pooling="tokens", batch_size=16, progress=False)
    row = acts.token_index[:, 0].numpy()
    res = []
    for h in hooks:
        w, b = probes[h]
        s = acts.numpy(h).astype(np.float64) @ w + b
        agg = {}
        for key, f in (("mean", np.mean), ("max", np.max), ("top3", lambda v: np.sort(v)[-3:].mean()),
                       ("lse", lambda v: np.log(np.exp(v - v.max()).sum()) + v.max()),
                       ("q90", lambda v: np.quantile(v, 0.9))):
            agg[key] = np.array([f(s[row == i]) for i in range(len(texts))])
        res.append(f"{h.split('.')[1]}: " + " ".join(f"{k} {roc_auc_score(ys[name], v):.3f}" for k, v in agg.items()))
    print(name, " | ".join(res), flush=True)
