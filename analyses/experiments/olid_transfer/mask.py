"""Tokens the Jigsaw probe never saw, left out of a tweet's score (no OLID labels used).

A token probe scores a text by the log-mean-exp of its token logits. Jigsaw's talk-page comments
have no "@user" mentions, no "URL" placeholders and few hashtags or emoji, while OLID's tweets are
full of them (some tweets are mostly mentions). On such tokens the Jigsaw probe's logit is an
extrapolation, and it enters every tweet's score in proportion to how many of them the tweet has.
Here those tokens still give the model its context (the activations are of the whole tweet), but
are left out of the reduction to one score per tweet: a scoring rule chosen from the data sets'
form, with no OLID label.

The probe is style.py's best Jigsaw-only recipe (topic filter, non-toxic texts reweighted on
you / capitals / !, C 0.001) at layers 15, 18 and 21, scored on all 11,916 tweets (ceiling.py's
activations). Part 2 leaves out, instead of a fixed list of token kinds, the tokens furthest from
anything in Jigsaw (distance to the Jigsaw tokens' mean in their own standardised coordinates),
a label-free rule that needs no knowledge of tweets.

Usage (from this folder, after bound.py, topic.py and ceiling.py): python mask.py > mask.log"""
import re
import warnings

import numpy as np
import torch
from ceiling import olid_features
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from style import CUES, has
from topic import CACHE, DATA, LAYERS, about_wikipedia, token_features, training_texts

from mechtox.data import encode, load_labelled
from mechtox.models import load_gguf
from mechtox.probe import (
    TOKEN_AGGREGATE,
    _token_subset,
    aggregate_tokens,
    bootstrap_metrics,
    cell_weights,
    fit_token_weights,
)

warnings.filterwarnings("ignore")
KINDS = {
    "@user": lambda s, prev: "@" in s or (s.strip() == "user" and "@" in prev),
    "URL": lambda s, prev: s.strip() == "URL",
    "#": lambda s, prev: "#" in s,
    "emoji / other non-ASCII": lambda s, prev: bool(re.search(r"[^\x00-\x7f]", s)) or "\ufffd" in s,
}


def token_kinds(tweets, n_tokens):
    """For every token of every tweet (in the activations' order), which of ``KINDS`` it is."""
    model = load_gguf(device="cpu", dtype="float32")
    ids = encode(model, tweets, 256)
    assert sum(map(len, ids)) == n_tokens, "tokenisation differs from the cached activations"
    tok = model.tokenizer
    kinds = {k: [] for k in KINDS}
    first = []
    for x in ids:
        pieces = [tok.decode([i]) for i in x]
        for j, s in enumerate(pieces):
            prev = pieces[j - 1] if j else ""
            for k, f in KINDS.items():
                kinds[k].append(f(s, prev))
            first.append(j == 0)
    return {k: np.array(v) for k, v in kinds.items()}, np.array(first)


def scores(w, b, X, row, n, keep=None):
    """Each tweet's logit over its tokens ``keep`` (all of them where none is kept)."""
    z = torch.as_tensor(X @ w + b, dtype=torch.float64)
    r = torch.as_tensor(row)
    full = aggregate_tokens(z, r, n, TOKEN_AGGREGATE).numpy()
    if keep is None:
        return full
    kept = np.bincount(row[keep], minlength=n) > 0
    part = aggregate_tokens(z[keep], r[keep], n, "logsumexp").numpy() - np.log(np.maximum(np.bincount(row[keep], minlength=n), 1))
    return np.where(kept, part, full)


def line(tag, y, s, whole=True):
    if whole:
        t = bootstrap_metrics(y, 1 / (1 + np.exp(-s))).set_index("metric").loc["auroc"]
        return f"{tag:56s} {t['value']:.3f} ({t['ci_low']:.3f}-{t['ci_high']:.3f})"
    return f"{tag:56s} {roc_auc_score(y, s):.3f}"


if __name__ == "__main__":
    YO, OLID = olid_features()
    row, n = OLID["row"], len(YO)
    tweets = list(load_labelled(DATA + "/olid_train.csv").texts)
    kinds, first = token_kinds(tweets, len(row))
    print(f"# {n} tweets, {len(row)} tokens")
    for k, m in kinds.items():
        per = np.bincount(row[m], minlength=n)
        print(f"# {k:24s} {m.mean():.1%} of tokens; in {np.mean(per > 0):.0%} of tweets; "
              f"offensive {per[YO == 1].mean():.2f} vs not {per[YO == 0].mean():.2f} per tweet")

    texts, y = training_texts()
    G = token_features(texts, CACHE)
    filt = ~(about_wikipedia(texts) & (y == 0))
    cue = {k: has(texts, k) for k in CUES}
    sw = cell_weights(cue["you"] * 4 + cue["capitals"] * 2 + cue["!"], y, filt)
    idx = np.flatnonzero(filt)
    rules = {
        "every token (as style.py)": None,
        "@user left out": ~kinds["@user"],
        "@user and URL left out": ~(kinds["@user"] | kinds["URL"]),
        "@user, URL and # left out": ~(kinds["@user"] | kinds["URL"] | kinds["#"]),
        "@user, URL, # and non-ASCII left out": ~np.any(np.stack(list(kinds.values())), 0),
        "@user, URL and the first token left out": ~(kinds["@user"] | kinds["URL"] | first),
    }
    fits = {}
    print("\n## 1. the best Jigsaw-only probe, tokens left out of each tweet's score; OLID AUROC, all tweets (95% interval)")
    for layer in LAYERS:
        h = f"blocks.{layer}.hook_resid_post"
        w, b = fits[h] = fit_token_weights(*_token_subset(G[h], G["row"], idx), y[idx], 0.001, sample_weight=sw[idx])
        for tag, keep in rules.items():
            print(f"L{layer} " + line(tag, YO, scores(w, b, OLID[h], row, n, keep)), flush=True)

    print("\n## 2. tokens far from Jigsaw's left out (label-free): squared distance to the Jigsaw tokens' mean,")
    print("##    in their standardised coordinates; the tweets' tokens above the q-quantile of the Jigsaw tokens' own")
    for layer in (15, 21):
        h = f"blocks.{layer}.hook_resid_post"
        Xj = G[h][np.isin(G["row"], idx)]
        mu, sd = Xj.mean(0), Xj.std(0) + 1e-6
        dj = np.square((Xj - mu) / sd).mean(1)
        do = np.square((OLID[h] - mu) / sd).mean(1)
        w, b = fits[h]
        for q in (0.9, 0.95, 0.99):
            keep = do <= np.quantile(dj, q)
            print(f"L{layer} " + line(f"q {q}: {1 - keep.mean():.0%} of tweet tokens left out", YO,
                                      scores(w, b, OLID[h], row, n, keep)), flush=True)
        print(f"# L{layer}: share of @user tokens among those left out at q 0.99: "
              f"{kinds['@user'][do > np.quantile(dj, 0.99)].mean():.0%}")

    print("\n## 3. the two best rules' layer-15 and layer-21 scores averaged (rank mean)")
    keep = ~(kinds["@user"] | kinds["URL"])
    s = [rankdata(scores(*fits[f"blocks.{layer}.hook_resid_post"], OLID[f"blocks.{layer}.hook_resid_post"], row, n, keep))
         for layer in (15, 21)]
    print(line("L15 + L21, @user and URL left out", YO, (s[0] + s[1]) / (2 * n) - 0.5, whole=False))
