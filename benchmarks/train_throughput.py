"""Benchmark: a DPO training step, side by side, in one run.

Four implementations (and a floor) train the same model (SmolLM2-135M-Instruct by default) on the same pairs
(Wikitext-2 passages: a prompt, the true continuation as chosen, another passage's as rejected),
with the same batch, sequence length, precision, learning rate, gradient clipping (10) and AdamW
(torch's fused implementation, on the CPU too):

- ``mechtox(hooked, hooks on)``: mechtox's training loop (``mechtox.training.train``) on the
  HookedTransformer, the DPO loss plus a probe read at a middle layer (``hook_resid_post``,
  mean-pooled, weight 0.1) and a fixed SAP-style vector added after the SAP blocks;
- ``mechtox(hf, hooks on)``: the same loop, loss and hooks on the hf backend (the transformers
  model with the same weights; hooks at TransformerLens names);
- ``HF``: a hand-written DPO step on the plain ``transformers`` model, no hooks;
- ``TRL``: TRL's ``DPOTrainer`` on the same plain model (reference log-probs precomputed, no
  gradient checkpointing, dropout off, no evaluation, logging or saving during the timed steps);
- ``floor``: not a DPO step but a lower bound on its cost with this model's code: the forward and
  backward over each pair's distinct tokens (the prompt once), the LM head only at completion
  positions, clipping and AdamW. Its ratio to TRL bounds what any implementation can reach where
  the step is bound by arithmetic (a CPU). On a GPU, where it is bound by kernel launches, its two
  passes make it slower than the hand-written step (H100: 155 ms against 77), and the script
  says so instead of printing a bound.

Every implementation runs in its own process (so the peak memory is its own), precomputes its
reference log-probs before the clock starts, runs one untimed warm-up step, then ``--steps``
timed steps. Printed: real (non-pad) tokens per second, ms per step, peak memory (RSS on CPU,
CUDA max allocated on a GPU), and the ratios, ending with

    ratio mechtox(hf, hooks on) / HF = 0.97x
    ratio mechtox(hf, hooks on) / TRL = 2.40x

On this project's 2-core CPU: python benchmarks/train_throughput.py --batch 8 --seq 64 --steps 3
On the GPU machine (benchmarks/gpu_check.sh): --batch 32 --seq 96 --dtype bfloat16 [--compile]
TRL is in the ``bench`` extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

VARIANTS = ["mechtox-hooked", "mechtox-hf", "hf", "trl", "floor"]
LABELS = {"mechtox-hooked": "mechtox(hooked, hooks on)", "mechtox-hf": "mechtox(hf, hooks on)", "hf": "HF", "trl": "TRL",
          "floor": "floor (no step is cheaper)"}


# ----------------------------------------------------------------------------- shared inputs


def make_pairs(tokenizer, n: int, seq: int):
    """``n`` pairs of real text: prompt = seq/4 tokens of a Wikitext-2 passage, chosen = its next
    3*seq/4 tokens, rejected = those of the next passage (every sequence is ``seq`` tokens long
    before re-tokenisation)."""
    from mechtox.data import PreferencePairs, load_text

    p_len = seq // 4
    c_len = seq - p_len
    ids = tokenizer.encode(load_text(limit_chars=400_000), add_special_tokens=False)
    chunks = [ids[i * seq:(i + 1) * seq] for i in range(n + 1)]
    if len(chunks[-1]) < seq:
        raise SystemExit("not enough Wikitext-2 text for these pairs; lower --batch, --seq or --steps")
    dec = tokenizer.decode
    return PreferencePairs([dec(c[:p_len]) for c in chunks[:n]], [dec(c[p_len:]) for c in chunks[:n]],
                           [dec(c[p_len:p_len + c_len]) for c in chunks[1:n + 1]], "wikitext-2 passages"), p_len, c_len


def load(args, device):
    from mechtox.workspace import Workspace

    model = Workspace().load_model(args.model, device=device)
    pairs, p_len, c_len = make_pairs(model.tokenizer, args.batch * (args.steps + 1), args.seq)
    return model, pairs, p_len, c_len


def reset_peak_memory(device: str) -> None:
    """Measure the peak from here on (the set-up, which loads the model, is not counted)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux)


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    if os.path.exists("/proc/self/status"):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------- the implementations


