"""Topic bias in Jigsaw's non-toxic texts (Nejadgholi & Kiritchenko 2020, "On cross-dataset
generalization in automatic detection of online abuse"): most of Jigsaw's benign comments talk about
Wikipedia itself (articles, edits, sources, deletion), so a probe can learn "not about editing
Wikipedia" as part of "toxic". Here the benign Jigsaw texts that name the platform's business (a
fixed word list, ``mechtox.probe.TOPICS["wikipedia"]``; no OLID labels or texts used) are left out of the fit, alone or with the
toxic ones that do, and the token probe (as ``--pooling tokens``) is scored as in ``bound.py``: on
its 600 held-out Jigsaw texts and the CLI's 1,200 OLID tweets.

Part 1 uses bound.py's 5,000-text pool; part 2 every Jigsaw text outside the 600 held out (11,580,
read up to 64 tokens; activations cached in $TOPICFEATS, ~3 GB, about 6 min to collect), balanced by
drawing, then with every toxic text kept. Part 3 keeps instead the non-toxic texts that a domain
classifier (mean-pooled layer-15 activations, Jigsaw against bound.py's 4,000 other OLID tweets, their
texts only) finds most tweet-like: a label-free, data-driven choice in place of the word list.

Usage (from this folder, after bound.py): python topic.py > topic.log   (about 10 min; 4 min 50 s with its cache)"""
import os
import time
import warnings

import numpy as np
from bound import F, aurocs, sub, texts_and_labels

from mechtox.data import load_labelled
from mechtox.probe import _token_subset, fit_token_weights, matching, split_indices

warnings.filterwarnings("ignore")
DATA = os.environ.get("DATA", "../../../../shared/data")
CACHE = os.environ.get("TOPICFEATS", "/tmp/topic_feats.npz")
LAYERS = (15, 18, 21)


def about_wikipedia(texts):
    """Which texts name Wikipedia's own business (``mechtox.probe.TOPICS["wikipedia"]``, a fixed word list)."""
    return matching(texts, "wikipedia")


def fit_and_score(X, row, y, idx, h, C):
    Xs, rs = _token_subset(X, row, np.sort(idx))
    return aurocs(*fit_token_weights(Xs, rs, y[np.sort(idx)], C), h)


def balanced(rng, keep, y, n=None):
    n = n or min((keep & (y == c)).sum() for c in (0, 1))
    return np.concatenate([rng.choice(np.flatnonzero(keep & (y == c)), n, replace=False) for c in (0, 1)]), n


def training_texts():
    """Every Jigsaw text outside the 600 held out (bound.py's "jte"), and its labels."""
    jig = load_labelled(DATA + "/jigsaw_balanced.csv")
    yall = np.asarray(jig.labels)
    tr, _ = split_indices(yall, test_size=600, seed=0)
    return [jig.texts[i] for i in tr], yall[tr]


def token_features(texts, cache):
    """Token activations of ``texts`` at ``LAYERS`` (up to 64 tokens each), collected once into ``cache``."""
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in LAYERS]
    if not os.path.exists(cache):
        from mechtox.activations import collect_activations
        from mechtox.models import load_gguf
        t0 = time.time()
        acts = collect_activations(load_gguf(device="cpu", dtype="float32"), texts, hooks, pooling="tokens",
                                   batch_size=16, progress=False, max_length=64)
        np.savez(cache, row=acts.token_index[:, 0].numpy(), **{h: acts.numpy(h).astype(np.float32) for h in hooks})
        print(f"\n# collected {len(texts)} Jigsaw texts in {time.time() - t0:.0f} s", flush=True)
    return np.load(cache)


VARIANTS = (("every text", lambda wiki, y: np.ones(len(y), bool)),
            ("benign about Wikipedia left out", lambda wiki, y: ~(wiki & (y == 0))),
            ("all about Wikipedia left out", lambda wiki, y: ~wiki))

