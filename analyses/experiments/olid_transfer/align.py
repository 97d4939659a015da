"""Feature alignment between Jigsaw and tweets, with OLID's texts and never its labels.

Same features, texts and scoring as ``bound.py`` and ``adapt.py`` (token probes at layers 15, 18
and 21 fitted on the 2,900 Jigsaw texts of <= 64 tokens, C 0.003, scored on the CLI's 1,200 OLID
tweets and 600 held-out Jigsaw texts; the 4,000 other tweets unlabelled):

1. Domain directions removed (as INLP removes a concept): a logistic domain classifier (mean-pooled
   activations, Jigsaw vs unlabelled tweets) gives a direction; it is projected out of every
   token's activation, and again k times, before the probe is fitted and applied.
2. CORAL: the Jigsaw tokens are whitened by their own covariance and re-coloured by the tweets'
   (means moved too), the probe is fitted on them and applied to the tweets as they are.

Usage (from this folder): python align.py > align.log   (with bound.py's cache: ~5 min on 2 cores)."""
import warnings

import numpy as np
from adapt import mean_pooled
from bound import F, sub, text_logits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mechtox.probe import fit_token_weights

warnings.filterwarnings("ignore")
C = 0.003


def score(w, b, sets):
    return [roc_auc_score(y, text_logits(w, b, X, row, len(y))) for X, row, y in sets]


def sqrtm(A, inverse=False):
    vals, vecs = np.linalg.eigh(A)
    vals = np.clip(vals, 1e-6, None) ** (-0.5 if inverse else 0.5)
    return (vecs * vals) @ vecs.T


if __name__ == "__main__":
    yp, lengths = F["y|jpool"], F["len|jpool"]
    short = lengths <= 64
    jidx = np.sort(np.concatenate([np.flatnonzero(short & (yp == c))[:1450] for c in (0, 1)]))  # as bound.py
    print(f"# {len(jidx)} Jigsaw texts; 4,000 unlabelled tweets; scored: held-out Jigsaw / OLID AUROC; C {C}")
    for layer in (15, 18, 21):
        h = f"blocks.{layer}.hook_resid_post"
        Xj, rj, yj = sub("jpool", h, jidx)
        Xu, ru, yu = sub("otr", h)
        evals = [sub("jte", h), sub("olid", h)]
        j, o = score(*fit_token_weights(Xj, rj, yj, C), evals)
        print(f"\nL{layer} Jigsaw only: {j:.3f} / {o:.3f}", flush=True)

        # 1. remove domain directions, one after another
        mu, sd = Xj.mean(0), Xj.std(0) + 1e-6
        P = np.eye(Xj.shape[1])
        res = []
        for k in range(1, 9):
            Mj, Mu = mean_pooled(Xj @ P, rj, len(yj)), mean_pooled(Xu @ P, ru, len(yu))
            dom = LogisticRegression(C=0.01, max_iter=2000).fit(np.vstack([(Mj - mu) / sd, (Mu - mu) / sd]),
                                                                np.r_[np.zeros(len(Mj)), np.ones(len(Mu))])
            acc = dom.score(np.vstack([(Mj - mu) / sd, (Mu - mu) / sd]), np.r_[np.zeros(len(Mj)), np.ones(len(Mu))])
            u = dom.coef_[0] / sd  # the direction in raw coordinates
            u /= np.linalg.norm(u)
            P = P @ (np.eye(len(u)) - np.outer(u, u))
            if k in (1, 2, 4, 8):
                w, b = fit_token_weights(Xj @ P, rj, yj, C)
                j, o = score(P @ w, b, evals)  # (x P) . w = x . (P w): the probe in raw coordinates
                res.append(f"k {k} (domain acc before {acc:.2f}): {j:.3f} / {o:.3f}")
        print(f"L{layer} domain directions removed: " + " | ".join(res), flush=True)

        # 2. CORAL: Jigsaw tokens re-coloured with the tweets' covariance
        sub_u = Xu[:: max(1, len(Xu) // 40000)]
        mj, mu_ = Xj.mean(0), sub_u.mean(0)
        A = sqrtm(np.cov(Xj[:: max(1, len(Xj) // 40000)], rowvar=False) + 1e-3 * np.eye(Xj.shape[1]), inverse=True) @ \
            sqrtm(np.cov(sub_u, rowvar=False) + 1e-3 * np.eye(Xj.shape[1]))
        Xc = (Xj - mj) @ A + mu_
        j, o = score(*fit_token_weights(Xc, rj, yj, C), evals)
        print(f"L{layer} CORAL: {j:.3f} / {o:.3f}  (held-out Jigsaw scored as it is, not re-coloured)", flush=True)
