"""Gemma 3 270M as a `transformers` directory: what `save_pretrained` (TRL, the hub) writes for it,
loaded by mechtox (`--model DIR`) through TransformerLens' Gemma 3 config, matched by the directory's
sizes. Checks the logits against `transformers` on the same weights and against the mechtox checkpoint
that `olid_transfer/gemma.py` converts from the GGUF file by the official name.

Then the GGUF file itself as `--model FILE.gguf` (`mechtox.models.load_gguf`), which converts it the
same way (no cache here: the conversion is timed).

Usage (after `python ../olid_transfer/gemma.py /tmp/gemma`, which leaves the GGUF file in /tmp/gemma):
    python gemma_dir.py /tmp/gemma > gemma_dir.log   # ~3.5 min; writes /tmp/gemma/hf (a transformers directory)"""
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from mechtox import models as M

hf_logging.set_verbosity_error()
root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma")
gguf = next(root.glob("*.gguf"))
tok = AutoTokenizer.from_pretrained(str(root), gguf_file=gguf.name)
hf = AutoModelForCausalLM.from_pretrained(str(root), gguf_file=gguf.name, dtype=torch.float32).eval()
hf.config.quantization_config = None  # de-quantised on load
hf.config.__dict__.pop("quantization_config", None)
plain = AutoModelForCausalLM.from_config(hf.config, dtype=torch.float32).eval()  # a GGUF-loaded model will not save
plain.load_state_dict(hf.state_dict())
hf = plain
out = root / "hf"
hf.save_pretrained(out)
tok.save_pretrained(out)
print("wrote", out, sorted(p.name for p in out.iterdir()))
t = time.perf_counter()
tl = M.load_hf_dir(out)
print(f"mechtox loaded it in {time.perf_counter() - t:.1f} s as {tl.cfg.original_architecture}, n_ctx {tl.cfg.n_ctx}")
ids = tok("The capital of France is Paris, and the capital of Germany is", return_tensors="pt").input_ids
with torch.no_grad():
    ref = hf(ids).logits
    got = tl(ids)
print(f"largest logit difference, mechtox (from the directory) against transformers: {(ref - got).abs().max():.2e}"
      f" (logits up to {ref.abs().max():.1f})")
ckpt = root / "ckpt"
if ckpt.is_dir():
    with torch.no_grad():
        other = M.load_checkpoint(ckpt)(ids)
    print(f"against the checkpoint gemma.py converted by name: {(other - got).abs().max():.2e}")
t = time.perf_counter()
direct = M.load_gguf(gguf, use_cache=False)
with torch.no_grad():
    diff = (direct(ids) - got).abs().max()
print(f"the GGUF file loaded directly ({time.perf_counter() - t:.1f} s, {direct.cfg.original_architecture}): "
      f"against the directory {diff:.2e}")
print(tl.generate("The capital of Germany is", max_new_tokens=6, do_sample=False, verbose=False))