def run_mechtox(args, device: str, backend: str) -> dict:
    from mechtox.training import DPOObjective, TrainConfig, sap_layers, train

    model, pairs, p_len, c_len = load(args, device)
    mid = model.cfg.n_layers // 2
    g = torch.Generator().manual_seed(0)
    probe_w = torch.randn(model.cfg.d_model, generator=g).to(device) / model.cfg.d_model ** 0.5
    vec = (0.01 * torch.randn(model.cfg.d_model, generator=g)).to(device)
    adds = [f"blocks.{layer}.hook_resid_post" for layer in sap_layers("auto", model.cfg.n_layers)]

    class ProbedDPO(DPOObjective):
        """DPO + 0.1 x a probe score read at a middle layer, with a vector added after the SAP blocks."""

        hook_names = (f"blocks.{mid}.hook_resid_post", *adds)

        def _logps(self, m, idx):
            from mechtox.training import collate, completion_logits, sequence_logps

            batch = collate([self.chosen[i] for i in idx] + [self.rejected[i] for i in idx], self.pid).to(device)
            store = {}
            hooks = [(self.hook_names[0], lambda a, hook: store.__setitem__("read", a))]
            hooks += [(h, lambda a, hook: a + vec.to(a.dtype)) for h in adds]
            with _autocast(device, args.dtype), m.hooks(fwd_hooks=hooks):
                logits = completion_logits(m, batch)
            mask = batch.attention_mask[..., None].to(store["read"].dtype)
            self._probe = ((store["read"] * mask).sum(1) / mask.sum(1)).float() @ probe_w
            lp = sequence_logps(logits, batch)
            return lp[: len(idx)], lp[len(idx):]

        def loss(self, m, idx):
            loss, metrics = super().loss(m, idx)
            return loss + 0.1 * self._probe.mean(), {**metrics, "dpo_loss": loss.detach()}

    n_steps = args.steps + 1
    cfg = TrainConfig(objective="dpo", lr=1e-6, batch_size=args.batch, max_steps=n_steps, warmup_steps=0, clip=10.0,
                      dtype=args.dtype, max_prompt_tokens=p_len, max_completion_tokens=c_len, eval_every=0,
                      val_fraction=0.0, checkpoint_every=10**9, compile=args.compile, backend=backend)
    obj = ProbedDPO(model, pairs, cfg)
    reset_peak_memory(device)
    with tempfile.TemporaryDirectory() as d:
        res = train(model, obj, cfg, d, progress=False, val_idx=[], train_idx=list(range(len(obj))))
    timed = res.history[1:]  # the first step warms up (allocator, compilation)
    secs = sum(h["seconds"] for h in timed)
    return {"tok_s": sum(h["tokens"] for h in timed) / secs, "ms": 1000 * secs / len(timed),
            "first_loss": res.history[0]["dpo_loss"], "backend": res.backend}


def _autocast(device, dtype):
    import contextlib

    if dtype == "bfloat16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _plain_model(args, device):
    """The plain transformers model with the benchmark model's weights, and the pairs as
    mechtox tokenises them (prompt: the last p_len tokens; completion: the first c_len)."""
    from mechtox.data import pad_id
    from mechtox.models import to_hf_model
    from mechtox.training import build_sequences

    model, pairs, p_len, c_len = load(args, device)
    seqs = (build_sequences(model, pairs.prompt, pairs.chosen, p_len, c_len),
            build_sequences(model, pairs.prompt, pairs.rejected, p_len, c_len))
    hf, tokenizer, pid = to_hf_model(model), model.tokenizer, pad_id(model)
    del model
    import gc

    gc.collect()
    return hf, tokenizer, pairs, seqs, pid


def plain_logps(logits, b):
    """Summed completion log-probs as hand-written DPO code computes them (ajyl/dpo_toxic, TRL
    before 1.x): logits at every position, log_softmax, gather."""
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, b.tokens[:, 1:, None]).squeeze(-1)
    return (logp * b.label_mask[:, :-1]).sum(-1)


