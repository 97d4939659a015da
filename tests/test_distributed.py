"""Data parallel on 2 CPU processes (torchrun, gloo): the same weights as 1 process on the same
global batch, and a 2-process run that resumes to the weights of an uninterrupted one; the same
with the weights sharded (FSDP)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def model_and_pairs():
    from tests.test_hf_backend import _make, _pairs

    return _make("llama"), _pairs(24)


def config(batch: int, fsdp: bool = False):
    from mechtox.training import TrainConfig

    # FSDP: 5 validation examples, so the ranks' shares differ (3 and 2) and must still run in lockstep
    return TrainConfig(lr=3e-3, batch_size=batch, max_steps=4, warmup_steps=0, eval_every=2, checkpoint_every=2,
                       val_fraction=0.2 if fsdp else 0.25, backend="hf", fsdp=fsdp)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, batch: int, mode: list[str], timeout: int = 600) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "tests" / "distributed_worker.py"), str(out), str(batch)]
    proc = subprocess.run(cmd + mode, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _torchrun(out: Path, batch: int, fsdp: bool = False) -> dict[str, dict]:
    """One launch of 2 ranks: the uninterrupted run and the interrupted-then-resumed one, as each
    rank saved them."""
    _launch(out, batch, ["fsdp"] if fsdp else [])
    return {f"{run}{rank}": torch.load(out / run / f"result{rank}.pt", weights_only=False)
            for run in ("uninterrupted", "resumed") for rank in (0, 1)}


def _check(tmp_path, fsdp: bool) -> None:
    from mechtox.training import DPOObjective, train

    runs = _torchrun(tmp_path / "two", batch=4, fsdp=fsdp)  # 2 ranks x 4 pairs per step
    two = runs["uninterrupted0"]
    model, pairs = model_and_pairs()
    cfg = dataclasses.replace(config(8, fsdp=fsdp), fsdp=False)  # 1 process x 8 pairs: the same examples per step
    one = train(model, DPOObjective(model, pairs, cfg), cfg, tmp_path / "one", progress=False)
    assert sum("val_loss" in h for h in one.history) == 2
    for a, b in zip(one.history, two["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["tokens"] == b["tokens"]  # the global batch's tokens, summed over the ranks
        if "val_loss" in a:
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    # AdamW moves a weight by up to lr = 3e-3 per step; padding to each rank's longest sequence and
    # the order of the sums differ from one process by rounding only
    for k, v in model.named_parameters():
        assert (v.detach() - two["weights"][k]).abs().max() < 1e-4, k
        assert torch.equal(two["weights"][k], runs["uninterrupted1"]["weights"][k]), k  # both ranks
    start = model_and_pairs()[0].state_dict()
    assert sum(not torch.equal(two["weights"][k], start[k]) for k, _ in model.named_parameters()) > 10
    # interrupted after 2 of 4 steps, then resumed: exactly the uninterrupted weights
    resumed = runs["resumed0"]
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    for k, _ in model.named_parameters():
        assert torch.equal(two["weights"][k], resumed["weights"][k]), k


@pytest.mark.slow
def test_distributed_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    """Data parallel: gradients averaged with one all_reduce after the backward pass."""
    _check(tmp_path, fsdp=False)


@pytest.mark.slow
def test_distributed_fsdp_two_processes_equal_one_and_resume(tmp_path):
    """FSDP (each block sharded over the 2 processes; 5 validation examples, so the ranks' shares
    differ and their passes must run in lockstep): the same losses and weights as 1 unsharded
    process, the full weights back on both ranks, and exact resume (the optimizer state gathered
    into one file)."""
    _check(tmp_path, fsdp=True)


@pytest.mark.slow
def test_distributed_a_disk_full_on_rank_0_stops_every_rank_with_the_last_checkpoint_kept(tmp_path):
    """Rank 0 writes the checkpoints and looks at the disk; when it finds no room before step 4's,
    rank 1 must stop too (not wait for rank 0 at the next collective until the timeout)."""
    _launch(tmp_path, 4, ["fulldisk"], timeout=120)
    said = [(tmp_path / f"stopped{rank}.txt").read_text() for rank in (0, 1)]
    assert all(s.startswith("not enough disk space for the checkpoint of step 4 in ") for s in said), said
    assert "GB are free" in said[0] and "rank 0 found less free" in said[1]
    assert '"step": 2' in (tmp_path / "state" / "trainer.json").read_text()
