"""Other forms of the Jigsaw-fitted token probe, on bound.py's features and scoring (held-out Jigsaw /
the CLI's 1,200 OLID tweets), fitted on its 2,900 untruncated Jigsaw texts:

1. The first token of every text left out (its residual norm is ~24,000 against ~170-290 for the
   others at layers 15-21: an attention sink), each token scaled to a fixed norm, or both.
2. A two-layer MLP read on every token (GELU, dropout, AdamW; log-mean-exp over the tokens as the
   linear token probe), in place of the linear one.

Usage (from this folder, after bound.py): python forms.py > forms.log   (7 min 53 s on 2 cores)"""
import time
import warnings

import numpy as np
import torch
from bound import F, sub, text_logits
from sklearn.metrics import roc_auc_score

from mechtox.probe import TOKEN_AGGREGATE, aggregate_tokens, fit_token_weights

warnings.filterwarnings("ignore")
yp = F["y|jpool"]
short = F["len|jpool"] <= 64
JIDX = np.concatenate([np.flatnonzero(short & (yp == c))[:1450] for c in (0, 1)])


def prep(X, row, mode):
    keep = np.ones(len(row), bool)
    if "no first token" in mode:
        first = np.r_[True, row[1:] != row[:-1]]
        single = np.bincount(row) == 1
        keep = ~first | single[row]
    X, row = X[keep], row[keep]
    if "fixed norm" in mode:
        X = X / np.linalg.norm(X, axis=1, keepdims=True) * 100
    return X, row


def fit_mlp(X, row, y, hidden, weight_decay, dropout, epochs=100):
    """A two-layer MLP read on every token (log-mean-exp over a text's tokens, as the linear token
    probe), fitted by full-batch AdamW; returns ``score(X, row, n)``, the texts' logits."""
    torch.manual_seed(0)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z, r = torch.tensor((X - mu) / sd, dtype=torch.float32), torch.as_tensor(row)
    net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(Z.shape[1], hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
    yt = torch.tensor(y, dtype=torch.float32)
    for _ in range(epochs):
        opt.zero_grad()
        z = aggregate_tokens(net(Z).squeeze(-1), r, len(y), TOKEN_AGGREGATE)
        torch.nn.functional.binary_cross_entropy_with_logits(z, yt).backward()
        opt.step()
    net.eval()

    def score(Xs, rows, n):
        with torch.no_grad():
            z = net(torch.tensor((Xs - mu) / sd, dtype=torch.float32)).squeeze(-1)
            return aggregate_tokens(z, torch.as_tensor(rows), n, TOKEN_AGGREGATE).numpy()
    return score


def mlp(h, hidden, weight_decay, dropout, epochs=100):
    score = fit_mlp(*sub("jpool", h, JIDX), hidden, weight_decay, dropout, epochs)
    out = []
    for k in ("jte", "olid"):
        X, row, y = sub(k, h)
        out.append(roc_auc_score(y, score(X, row, len(y))))
    return out


if __name__ == "__main__":
    print("## 1. the linear token probe on changed tokens: held-out Jigsaw / OLID AUROC")
    for layer in (15, 18, 21):
        h = f"blocks.{layer}.hook_resid_post"
        for mode in ("as is", "no first token", "fixed norm", "no first token, fixed norm"):
            X, row = prep(*sub("jpool", h, JIDX)[:2], mode)
            for C in (0.003, 0.01):
                w, b = fit_token_weights(X, row, yp[np.sort(JIDX)], C)
                res = [roc_auc_score(sub(k, h)[2], text_logits(w, b, *prep(*sub(k, h)[:2], mode), len(sub(k, h)[2])))
                       for k in ("jte", "olid")]
                print(f"L{layer} {mode:27s} C {C:<5g} jigsaw {res[0]:.3f}  olid {res[1]:.3f}", flush=True)
    print("\n## 2. an MLP on every token (100 full-batch AdamW steps, lr 1e-3)")
    for layer in (15, 21):
        for hidden, wd, drop in ((64, 0.1, 0.5), (256, 0.1, 0.5)):
            t0 = time.time()
            j, o = mlp(f"blocks.{layer}.hook_resid_post", hidden, wd, drop)
            print(f"L{layer} hidden {hidden:3d} weight decay {wd} dropout {drop}: jigsaw {j:.3f}  olid {o:.3f}  "
                  f"({time.time() - t0:.0f} s)", flush=True)
