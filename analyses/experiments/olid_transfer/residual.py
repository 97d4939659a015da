"""Label-free corrections of the tweets' scores for their form (session 19; no OLID label in any fit).

The CLI's best transfer probe (session 18: `mechtox probe ... --drop-negatives wikipedia
--match-cue you --match-cue capitals --match-cue exclaim --save 15 --out probe-shaped`) scores a
tweet by the log-mean-exp of its token logits. Tweets differ in form in ways Jigsaw's comments do
not: length, "@user" mentions, "URL" placeholders, hashtags, emoji. If the score drifts with such a
property regardless of offensiveness, that drift is noise to the ranking AUROC measures. Here it is
removed using only the unlabelled tweets:

1. residualised: the part of the score that a least-squares fit on the form features explains
   (fitted on all tweets, no label) is subtracted;
2. standardised within bins: the score is centred and scaled within each bin of one form feature
   (each bin's own mean and standard deviation over all its tweets).

A correction can also remove real signal where the form feature goes with offensiveness, which
the AUROC then shows.

Usage (from this folder, after the CLI run above in workspace $WS; 6 min):
    WS=/path/to/ws python residual.py > residual.log"""
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from mechtox.activations import collect_activations
from mechtox.data import load_labelled
from mechtox.models import load_gguf
from mechtox.probe import TOKEN_AGGREGATE, Direction, aggregate_tokens, bootstrap_metrics

warnings.filterwarnings("ignore")
DATA = os.environ.get("DATA", "../../../../shared/data")  # as topic.py (importing it computes bound.py's features)
CACHE = Path(os.environ.get("RESIDUALCACHE", "/tmp/residual_tokens.npz"))


def token_logits(texts):
    if CACHE.is_file():
        c = np.load(CACHE)
        return c["z"], c["row"]
    model = load_gguf()
    probe = Direction.load(Path(os.environ["WS"]) / "directions" / "probe-shaped", model)
    h = probe.hook_name
    acts = collect_activations(model, texts, [h], "tokens", 16, 64, progress=False)
    z = probe.logits(acts[h].double()).numpy()
    row = acts.token_index[:, 0].numpy()
    np.savez(CACHE, z=z, row=row)
    return z, row


def line(tag, y, s):
    t = bootstrap_metrics(y, 1 / (1 + np.exp(-s))).set_index("metric").loc["auroc"]
    return f"{tag:58s} {t['value']:.3f} ({t['ci_low']:.3f}-{t['ci_high']:.3f})"


def residualised(s, F):
    A = np.column_stack([np.ones(len(s)), F])
    beta, *_ = np.linalg.lstsq(A, s, rcond=None)
    return s - A[:, 1:] @ beta[1:]


def within_bins(s, b):
    out = np.empty_like(s)
    for v in np.unique(b):
        m = b == v
        out[m] = (s[m] - s[m].mean()) / (s[m].std() + 1e-9)
    return out


if __name__ == "__main__":
    data = load_labelled(DATA + "/olid_train.csv")
    texts, y = [t if t.strip() else " " for t in data.texts], np.asarray(data.labels)
    z, row = token_logits(texts)
    n = len(texts)
    s = aggregate_tokens(torch.as_tensor(z), torch.as_tensor(row), n, TOKEN_AGGREGATE).numpy()
    length = np.bincount(row, minlength=n)
    form = {
        "tokens (log)": np.log(length),
        "@user mentions": np.array([t.count("@user") for t in texts], float),
        "URL": np.array(["URL" in t for t in texts], float),
        "hashtags": np.array([t.count("#") for t in texts], float),
        "non-ASCII characters": np.array([sum(ord(c) > 127 for c in t) for t in texts], float),
        "capitals share": np.array([sum(c.isupper() for c in t) / max(1, sum(c.isalpha() for c in t)) for t in texts]),
        "!": np.array([t.count("!") for t in texts], float),
    }
    print(f"# {n} tweets, {len(z)} tokens; OLID labels used only to score")
    print(line("as the CLI scores it (log-mean-exp of token logits)", y, s))
    print("\n# correlation of the score with each form feature, over all tweets (no label)")
    for k, f in form.items():
        print(f"#   {k:22s} {np.corrcoef(s, f)[0, 1]:+.3f}")
    print("\n## 1. residualised on")
    for k, f in form.items():
        print(line(f"   {k}", y, residualised(s, f[:, None])))
    print(line("   all seven", y, residualised(s, np.column_stack(list(form.values())))))
    print(line("   tokens, @user, URL, hashtags, non-ASCII (not tone)", y,
               residualised(s, np.column_stack([form[k] for k in list(form)[:5]]))))
    print("\n## 2. standardised within bins of")
    bins = {
        "tokens (1-8, 9-16, 17-32, 33-63, 64)": np.digitize(length, [9, 17, 33, 64]),
        "@user mentions (0, 1, 2, 3+)": np.minimum(form["@user mentions"], 3),
        "URL (no / yes)": form["URL"],
        "tokens x @user": np.digitize(length, [9, 17, 33, 64]) * 4 + np.minimum(form["@user mentions"], 3),
    }
    for k, b in bins.items():
        print(line(f"   {k}", y, within_bins(s, b)))
    print("\n# the offensive share per bin (for reading the lines above; not used by any correction)")
    for k, b in bins.items():
        if "x" in k:
            continue
        shares = ", ".join(f"{v:g}: {y[b == v].mean():.2f} (n {int((b == v).sum())})" for v in np.unique(b))
        print(f"#   {k}: {shares}")
