import pytest
import torch

from mechtox.activations import FINAL_HOOK, collect_activations, parse_layers, resid_hooks
from mechtox.data import tokenize
from mechtox.errors import MechtoxError

TEXTS = ["you are a stupid idiot", "thanks for the help", "the river", "good book and nice music for the day"]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_one_pass_equals_run_with_cache(fixture, request):
    model = request.getfixturevalue(fixture)
    hooks = resid_hooks(model) + ["blocks.0.mlp.hook_post", FINAL_HOOK]
    acts = collect_activations(model, TEXTS, hooks, "mean", batch_size=3, progress=False)
    for i, text in enumerate(TEXTS):
        toks = tokenize(model, [text]).tokens
        _, cache = model.run_with_cache(toks)
        for h in hooks:
            torch.testing.assert_close(acts[h][i], cache[h][0].mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_mean_pooling_ignores_padding(fixture, request):
    model = request.getfixturevalue(fixture)
    alone = collect_activations(model, ["the river"], ["blocks.1.hook_resid_post"], "mean", progress=False)
    batched = collect_activations(model, TEXTS, ["blocks.1.hook_resid_post"], "mean", batch_size=4, progress=False)
    torch.testing.assert_close(batched["blocks.1.hook_resid_post"][2], alone["blocks.1.hook_resid_post"][0], atol=1e-5, rtol=1e-5)


def test_last_and_token_pooling(tiny):
    h = "blocks.1.hook_resid_post"
    last = collect_activations(tiny, TEXTS, [h], "last", batch_size=4, progress=False)
    toks = collect_activations(tiny, TEXTS, [h], "tokens", batch_size=4, progress=False)
    lengths = tokenize(tiny, TEXTS).lengths
    assert toks[h].shape[0] == int(lengths.sum()) == toks.n_tokens
    for i, text in enumerate(TEXTS):
        _, cache = tiny.run_with_cache(tokenize(tiny, [text]).tokens)
        torch.testing.assert_close(last[h][i], cache[h][0, -1], atol=1e-5, rtol=1e-5)
        rows = toks.token_index[:, 0] == i
        assert torch.equal(toks.token_index[rows, 1], torch.arange(int(lengths[i])))
        torch.testing.assert_close(toks[h][rows], cache[h][0], atol=1e-5, rtol=1e-5)


def test_stops_at_last_needed_layer(tiny, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("block 1 must not run")

    monkeypatch.setattr(tiny.blocks[1], "forward", boom)
    acts = collect_activations(tiny, TEXTS, ["blocks.0.hook_resid_post"], progress=False)
    assert acts["blocks.0.hook_resid_post"].shape == (4, 64)


def test_deterministic_and_skip_first(tiny):
    a = collect_activations(tiny, TEXTS, ["blocks.0.hook_resid_post"], progress=False)
    b = collect_activations(tiny, TEXTS, ["blocks.0.hook_resid_post"], batch_size=1, progress=False)
    torch.testing.assert_close(a["blocks.0.hook_resid_post"], b["blocks.0.hook_resid_post"], atol=1e-6, rtol=1e-6)
    c = collect_activations(tiny, TEXTS, ["blocks.0.hook_resid_post"], skip_first=1, progress=False)
    assert not torch.allclose(a["blocks.0.hook_resid_post"][0], c["blocks.0.hook_resid_post"][0])


def test_bad_inputs(tiny):
    with pytest.raises(MechtoxError, match="unknown hook name"):
        collect_activations(tiny, TEXTS, ["blocks.9.hook_resid_post"], progress=False)
    with pytest.raises(MechtoxError, match="no data"):
        collect_activations(tiny, [], ["blocks.0.hook_resid_post"], progress=False)
    with pytest.raises(MechtoxError, match="no hook names"):
        collect_activations(tiny, TEXTS, [], progress=False)


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("last", 4) == [3]
    assert parse_layers("0,2", 4) == [0, 2]
    assert parse_layers("1-3", 4) == [1, 2, 3]
    assert parse_layers([-1], 4) == [3]
    with pytest.raises(MechtoxError, match="out of range"):
        parse_layers("7", 4)
    with pytest.raises(MechtoxError, match="bad layers"):
        parse_layers("x", 4)


def test_per_sequence_skip_counts_in_one_batch(rich):
    """Different skip counts per sequence (e.g. prompt lengths) in the same padded batch: each
    mean is over that sequence's own kept positions."""
    h = "blocks.1.hook_resid_post"
    seqs = [[1, 5, 6, 7, 8, 9], [1, 10, 11, 12], [1, 13, 14, 15, 16, 17, 18]]
    skips = [3, 1, 5]
    got = collect_activations(rich, seqs, [h], "mean", batch_size=3, skip_first=skips, progress=False)[h]
    for i, (s, k) in enumerate(zip(seqs, skips, strict=True)):
        _, cache = rich.run_with_cache(torch.tensor([s]))
        torch.testing.assert_close(got[i], cache[h][0, k:].mean(0), atol=1e-5, rtol=1e-5)
