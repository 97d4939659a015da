"""Wikipedia talk-page formatting stripped from the Jigsaw training texts before the fit. Markup is
class-correlated in Jigsaw (a reply's leading colons: 30% of the non-toxic texts, 14% of the toxic;
a leading quote 34% / 13%; runs of spaces 58% / 41%) and absent from tweets. ``clean`` removes
``== headings ==`` markers, leading colons, bullets and quotes, wiki links' brackets, "(UTC)"
signatures and runs of white space; nothing else. Then the token probe is fitted as in topic.py
(every text, and the non-toxic ones about Wikipedia left out) and scored on bound.py's held-out
Jigsaw texts (raw) and 1,200 OLID tweets.

Usage (from this folder, after bound.py and topic.py): python markup.py > markup.log
(7 min 48 s: activations of the 11,580 cleaned texts, cached in $MARKUPFEATS, ~3 GB)."""
import os
import re
import warnings

import numpy as np
from bound import F
from topic import LAYERS, about_wikipedia, balanced, fit_and_score, token_features, training_texts

warnings.filterwarnings("ignore")
CACHE = os.environ.get("MARKUPFEATS", "/tmp/markup_feats.npz")


def clean(text: str) -> str:
    t = re.sub(r"\d\d:\d\d, \d+ \w+ \d{4} \(UTC\)|\(UTC\)", " ", text)
    t = re.sub(r"={2,}", " ", t)
    t = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", t)
    t = re.sub(r"(^|\n)[\s:*#\"]+", r"\1", t)
    t = re.sub(r"\s+", " ", t).strip().strip('"').strip()
    return t or text.strip() or text


if __name__ == "__main__":
    raw, y = training_texts()
    texts = [clean(t) for t in raw]
    changed = np.array([a != b for a, b in zip(raw, texts)])
    print(f"# {changed.mean():.0%} of the {len(texts)} training texts changed by clean() "
          f"(non-toxic {changed[y == 0].mean():.0%}, toxic {changed[y == 1].mean():.0%})")
    G = token_features(texts, CACHE)
    wiki = about_wikipedia(raw)
    print("\n## cleaned training texts; held-out Jigsaw (raw) / OLID AUROC")
    for layer in LAYERS:
        h = f"blocks.{layer}.hook_resid_post"
        for tag, keep in (("every text, balanced", np.ones(len(y), bool)),
                          ("benign about Wikipedia left out, balanced", ~(wiki & (y == 0)))):
            idx, n = balanced(np.random.default_rng(1), keep, y)
            for C in (0.003, 0.01):
                j, o = fit_and_score(G[h], G["row"], y, idx, h, C)
                print(f"L{layer} {tag:42s} {n:4d}/class C {C:<5g} jigsaw {j:.3f}  olid {o:.3f}", flush=True)
        idx = np.flatnonzero(~(wiki & (y == 0)))
        for C in (0.001, 0.003):
            j, o = fit_and_score(G[h], G["row"], y, idx, h, C)
            print(f"L{layer} {'benign about Wikipedia left out, all toxic':42s} {(y[idx] == 1).sum()}/{(y[idx] == 0).sum()} "
                  f"C {C:<5g} jigsaw {j:.3f}  olid {o:.3f}", flush=True)
    print(f"\n# held-out Jigsaw texts are raw; {F['y|jte'].shape[0]} of them")
