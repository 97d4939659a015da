"""Disk space and training checkpoints: the estimate of a checkpoint's size matches what a run
writes, and a disk too full for one is a one-line error before the slow work (or, when it fills
during the run, before the write that would fail), with the last checkpoint kept for --resume."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch

from mechtox import training as T
from mechtox.errors import MechtoxError
from mechtox.models import architecture_parameters, tiny_model
from mechtox.training import DPOObjective, TrainConfig, checkpoint_bytes, train
from tests.test_training import pairs

Usage = namedtuple("Usage", "total used free")


def _written(run) -> int:
    return sum(f.stat().st_size for f in (run / "state").iterdir())


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_checkpoint_bytes_is_what_a_full_fine_tuning_checkpoint_takes(optimizer, tmp_path):
    model = tiny_model()
    cfg = TrainConfig(batch_size=4, max_steps=2, optimizer=optimizer)
    train(model, DPOObjective(model, pairs(8), cfg), cfg, tmp_path / "run", progress=False)
    trained = [p for n, p in model.named_parameters() if n in set(architecture_parameters(model))]
    est, got = checkpoint_bytes(model, trained, cfg), _written(tmp_path / "run")
    assert abs(est - got) < 0.05 * got, (est, got)


def test_checkpoint_bytes_counts_only_the_adapters_state_under_lora(tmp_path):
    from tests.test_hf_backend import _make, _pairs
    from tests.test_lora import _cfg

    model = _make("llama")
    cfg = _cfg()
    res = train(model, DPOObjective(model, _pairs(), cfg), cfg, tmp_path / "run", progress=False)
    est = checkpoint_bytes(model, [torch.empty(res.trainable_params)], cfg)
    got = _written(tmp_path / "run")
    assert abs(est - got) < 0.05 * got, (est, got)
    full = checkpoint_bytes(model, list(model.parameters()), TrainConfig())
    assert est < 0.6 * full  # no optimizer state for the frozen weights


def test_a_disk_too_full_for_one_checkpoint_stops_before_the_reference_passes(monkeypatch, tmp_path):
    model = tiny_model()
    cfg = TrainConfig(batch_size=4, max_steps=2)
    obj = DPOObjective(model, pairs(8), cfg)
    monkeypatch.setattr(obj, "prepare", lambda *a, **k: pytest.fail("the reference passes ran"))
    real = shutil.disk_usage
    monkeypatch.setattr(T.shutil, "disk_usage", lambda p: Usage(*real(p)[:2], 10 * 2**20))
    with pytest.raises(MechtoxError, match=r"not enough disk space for a training checkpoint in .*run: it needs "
                                           r"about 0\.\d\d GB \(weights and optimizer state\) and 0\.01 GB are free; "
                                           r"free some space or choose another --out"):
        train(model, obj, cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_disk_that_fills_during_the_run_keeps_the_last_checkpoint_to_resume_from(monkeypatch, tmp_path):
    cfg = TrainConfig(lr=1e-3, batch_size=4, max_steps=6, warmup_steps=2, checkpoint_every=3)
    whole = tiny_model()
    train(whole, DPOObjective(whole, pairs(12), cfg), cfg, tmp_path / "whole", progress=False)

    real, calls = shutil.disk_usage, []

    def filling(p):  # room before the run and at step 3; full at step 6
        calls.append(p)
        return Usage(*real(p)[:2], real(p).free if len(calls) <= 2 else 2**20)

    monkeypatch.setattr(T.shutil, "disk_usage", filling)
    a = tiny_model()
    with pytest.raises(MechtoxError, match=r"the checkpoint of step 6 .* the last checkpoint written is kept: free "
                                           r"some space, then continue with --resume$"):
        train(a, DPOObjective(a, pairs(12), cfg), cfg, tmp_path / "run", progress=False)
    assert '"step": 3' in (tmp_path / "run" / "state" / "trainer.json").read_text()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # nothing half-written

    monkeypatch.setattr(T.shutil, "disk_usage", real)  # space freed: the advice works
    b = tiny_model()
    assert train(b, DPOObjective(b, pairs(12), cfg), cfg, tmp_path / "run", resume=True, progress=False).steps == 6
    for (k, vw), vb in zip(whole.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(vw, vb), k