if __name__ == "__main__":
    jt, jy = texts_and_labels()["jpool"][:2]
    wiki, short = about_wikipedia(jt), F["len|jpool"] <= 64
    for c, name in ((0, "non-toxic"), (1, "toxic")):
        print(f"# pool, {name}: {wiki[jy == c].mean():.0%} about Wikipedia")
    print("\n## 1. bound.py's pool (5,000 texts), balanced draws; held-out Jigsaw / OLID AUROC")
    for layer in LAYERS:
        h = f"blocks.{layer}.hook_resid_post"
        X, row, _ = sub("jpool", h)
        for tag, variant in VARIANTS:
            for lim, m in (("any length", np.ones(len(jy), bool)), ("<= 64 tokens", short)):
                idx, n = balanced(np.random.default_rng(1), variant(wiki, jy) & m, jy)
                for C in (0.003, 0.01):
                    j, o = fit_and_score(X, row, jy, idx, h, C)
                    print(f"L{layer} {tag:32s} {lim:12s} {n:4d}/class C {C:<5g} jigsaw {j:.3f}  olid {o:.3f}", flush=True)

    texts, y = training_texts()
    G = token_features(texts, CACHE)
    wiki = about_wikipedia(texts)
    print(f"\n## 2. every Jigsaw text outside the 600 held out ({len(texts)}; {wiki[y == 0].mean():.0%} of the "
          f"non-toxic, {wiki[y == 1].mean():.0%} of the toxic about Wikipedia)")
    for layer in LAYERS:
        h = f"blocks.{layer}.hook_resid_post"
        X, row = G[h], G["row"]
        for tag, variant in VARIANTS:
            idx, n = balanced(np.random.default_rng(1), variant(wiki, y), y)
            for C in (0.003, 0.01):
                j, o = fit_and_score(X, row, y, idx, h, C)
                print(f"L{layer} {tag:32s} {n:4d}/class C {C:<5g} jigsaw {j:.3f}  olid {o:.3f}", flush=True)
            if tag != "every text":   # the same number of texts, drawn from every text: is it the topic or the size?
                idx, _ = balanced(np.random.default_rng(2), np.ones(len(y), bool), y, n)
                j, o = fit_and_score(X, row, y, idx, h, 0.003)
                print(f"L{layer} {'  same size, drawn from every text':32s} {n:4d}/class C 0.003 jigsaw {j:.3f}  "
                      f"olid {o:.3f}", flush=True)
        idx = np.flatnonzero(~(wiki & (y == 0)))   # unbalanced: every toxic text kept
        for C in (0.001, 0.003):
            j, o = fit_and_score(X, row, y, idx, h, C)
            print(f"L{layer} {'benign about Wikipedia left out':32s} {(y[idx] == 1).sum()}/{(y[idx] == 0).sum()} "
                  f"C {C:<5g} jigsaw {j:.3f}  olid {o:.3f}  (every toxic text kept)", flush=True)

    print("\n## 3. every toxic text + the K most tweet-like non-toxic ones (a domain classifier; no OLID labels)")
    from adapt import mean_pooled
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    h = "blocks.15.hook_resid_post"
    Xo, ro, _ = sub("otr", h)   # the 4,000 tweets' activations; their labels are not read
    P = np.r_[mean_pooled(G[h], G["row"], len(y)), mean_pooled(Xo, ro, int(ro.max()) + 1)]
    domain = np.r_[np.zeros(len(y)), np.ones(len(P) - len(y))]
    P = StandardScaler().fit_transform(P)
    tweet_like = LogisticRegression(C=0.01, max_iter=2000).fit(P, domain).predict_proba(P[:len(y)])[:, 1]
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    for k in (1500, 2371, 3500):
        kept = neg[np.argsort(-tweet_like[neg])[:k]]
        for layer in LAYERS:
            h = f"blocks.{layer}.hook_resid_post"
            j, o = fit_and_score(G[h], G["row"], y, np.r_[pos, kept], h, 0.001)
            print(f"L{layer} {k} most tweet-like non-toxic ({(~wiki[kept]).mean():.0%} not about Wikipedia) C 0.001 "
                  f"jigsaw {j:.3f}  olid {o:.3f}", flush=True)
