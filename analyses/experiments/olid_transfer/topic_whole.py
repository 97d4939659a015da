"""The topic filter of topic.py scored on the whole of olid_train.csv (11,916 tweets, read whole:
up to 256 tokens), with bootstrap 95% intervals (``mechtox.probe.bootstrap_metrics``, as
``mechtox probe --eval``). Layer 15 token probes fitted on every Jigsaw text outside the 600 held out
(topic.py's cache): all of them (5,790 per class, C 0.003), and with the non-toxic texts about
Wikipedia left out (every toxic text kept, C 0.001: topic.py's best).

Usage (from this folder, after topic.py): python topic_whole.py > topic_whole.log
(4 min 21 s when it collected the tweets' layer-15 activations itself, 3 min 53 s of it; it now
reads ceiling.py's cache, $OLIDFEATS4, which holds the same activations and which it collects
first if missing: about 7.5 min)."""
import warnings

import numpy as np
import torch
from bound import text_logits
from ceiling import olid_features
from topic import CACHE, about_wikipedia, token_features, training_texts

from mechtox.probe import _token_subset, bootstrap_metrics, fit_token_weights

warnings.filterwarnings("ignore")
H = "blocks.15.hook_resid_post"

if __name__ == "__main__":
    yo, O = olid_features()   # ceiling.py's activations of every tweet (layer 15 among them)
    texts, y = training_texts()
    G = token_features(texts, CACHE)
    wiki = about_wikipedia(texts)
    print(f"# olid_train.csv: {len(yo)} tweets, {yo.sum()} offensive; layer 15 token probes fitted on Jigsaw")
    for tag, idx, C in (("every Jigsaw text (5,790 per class), C 0.003", np.arange(len(y)), 0.003),
                        ("non-toxic about Wikipedia left out (5,790 / 2,371), C 0.001",
                         np.flatnonzero(~(wiki & (y == 0))), 0.001)):
        idx = np.sort(idx)
        w, b = fit_token_weights(*_token_subset(G[H], G["row"], idx), y[idx], C)
        p = torch.sigmoid(torch.as_tensor(text_logits(w, b, O[H], O["row"], len(yo)))).numpy()
        t = bootstrap_metrics(yo, p).set_index("metric")
        print(f"{tag}: " + "  ".join(f"{m} {t.loc[m, 'value']:.3f} ({t.loc[m, 'ci_low']:.3f}-{t.loc[m, 'ci_high']:.3f})"
                                     for m in ("auroc", "accuracy", "f1")), flush=True)
