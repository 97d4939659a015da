"""How large the attribution's exactness error is: SmolLM2 in float32 and bfloat16, and Gemma 3 270M,
whose attention and MLP outputs pass RMS norms before they are added (post-norms). Session 27
refused Gemma (its terms did not add up: error / size 1.0 with the refusal patched out); session 28
divides each term by its token's norm scale and multiplies it by the norm's weight.

    python check.py                 # SmolLM2 only (~1 min on 2 cores)
    GEMMA=/tmp/gemma/ckpt python check.py   # also Gemma 3 270M, as built by ../olid_transfer/gemma.py

The after model is the before model with the MLP input weights of the first blocks perturbed
(seeded); the direction is random (seeded); the prompts are three short texts, 8 greedy tokens each.
Gemma is also run with its post-norms ignored (attribution.post_norms and neurons.post_mlp_norm
patched to report none): what the attribution computed before sessions 27-28, and why session 27
refused such models.
"""

import copy
import os
import warnings

import torch

import mechtox.attribution as A
from mechtox.models import load_checkpoint, load_gguf
from mechtox.probe import Direction

PROMPTS = ["you are a", "the city is", "I hate"]


def run(model, n_blocks, hooks, mode, tag):
    after = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in after.blocks[:n_blocks]:
            b.mlp.W_in.add_((0.01 * torch.randn(b.mlp.W_in.shape, generator=g)).to(b.mlp.W_in.dtype))
    v = torch.randn(model.cfg.d_model, generator=g)
    for hook in hooks:
        d = Direction(vector=v, hook_name=hook, method="random", name="random")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = A.attribute(model, after, d, prompts=PROMPTS, mode=mode, max_new_tokens=8, progress=False)
        size = abs(r.check["total_change"]) + sum(abs(x) for k, x in r.check.items() if k not in ("total_change", "error"))
        print(f"{tag:28s} {hook:26s} change {r.check['total_change']:+.4f}  error {r.check['error']:+.3g}  "
              f"error/size {abs(r.check['error']) / size:.2g}  allowed {r.check_limit:.3g}  passed {r.check_passed}")


for dtype in ("float32", "bfloat16"):
    run(load_gguf(dtype=dtype), 10, ["blocks.15.hook_resid_post", "blocks.29.hook_resid_post"], "own",
        f"SmolLM2 {dtype}")
if os.environ.get("GEMMA"):
    gemma = load_checkpoint(os.environ["GEMMA"])
    A.check_decomposable(gemma)  # accepted since session 28
    run(gemma, 4, ["blocks.5.hook_resid_post", "blocks.17.hook_resid_post"], "shared", "Gemma 3 270M float32")
    run(gemma, 4, ["blocks.5.hook_resid_post"], "own", "Gemma 3 270M float32")
    import mechtox.neurons as N

    A.post_norms = lambda model, L: [(None, None)] * L
    N.post_mlp_norm = lambda model, layer: None
    run(gemma, 4, ["blocks.5.hook_resid_post"], "shared", "Gemma, norms ignored")
