"""One rank of the 2-process data-parallel test (tests/test_distributed.py), started by torchrun:
trains the tiny Llama-like model on the hf backend and, on rank 0, saves its weights.

python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT_DIR BATCH [STOP_AFTER|resume|-] [fsdp]
"""

import sys

import torch

from mechtox.training import DPOObjective, train
from tests.test_distributed import config, model_and_pairs


def main() -> None:
    out, batch = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else ""
    model, pairs = model_and_pairs()
    cfg = config(batch, fsdp=len(sys.argv) > 4 and sys.argv[4] == "fsdp")
    res = train(model, DPOObjective(model, pairs, cfg), cfg, out, progress=False, resume=mode == "resume",
                stop_after=int(mode) if mode.isdigit() else None)
    rank = torch.distributed.get_rank()
    # every rank's model holds the trained weights (under FSDP too: gathered at write-back)
    torch.save({"weights": model.state_dict(), "history": res.history}, f"{out}/result{'' if rank == 0 else rank}.pt")


if __name__ == "__main__":
    main()
