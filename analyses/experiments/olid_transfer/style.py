"""Style confounds left in Jigsaw after topic.py's filter, and what undoing them does to OLID AUROC.

Error analysis of topic.py's best probe (layer 15, non-toxic texts about Wikipedia left out) on the
1,200 tweets, against a probe fitted on 4,000 other OLID tweets: the tweets the Jigsaw probe ranks
far above the in-domain one are compliments and cheering ("You are so beautiful", "YOU ARE THE
COOLEST", "#MAGA"), whose strongest tokens are the praise words. In the filtered Jigsaw set, second-
person address, words in capitals and "!" are much more frequent among the toxic texts than among
the non-toxic ones (printed below), so a probe can learn emphasis and address as toxicity.
Part 0 prints that comparison (the 15 tweets each probe ranks furthest above the other). Three
Jigsaw-only remedies (no OLID text or label in the fit), token probes as ``--pooling tokens``:

1. Jigsaw texts written as replies: "@user " before each training text (as OLID's tweets begin).
2. The non-toxic texts reweighted so that each combination of the three cues (you / capitals / !)
   is as frequent among them as among the toxic texts (weights clipped at 5, passed as
   ``fit_token_weights(sample_weight=...)``); and the same with
   "about Wikipedia" as a fourth cue on every text, in place of the filter.
3. A nuisance direction from 224 template sentences (no toxicity labels): praise ("She is so cute")
   minus a neutral statement about the same subject ("She is at home"), mean-pooled (first token
   left out), projected out of every token before the fit.

Scored on 600 held-out Jigsaw texts, bound.py's 1,200 tweets, and all 11,916 tweets of
olid_train.csv (ceiling.py's activations).

Usage (from this folder, after bound.py, topic.py and ceiling.py): python style.py > style.log
(3 min 33 s with its caches; part 1 collects its activations first: about 6 min, cached in
$PREFIXFEATS, ~3 GB)."""
import itertools
import os
import re
import time
import warnings

import numpy as np
from bound import aurocs, sub, text_logits, texts_and_labels
from ceiling import olid_features
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from topic import CACHE, LAYERS, about_wikipedia, token_features, training_texts

from mechtox.probe import _token_subset, bootstrap_metrics, cell_weights, fit_token_weights

warnings.filterwarnings("ignore")
PREFIX_CACHE = os.environ.get("PREFIXFEATS", "/tmp/prefix_feats.npz")
CUES = {"you": (r"\byou\b|\byour\b|\byou're\b|\bu\b", re.I), "capitals": (r"\b[A-Z]{4,}\b", 0), "!": (r"!", 0)}


def has(texts, cue):
    pattern, flags = CUES[cue]
    return np.array([bool(re.search(pattern, t, flags)) for t in texts])


def report(tag, w, b, h, whole=False):
    j, o = aurocs(w, b, h)
    X, row = OLID[h], OLID["row"]
    s = text_logits(w, b, X, row, len(YO))
    if whole:
        t = bootstrap_metrics(YO, 1 / (1 + np.exp(-s))).set_index("metric").loc["auroc"]
        tail = f"{t['value']:.3f} ({t['ci_low']:.3f}-{t['ci_high']:.3f})"
    else:
        tail = f"{roc_auc_score(YO, s):.3f}"
    print(f"L{h.split('.')[1]} {tag:58s} jigsaw {j:.3f}  olid {o:.3f}  olid all {tail}", flush=True)


def template_direction(h):
    subjects = ["You are", "you are", "She is", "He is", "This is", "That was", "They are", "Your dog is",
                "The game was", "My mom is", "Your new song is", "Honestly you are", "I think she is", "Omg he is"]
    praise = ["so cute", "SO AWESOME", "beautiful", "amazing", "the coolest", "adorable", "gorgeous", "incredible",
              "fantastic", "so freaking good", "absolutely stunning", "the best", "so talented", "AMAZING!!!",
              "perfect", "so sweet"]
    neutral = ["here", "at home", "a teacher", "from Ohio", "on the list", "in the room", "ready", "twenty years old",
               "new", "available", "in Texas", "on the bus", "a student", "at work", "next", "in the kitchen"]
    from mechtox.activations import collect_activations
    from mechtox.models import load_gguf
    model = load_gguf(device="cpu", dtype="float32")

    def pooled(words):
        texts = [f"{s} {a}" for s, a in itertools.product(subjects, words)]
        acts = collect_activations(model, texts, [h], pooling="tokens", batch_size=32, progress=False, max_length=32)
        X, row, pos = acts.numpy(h), acts.token_index[:, 0].numpy(), acts.token_index[:, 1].numpy()
        return np.stack([X[(row == i) & (pos > 0)].mean(0) for i in range(len(texts))])
    d = (pooled(praise) - pooled(neutral)).mean(0)
    return d / np.linalg.norm(d)


