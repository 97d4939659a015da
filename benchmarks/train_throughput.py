"""Benchmark: tokens/s of mechtox's DPO step vs the same step on the HuggingFace model.

Both steps: reference log-probs precomputed (as mechtox's loop does), policy forward on the
chosen and rejected sequences, TRL's sigmoid DPO loss on summed completion log-probs, backward,
gradient clipping, AdamW (fused on CUDA). Same weights (the HookedTransformer exported with
``mechtox.models.to_hf_state_dict``), same batch, same sequence length, same precision.
Prints real (non-pad) tokens/s of each, the ratio, and peak GPU memory.

Run on the GPU machine: python benchmarks/train_throughput.py --batch 32 --seq 96 --dtype bfloat16
(on CPU: --batch 4 --seq 32 --steps 3 for a smoke run)
"""

from __future__ import annotations

import argparse
import time

import torch

from mechtox.models import to_hf_state_dict
from mechtox.training import SeqBatch, dpo_loss, sequence_logps
from mechtox.workspace import Workspace


def make_batch(vocab: int, batch: int, seq: int, device, seed: int = 0) -> tuple[SeqBatch, int]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (2 * batch,), generator=g)
    toks = torch.randint(3, vocab, (2 * batch, seq), generator=g)
    att = (torch.arange(seq)[None] < lengths[:, None]).long()
    lab = att.clone()
    lab[:, :8] = 0  # an 8-token prompt
    lab[torch.arange(2 * batch), lengths - 1] = 0
    return SeqBatch(toks * att, att, lab).to(device), int(att.sum())


def step_fn(forward, params, batch: SeqBatch, ref: torch.Tensor, dtype, device):
    opt = torch.optim.AdamW(params, lr=1e-6, fused=(device == "cuda"))

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            logits = forward(batch.tokens, batch.attention_mask)
        lp = sequence_logps(logits, batch)
        n = lp.shape[0] // 2
        loss, _ = dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], 0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def timed(step, steps: int, device: str) -> float:
    step()  # warm-up (compilation, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=32, help="pairs per step")
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    hooked = Workspace().load_model(args.model, device=device)
    from transformers import LlamaConfig, LlamaForCausalLM

    c = hooked.cfg
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.d_vocab, hidden_size=c.d_model, intermediate_size=c.d_mlp, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_key_value_heads or c.n_heads, head_dim=c.d_head,
        max_position_embeddings=c.n_ctx, rms_norm_eps=c.eps, rope_theta=c.rotary_base, tie_word_embeddings=False,
        attn_implementation="sdpa")).to(device)
    hf.load_state_dict(to_hf_state_dict(hooked), strict=True)
    batch, n_tok = make_batch(c.d_vocab, args.batch, args.seq, device)
    ref = torch.zeros(2 * args.batch, device=device)
    hooked.train()
    hf.train()
    fh = torch.compile(hooked) if args.compile else hooked
    t_hooked = timed(step_fn(lambda t, m: fh(t, attention_mask=m), list(hooked.parameters()), batch, ref, dtype, device),
                     args.steps, device)
    mem_hooked = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_hf = timed(step_fn(lambda t, m: hf(input_ids=t, attention_mask=m).logits, list(hf.parameters()), batch, ref, dtype,
                         device), args.steps, device)
    mem_hf = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    print(f"{device}, {args.batch} pairs x {args.seq} tokens ({n_tok} real tokens per step), {args.dtype}, "
          f"compile={args.compile}")
    print(f"mechtox HookedTransformer DPO step: {n_tok / t_hooked:9.0f} real tok/s ({t_hooked * 1000:.0f} ms), peak {mem_hooked:.1f} GiB")
    print(f"HuggingFace model, same step      : {n_tok / t_hf:9.0f} real tok/s ({t_hf * 1000:.0f} ms), peak {mem_hf:.1f} GiB")
    print(f"ratio mechtox / HF = {t_hf / t_hooked:.2f}x")


if __name__ == "__main__":
    main()
