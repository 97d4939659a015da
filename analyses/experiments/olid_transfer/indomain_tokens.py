"""The in-domain ceiling for token-aggregated scoring: the probe fitted on OLID itself
(`mechtox probe --data olid_train.csv --layers 9,12,15,18 --n-train all --n-test 2000 --C cv
--save 18 --out probe-olid`) scored on its own 2,000 held-out tweets, pooled / max / logsumexp.
Usage: python indomain_tokens.py WORKSPACE"""
import os
import sys

from sklearn.metrics import roc_auc_score

from mechtox.data import load_labelled
from mechtox.models import load_gguf
from mechtox.probe import Direction, ProbeScorer, split_indices

ws = sys.argv[1]
olid = load_labelled(os.environ.get("DATA", "../../../../shared/data") + "/olid_train.csv")
_, test = split_indices(olid.labels, test_size=2000, seed=0, train_size=len(olid) - 2000)  # the probe job's split
model = load_gguf(device="cpu", dtype="float32")
probe = Direction.load(f"{ws}/directions/probe-olid", model)
texts, y = [olid.texts[i] for i in test], olid.labels[test]
for agg in ("pooled", "max", "logsumexp"):
    z = ProbeScorer(model, probe, aggregate=agg).logits(texts)
    print(f"{probe.hook_name} OLID-fitted, 2,000 held-out tweets, {agg}: AUROC {roc_auc_score(y, z):.3f}", flush=True)
