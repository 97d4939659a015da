"""Benchmark: one-pass all-layer activation collection vs the usual TransformerLens ways.

Compares, on the same texts and the same mean-pooled residual stream at every layer:
  A. mechtox.collect_activations: one forward pass per batch, pooling inside the hooks;
  B. one ``run_with_cache(names_filter=<that layer>)`` pass per layer;
  C. one unfiltered ``run_with_cache`` pass (every activation cached), pooled afterwards.
Prints tokens/s of each, the ratios, the bytes each keeps per batch, and the max difference.

Run: python benchmarks/activations.py [--model smollm2-135m-instruct] [--n 64] [--data PATH]
"""

from __future__ import annotations

import argparse
import time

import torch

from mechtox.activations import collect_activations, resid_hooks
from mechtox.data import load_labelled, tokenize
from mechtox.workspace import Workspace


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64, help="texts")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--data", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    src = args.data
    texts = load_labelled(src).texts[: args.n]
    model = Workspace().load_model(args.model, device="cpu")
    hooks = resid_hooks(model)
    batches = [texts[i: i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    n_tok = sum(int(tokenize(model, b, args.max_length).attention_mask.sum()) for b in batches)

    # warm-up
    collect_activations(model, texts[:4], hooks, progress=False, max_length=args.max_length)

    t = time.perf_counter()
    a = collect_activations(model, texts, hooks, "mean", args.batch_size, args.max_length, progress=False)
    t_a = time.perf_counter() - t
    bytes_a = args.batch_size * len(hooks) * model.cfg.d_model * 4

    def pooled(x, mask):
        m = mask.unsqueeze(-1).float()
        return (x * m).sum(1) / m.sum(1)

    # B: a pass per layer (batches in input order, right padded, masked means)
    t = time.perf_counter()
    b_out = {h: [] for h in hooks}
    with torch.inference_mode():
        for batch in batches:
            tb = tokenize(model, batch, args.max_length)
            for h in hooks:
                _, cache = model.run_with_cache(tb.tokens, attention_mask=tb.attention_mask, names_filter=h)
                b_out[h].append(pooled(cache[h], tb.attention_mask))
    t_b = time.perf_counter() - t

    t = time.perf_counter()
    c_out = {h: [] for h in hooks}
    bytes_c = 0
    with torch.inference_mode():
        for batch in batches:
            tb = tokenize(model, batch, args.max_length)
            _, cache = model.run_with_cache(tb.tokens, attention_mask=tb.attention_mask)
            bytes_c = max(bytes_c, sum(v.numel() * v.element_size() for v in cache.values()))
            for h in hooks:
                c_out[h].append(pooled(cache[h], tb.attention_mask))
            del cache
    t_c = time.perf_counter() - t

    diff = max(max((a[h] - torch.cat(b_out[h])).abs().max().item(), (a[h] - torch.cat(c_out[h])).abs().max().item())
               for h in hooks)
    print(f"model {model.cfg.model_name}, {len(texts)} texts, {n_tok} tokens, {len(hooks)} hooks (resid_post, every layer), "
          f"batch {args.batch_size}, CPU threads {torch.get_num_threads()}")
    print(f"A one pass, pooled in hooks : {n_tok / t_a:8.0f} tok/s  ({t_a:6.1f} s), keeps {bytes_a / 2**20:7.1f} MiB/batch")
    print(f"B run_with_cache per layer  : {n_tok / t_b:8.0f} tok/s  ({t_b:6.1f} s)")
    print(f"C unfiltered run_with_cache : {n_tok / t_c:8.0f} tok/s  ({t_c:6.1f} s), keeps {bytes_c / 2**20:7.1f} MiB/batch")
    print(f"ratio A/B = {t_b / t_a:.1f}x faster, A/C = {t_c / t_a:.2f}x faster and {bytes_c / bytes_a:.0f}x less memory")
    print(f"max |difference| between methods: {diff:.2e}")


if __name__ == "__main__":
    main()
