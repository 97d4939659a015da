"""Greedy generation and perplexity on SmolLM2 with mechtox's weight layout (as loaded, see
mechtox.models.fast_layout) and with TransformerLens' stock layout (every parameter contiguous),
in one run; checks that both give the same continuations and perplexity.

    python benchmarks/weight_layout.py
"""

from __future__ import annotations

import time

import torch

import mechtox as mt
from mechtox.data import load_prompts, load_text
from mechtox.evaluate import perplexity
from mechtox.generation import generate


def bench(model, prompts, text, label: str):
    t = time.perf_counter()
    g = generate(model, prompts, 20, 32, 25, progress=False)
    tg = time.perf_counter() - t
    t = time.perf_counter()
    p = perplexity(model, text, max_tokens=2000, progress=False)
    tp = time.perf_counter() - t
    print(f"{label}: generate {len(prompts)} prompts x 20 tokens {tg:.1f} s; perplexity of 2,000 tokens {tp:.1f} s "
          f"(PPL {p['ppl']:.4f})", flush=True)
    return g.continuations, p["ppl"], tg, tp


def main() -> None:
    model = mt.load_model("smollm2-135m-instruct")
    prompts, text = load_prompts(None, limit=25).prompts, load_text(None)
    fast = bench(model, prompts, text, "mechtox layout")
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.contiguous()
    stock = bench(model, prompts, text, "stock layout  ")
    print(f"same continuations: {fast[0] == stock[0]}; same perplexity: {fast[1] == stock[1]}")
    print(f"ratio stock / mechtox time: generation {stock[2] / fast[2]:.2f}x, perplexity {stock[3] / fast[3]:.2f}x")


if __name__ == "__main__":
    main()
