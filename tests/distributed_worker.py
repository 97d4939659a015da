"""One rank of the 2-process tests (tests/test_distributed.py), started by torchrun: in one launch,
trains the tiny Llama-like model on the hf backend without interruption, then again stopped
after 2 steps and resumed; every rank saves its weights after each.

python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT_DIR BATCH [fsdp|fulldisk]
"""

import sys
from pathlib import Path

import torch

from mechtox.training import DPOObjective, train
from tests.test_distributed import config, model_and_pairs


def run(out: Path, batch: int, fsdp: bool, resume: bool = False, stop_after: int | None = None) -> None:
    model, pairs = model_and_pairs()
    cfg = config(batch, fsdp=fsdp)
    res = train(model, DPOObjective(model, pairs, cfg), cfg, out, progress=False, resume=resume,
                stop_after=stop_after)
    rank = torch.distributed.get_rank()
    # every rank's model holds the trained weights (under FSDP too: gathered at write-back)
    torch.save({"weights": model.state_dict(), "history": res.history}, out / f"result{rank}.pt")


def full_disk(out: Path) -> None:
    """Rank 0 alone finds the disk full before the checkpoint of step 4: every rank must stop with
    the error (none may wait for the others forever); each writes down the message it got."""
    import os
    import shutil

    from mechtox import training as T
    from mechtox.errors import MechtoxError

    rank, real, calls = int(os.environ["RANK"]), shutil.disk_usage, []

    def filling(path):  # room before the run and at step 2
        calls.append(path)
        u = real(path)
        return type(u)(u.total, u.used, u.free if len(calls) <= 2 else 2**20)

    if rank == 0:
        T.shutil.disk_usage = filling
    model, pairs = model_and_pairs()
    cfg = config(4)
    try:
        train(model, DPOObjective(model, pairs, cfg), cfg, out, progress=False)
    except MechtoxError as e:
        (out / f"stopped{rank}.txt").write_text(str(e))
    torch.distributed.barrier()  # both reach here (a rank that hung would time the test out) ...
    torch.distributed.destroy_process_group()  # ... and leave together (gloo aborts a rank whose peer left)


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    if sys.argv[3:] == ["fulldisk"]:
        return full_disk(out)
    fsdp = len(sys.argv) > 3 and sys.argv[3] == "fsdp"
    run(out / "uninterrupted", batch, fsdp)
    run(out / "resumed", batch, fsdp, stop_after=2)  # interrupted after 2 of 4 steps
    run(out / "resumed", batch, fsdp, resume=True)


if __name__ == "__main__":
    main()
