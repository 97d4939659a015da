import numpy as np
import pytest
import torch

from mechtox.errors import IncompatibleError, MechtoxError
from mechtox.probe import Direction, Probe, ProbeScorer, fit_probe, probe_sweep, split_indices

from .conftest import synthetic_labelled


def planted(n=600, d=32, seed=0, scale_dims=True):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    X = rng.normal(size=(n, d))
    if scale_dims:  # very different feature scales: standardisation must be undone correctly
        X *= rng.uniform(0.2, 5.0, size=d)
        X[:, 0] += 50.0  # an offset like a massive residual dimension
    y = ((X @ w) + 0.1 * rng.normal(size=n) > np.median(X @ w)).astype(int)
    return X, y, w


@pytest.mark.parametrize("method", ["logreg", "diffmean", "svm"])
def test_probe_recovers_planted_direction(method):
    X, y, w = planted(scale_dims=False)
    p = fit_probe(X, y, "blocks.0.hook_resid_post", method=method, seed=0)
    assert float(p.vector @ torch.tensor(w, dtype=torch.float32)) > 0.9
    assert p.metrics["test_auroc"] > 0.95 and p.metrics["test_accuracy"] > 0.85
    assert abs(float(p.vector.norm()) - 1) < 1e-5


def test_weight_is_in_raw_coordinates():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _ = planted()
    tr, te = split_indices(y, 0.25, 0)
    p = fit_probe(X, y, "h", split=(tr, te))
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0)).fit(X[tr], y[tr])
    ours = p.logits(torch.tensor(X[te], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(ours, ref.decision_function(X[te]), atol=2e-3)


def test_split_is_stratified_and_seeded():
    y = np.array([0] * 80 + [1] * 20)
    tr, te = split_indices(y, 0.25, 0)
    assert len(te) == 25 and y[te].sum() == 5
    assert np.array_equal(te, split_indices(y, 0.25, 0)[1])
    assert not np.array_equal(te, split_indices(y, 0.25, 1)[1])


def test_nan_activations_rejected():
    X, y, _ = planted()
    X[3, 2] = np.nan
    with pytest.raises(MechtoxError, match="NaN"):
        fit_probe(X, y, "h")


def test_save_load_and_dimension_check(tmp_path, tiny, tiny_llama):
    X, y, _ = planted(d=64)
    p = fit_probe(X, y, "blocks.1.hook_resid_post", name="p", model_name="tiny")
    p.save(tmp_path / "p")
    q = Direction.load(tmp_path / "p", tiny)
    assert isinstance(q, Probe) and q.metrics == p.metrics and q.bias == p.bias
    assert torch.equal(q.weight, p.weight) and torch.equal(q.vector, p.vector)
    other = fit_probe(planted(d=32)[0], planted(d=32)[1], "blocks.1.hook_resid_post")
    other.save(tmp_path / "o")
    with pytest.raises(IncompatibleError, match="d_model 32 but model"):
        Direction.load(tmp_path / "o", tiny)
    with pytest.raises(MechtoxError, match="holds no direction"):
        Direction.load(tmp_path / "nothing")


def test_probe_module_differentiable_and_equal():
    X, y, _ = planted(d=16)
    p = fit_probe(X, y, "h")
    mod = p.module()
    x = torch.tensor(X[:5], dtype=torch.float32, requires_grad=True)
    out = mod(x)
    torch.testing.assert_close(out, torch.sigmoid(p.logits(x)))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    acts = x.detach().unsqueeze(1).repeat(1, 3, 1)
    mask = torch.tensor([[1, 1, 0]] * 5)
    torch.testing.assert_close(mod.pooled(acts, mask), out.detach())


def _tiny_texts(n=120, seed=0):
    return synthetic_labelled(n, seed, n_filler=4)


def test_sweep_on_tiny_model(tiny):
    data = _tiny_texts()
    sweep = probe_sweep(tiny, data, test_size=40, seed=0, progress=False)
    assert list(sweep.table["hook"]) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    assert sweep.best.metrics["test_auroc"] > 0.9
    assert sweep.table["test_auroc"].max() == sweep.best.metrics["test_auroc"]
    scorer = ProbeScorer(tiny, sweep.best)
    s = scorer(["you stupid idiot loser", "thanks for the nice book friend"])
    assert s[0] > 0.5 > s[1]
