import pandas as pd
import pytest
import torch

from mechtox.data import tokenize
from mechtox.errors import MechtoxError
from mechtox.interventions import (
    Intervention,
    ablate,
    applied,
    make_patch_hook,
    random_like,
    scale_keys,
    set_neurons,
    steer,
    subtract,
)

TEXTS = ["you are a stupid idiot", "thanks for the help"]


def toks(model):
    return tokenize(model, TEXTS).tokens


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_zero_ablation_equals_editing_w_out(fixture, request):
    model = request.getfixturevalue(fixture)
    neurons = pd.DataFrame({"layer": [0, 0, 1], "neuron": [3, 17, 100]})
    t = toks(model)
    with applied(model, ablate(neurons, "zero")):
        hooked = model(t)
    with applied(model, ablate(neurons, "value")):
        edited = model(t)
    # and by hand, on a copy of the weights
    W = {l: model.blocks[l].mlp.W_out.detach().clone() for l in (0, 1)}
    with torch.no_grad():
        model.blocks[0].mlp.W_out[[3, 17]] = 0
        model.blocks[1].mlp.W_out[[100]] = 0
    by_hand = model(t)
    with torch.no_grad():
        for l, w in W.items():
            model.blocks[l].mlp.W_out.copy_(w)
    torch.testing.assert_close(hooked, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edited, by_hand, atol=1e-5, rtol=1e-5)
    # the weights are restored after the scope
    for l, w in W.items():
        assert torch.equal(model.blocks[l].mlp.W_out, w)


def test_subtraction_moves_residual_by_alpha_w(tiny):
    w = torch.randn(64)
    t = toks(tiny)
    _, clean = tiny.run_with_cache(t, names_filter="blocks.1.hook_resid_post")
    seen = {}

    def spy(act, hook):
        seen["x"] = act.detach().clone()

    iv = subtract(w, 3.0, hook_name="blocks.1.hook_resid_post")
    with applied(tiny, iv), tiny.hooks(fwd_hooks=[("blocks.1.hook_resid_post", spy)]):
        tiny(t)
    delta = clean["blocks.1.hook_resid_post"] - seen["x"]
    torch.testing.assert_close(delta, (3.0 * w / w.norm()).expand_as(delta), atol=1e-5, rtol=1e-5)
    # steering is the opposite
    with applied(tiny, steer(w, 3.0, hook_name="blocks.1.hook_resid_post")), tiny.hooks(fwd_hooks=[("blocks.1.hook_resid_post", spy)]):
        tiny(t)
    torch.testing.assert_close(seen["x"] - clean["blocks.1.hook_resid_post"], (3.0 * w / w.norm()).expand_as(delta), atol=1e-5, rtol=1e-5)


def test_patching_a_model_with_itself_changes_nothing(tiny):
    t = toks(tiny)
    ref, cache = tiny.run_with_cache(t)
    hooks = [(f"blocks.{l}.mlp.hook_post", make_patch_hook(cache[f"blocks.{l}.mlp.hook_post"])) for l in range(2)]
    hooks.append(("blocks.0.hook_resid_post", make_patch_hook(cache["blocks.0.hook_resid_post"], neurons=[1, 2])))
    with applied(tiny, Intervention("self-patch", hooks)):
        out = tiny(t)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_patch_shape_mismatch(tiny):
    bad = torch.zeros(1, 2, 128)
    with pytest.raises(MechtoxError, match="patch source shape"):
        with applied(tiny, Intervention("p", [("blocks.0.mlp.hook_post", make_patch_hook(bad))])):
            tiny(toks(tiny))


def test_hooks_and_edits_gone_after_scope_even_on_error(tiny):
    t = toks(tiny)
    ref = tiny(t)
    W = tiny.blocks[0].mlp.W_in.detach().clone()
    neurons = pd.DataFrame({"layer": [0], "neuron": [5]})
    with pytest.raises(RuntimeError):
        with applied(tiny, [ablate(neurons), scale_keys(neurons, 10.0), subtract(torch.ones(64), 1.0, "blocks.0.hook_resid_post")]):
            assert not torch.equal(tiny.blocks[0].mlp.W_in, W)
            raise RuntimeError("boom")
    assert all(len(hp.fwd_hooks) == 0 for hp in tiny.hook_dict.values())
    assert torch.equal(tiny.blocks[0].mlp.W_in, W)
    torch.testing.assert_close(tiny(t), ref)


