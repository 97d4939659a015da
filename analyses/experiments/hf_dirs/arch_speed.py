"""The hf training backend against the hooked one on architectures with no weights offline: a
randomly initialised model of a released model's sizes (a step's cost does not depend on the
weights' values) with SmolLM2's tokenizer (49,152 tokens), written as a `transformers` directory and
timed by benchmarks/train_throughput.py: mechtox's training loop with the DPO loss, a probe read and
a SAP-style hook on each backend, and a hand-written DPO step on the plain `transformers` model, each
in its own process.

    opt       OPT-125m's sizes: 12 layers, width 768, 12 heads, MLP 3,072 (124.4M parameters)
    gpt_neox  Pythia-160m's: the same, a quarter of each head rotary, attention and MLP in parallel
    olmo2     OLMo 2's architecture at those sizes (its 1B would take minutes a step on 2 cores)

Usage: python arch_speed.py ARCH /tmp/arch > arch_speed_ARCH.log   # ~2-3 min each on 2 cores"""
import subprocess
import sys
from pathlib import Path

import torch
import transformers as T

from mechtox import models as M

arch = sys.argv[1]
root = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/arch")
d = root / f"{arch}-sized"
if not (d / "config.json").is_file():
    tok = M.load_gguf().tokenizer
    sizes = dict(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=None)
    conf = {"opt": lambda: T.OPTConfig(**sizes, ffn_dim=3072, word_embed_proj_dim=768),
            "gpt_neox": lambda: T.GPTNeoXConfig(**sizes, intermediate_size=3072, rotary_pct=0.25),
            "olmo2": lambda: T.Olmo2Config(**sizes, intermediate_size=3072)}[arch]()
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(conf).save_pretrained(d)
    tok.save_pretrained(d)
print(f"# {d}: {sum(p.numel() for p in T.AutoModelForCausalLM.from_pretrained(d).parameters()) / 1e6:.1f}M parameters",
      flush=True)
bench = Path(__file__).resolve().parents[3] / "benchmarks" / "train_throughput.py"
subprocess.run([sys.executable, str(bench), "--model", str(d), "--batch", "8", "--seq", "64", "--steps", "3",
                "--only", "mechtox-hooked,mechtox-hf,hf"], check=True)
