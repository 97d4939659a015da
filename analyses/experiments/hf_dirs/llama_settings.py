"""Llama `transformers` settings that mechtox's conversion once left out, on tiny random models
(every weight moved off its initial value): the largest logit difference against `transformers`
over 2 x 40 tokens, as mechtox converts each now, and with the rotary scaling left out (what the
conversion before commit 41c0766 built), or the one-line error.

Usage: python llama_settings.py > llama_settings.log     (10 s)"""
import dataclasses
import tempfile
from pathlib import Path

import torch
import transformers as T
from transformers.utils import logging as hf_logging

from mechtox import models as M

hf_logging.set_verbosity_error()
V = len(M.tiny_tokenizer())
base = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, max_position_embeddings=4096)
cases = {
    "rope llama3 (NTK by parts)": dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "rope linear": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "rope yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    "head_dim 32 (not 64 / 4)": dict(head_dim=32),
    "attention_bias": dict(attention_bias=True),
}
for name, extra in cases.items():
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(**base, **extra)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p))
    d = Path(tempfile.mkdtemp()) / "m"
    hf.save_pretrained(d)
    M.tiny_tokenizer().save_pretrained(d)
    toks = torch.randint(3, V, (2, 40), generator=torch.Generator().manual_seed(1))
    try:
        model = M.load_hf_dir(d)
    except Exception as e:  # noqa: BLE001
        print(f"{name:28s} now: {type(e).__name__}: {e}")
        continue
    with torch.no_grad():
        ref = hf(toks).logits
        now = float((ref - model(toks)).abs().max())
        plain = dataclasses.replace(model.cfg, use_NTK_by_parts_rope=False, rotary_scaling_factor=1.0)
        weights = {k: v for k, v in model.state_dict().items() if not k.endswith(("rotary_sin", "rotary_cos"))}
        old = M._build(plain, weights)  # the rotary tables computed anew, without the scaling
        dropped = float((ref - old(toks)).abs().max())
    print(f"{name:28s} now: {now:.2e}   scaling left out: {dropped:.2e}   (logits up to {float(ref.abs().max()):.1f})")
