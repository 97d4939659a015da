"""Benchmark: perplexity under many interventions, its text tokenized once against once per call.

A causal check (``mechtox directions``), ``mechtox eval -i ... -i ...`` and ALPHA ``auto`` each
compute the perplexity of one text (Wikitext-2's test split, 1.3 MB) under many interventions.
Until session 32 every call tokenized the whole text again; now the token ids are kept per
tokenizer and text. Times ``--calls`` perplexity calls on ``--tokens`` tokens each way in one run
(the per-call way by emptying that store before each call), checks that both give the same
perplexities, and prints the ratio.

Run: python benchmarks/perplexity_calls.py [--model smollm2-135m-instruct] [--calls 8] [--tokens 1000]
"""

from __future__ import annotations

import argparse
import time

import mechtox.evaluate as E
from mechtox.data import load_text
from mechtox.workspace import Workspace


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1000, help="tokens each perplexity reads (the main job's causal check: 1,000)")
    args = ap.parse_args(argv)
    model = Workspace().load_model(args.model, device="cpu")
    text = load_text(None)
    E.perplexity(model, text, max_tokens=args.tokens, progress=False)  # warm-up (and one tokenization)
    times, ppls = {}, {}
    for way in ("anew each call", "once"):
        t = time.perf_counter()
        out = []
        for _ in range(args.calls):
            if way == "anew each call":
                E._IDS_OF_TEXT.clear()
            out.append(E.perplexity(model, text, max_tokens=args.tokens, progress=False)["ppl"])
        times[way], ppls[way] = time.perf_counter() - t, out
    assert ppls["once"] == ppls["anew each call"], ppls
    print(f"{args.model}: {args.calls} perplexity calls on {args.tokens:,} tokens of a {len(text) / 1e6:.2f} MB text "
          f"(the same perplexity {ppls['once'][0]:.3f} each way)")
    for way, s in times.items():
        print(f"  text tokenized {way:15s} {s:6.1f} s  ({s / args.calls:.2f} s per call)")
    print(f"speed-up: {times['anew each call'] / times['once']:.2f}x")


if __name__ == "__main__":
    main()
