"""mil.py's token-fitted (log-mean-exp) probes on MLP neuron activations (``mlp.hook_post``,
d_mlp = 1536) instead of the residual stream: same texts, same fit. Caches in $MILFEATS3.
Usage: python mil3.py LAYERS  (e.g. 12,15,18)"""
import os
import sys
import warnings

import numpy as np
import torch
from mil import NO, agg, fit, sets
from sklearn.metrics import roc_auc_score

warnings.filterwarnings("ignore")
CACHE = os.environ.get("MILFEATS3", "/tmp/mil3_feats.npz")
hooks = [f"blocks.{layer}.mlp.hook_post" for layer in sys.argv[1].split(",")]
if not os.path.exists(CACHE):
    from mechtox.activations import collect_activations
    from mechtox.models import load_gguf
    model = load_gguf(device="cpu", dtype="float32")
    out = {}
    for name, (texts, y) in sets.items():
        acts = collect_activations(model, texts, hooks, pooling="tokens", batch_size=16, progress=False)
        out[f"row|{name}"], out[f"y|{name}"] = acts.token_index[:, 0].numpy(), y
        for h in hooks:
            out[f"{name}|{h}"] = acts.numpy(h).astype(np.float32)
        print("collected", name, flush=True)
    np.savez(CACHE, **out)
F = np.load(CACHE)
rows = {k: torch.as_tensor(F[f"row|{k}"], dtype=torch.long) for k in sets}
for h in hooks:
    raw = F[f"jtr|{h}"]
    mu, sd = raw.mean(0), raw.std(0) + 1e-6
    X = {k: torch.as_tensor((F[f"{k}|{h}"] - mu) / sd, dtype=torch.float64) for k in sets}
    for lam in (0.03, 0.1, 0.3):
        line = []
        for T in (np.inf, 2.0, 1.0):
            w, b = fit(X["jtr"], rows["jtr"], F["y|jtr"], T, lam)
            with torch.no_grad():
                s = {k: agg(X[k] @ w + b, rows[k], len(F[f"y|{k}"]), T).numpy() for k in ("jte", "olid")}
            line.append(f"T {T:g} jte {roc_auc_score(F['y|jte'], s['jte']):.3f} olid {roc_auc_score(F['y|olid'], s['olid']):.3f}")
        print(h, f"lam {lam:g}: " + " | ".join(line), flush=True)
assert len(F["y|olid"]) == NO
