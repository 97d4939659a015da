"""ceiling.py's section 1 and 3 on Gemma 3 270M: how high a linear token probe on Gemma's residual
stream goes on olid_train.csv when fitted on OLID's OWN labels (5-fold out of fold over all 11,916
tweets, seed 0, read whole up to 256 tokens), at layer 9 (its best Jigsaw-fitted transfer, 0.827) and
layer 12. Together with ceiling.log (SmolLM2: 0.846-0.848) this bounds what a Jigsaw-fitted probe of
the same form can be expected to reach on these two offline models.

Usage (from this folder, after gemma.py): GEMMA=/tmp/gemma/ckpt python ceiling_gemma.py > ceiling_gemma.log
(activations cached in $GEMMAFEATS, ~1.9 GB)."""
import os
import time
import warnings

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from mechtox.data import load_labelled
from mechtox.probe import TOKEN_AGGREGATE, _token_subset, aggregate_tokens, fit_token_weights

warnings.filterwarnings("ignore")
DATA = os.environ.get("DATA", "../../../../shared/data")
CACHE = os.environ.get("GEMMAFEATS", "/tmp/olid_gemma_2layers.npz")
HOOKS = ["blocks.9.hook_resid_post", "blocks.12.hook_resid_post"]


def features():
    olid = load_labelled(DATA + "/olid_train.csv")
    if not os.path.exists(CACHE):
        from mechtox.activations import collect_activations
        from mechtox.models import load_checkpoint
        t0 = time.time()
        model = load_checkpoint(os.environ.get("GEMMA", "/tmp/gemma/ckpt"), device="cpu")
        acts = collect_activations(model, list(olid.texts), HOOKS, pooling="tokens", batch_size=16, progress=False,
                                   max_length=256)
        np.savez(CACHE, row=acts.token_index[:, 0].numpy(), **{h: acts.numpy(h).astype(np.float32) for h in HOOKS})
        print(f"# collected {len(olid.texts)} tweets at {len(HOOKS)} layers in {time.time() - t0:.0f} s", flush=True)
    return np.asarray(olid.labels), np.load(CACHE)


def out_of_fold(y, X, row, C, seed=0):
    """ceiling.py's out-of-fold scores (its own import of bound.py collects SmolLM2 features first)."""
    s = np.zeros(len(y))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(y, y):
        w, b = fit_token_weights(*_token_subset(X, row, tr), y[tr], C)
        s[te] = text_logits(w, b, *_token_subset(X, row, te), len(te))
    return s


def text_logits(w, b, X, row, n):
    return aggregate_tokens(torch.as_tensor(X @ w + b, dtype=torch.float64), torch.as_tensor(row), n,
                            TOKEN_AGGREGATE).numpy()


if __name__ == "__main__":
    y, F = features()
    row = F["row"]
    print(f"# Gemma 3 270M, olid_train.csv: {len(y)} tweets ({y.sum()} offensive), {len(row)} tokens; "
          "out-of-fold AUROC, 5 folds", flush=True)
    print("\n## 1. linear token probe fitted on OLID's labels")
    for h in HOOKS:
        t0 = time.time()
        res = "  ".join(f"C {C:g}: {roc_auc_score(y, out_of_fold(y, F[h], row, C)):.3f}"
                        for C in (0.001, 0.003, 0.01, 0.03))
        print(f"L{h.split('.')[1]} {res}  ({time.time() - t0:.0f} s)", flush=True)
    print("\n## 3. in sample: fitted on all 11,916 tweets, scored on the same")
    for h in HOOKS:
        w, b = fit_token_weights(F[h], row, y, 0.01)
        print(f"L{h.split('.')[1]} C 0.01: {roc_auc_score(y, text_logits(w, b, F[h], row, len(y))):.3f}", flush=True)