def test_scale_keys_scales_gated_activation(tiny_llama):
    t = toks(tiny_llama)
    _, c0 = tiny_llama.run_with_cache(t, names_filter="blocks.0.mlp.hook_post")
    neurons = pd.DataFrame({"layer": [0], "neuron": [5]})
    with applied(tiny_llama, scale_keys(neurons, 4.0)):
        _, c1 = tiny_llama.run_with_cache(t, names_filter="blocks.0.mlp.hook_post")
    a0, a1 = c0["blocks.0.mlp.hook_post"], c1["blocks.0.mlp.hook_post"]
    torch.testing.assert_close(a1[..., 5], 4.0 * a0[..., 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a1[..., 6], a0[..., 6])


def test_set_neurons_to_constants(tiny):
    means = torch.arange(2 * 128, dtype=torch.float32).reshape(2, 128)
    neurons = pd.DataFrame({"layer": [1, 1], "neuron": [4, 9]})
    seen = {}

    def spy(act, hook):
        seen["a"] = act.detach().clone()

    with applied(tiny, set_neurons(neurons, means)), tiny.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", spy)]):
        tiny(toks(tiny))
    assert (seen["a"][..., 4] == means[1, 4]).all() and (seen["a"][..., 9] == means[1, 9]).all()


def test_random_like_keeps_layer_counts():
    top = pd.DataFrame({"layer": [0, 0, 1, 1, 1], "neuron": [1, 2, 3, 4, 5]})
    rnd = random_like(top, 128, seed=0, exclude=top)
    assert rnd.groupby("layer").size().to_dict() == {0: 2, 1: 3}
    assert not set(map(tuple, rnd.to_numpy().tolist())) & set(map(tuple, top.to_numpy().tolist()))
    assert rnd.equals(random_like(top, 128, seed=0, exclude=top))
    assert not rnd.equals(random_like(top, 128, seed=1, exclude=top))


# ----------------------------------------------------------------------------- conditions


@pytest.mark.parametrize("kind", ["steer", "subtract"])
def test_newest_only_changes_the_last_position_alone(kind):
    from mechtox.probe import Direction

    w = torch.randn(8)
    d = Direction(w / w.norm(), "blocks.0.hook_resid_post", "x")
    iv = (steer if kind == "steer" else subtract)(d, 3.0, newest_only=True)
    (_, hook), = iv.fwd_hooks
    act = torch.randn(2, 5, 8)
    out = hook(act.clone(), None)
    sign = 1 if kind == "steer" else -1
    torch.testing.assert_close(out[:, :-1], act[:, :-1])
    torch.testing.assert_close(out[:, -1], act[:, -1] + sign * 3.0 * d.vector)


def test_a_parameter_edited_twice_is_restored_to_its_original(tiny):
    from mechtox.interventions import edited_weights

    orig = tiny.blocks[0].mlp.W_out.detach().clone()
    edits = [("blocks.0.mlp.W_out", lambda p: p.mul_(2.0)), ("blocks.0.mlp.W_out", lambda p: p.add_(1.0))]
    with edited_weights(tiny, edits):
        torch.testing.assert_close(tiny.blocks[0].mlp.W_out.detach(), orig * 2 + 1)
    assert torch.equal(tiny.blocks[0].mlp.W_out.detach(), orig)


def test_random_neurons_never_include_the_excluded_ones():
    top = pd.DataFrame({"layer": [0, 0], "neuron": [0, 1]})
    exclude = pd.DataFrame({"layer": [0] * 126, "neuron": list(range(126))})
    for seed in range(3):  # only neurons 126 and 127 are allowed
        assert sorted(random_like(top, 128, seed, exclude=exclude)["neuron"]) == [126, 127]


def test_random_neurons_that_cannot_be_drawn_are_a_clear_error():
    """Three top neurons in a layer with two others: numpy's 'Cannot take a larger sample than
    population' had surfaced after the slow generations of a causal validation."""
    from mechtox.errors import MechtoxError
    from mechtox.interventions import check_random_baseline

    top = pd.DataFrame({"layer": [1, 1, 1, 0], "neuron": [0, 1, 2, 0]})
    check_random_baseline(top, 6, exclude=top)  # 3 in layer 1, and 3 others there: enough
    with pytest.raises(MechtoxError, match="3 of them are in layer 1, which has only 2 other neurons of its 5"):
        random_like(top, 5, seed=0, exclude=top)
    with pytest.raises(MechtoxError, match="which has only 2 other neurons"):
        check_random_baseline(top, 5, exclude=top)
    assert len(random_like(top, 3, seed=0)) == 4  # without exclusion any 3 of 3 will do


def test_whole_activation_patch_writes_the_source(rich):
    t = toks(rich)
    h = "blocks.0.hook_resid_post"
    _, cache = rich.run_with_cache(t)
    source = torch.randn_like(cache[h])
    seen = {}

    def spy(act, hook):
        seen["x"] = act.detach().clone()

    with rich.hooks(fwd_hooks=[(h, make_patch_hook(source)), ("blocks.1.hook_resid_pre", spy)]):
        rich(t)
    torch.testing.assert_close(seen["x"], source)
    part = {}
    with rich.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", make_patch_hook(torch.zeros_like(cache["blocks.0.mlp.hook_post"]),
                                                                          [3, 7])),
                               ("blocks.0.mlp.hook_post", lambda a, hook: part.setdefault("a", a.detach().clone()))]):
        rich(t)
    assert (part["a"][..., [3, 7]] == 0).all()
    torch.testing.assert_close(part["a"][..., :3], cache["blocks.0.mlp.hook_post"][..., :3])
