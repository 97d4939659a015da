"""Benchmark: mechtox's attribution pass vs the method of the papers' notebooks.

The notebooks generate token by token with a fresh ``run_with_cache`` over the whole sequence at
every step and keep every cache, then read the neuron activations at the generated positions.
mechtox generates with a KV cache, then runs ONE forward pass per batch that accumulates
per-neuron sums in hooks (no cache). Both give the mean activation of every neuron at the
generated positions (and so the same attribution); this prints the time and memory ratios from
one run on the same prompts, and the largest difference between the two results.

Run: python benchmarks/attribute.py [--n 8] [--new 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from mechtox.attribution import projection_sums
from mechtox.data import encode, load_prompts
from mechtox.generation import generate
from mechtox.workspace import Workspace


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=8, help="prompts")
    ap.add_argument("--new", type=int, default=10, help="generated tokens per prompt")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    prompts = load_prompts(limit=args.n).prompts
    model = Workspace().load_model(args.model, device="cpu")
    L, M = model.cfg.n_layers, model.cfg.d_mlp
    w = torch.randn(model.cfg.d_model)
    w = w / w.norm()

    base_rss = rss_mib()
    t = time.perf_counter()
    g = generate(model, prompts, args.new, 32, batch_size=25, stop_at_eos=False, progress=False)
    seqs = [p + c for p, c in zip(g.prompt_ids, g.continuation_ids, strict=True)]
    sums = projection_sums(model, seqs, [len(p) for p in g.prompt_ids], w, L - 1, progress=False)
    ours = sums.act / sums.n_tokens
    t_ours = time.perf_counter() - t
    rss_ours = rss_mib() - base_rss

    t = time.perf_counter()
    caches = []
    acts = torch.zeros(L, M)
    n = 0
    their_tokens = []
    with torch.inference_mode():
        for ids in encode(model, prompts, 32, truncate="left"):
            seq = list(ids)
            for _ in range(args.new):
                logits, cache = model.run_with_cache(torch.tensor([seq]))
                caches.append(cache)  # the notebooks keep every cache
                acts += torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0, -1] for l in range(L)])
                n += 1
                seq.append(int(logits[0, -1].argmax()))
            their_tokens.append(seq[len(ids):])
    theirs = acts / n
    t_theirs = time.perf_counter() - t
    rss_theirs = rss_mib() - base_rss
    kept = sum(v.numel() * v.element_size() for c in caches for v in c.values()) / 2**20

    same_tokens = their_tokens == g.continuation_ids
    print(f"{args.n} prompts x {args.new} generated tokens, {model.cfg.model_name}, CPU threads {torch.get_num_threads()}")
    print(f"mechtox (KV-cached generation + one summing pass): {t_ours:7.1f} s, RSS growth {rss_ours:8.0f} MiB")
    print(f"notebook method (run_with_cache per token, caches kept): {t_theirs:7.1f} s, RSS growth {rss_theirs:8.0f} MiB, "
          f"caches hold {kept:.0f} MiB")
    print(f"ratio: {t_theirs / t_ours:.1f}x faster, {kept / max(sums.act.numel() * 8 / 2**20, 1e-9):.0f}x less kept memory "
          f"(mechtox keeps {sums.act.numel() * 8 / 2**20:.2f} MiB of sums)")
    print(f"max |difference| of mean activations: {(ours - theirs).abs().max().item():.2e} (tokens agree: {same_tokens})")


if __name__ == "__main__":
    main()
