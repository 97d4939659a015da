"""One rank of the 2-process tests (tests/test_distributed.py), started by torchrun: in one launch,
trains the tiny Llama-like model on the hf backend without interruption, then again stopped
after 2 steps and resumed; every rank saves its weights after each.

python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT_DIR BATCH [fsdp]
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


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    fsdp = len(sys.argv) > 3 and sys.argv[3] == "fsdp"
    run(out / "uninterrupted", batch, fsdp)
    run(out / "resumed", batch, fsdp, stop_after=2)  # interrupted after 2 of 4 steps
    run(out / "resumed", batch, fsdp, resume=True)


if __name__ == "__main__":
    main()