def run_hf(args, device: str) -> dict:
    """The hand-written DPO step on the plain transformers model."""
    from mechtox.training import collate, dpo_loss

    sequence_logps = plain_logps
    hf, _, _, (chosen, rejected), pid = _plain_model(args, device)
    batches = []
    for s in range(args.steps + 1):
        idx = range(s * args.batch, (s + 1) * args.batch)
        batches.append(collate([chosen[i] for i in idx] + [rejected[i] for i in idx], pid).to(device))
    fwd = torch.compile(hf) if args.compile else hf
    refs = []
    hf.eval()
    with torch.no_grad():
        for b in batches:
            with _autocast(device, args.dtype):
                refs.append(sequence_logps(fwd(input_ids=b.tokens, attention_mask=b.attention_mask).logits, b))
    hf.train()
    params = list(hf.parameters())
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)  # as mechtox and TRL here
    reset_peak_memory(device)
    times, toks, first = [], [], None
    for b, ref in zip(batches, refs, strict=True):
        t = time.perf_counter()
        with _autocast(device, args.dtype):
            logits = fwd(input_ids=b.tokens, attention_mask=b.attention_mask).logits
        lp = sequence_logps(logits, b)
        n = lp.shape[0] // 2
        loss, _ = dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], 0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss)  # one host sync per step, as mechtox's loop has
        first = value if first is None else first
        times.append(time.perf_counter() - t)
        toks.append(int(b.attention_mask.sum()))
    secs = sum(times[1:])
    return {"tok_s": sum(toks[1:]) / secs, "ms": 1000 * secs / (len(times) - 1), "first_loss": first}


