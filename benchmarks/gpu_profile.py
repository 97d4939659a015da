"""Where a DPO step's time goes on a GPU: mechtox's loop on the hf backend against the hand-written step.

For each of ``mechtox-hf`` (the training loop, as ``train_throughput.py`` runs it) and ``hf``
(the hand-written step), three steps are profiled after warm-up steps, and printed: the
host-device synchronisations with the Python lines that caused them (``torch.cuda``'s sync
debug mode), the operators by self CPU time and by self CUDA time, and the kernel launches
per step. Run on the GPU machine after ``benchmarks/gpu_check.sh stage``:

    python benchmarks/gpu_profile.py --model /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf --batch 32 --seq 96 --dtype bfloat16

On a CPU it runs too (no CUDA columns, no syncs), to check the script.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import pstats
import sys
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402

SYNCS: collections.Counter = collections.Counter()


def _record_sync(message, category, filename, lineno, file=None, line=None):
    if "synchroniz" not in str(message):
        return
    stack = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
    mine = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack if "mechtox" in f.filename
            or "benchmarks" in f.filename or "transformers" in f.filename][-4:]
    SYNCS[(str(message).split(",")[0][:60], " <- ".join(reversed(mine)))] += 1


class Window:
    """Profile the steps between the ``start``-th and the ``stop``-th call of the wrapped function."""

    def __init__(self, start: int, stop: int, device: str, tool: str = "torch"):
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=acts) if tool == "torch" else cProfile.Profile()
        self.tool = tool
        self.start, self.stop, self.n, self.device = start, stop, 0, device

    def tick(self) -> None:
        self.n += 1
        if self.n == self.start:
            if self.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            self.prof.start() if self.tool == "torch" else self.prof.enable()
        elif self.n == self.stop:
            if self.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode(0)
            self.prof.stop() if self.tool == "torch" else self.prof.disable()


def report(name: str, win: Window, steps: int) -> None:
    print(f"\n===== {name}: {steps} profiled steps", flush=True)
    if win.tool == "cprofile":  # Python functions, with the time spent waiting in the calls they make
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(win.prof, stream=buf).sort_stats(key).print_stats(22)
            print("\n".join(line[:160] for line in buf.getvalue().splitlines()[6:]))
        return
    ka = win.prof.key_averages()
    cuda = win.device == "cuda"
    launches = sum(e.count for e in ka if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    print(f"kernel launches per step: {launches / steps:.0f}")
    for key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "aten::_local_scalar_dense",
                "aten::nonzero", "aten::item", "aten::copy_", "aten::to"):
        ev = [e for e in ka if e.key == key]
        if ev:
            e = ev[0]
            print(f"{key}: {e.count / steps:.1f} per step, {e.cpu_time_total / 1000 / steps:.2f} ms CPU per step")
    print(ka.table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))
    if cuda:
        gpu = sum(getattr(e, "self_device_time_total", 0) for e in ka if str(e.device_type).endswith("CUDA"))
        print(f"GPU kernel time per step: {gpu / 1000 / steps:.1f} ms")
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                print(ka.table(sort_by=key, row_limit=15, max_name_column_width=60))
                break
            except Exception as e:  # the key's name differs between torch versions
                print(f"(sort by {key}: {e})")
    print("host-device syncs (count over the profiled steps, message, where):")
    for (msg, where), c in SYNCS.most_common(12):
        print(f"  {c:4d}  {msg}  {where}")
    SYNCS.clear()


def ladder(args, device: str) -> None:
    """The hand-written step with mechtox's parts added one at a time, each timed over
    ``args.steps`` steps after one warm-up (one host-device sync per step, at its end), in one
    process: which addition costs the time."""
    import tempfile
    import time

    from mechtox.hf_backend import HFBackend
    from mechtox.models import to_hf_model
    from mechtox.training import (
        DPOObjective,
        SeqBatch,
        TrainConfig,
        collate,
        completion_logits,
        dpo_loss,
        sequence_logps,
        train,
    )

    model, pairs, p_len, c_len = tt.load(args, device)
    n_steps, B = args.steps + 1, args.batch
    cfg = TrainConfig(objective="dpo", lr=1e-6, batch_size=B, max_steps=n_steps, warmup_steps=0, clip=10.0,
                      dtype=args.dtype, max_prompt_tokens=p_len, max_completion_tokens=c_len, eval_every=0,
                      val_fraction=0.0, checkpoint_every=10**9, backend="hf")
    obj = DPOObjective(model, pairs, cfg)  # the sequences as mechtox builds them
    cpu_batches = [collate([obj.chosen[i] for i in range(s * B, (s + 1) * B)]
                           + [obj.rejected[i] for i in range(s * B, (s + 1) * B)], obj.pid) for s in range(n_steps)]
    dev_batches = [b.to(device) for b in cpu_batches]
    tokens = [int(b.attention_mask.sum()) for b in cpu_batches]
    plain = to_hf_model(model)
    backend = HFBackend(model)
    with torch.no_grad():
        refs = []
        for b in dev_batches:
            with tt._autocast(device, args.dtype):
                lp = sequence_logps(completion_logits(backend, b), b)
            refs.append((lp[:B].float(), lp[B:].float()))
    g = torch.Generator().manual_seed(0)
    probe_w = (torch.randn(model.cfg.d_model, generator=g) / model.cfg.d_model ** 0.5).to(device)
    vec = (0.01 * torch.randn(model.cfg.d_model, generator=g)).to(device)
    mid = model.cfg.n_layers // 2

    def blocking(b: SeqBatch) -> SeqBatch:  # the copy as the loop made it before session 15
        return SeqBatch(b.tokens.to(device), b.attention_mask.to(device), b.label_mask.to(device), b.start)

    def run(name, net, logps, batch_of, hooks=False):
        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6, fused=device in ("cuda", "cpu"))
        times = []
        store: dict = {}
        fwd = [(f"blocks.{mid}.hook_resid_post", lambda a, hook: store.__setitem__("read", a)),
               *((f"blocks.{layer}.hook_resid_post", lambda a, hook: a + vec.to(a.dtype)) for layer in (3, 8))]
        for s in range(n_steps):
            t = time.perf_counter()
            b = batch_of(s)
            ctx = net.hooks(fwd_hooks=fwd) if hooks else contextlib.nullcontext()
            with tt._autocast(device, args.dtype), ctx:
                lp = logps(net, b)
            loss, _ = dpo_loss(lp[:B], lp[B:], *refs[s], 0.1)
            if hooks:
                mask = b.attention_mask[..., None].to(store["read"].dtype)
                loss = loss + 0.1 * (((store["read"] * mask).sum(1) / mask.sum(1)).float() @ probe_w).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())
            times.append(time.perf_counter() - t)
        secs = sum(times[1:])
        print(f"{name:58s} {1000 * secs / args.steps:8.1f} {sum(tokens[1:]) / secs:10.0f}", flush=True)

    def plain_lp(net, b):
        return tt.plain_logps(net(input_ids=b.tokens, attention_mask=b.attention_mask).logits, b)

    def mechtox_lp(net, b):
        if isinstance(net, HFBackend):
            return sequence_logps(completion_logits(net, b), b)
        return sequence_logps(net(input_ids=b.tokens, attention_mask=b.attention_mask,
                                  logits_to_keep=b.tokens.shape[1] - b.start).logits, b)

    print(f"{device}, {args.batch} pairs x {args.seq} tokens, {args.dtype}, {args.steps} timed steps after 1")
    print(f"{'step':58s} {'ms/step':>8s} {'real tok/s':>10s}")
    on_device = dev_batches.__getitem__
    run("1 hand-written (full logits, log_softmax + gather)", plain, plain_lp, on_device)
    run("2 + mechtox's log-probs (LM head at completions only)", plain, mechtox_lp, on_device)
    run("3 + through the hf backend (its hooks registered, none set)", backend, mechtox_lp, on_device)
    run("4 + the batch copied to the device each step, blocking", backend, mechtox_lp, lambda s: blocking(cpu_batches[s]))
    run("5   ... through pinned memory instead (SeqBatch.to now)", backend, mechtox_lp, lambda s: cpu_batches[s].to(device))
    run("6 + probe read and two vector adds (as train_throughput)", backend, mechtox_lp, lambda s: cpu_batches[s].to(device),
        hooks=True)
    del plain, backend
    with tempfile.TemporaryDirectory() as d:
        res = train(model, DPOObjective(model, pairs, cfg), cfg, d, progress=False, val_idx=[], train_idx=list(range(len(obj))))
    timed = res.history[1:]
    secs = sum(h["seconds"] for h in timed)
    print(f"{'7 mechtox.training.train, DPO alone (its own timing)':58s} {1000 * secs / len(timed):8.1f} "
          f"{sum(h['tokens'] for h in timed) / secs:10.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", default="mechtox-hf,hf")
    ap.add_argument("--tool", default="torch", choices=["torch", "cprofile", "ladder"],
                    help="torch.profiler (operators, kernels, syncs), cProfile (Python functions), or the ladder: "
                         "the hand-written step with mechtox's parts added one at a time")
    args = ap.parse_args()
    args.compile, args.steps = False, 5
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tool == "ladder":
        args.steps = 10
        ladder(args, device)
        return
    warnings.showwarning = _record_sync
    warnings.simplefilter("always")

    if "mechtox-hf" in args.only:
        import mechtox.training as T

        win = Window(3, 6, device, args.tool)  # steps 3, 4 and 5 of 6 (1 warm-up + 5)
        inner = T._accumulate

        def wrapped(*a, **k):
            win.tick()
            return inner(*a, **k)

        T._accumulate = wrapped
        res = tt.run_mechtox(args, device, "hf")
        if win.n < 6:
            win.tick()  # the last step's optimizer update is outside; stop at the end
        print("mechtox-hf:", {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})
        report("mechtox(hf, hooks on)", win, 3)
        T._accumulate = inner

    if "hf" in args.only.split(","):
        win = Window(3, 6, device, args.tool)
        inner_step = torch.optim.AdamW.zero_grad

        def zero_grad(self, *a, **k):  # the hand-written loop calls it once per step, at its end
            out = inner_step(self, *a, **k)
            win.tick()
            return out

        torch.optim.AdamW.zero_grad = zero_grad
        res = tt.run_hf(args, device)
        torch.optim.AdamW.zero_grad = inner_step
        print("hf:", {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})
        report("HF (hand-written)", win, 3)


if __name__ == "__main__":
    main()
