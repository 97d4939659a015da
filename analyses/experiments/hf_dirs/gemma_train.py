"""Gemma 3 270M trained on each backend: `mechtox train dpo --backend hooked` against `--backend hf`
(the default since session 30), 3 steps of 4 pairs each, on the `transformers` directory that
`gemma_dir.py` writes. Prints the time of each run and the losses, and checks that the hf run's model
exports with its own logits.

The two runs are not expected to end at the same weights: TransformerLens holds Gemma's embeddings
times sqrt(d_model), so AdamW's steps on them differ by that factor (docs/concepts.md, "Where the
step runs").

Usage (after `python ../olid_transfer/gemma.py /tmp/gemma` and `python gemma_dir.py /tmp/gemma`):
    python gemma_train.py /tmp/gemma > gemma_train.log   # ~3 min on 2 cores"""
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from mechtox import models as M
from mechtox.cli import main

hf_logging.set_verbosity_error()
root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma")
src = root / "hf"
ws = root / "ws-train"
shutil.rmtree(ws, ignore_errors=True)
pairs = root / "pairs.jsonl"
pairs.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in [
    ("You are", " kind and helpful.", " a stupid idiot."), ("That was", " a fine idea.", " damn awful crap."),
    ("He said", " thank you.", " shut up, loser."), ("The page", " looks good now.", " is trash, moron.")]))
runs = {}
for backend in ("hooked", "hf"):
    t = time.perf_counter()
    assert main(["train", "dpo", "-w", str(ws), "-q", "--model", str(src), "--pairs", str(pairs), "--steps", "3",
                 "--batch-size", "4", "--lr", "1e-5", "--eval-every", "0",
                 "--backend", backend, "--out", backend]) == 0
    wall = time.perf_counter() - t
    losses = [json.loads(line)["loss"] for line in (ws / "training" / backend / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    runs[backend] = (wall, losses)
    print(f"--backend {backend}: {wall:.1f} s for 3 steps (model load and save included); losses "
          + ", ".join(f"{x:.4f}" for x in losses))
gap = max(abs(a - b) / b for a, b in zip(runs["hf"][1][1:], runs["hooked"][1][1:], strict=True))
print(f"the first loss is log 2 on both (DPO's policy starts as its reference); steps 2-3 differ by at most "
      f"{gap:.2%} (the embeddings' steps, in other units); hf run {runs['hooked'][0] / runs['hf'][0]:.2f}x as fast")
assert main(["export", "hf", "-w", str(ws), "-q", "--force", "--hf", str(root / "export-hf-trained")]) == 0
tok = AutoTokenizer.from_pretrained(str(src))
ids = tok("The capital of France is Paris, and the capital of Germany is", return_tensors="pt").input_ids
trained = M.load_checkpoint(ws / "models" / "hf")
hf = AutoModelForCausalLM.from_pretrained(str(root / "export-hf-trained"), dtype=torch.float32).eval()
base = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
with torch.no_grad():
    ours, theirs, before = trained(ids), hf(ids).logits, base(ids).logits
print(f"the hf run's model: transformers on its export against mechtox {(ours - theirs).abs().max():.2e}; "
      f"training moved the logits by {(ours - before).abs().max():.3f}")
