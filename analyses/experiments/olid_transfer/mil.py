"""Probes *trained* on token-aggregated scores (multiple-instance learning), not on the mean.

olid_tok.py applied a mean-trained probe to every token and took the max / logsumexp at test time
(0.786-0.796 on OLID). Here the aggregation is part of the fit: a text's logit is
``T * log(mean_t exp(s_t / T))`` of its token logits ``s_t = w . z_t + b`` (T -> inf: the mean, i.e.
the pooled probe; T -> 0: the max), and ``w, b`` minimise the text-level cross-entropy + L2.
Same texts as olid_tok.py (1,500 + 500 Jigsaw, 1,500 OLID). Also the in-domain comparison: fitted on
1,000 of the OLID tweets, scored on the other 500, mean vs token-aggregated.
Usage: python mil.py LAYERS  (e.g. 15,18,21); token activations are cached in $MILFEATS."""
import os
import sys
import warnings

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mechtox.data import load_labelled

warnings.filterwarnings("ignore")
torch.manual_seed(0)
DATA = os.environ.get("DATA", "../../../../shared/data")
CACHE = os.environ.get("MILFEATS", "/tmp/mil_feats.npz")
LAYERS = [int(x) for x in (sys.argv[1] if __name__ == "__main__" else "15,18,21").split(",")]
hooks = [f"blocks.{layer}.hook_resid_post" for layer in LAYERS]
rng = np.random.default_rng(0)
jig, olid = load_labelled(DATA + "/jigsaw_balanced.csv"), load_labelled(DATA + "/olid_train.csv")


def strat(y, n):
    idx = []
    for c in (0, 1):
        w = np.flatnonzero(y == c)
        idx += list(rng.choice(w, n // 2, replace=False))
    return np.array(sorted(idx))


NJ, NT, NO = 1500, 500, 1500
ji = strat(np.asarray(jig.labels), NJ + NT)
rng.shuffle(ji)
oi = rng.choice(len(olid.texts), NO, replace=False)
sets = {"jtr": ([jig.texts[i] for i in ji[:NJ]], np.asarray(jig.labels)[ji[:NJ]]),
        "jte": ([jig.texts[i] for i in ji[NJ:]], np.asarray(jig.labels)[ji[NJ:]]),
        "olid": ([olid.texts[i] for i in oi], np.asarray(olid.labels)[oi])}

if not os.path.exists(CACHE):
    from mechtox.activations import collect_activations
    from mechtox.models import load_gguf
    model = load_gguf(device="cpu", dtype="float32")
    out = {}
    for name, (texts, y) in sets.items():
        acts = collect_activations(model, texts, hooks, pooling="tokens", batch_size=16, progress=False)
        out[f"row|{name}"] = acts.token_index[:, 0].numpy()
        out[f"y|{name}"] = y
        for h in hooks:
            out[f"{name}|{h}"] = acts.numpy(h).astype(np.float32)
        print("collected", name, len(out[f"row|{name}"]), "tokens", flush=True)
    np.savez(CACHE, **out)
F = np.load(CACHE)


def agg(s, row, n, T):
    """Per-text T * log-mean-exp(s / T); T = inf: mean; T = 0: max."""
    if T == np.inf:
        return torch.zeros(n, dtype=s.dtype).index_add_(0, row, s) / torch.bincount(row, minlength=n)
    if T == 0:
        return torch.full((n,), -torch.inf, dtype=s.dtype).scatter_reduce(0, row, s, "amax")
    m = torch.full((n,), -torch.inf, dtype=s.dtype).scatter_reduce(0, row, s / T, "amax").detach()
    e = torch.zeros(n, dtype=s.dtype).index_add_(0, row, torch.exp(s / T - m[row]))
    return T * (m + torch.log(e / torch.bincount(row, minlength=n)))


def fit(X, row, y, T, lam):
    n = len(y)
    w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
    b = torch.zeros((), dtype=X.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
    yt = torch.as_tensor(y, dtype=X.dtype)

    def closure():
        opt.zero_grad()
        z = agg(X @ w + b, row, n, T)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt) + lam * (w @ w)
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()


def tensors(name, h, mu, sd):
    X = torch.as_tensor((F[f"{name}|{h}"] - mu) / sd, dtype=torch.float64)
    return X, torch.as_tensor(F[f"row|{name}"], dtype=torch.long), F[f"y|{name}"]


def score(w, b, X, row, n, T):
    with torch.no_grad():
        return agg(X @ w + b, row, n, T).numpy()


if __name__ == "__main__":
    TS = (np.inf, 4.0, 1.0, 0.25, 0)
    for h in hooks:
        raw = F[f"jtr|{h}"]
        mu, sd = raw.mean(0), raw.std(0) + 1e-6
        data = {k: tensors(k, h, mu, sd) for k in sets}
        for lam in (1e-3, 1e-2, 1e-1):
            for T in TS:
                w, b = fit(*data["jtr"], T, lam)
                res = []
                for k in ("jte", "olid"):
                    X, row, y = data[k]
                    res.append(f"{k} " + "/".join(f"{roc_auc_score(y, score(w, b, X, row, len(y), Te)):.3f}"
                                                  for Te in (T, np.inf, 0)))
                print(f"{h.split('.')[1]} lam {lam:g} T {T:g}: " + "  ".join(res)
                      + "   (scored with the training T / mean / max)", flush=True)
        # in domain: fitted on 1,000 OLID tweets, scored on the other 500
        Xo, rowo, yo = tensors("olid", h, *(lambda r: (r.mean(0), r.std(0) + 1e-6))(F[f"olid|{h}"]))
        perm = np.random.default_rng(1).permutation(NO)
        tr, te = perm[:1000], perm[1000:]

        def part(ix):
            keep = np.isin(rowo.numpy(), ix)
            remap = -np.ones(NO, dtype=np.int64)
            remap[ix] = np.arange(len(ix))
            return Xo[keep], torch.as_tensor(remap[rowo.numpy()[keep]]), yo[ix]
        Ptr, Pte = part(tr), part(te)
        for lam in (1e-2, 1e-1):
            out = []
            for T in TS:
                w, b = fit(*Ptr, T, lam)
                out.append(f"T {T:g} {roc_auc_score(Pte[2], score(w, b, *Pte[:2], len(te), T)):.3f}")
            print(f"{h.split('.')[1]} in-domain (1,000 -> 500 OLID) lam {lam:g}: " + "  ".join(out), flush=True)
