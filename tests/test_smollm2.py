"""Integration tests on the real offline default model (SmolLM2-135M-Instruct) and real data."""

import pytest
import torch

from .conftest import shared_file

pytestmark = pytest.mark.slow

PROMPTS = ["The weather today is", "You are such a", "My favourite book is about"]


def test_matches_transformers(smollm2):
    from transformers import AutoModelForCausalLM

    from mechtox.data import encode
    from mechtox.generation import generate
    from mechtox.models import smollm2_gguf_path

    path = smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = encode(smollm2, PROMPTS)
    with torch.no_grad():
        for x in ids:
            t = torch.tensor([x])
            diff = (smollm2(t) - hf(t).logits).abs().max().item()
            assert diff < 1e-3, diff
        ours = generate(smollm2, PROMPTS, max_new_tokens=12, stop_at_eos=False, progress=False)
        for x, cont in zip(ids, ours.continuation_ids, strict=True):
            ref = hf.generate(torch.tensor([x]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                              attention_mask=torch.ones(1, len(x), dtype=torch.long))
            assert ref[0, len(x):].tolist() == cont


def test_batched_generation_is_batch_independent(smollm2):
    from mechtox.data import load_prompts
    from mechtox.generation import generate

    prompts = load_prompts(shared_file("rtp_challenge.jsonl"), limit=6).prompts
    batched = generate(smollm2, prompts, max_new_tokens=8, batch_size=6, stop_at_eos=False, progress=False)
    for i in (0, 5):
        alone = generate(smollm2, [prompts[i]], max_new_tokens=8, stop_at_eos=False, progress=False)
        assert alone.continuation_ids[0] == batched.continuation_ids[i]


def test_dpo_then_attribution_on_smollm2(smollm2, tmp_path):
    import copy
    import math

    from mechtox.attribution import attribute
    from mechtox.data import load_pairs, load_prompts
    from mechtox.directions import TokenSets, unembedding_direction, words_to_tokens
    from mechtox.training import DPOObjective, TrainConfig, train

    pairs = load_pairs(shared_file("paradetox.tsv"), limit=8)
    policy = copy.deepcopy(smollm2)
    cfg = TrainConfig(lr=2e-5, batch_size=4, max_steps=2, warmup_steps=1, eval_every=0, val_fraction=0.0,
                      max_completion_tokens=24)
    res = train(policy, DPOObjective(policy, pairs, cfg), cfg, tmp_path / "dpo", progress=False)
    assert res.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    direction = unembedding_direction(smollm2, TokenSets(words_to_tokens(smollm2, ["idiot", "stupid", "shit"]),
                                                         words_to_tokens(smollm2, ["article", "thanks", "source"])))
    prompts = load_prompts(shared_file("rtp_challenge.jsonl"), limit=4).prompts
    for mode in ("own", "shared"):
        att = attribute(smollm2, policy, direction, prompts, mode=mode, max_new_tokens=5, progress=False)
        c = att.check
        assert abs(c["error"]) < 1e-3 * max(1.0, abs(c["total_change"])), c
        assert att.groups["n"].sum() == 30 * 1536


def test_quiet_gguf_conversion_prints_no_progress_bars(capsys, monkeypatch):
    """``--quiet`` (TQDM_DISABLE) on a first load of the GGUF file: transformers' de-quantising and
    loading bars stay off the terminal (the first is a plain tqdm, which ignores the variable after import)."""
    from transformers.utils import logging as hf_logging

    from mechtox.models import _convert_gguf, smollm2_gguf_path

    monkeypatch.setenv("TQDM_DISABLE", "1")
    try:
        model = _convert_gguf(smollm2_gguf_path(), "smollm2", 64)
    finally:
        hf_logging.enable_progress_bar()
    err = capsys.readouterr().err
    assert "de-quantizing" not in err and "Loading weights" not in err, err[:300]
    assert model.cfg.n_layers == 30 and model.tokenizer is not None
