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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", default="mechtox-hf,hf")
    ap.add_argument("--tool", default="torch", choices=["torch", "cprofile"],
                    help="torch.profiler (operators, kernels, syncs) or cProfile (Python functions)")
    args = ap.parse_args()
    args.compile, args.steps = False, 5
    device = "cuda" if torch.cuda.is_available() else "cpu"
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
        report("mechtox(hf, hooks on)", win, 3 if win.n >= 6 else 3)
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
