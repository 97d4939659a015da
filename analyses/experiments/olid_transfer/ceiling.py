"""How high can a probe on SmolLM2-135M's residual stream go on olid_train.csv when it is fitted on
OLID's OWN labels? The issue's target for a Jigsaw-fitted probe is 0.85; this measures what in-domain
training reaches on the same file, as the best a probe of the same form can be expected to transfer to.

Every one of the 11,916 tweets is scored out of fold (5-fold stratified cross-validation, seed 0),
read whole (up to 256 tokens):

1. The linear token probe (``fit_token_weights``, log-mean-exp, as ``--pooling tokens``) at layers
   12, 15, 18 and 21, C 0.003-0.03; at layer 15 a learning curve (1,000-9,532 training tweets per fold).
2. Layers 12-21 concatenated (2,304 dimensions), and a two-layer MLP on every token at layer 15
   (as ``forms.py``), richer probes of the same activations.
3. In-sample AUROC: fitted on all 11,916 tweets and scored on the same ones, an optimistic figure.

Usage (from this folder): python ceiling.py > ceiling.log
(activations of all tweets at four layers, cached in $OLIDFEATS4 (~3.6 GB), then the fits)."""
import os
import time
import warnings
from functools import partial

import numpy as np
from bound import text_logits
from forms import fit_mlp
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from topic import DATA

from mechtox.data import load_labelled
from mechtox.probe import _token_subset, fit_token_weights

warnings.filterwarnings("ignore")
CACHE = os.environ.get("OLIDFEATS4", "/tmp/olid_all_4layers.npz")
LAYERS = (12, 15, 18, 21)
HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in LAYERS]


def olid_features():
    olid = load_labelled(DATA + "/olid_train.csv")
    if not os.path.exists(CACHE):
        from mechtox.activations import collect_activations
        from mechtox.models import load_gguf
        t0 = time.time()
        acts = collect_activations(load_gguf(device="cpu", dtype="float32"), list(olid.texts), HOOKS,
                                   pooling="tokens", batch_size=16, progress=False, max_length=256)
        np.savez(CACHE, row=acts.token_index[:, 0].numpy(), **{h: acts.numpy(h).astype(np.float32) for h in HOOKS})
        print(f"# collected {len(olid.texts)} tweets at {len(HOOKS)} layers in {time.time() - t0:.0f} s", flush=True)
    return np.asarray(olid.labels), np.load(CACHE)


def out_of_fold(y, X, row, fit, n_train=None, seed=0):
    """Out-of-fold scores of every text; ``fit(X, row, y) -> score(X, row, n)``; ``n_train``: texts
    drawn (stratified) from each fold's training part."""
    s = np.zeros(len(y))
    rng = np.random.default_rng(seed)
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(y, y):
        if n_train is not None and n_train < len(tr):
            tr = np.concatenate([rng.choice(tr[y[tr] == c], round(n_train * (y[tr] == c).mean()), replace=False)
                                 for c in (0, 1)])
        tr, te = np.sort(tr), np.sort(te)
        score = fit(*_token_subset(X, row, tr), y[tr])
        s[te] = score(*_token_subset(X, row, te), len(te))
    return s


def linear(C):
    def fit(X, row, y):
        w, b = fit_token_weights(X, row, y, C)
        return lambda Xs, rows, n: text_logits(w, b, Xs, rows, n)
    return fit


if __name__ == "__main__":
    y, F = olid_features()
    row = F["row"]
    print(f"# olid_train.csv: {len(y)} tweets ({y.sum()} offensive), {len(row)} tokens; out-of-fold AUROC, 5 folds")
    print("\n## 1. linear token probe fitted on OLID's labels")
    for h in HOOKS:
        X = F[h]
        res = "  ".join(f"C {C:g}: {roc_auc_score(y, out_of_fold(y, X, row, linear(C))):.3f}" for C in (0.003, 0.01, 0.03))
        print(f"L{h.split('.')[1]} {res}", flush=True)
    X = F["blocks.15.hook_resid_post"]
    for n in (1000, 2000, 4000):
        print(f"L15 C 0.01, {n} training tweets per fold: {roc_auc_score(y, out_of_fold(y, X, row, linear(0.01), n)):.3f}",
              flush=True)

    print("\n## 2. richer probes")
    Xc = np.concatenate([F[h] for h in HOOKS], 1)
    for C in (0.003, 0.01):
        print(f"L12+15+18+21 concatenated, C {C:g}: {roc_auc_score(y, out_of_fold(y, Xc, row, linear(C))):.3f}", flush=True)
    del Xc
    t0 = time.time()
    print(f"L15 MLP (256 hidden, dropout 0.5, weight decay 0.1, 100 steps): "
          f"{roc_auc_score(y, out_of_fold(y, X, row, partial(fit_mlp, hidden=256, weight_decay=0.1, dropout=0.5))):.3f}  ({time.time() - t0:.0f} s)", flush=True)

    print("\n## 3. in sample: fitted on all 11,916 tweets, scored on the same")
    for h in HOOKS:
        w, b = fit_token_weights(F[h], row, y, 0.01)
        print(f"L{h.split('.')[1]} C 0.01: {roc_auc_score(y, text_logits(w, b, F[h], row, len(y))):.3f}", flush=True)
