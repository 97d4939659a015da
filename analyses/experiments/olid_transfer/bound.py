"""How far a Jigsaw-fitted token probe is from what OLID's own labels give, on the same tweets.

Token probes (``probe.fit_token_weights``: log-mean-exp of token logits, as ``--pooling tokens``)
at layers 12-21, scored on the CLI's OLID sample (``stratified_subset(olid, 1200, 0)``, as
``--eval-data olid_train.csv --limit 1200``; read up to 256 tokens so no tweet is cut) and on 600
held-out Jigsaw texts (``split_indices(y, 600, 0)``). Parts:

1. Jigsaw only: 2,800 texts drawn from all 5,000 of the pool or only from those of <= 64 tokens
   (untruncated, tweet-like), C 0.003-0.03; the whole pool; three layers concatenated; an ensemble.
2. The in-domain ceiling on the same 1,200 tweets: probes fitted on 4,000 other OLID tweets.
3. The trade-off: Jigsaw + alpha x the 4,000 OLID tweets in one objective. If the probes that do
   well on OLID did worse on held-out Jigsaw, the two label sets would disagree; if not, Jigsaw's
   labels leave the OLID-friendly direction undetermined.
4. Jigsaw only, restricted to the top-k principal components of the Jigsaw tokens (no labels).

Usage (from this folder): python bound.py > bound.log   (12 min 19 s on 2 cores sharing them with other work:
8 min of activations, cached in $BOUNDFEATS (3.5 GB), then the fits)."""
import os
import time
import warnings

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mechtox.data import load_labelled
from mechtox.probe import (
    TOKEN_AGGREGATE,
    _token_subset,
    aggregate_tokens,
    fit_token_weights,
    split_indices,
    stratified_subset,
)

warnings.filterwarnings("ignore")
DATA = os.environ.get("DATA", "../../../../shared/data")
CACHE = os.environ.get("BOUNDFEATS", "/tmp/bound_feats.npz")
LAYERS = (12, 15, 18, 21)
HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in LAYERS]


def texts_and_labels():
    jig, olid = load_labelled(DATA + "/jigsaw_balanced.csv"), load_labelled(DATA + "/olid_train.csv")
    yj = np.asarray(jig.labels)
    tr, te = split_indices(yj, test_size=600, seed=0)
    rng = np.random.default_rng(0)
    pool = np.sort(np.concatenate([rng.choice(tr[yj[tr] == c], 2500, replace=False) for c in (0, 1)]))
    scored = stratified_subset(olid, 1200, 0)
    kept_apart = set(scored.texts)
    rest = [i for i, t in enumerate(olid.texts) if t not in kept_apart]
    otr = np.random.default_rng(2).choice(rest, 4000, replace=False)
    yo = np.asarray(olid.labels)
    return {"jpool": ([jig.texts[i] for i in pool], yj[pool], 64),
            "jte": ([jig.texts[i] for i in te], yj[te], 64),
            "olid": (list(scored.texts), np.asarray(scored.labels), 256),
            "otr": ([olid.texts[i] for i in otr], yo[otr], 256)}


if not os.path.exists(CACHE):
    from mechtox.activations import collect_activations, encode
    from mechtox.models import load_gguf
    model = load_gguf(device="cpu", dtype="float32")
    out = {}
    for name, (texts, y, max_length) in texts_and_labels().items():
        t0 = time.time()
        acts = collect_activations(model, texts, HOOKS, pooling="tokens", batch_size=16, progress=False,
                                   max_length=max_length)
        out[f"row|{name}"] = acts.token_index[:, 0].numpy()
        out[f"y|{name}"] = y
        out[f"len|{name}"] = np.array([len(x) for x in encode(model, texts, 100_000)])
        for h in HOOKS:
            out[f"{name}|{h}"] = acts.numpy(h).astype(np.float32)
        print(f"# collected {name}: {len(texts)} texts, {len(out[f'row|{name}'])} tokens, {time.time() - t0:.0f} s",
              flush=True)
    np.savez(CACHE, **out)
F = dict(np.load(CACHE))


def sub(name, h, idx=None):
    """Token rows of texts ``idx`` of set ``name`` at hook ``h`` (all of them: ``None``), renumbered;
    and their labels."""
    X, row, y = F[f"{name}|{h}"], F[f"row|{name}"], F[f"y|{name}"]
    if idx is None:
        return X, row, y
    idx = np.sort(idx)
    return (*_token_subset(X, row, idx), y[idx])


def text_logits(w, b, X, row, n):
    s = torch.as_tensor(X @ w + b, dtype=torch.float64)
    return aggregate_tokens(s, torch.as_tensor(row), n, TOKEN_AGGREGATE).numpy()


def aurocs(w, b, h):
    """Held-out Jigsaw and OLID AUROC of the raw-coordinate probe ``(w, b)`` at hook ``h``."""
    res = []
    for k in ("jte", "olid"):
        X, row, y = sub(k, h)
        res.append(roc_auc_score(y, text_logits(w, b, X, row, len(y))))
    return res