def run_floor(args, device: str) -> dict:
    """A lower bound on any DPO step over these pairs with this model's code: the body's forward
    and backward over the DISTINCT tokens only (each pair's prompt once: the chosen sequence whole,
    the rejected completion alone, so not even its attention to the prompt is paid), the LM head
    only where a completion token is predicted, then clipping and the AdamW update. Its loss is
    not DPO's (the rejected completion misses its prompt); only its cost is meant."""
    from mechtox.training import collate, dpo_loss, token_logps

    hf, _, _, (chosen, rejected), pid = _plain_model(args, device)
    steps = []
    for s in range(args.steps + 1):
        idx = range(s * args.batch, (s + 1) * args.batch)
        c = collate([chosen[i] for i in idx], pid).to(device)
        r = collate([(rejected[i][0][rejected[i][1] - 1:], 1) for i in idx], pid).to(device)
        steps.append((c, r, sum(len(chosen[i][0]) + len(rejected[i][0]) for i in idx)))
    hf.train()
    params = list(hf.parameters())
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)  # as mechtox and TRL here
    body, head = hf.get_decoder(), hf.get_output_embeddings()
    reset_peak_memory(device)
    times, toks = [], []
    for c, r, n_real in steps:
        t = time.perf_counter()
        lps = []
        for b in (c, r):
            with _autocast(device, args.dtype):
                h = body(input_ids=b.tokens, attention_mask=b.attention_mask, use_cache=False).last_hidden_state
                m = b.label_mask[:, :-1].bool()
                logits = head(h[:, :-1][m])  # completion positions only
            lp = torch.zeros(m.shape, device=h.device).masked_scatter(m, token_logps(logits, b.tokens[:, 1:][m]))
            lps.append(lp.sum(-1))
        loss, _ = dpo_loss(lps[0], lps[1], lps[0].detach(), lps[1].detach(), 0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        times.append(time.perf_counter() - t)
        toks.append(n_real)
    secs = sum(times[1:])
    return {"tok_s": sum(toks[1:]) / secs, "ms": 1000 * secs / (len(times) - 1), "first_loss": None}


def run_trl(args, device: str) -> dict:
    """TRL's DPOTrainer on the plain transformers model, configured for speed."""
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer
    except ImportError:
        return {"error": "TRL is not installed (pip install -e '.[bench]')"}
    hf, tokenizer, pairs, _, _ = _plain_model(args, device)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    ds = Dataset.from_dict({"prompt": list(pairs.prompt), "chosen": list(pairs.chosen),
                            "rejected": list(pairs.rejected)})
    with tempfile.TemporaryDirectory() as d:
        cfg = DPOConfig(output_dir=d, per_device_train_batch_size=args.batch, max_steps=args.steps + 1,
                        learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0, beta=0.1,
                        max_grad_norm=10.0, max_length=args.seq + 8, precompute_ref_log_probs=True,
                        gradient_checkpointing=False, bf16=args.dtype == "bfloat16", use_cpu=device == "cpu",
                        optim="adamw_torch_fused", logging_steps=10**6,
                        save_strategy="no", eval_strategy="no", report_to=[], disable_dropout=True,
                        dataloader_num_workers=0, seed=0, torch_compile=args.compile)
        trainer = DPOTrainer(model=hf, args=cfg, train_dataset=ds, processing_class=tokenizer, callbacks=[Clock()])
        lengths = [len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"])
                   for r in trainer.train_dataset] if "prompt_ids" in trainer.train_dataset.column_names else None
        reset_peak_memory(device)
        t0 = time.perf_counter()
        out = trainer.train()
    steps = [b - a for a, b in zip([t0, *times[:-1]], times, strict=True)][1:]
    per_pair = sum(lengths) / len(lengths) if lengths else float("nan")
    secs = sum(steps)
    return {"tok_s": per_pair * args.batch * len(steps) / secs, "ms": 1000 * secs / len(steps),
            "first_loss": None, "train_loss": out.training_loss}


def child(args) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if args.variant == "trl":
        res = run_trl(args, device)
    elif args.variant == "hf":
        res = run_hf(args, device)
    elif args.variant == "floor":
        res = run_floor(args, device)
    else:
        res = run_mechtox(args, device, args.variant.split("-")[1])
    res["peak_gib"] = peak_memory_gib(device)
    res["device"] = device
    print("RESULT " + json.dumps(res), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--seq", type=int, default=64, help="tokens per sequence (prompt a quarter, completion the rest)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (mechtox-hf, HF and TRL)")
    ap.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.variant:
        return child(args)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{dev}, {args.model}, DPO step, {args.batch} pairs x {args.seq} tokens, {args.dtype}, compile={args.compile}, "
          f"{args.steps} timed steps after 1 warm-up")
    print(f"{'implementation':28s} {'real tok/s':>10s} {'ms/step':>8s} {'peak GiB':>9s}  first DPO loss", flush=True)
    results = {}
    for v in args.only.split(","):  # each row as soon as it is measured (a time limit keeps what finished)
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", v, "--model", args.model, "--batch",
               str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--dtype", args.dtype]
        if args.compile and v != "mechtox-hooked":
            cmd.append("--compile")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        r = results[v] = json.loads(line[-1][7:]) if line else {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        if "error" in r:
            print(f"{LABELS[v]:28s} failed: {r['error']}", flush=True)
            continue
        fl = f"{r['first_loss']:.4f}" if r.get("first_loss") is not None else "-"
        print(f"{LABELS[v]:28s} {r['tok_s']:10.0f} {r['ms']:8.0f} {r['peak_gib']:9.2f}  {fl}", flush=True)
    mt = results.get("mechtox-hf", {}).get("tok_s")
    if "tok_s" in results.get("mechtox-hooked", {}) and "tok_s" in results.get("hf", {}):
        print(f"ratio mechtox(hooked, hooks on) / HF = {results['mechtox-hooked']['tok_s'] / results['hf']['tok_s']:.2f}x")
    if "tok_s" in results.get("floor", {}) and "tok_s" in results.get("trl", {}):
        faster = [LABELS[v] for v, r in results.items() if v != "floor" and r.get("tok_s", 0) > results["floor"]["tok_s"]]
        if faster:  # on a GPU a step is bound by kernel launches, and the floor's two passes launch twice as many
            print(f"the floor row is no bound here: {', '.join(faster)} ran faster (the step is bound by something "
                  f"other than arithmetic: on a GPU, kernel launches)")
        else:
            print(f"bound: no DPO step with this model's code can run faster than "
                  f"{results['floor']['tok_s'] / results['trl']['tok_s']:.2f}x TRL here (the floor row)")
    for ref in ("hf", "trl"):
        if mt and "tok_s" in results.get(ref, {}):
            print(f"ratio mechtox(hf, hooks on) / {LABELS[ref]} = {mt / results[ref]['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
