"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m mechtox train ...`` starts N processes (ranks). Each loads the
model on its own device (``cuda:LOCAL_RANK``; the CPU with gloo), takes its share of every
step's examples from the loop's deterministic order (rank r: the r-th slice of the global
batch), and after the backward pass the gradients are averaged across ranks with one
``all_reduce`` over a flat buffer (NCCL on GPUs, gloo on CPUs), so every rank takes the same
optimizer step. Validation losses and step metrics are reduced across ranks, rank 0 alone
writes checkpoints, metrics and the saved model, and a resumed run reads rank 0's checkpoint.

Why not the ``DistributedDataParallel`` wrapper: SAP's inner ``torch.autograd.grad`` passes do not
go through DDP's reducer (which then waits for gradients that never arrive), and the objectives
call ``model.hooks(...)`` on the model, which the wrapper does not pass through. Averaging after
the backward pass gives DDP's result (the mean gradient over the global batch) for every
objective; it does not overlap communication with the backward pass, which matters only when
the interconnect, not the compute, is the bottleneck.

With ``--fsdp`` the hf backend's model is sharded instead (:meth:`mechtox.hf_backend.HFBackend.shard`):
FSDP averages the gradients itself, so :func:`average_gradients` is skipped, and every forward
pass becomes a collective, so the validation passes run in lockstep.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from mechtox.errors import MechtoxError

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: str | None) -> str | None:
    """``device`` with this rank's GPU index under torchrun (``cuda`` -> ``cuda:LOCAL_RANK``)."""
    if not launched() or device is None:
        return device
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def setup(device: str) -> tuple[int, int]:
    """``(rank, world size)``, initialising the process group when torchrun started several
    processes (once per process). ``(0, 1)`` otherwise."""
    import torch
    import torch.distributed as dist

    if not launched():
        return 0, 1
    dev = torch.device(device)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda" and dev.index != local:
        raise MechtoxError(f"rank {dist.get_rank()} holds its model on {device}; under torchrun each rank uses "
                           f"cuda:{local} (load with mechtox.distributed.local_device('cuda'))")
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    if "torch.distributed" in sys.modules:  # no process group without it: a job that never needed torch skips it
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Replace every gradient by its mean over the ranks (one all_reduce of a flat buffer)."""
    import torch
    import torch.distributed as dist

    if world == 1:
        return
    for p in params:  # a parameter unused on this rank still takes part in the mean
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads: list[Tensor] = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset: offset + n].view_as(g))
        offset += n


def all_sum(t: Tensor, world: int) -> Tensor:
    """``t`` summed over the ranks (a new tensor)."""
    import torch.distributed as dist

    t = t.clone()
    if world > 1:
        dist.all_reduce(t)
    return t


def barrier(world: int) -> None:
    import torch.distributed as dist

    if world > 1:
        dist.barrier()
