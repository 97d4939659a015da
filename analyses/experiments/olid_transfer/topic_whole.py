"""The topic filter of topic.py scored on the whole of olid_train.csv (11,916 tweets, read whole:
up to 256 tokens), with bootstrap 95% intervals (``mechtox.probe.bootstrap_metrics``, as
``mechtox probe --eval``). Layer 15 token probes fitted on every Jigsaw text outside the 600 held out
(topic.py's cache): all of them (5,790 per class, C 0.003), and with the non-toxic texts about
Wikipedia left out (every toxic text kept, C 0.001: topic.py's best).

Usage (from this folder, after topic.py): python topic_whole.py > topic_whole.log
(4 min 21 s, 3 min 53 s of it the tweets' activations, cached in $OLIDFEATS, ~1 GB)."""
import os
import time
import warnings

import numpy as np
import torch
from bound import text_logits
from topic import CACHE, DATA, about_wikipedia, token_features, training_texts

from mechtox.data import load_labelled
from mechtox.probe import _token_subset, bootstrap_metrics, fit_token_weights

warnings.filterwarnings("ignore")
OLID = os.environ.get("OLIDFEATS", "/tmp/olid_all_l15.npz")
H = "blocks.15.hook_resid_post"

if __name__ == "__main__":
    olid = load_labelled(DATA + "/olid_train.csv")
    yo = np.asarray(olid.labels)
    if not os.path.exists(OLID):
        from mechtox.activations import collect_activations
        from mechtox.models import load_gguf
        t0 = time.time()
        acts = collect_activations(load_gguf(device="cpu", dtype="float32"), list(olid.texts), [H], pooling="tokens",
                                   batch_size=16, progress=False, max_length=256)
        np.savez(OLID, row=acts.token_index[:, 0].numpy(), X=acts.numpy(H).astype(np.float32))
        print(f"# collected {len(yo)} tweets in {time.time() - t0:.0f} s", flush=True)
    O = np.load(OLID)
    texts, y = training_texts()
    G = token_features(texts, CACHE)
    wiki = about_wikipedia(texts)
    print(f"# olid_train.csv: {len(yo)} tweets, {yo.sum()} offensive; layer 15 token probes fitted on Jigsaw")
    for tag, idx, C in (("every Jigsaw text (5,790 per class), C 0.003", np.arange(len(y)), 0.003),
                        ("non-toxic about Wikipedia left out (5,790 / 2,371), C 0.001",
                         np.flatnonzero(~(wiki & (y == 0))), 0.001)):
        idx = np.sort(idx)
        w, b = fit_token_weights(*_token_subset(G[H], G["row"], idx), y[idx], C)
        p = torch.sigmoid(torch.as_tensor(text_logits(w, b, O["X"], O["row"], len(yo)))).numpy()
        t = bootstrap_metrics(yo, p).set_index("metric")
        print(f"{tag}: " + "  ".join(f"{m} {t.loc[m, 'value']:.3f} ({t.loc[m, 'ci_low']:.3f}-{t.loc[m, 'ci_high']:.3f})"
                                     for m in ("auroc", "accuracy", "f1")), flush=True)