if __name__ == "__main__":
    YO, OLID = olid_features()
    texts, y = training_texts()
    G = token_features(texts, CACHE)
    wiki = about_wikipedia(texts)
    cue = {k: has(texts, k) for k in CUES}
    filt = ~(wiki & (y == 0))
    for k, m in cue.items():
        print(f"# '{k}': toxic {m[y == 1].mean():.0%}, non-toxic {m[y == 0].mean():.0%}, "
              f"non-toxic kept by the topic filter {m[filt & (y == 0)].mean():.0%}")

    print("\n## 0. bound.py's 1,200 tweets: rank (0-1) by the Jigsaw probe (topic filter, L15, C 0.001) "
          "and by an in-domain probe (bound.py's 4,000 other tweets, C 0.01); label first")
    h = "blocks.15.hook_resid_post"
    idx = np.flatnonzero(filt)
    wj, bj = fit_token_weights(*_token_subset(G[h], G["row"], idx), y[idx], 0.001)
    wo, bo = fit_token_weights(*sub("otr", h), 0.01)
    tweets, labels = texts_and_labels()["olid"][:2]
    Xs, rs, _ = sub("olid", h)
    rj, ro = (rankdata(text_logits(w, b, Xs, rs, len(labels))) / len(labels) for w, b in ((wj, bj), (wo, bo)))
    print(f"AUROC: Jigsaw {roc_auc_score(labels, rj):.3f}, in domain {roc_auc_score(labels, ro):.3f}")
    for tag, order in (("Jigsaw probe ranks higher", np.argsort(ro - rj)), ("in-domain probe ranks higher",
                                                                               np.argsort(rj - ro))):
        print(f"# {tag}:")
        for i in order[:15]:
            print(f"{labels[i]} jigsaw {rj[i]:.2f} in-domain {ro[i]:.2f}  " + tweets[i][:110].replace("\n", " "))

    print("\n## 1. '@user ' before every Jigsaw training text (topic filter as topic.py, every toxic text kept)")
    if not os.path.exists(PREFIX_CACHE):
        from mechtox.activations import collect_activations
        from mechtox.models import load_gguf
        t0 = time.time()
        hooks = [f"blocks.{layer}.hook_resid_post" for layer in LAYERS]
        acts = collect_activations(load_gguf(device="cpu", dtype="float32"), ["@user " + t for t in texts], hooks,
                                   pooling="tokens", batch_size=16, progress=False, max_length=66)
        np.savez(PREFIX_CACHE, row=acts.token_index[:, 0].numpy(), **{h: acts.numpy(h).astype(np.float32) for h in hooks})
        print(f"# collected in {time.time() - t0:.0f} s", flush=True)
    P = np.load(PREFIX_CACHE)
    for tag, idx, C in (("every text, C 0.003", np.arange(len(y)), 0.003),
                        ("non-toxic about Wikipedia left out, C 0.001", np.flatnonzero(filt), 0.001)):
        report(f"as is: {tag}", *fit_token_weights(*_token_subset(G[h], G["row"], idx), y[idx], C), h)
        report(f"'@user ' + text: {tag}", *fit_token_weights(*_token_subset(P[h], P["row"], idx), y[idx], C), h)
    del P

    print("\n## 2. non-toxic texts reweighted on the style cues, C 0.001")
    style = cue["you"] * 4 + cue["capitals"] * 2 + cue["!"]
    everything = np.ones(len(y), bool)
    for layer in LAYERS:
        h = f"blocks.{layer}.hook_resid_post"
        for tag, keep, sw in (("topic filter, unweighted", filt, np.ones(len(y))),
                              ("topic filter, non-toxic reweighted on you/capitals/!", filt, cell_weights(style, y, filt)),
                              ("every text, reweighted on Wikipedia/you/capitals/!", everything,
                               cell_weights(style * 2 + wiki, y, everything))):
            idx = np.flatnonzero(keep)
            report(tag, *fit_token_weights(*_token_subset(G[h], G["row"], idx), y[idx], 0.001,
                                            sample_weight=sw[idx]), h, whole=True)

    print("\n## 3. a praise-minus-neutral direction (template sentences) projected out; topic filter, C 0.001")
    h = "blocks.15.hook_resid_post"
    d = template_direction(h)
    idx = np.flatnonzero(filt)
    X, row = _token_subset(G[h], G["row"], idx)
    w, b = fit_token_weights(X - np.outer(X @ d, d), row, y[idx], 0.001)
    report("praise direction projected out", w - d * (d @ w), b, h, whole=True)
