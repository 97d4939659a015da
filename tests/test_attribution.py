import copy

import numpy as np
import pytest
import torch

from mechtox.attribution import REDUCING, attribute, classify
from mechtox.errors import IncompatibleError

PROMPTS = ["you are a stupid", "thanks for the", "the river and the city", "shut up you", "my friend is", "the book"]


def perturbed(model, seed=1, scale=0.3, w_out=False):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in other.blocks:
            b.mlp.W_in.add_(scale * torch.randn(b.mlp.W_in.shape, generator=g))
            if w_out:
                b.mlp.W_out.add_(scale * torch.randn(b.mlp.W_out.shape, generator=g))
                b.attn.W_O.add_(scale * torch.randn(b.attn.W_O.shape, generator=g))
    return other


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_hook_attribution_equals_direct_computation(fixture, request):
    before = request.getfixturevalue(fixture)
    after = perturbed(before)  # same value vectors, different activations
    w = torch.randn(before.cfg.d_model)
    w_hat = w / w.norm()
    res = attribute(before, after, w, PROMPTS, mode="shared", max_new_tokens=5, progress=False)
    # direct: mean activations over the generated positions with run_with_cache, times W_out @ w
    from mechtox.generation import generate

    g = generate(before, PROMPTS, 5, stop_at_eos=False, progress=False)
    sums = {"b": 0, "a": 0}
    n = 0
    for p, c in zip(g.prompt_ids, g.continuation_ids, strict=True):
        t = torch.tensor([p + c])
        sl = slice(len(p) - 1, len(p) + len(c) - 1)
        for key, m in (("b", before), ("a", after)):
            _, cache = m.run_with_cache(t)
            sums[key] = sums[key] + torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0, sl].sum(0) for l in range(2)])
        n += len(c)
    d = torch.stack([before.blocks[l].mlp.W_out.detach() @ w_hat for l in range(2)])
    direct = ((sums["b"] - sums["a"]) / n) * d
    np.testing.assert_allclose(res.neurons["delta"].to_numpy(), direct.detach().numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(res.neurons["delta_weight"].to_numpy(), 0.0, atol=1e-6)
    assert res.n_tokens == {"before": n, "after": n} and res.mode == "shared"


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
@pytest.mark.parametrize("mode", ["own", "shared"])
def test_exactness_check_and_partition(fixture, mode, request):
    before = request.getfixturevalue(fixture)
    after = perturbed(before, w_out=True)
    w = torch.randn(before.cfg.d_model)
    res = attribute(before, after, w, PROMPTS, mode=mode, max_new_tokens=6, progress=False)
    assert abs(res.check["error"]) < 1e-4, res.check
    assert abs(res.check["total_change"]) > 1e-3  # the check is not vacuous
    assert res.groups["n"].sum() == 2 * before.cfg.d_mlp
    assert res.neurons["group"].notna().all()
    np.testing.assert_allclose(res.neurons["delta"], res.neurons["delta_act"] + res.neurons["delta_weight"], atol=1e-6)
    np.testing.assert_allclose(res.groups["contribution"].sum(), res.check["neurons"], rtol=1e-5, atol=1e-6)
    gross = res.groups.loc[res.groups["group"].isin(REDUCING), "contribution"].sum()
    np.testing.assert_allclose(res.groups.loc[res.groups["reduces"], "share_of_gross"].sum(), 1.0, rtol=1e-6)
    assert gross != 0
    assert set(res.per_layer["layer"]) == {0, 1}


def test_model_against_itself_is_zero(tiny):
    res = attribute(tiny, copy.deepcopy(tiny), torch.randn(64), PROMPTS, mode="own", max_new_tokens=5, progress=False)
    assert np.abs(res.neurons["delta"].to_numpy()).max() == 0.0
    assert res.check["total_change"] == 0.0


def test_classify_groups():
    cos = np.array([1, 1, -1, -1, 1, 1, -1, -1.0])
    a_b = np.array([1, -1, 1, -1, 1, -1, 1, -1.0])
    a_a = np.array([0, -2, 2, 0, 2, 0, 0, -2.0])
    assert list(classify(cos, a_b, a_a)) == ["TP-", "TN+", "AP+", "AN-", "TP+", "TN-", "AP-", "AN+"]


def test_errors(tiny, tiny_llama):
    with pytest.raises(IncompatibleError, match="different architectures"):
        attribute(tiny, tiny_llama, torch.randn(64), PROMPTS, progress=False)
    with pytest.raises(IncompatibleError, match="dimension 32"):
        attribute(tiny, tiny, torch.randn(32), PROMPTS, progress=False)
