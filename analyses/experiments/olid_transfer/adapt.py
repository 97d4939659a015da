"""Unsupervised domain adaptation of the Jigsaw token probe to tweets: OLID's texts, never its labels.

Same features, texts and scoring as ``bound.py`` (its cache, $BOUNDFEATS): token probes at layers
15, 18 and 21 fitted on the 2,900 Jigsaw texts of <= 64 tokens, scored on the CLI's 1,200 OLID
tweets and on 600 held-out Jigsaw texts. The 4,000 other OLID tweets of ``bound.py`` serve as
UNLABELLED tweets here (their labels are read only to report how right the pseudo-labels are):

1. Self-training: the probe scores the unlabelled tweets; those it is surest of (probability
   >= hi: offensive, <= lo: not) join the Jigsaw texts with weight alpha as pseudo-labelled
   examples; refit; three rounds.
2. Importance weighting: a domain classifier (logistic regression on mean-pooled activations,
   Jigsaw vs unlabelled tweets) weights each Jigsaw text by p(tweet | x) / p(Jigsaw | x)
   (normalised to mean 1, clipped at 10), and the probe is refitted on the weighted texts.

Usage (from this folder): python adapt.py > adapt.log   (with bound.py's cache: ~10 min on 2 cores;
without it, bound.py's 8 min of activations first)."""
import warnings

import numpy as np
import torch
from bound import F, aurocs, sub, text_logits
from sklearn.linear_model import LogisticRegression

from mechtox.probe import TOKEN_AGGREGATE, aggregate_tokens

warnings.filterwarnings("ignore")
C = 0.003


def fit_weighted(h, jidx, sw, extra=None, alpha=1.0):
    """Token probe on Jigsaw texts ``jidx`` with per-text weights ``sw`` (None: 1), plus ``extra``
    = (tweet indices into the unlabelled set, their 0/1 pseudo-labels) at weight ``alpha`` each;
    ridge |w|^2 / (2 C n_jigsaw), standardised on the Jigsaw tokens (as bound.fit_joint)."""
    Xj, rj, yj = sub("jpool", h, jidx)
    mu, sd = Xj.mean(0), Xj.std(0) + 1e-6
    parts = [(Xj, rj, yj, np.ones(len(yj)) if sw is None else sw)]
    if extra is not None and len(extra[0]):
        Xo, ro, _ = sub("otr", h, extra[0])
        order = np.argsort(extra[0])  # sub() sorts the indices
        parts.append((Xo, ro, extra[1][order], np.full(len(order), alpha)))
    tens = []
    for X, r, y, wt in parts:
        tens.append((torch.as_tensor((X - mu) / sd, dtype=torch.float64), torch.as_tensor(r),
                     torch.as_tensor(y, dtype=torch.float64), torch.as_tensor(wt, dtype=torch.float64)))
    w = torch.zeros(Xj.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lam = 1 / (2 * C * len(yj))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    opt = torch.optim.LBFGS([w, b], max_iter=1000, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = lam * (w @ w)
        for Z, r, y, wt in tens:
            z = aggregate_tokens(Z @ w + b, r, len(y), TOKEN_AGGREGATE)
            loss = loss + (bce(z, y, reduction="none") * wt).sum() / len(yj)
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / sd
    return w_raw, float(b.item() - mu @ w_raw)


def probs(w, b, name, h):
    X, row, y = sub(name, h)
    return 1 / (1 + np.exp(-text_logits(w, b, X, row, len(y))))


def mean_pooled(X, row, n):
    """The mean of each text's token rows (``row``: each token's text, 0 .. n - 1)."""
    out = np.zeros((n, X.shape[1]))
    np.add.at(out, row, X)
    return out / np.bincount(row, minlength=n)[:, None]


if __name__ == "__main__":
    yp, lengths = F["y|jpool"], F["len|jpool"]
    short = lengths <= 64
    jidx = np.sort(np.concatenate([np.flatnonzero(short & (yp == c))[:1450] for c in (0, 1)]))  # as bound.py
    y_unl = F["y|otr"]  # only to report the pseudo-labels' precision
    print(f"# {len(jidx)} Jigsaw texts of <= 64 tokens; {len(y_unl)} unlabelled tweets; scored: "
          f"{len(F['y|olid'])} OLID tweets, {len(F['y|jte'])} held-out Jigsaw texts; C {C}")

    print("\n## 1. Self-training on the unlabelled tweets (held-out Jigsaw / OLID AUROC)")
    for layer in (15, 18, 21):
        h = f"blocks.{layer}.hook_resid_post"
        w, b = fit_weighted(h, jidx, None)
        j, o = aurocs(w, b, h)
        print(f"L{layer} Jigsaw only: jigsaw {j:.3f}  olid {o:.3f}", flush=True)
        base = (w, b)
        for hi, lo, alpha in ((0.9, 0.1, 1.0), (0.8, 0.2, 1.0), (0.9, 0.1, 3.0)):
            w, b = base
            res = []
            for _ in range(3):
                p = probs(w, b, "otr", h)
                pick = np.flatnonzero((p >= hi) | (p <= lo))
                lab = (p[pick] >= hi).astype(float)
                prec = (lab == y_unl[pick]).mean() if len(pick) else float("nan")
                w, b = fit_weighted(h, jidx, None, (pick, lab), alpha)
                j, o = aurocs(w, b, h)
                res.append(f"{len(pick)} ({int(lab.sum())} off.) right {prec:.2f} -> {j:.3f} / {o:.3f}")
            print(f"L{layer} hi {hi} lo {lo} alpha {alpha:g}: " + " | ".join(res), flush=True)

    print("\n## 2. Importance weighting of the Jigsaw texts by a domain classifier (held-out Jigsaw / OLID AUROC)")
    for layer in (15, 18, 21):
        h = f"blocks.{layer}.hook_resid_post"
        X, row, y = sub("jpool", h, jidx)
        Xj = mean_pooled(X, row, len(y))
        X, row, y = sub("otr", h)
        Xo = mean_pooled(X, row, len(y))
        mu, sd = Xj.mean(0), Xj.std(0) + 1e-6
        dom = LogisticRegression(C=0.01, max_iter=2000).fit(np.vstack([(Xj - mu) / sd, (Xo - mu) / sd]),
                                                            np.r_[np.zeros(len(Xj)), np.ones(len(Xo))])
        q = dom.predict_proba((Xj - mu) / sd)[:, 1]
        ratio = q / (1 - q) * len(Xj) / len(Xo)
        for clip in (10.0, 3.0):
            sw = np.minimum(ratio / ratio.mean(), clip)
            sw = sw / sw.mean()
            w, b = fit_weighted(h, jidx, sw)
            j, o = aurocs(w, b, h)
            ess = sw.sum() ** 2 / (sw ** 2).sum()
            print(f"L{layer} clip {clip:g}: effective texts {ess:.0f} of {len(sw)}; jigsaw {j:.3f}  olid {o:.3f}",
                  flush=True)