def fit_joint(h, jidx, alpha, C):
    """Jigsaw texts ``jidx`` + ``alpha`` x the OLID training tweets (alpha = inf: OLID only), one
    log-mean-exp logistic objective + |w|^2 / (2 C n_jigsaw), standardised on the Jigsaw tokens."""
    Xj, rj, yj = sub("jpool", h, jidx)
    Xo, ro, yo = sub("otr", h)
    mu, sd = Xj.mean(0), Xj.std(0) + 1e-6
    Zj, Zo = (torch.as_tensor((X - mu) / sd, dtype=torch.float64) for X in (Xj, Xo))
    rj, ro = torch.as_tensor(rj), torch.as_tensor(ro)
    yjt, yot = torch.as_tensor(yj, dtype=torch.float64), torch.as_tensor(yo, dtype=torch.float64)
    w = torch.zeros(Zj.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lam = 1 / (2 * C * len(yj))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    opt = torch.optim.LBFGS([w, b], max_iter=1000, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lj = bce(aggregate_tokens(Zj @ w + b, rj, len(yj), TOKEN_AGGREGATE), yjt)
        lo = bce(aggregate_tokens(Zo @ w + b, ro, len(yo), TOKEN_AGGREGATE), yot)
        loss = (lo if alpha == np.inf else lj + alpha * lo if alpha else lj) + lam * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / sd
    return w_raw, float(b.item() - mu @ w_raw)


if __name__ == "__main__":
    yp, lengths = F["y|jpool"], F["len|jpool"]
    short = lengths <= 64
    print(f"# Jigsaw pool: {len(yp)} texts, {short.sum()} of <= 64 tokens ({(short & (yp == 1)).sum()} toxic); "
          f"OLID scored: {len(F['y|olid'])} ({F['y|olid'].sum()} offensive), OLID training: {len(F['y|otr'])}")
    rng = np.random.default_rng(1)

    def draw(mask, n):
        return np.concatenate([rng.choice(np.flatnonzero(mask & (yp == c)), n // 2, replace=False) for c in (0, 1)])

    print("\n## 1. Jigsaw only (held-out Jigsaw / OLID AUROC)")
    every = np.ones(len(yp), bool)
    for h in HOOKS:
        layer = h.split(".")[1]
        for tag, idx, Cs in (("2,800 of all", draw(every, 2800), (0.01,)),
                             ("2,800 of <= 64 tokens", draw(short, 2800), (0.003, 0.01, 0.03)),
                             ("all 5,000", np.arange(len(yp)), (0.01,))):
            for C in Cs:
                X, row, y = sub("jpool", h, idx)
                j, o = aurocs(*fit_token_weights(X, row, y, C), h)
                print(f"L{layer} {tag:22s} C {C:<5g} jigsaw {j:.3f}  olid {o:.3f}", flush=True)
    jidx = np.concatenate([np.flatnonzero(short & (yp == c))[:1450] for c in (0, 1)])  # 2,900 untruncated
    cat = "cat"
    for k in ("jpool", "jte", "olid"):
        F[f"{k}|{cat}"] = np.concatenate([F[f"{k}|blocks.{layer}.hook_resid_post"] for layer in (15, 18, 21)], 1)
    X, row, y = sub("jpool", cat, jidx)
    j, o = aurocs(*fit_token_weights(X, row, y, 0.001), cat)
    print(f"L15+18+21 concatenated, 2,900 of <= 64 tokens, C 0.001: jigsaw {j:.3f}  olid {o:.3f}")
    z = {"jte": 0, "olid": 0}
    for h in HOOKS:
        X, row, y = sub("jpool", h, jidx)
        w, b = fit_token_weights(X, row, y, 0.003)
        for k in z:
            s = text_logits(w, b, *sub(k, h)[:2], len(F[f"y|{k}"]))
            z[k] = z[k] + (s - s.mean()) / s.std()
    print(f"ensemble of L12-21 (standardised logits summed): jigsaw {roc_auc_score(F['y|jte'], z['jte']):.3f}  "
          f"olid {roc_auc_score(F['y|olid'], z['olid']):.3f}")

    print("\n## 2. In domain: fitted on 4,000 other OLID tweets, scored on the same 1,200")
    for h in HOOKS:
        X, row, y = sub("otr", h)
        res = [f"C {C:g}: {aurocs(*fit_token_weights(X, row, y, C), h)[1]:.3f}" for C in (0.003, 0.01, 0.03, 0.1)]
        print(f"L{h.split('.')[1]} " + "  ".join(res), flush=True)

    print("\n## 3. Jigsaw (2,900 of <= 64 tokens) + alpha x OLID (4,000), C 0.003: held-out Jigsaw / OLID AUROC")
    for layer in (15, 21):
        h = f"blocks.{layer}.hook_resid_post"
        ws = {}
        for alpha in (0, 0.1, 0.3, 1, 3, np.inf):
            ws[alpha] = fit_joint(h, jidx, alpha, 0.003)
            j, o = aurocs(*ws[alpha], h)
            print(f"L{layer} alpha {alpha:<4g} jigsaw {j:.3f}  olid {o:.3f}", flush=True)
        a, b = ws[0][0], ws[np.inf][0]
        print(f"L{layer} cosine(Jigsaw-only, OLID-only weights) {a @ b / np.linalg.norm(a) / np.linalg.norm(b):.2f}")

    print("\n## 4. Jigsaw only (2,900 of <= 64 tokens) in the top-k principal components of its tokens, C 0.01")
    for layer in (15, 21):
        h = f"blocks.{layer}.hook_resid_post"
        X, row, y = sub("jpool", h, jidx)
        mu, sd = X.mean(0), X.std(0) + 1e-6
        Z = (X - mu) / sd
        Vt = np.linalg.svd(Z[::3], full_matrices=False)[2]
        res = []
        for k in (16, 32, 64, 128):
            wk, bk = fit_token_weights(Z @ Vt[:k].T, row, y, 0.01)
            w = (Vt[:k].T @ wk) / sd
            j, o = aurocs(w, bk - mu @ w, h)
            res.append(f"k {k}: {j:.3f} / {o:.3f}")
        print(f"L{layer} " + "  ".join(res), flush=True)
