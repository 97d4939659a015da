"""OPT on the hf backend against the hooked one: a randomly initialised model of OPT-125m's sizes (12
layers, width 768, 12 heads, MLP 3,072; no OPT weights exist offline, and a step's cost does not
depend on the weights' values) with SmolLM2's tokenizer (49,152 tokens against OPT's 50,272), written
as a `transformers` directory and timed by benchmarks/train_throughput.py (mechtox's training loop
with the DPO loss, a probe read and a SAP-style hook, on each backend, and a hand-written DPO step on
the plain `transformers` model; each in its own process).

Usage: python opt_speed.py /tmp/opt > opt_speed.log   # ~4 min on 2 cores"""
import subprocess
import sys
from pathlib import Path

import torch
import transformers as T

from mechtox import models as M

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/opt")
d = root / "opt-125m-sized"
if not (d / "config.json").is_file():
    tok = M.load_gguf().tokenizer
    torch.manual_seed(0)
    cfg = T.OPTConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                      max_position_embeddings=2048, word_embed_proj_dim=768, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=None)
    T.OPTForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
print(f"# {d}: {sum(p.numel() for p in T.OPTForCausalLM.from_pretrained(d).parameters()) / 1e6:.1f}M parameters",
      flush=True)
bench = Path(__file__).resolve().parents[3] / "benchmarks" / "train_throughput.py"
subprocess.run([sys.executable, str(bench), "--model", str(d), "--batch", "8", "--seq", "64", "--steps", "3",
                "--only", "mechtox-hooked,mechtox-hf,hf"], check=True)
