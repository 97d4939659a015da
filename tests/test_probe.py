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
    with pytest.raises(IncompatibleError, match="d_model 32; model .* d_model 64: pass the model it was fitted on"):
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


# ----------------------------------------------------------------------------- conditions


def test_svm_weight_is_in_raw_coordinates():
    """The SVM probe, read in raw coordinates, ranks texts as an SVM fitted on standardised
    features does (its logit is an increasing affine map of that SVM's decision)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    X, y, _ = planted()
    tr, te = split_indices(y, 0.25, 0)
    p = fit_probe(X, y, "h", method="svm", split=(tr, te))
    ref = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=20000, random_state=0)).fit(X[tr], y[tr])
    ours = p.logits(torch.tensor(X[te], dtype=torch.float32)).numpy()
    dec = ref.decision_function(X[te])
    slope, icpt = np.polyfit(dec, ours, 1)
    assert slope > 0 and np.abs(ours - (slope * dec + icpt)).max() < 1e-2 * np.abs(ours).max()
    w_ref = ref[-1].coef_[0] / ref[0].scale_
    assert float(p.vector @ torch.tensor(w_ref / np.linalg.norm(w_ref), dtype=torch.float32)) > 0.999


def test_diffmean_direction_is_the_difference_of_class_means():
    X, y, _ = planted()
    tr, te = split_indices(y, 0.25, 0)
    p = fit_probe(X, y, "h", method="diffmean", split=(tr, te))
    d = X[tr][y[tr] == 1].mean(0) - X[tr][y[tr] == 0].mean(0)
    assert float(p.vector @ torch.tensor(d / np.linalg.norm(d), dtype=torch.float32)) > 0.9999


@pytest.mark.parametrize("method", ["logreg", "diffmean", "svm"])
def test_held_out_metrics_are_computed_on_the_held_out_rows(method):
    from sklearn.metrics import accuracy_score, roc_auc_score

    X, y, _ = planted(n=300, d=40, seed=3)
    y = np.where(np.random.default_rng(1).random(len(y)) < 0.15, 1 - y, y)  # label noise: train != test
    tr, te = split_indices(y, 0.3, 0)
    p = fit_probe(X, y, "h", method=method, split=(tr, te))
    logits = p.logits(torch.tensor(X, dtype=torch.float64).float()).numpy()
    assert p.metrics["test_auroc"] == pytest.approx(roc_auc_score(y[te], logits[te]), abs=1e-4)
    assert p.metrics["test_accuracy"] == pytest.approx(accuracy_score(y[te], logits[te] > 0), abs=1e-2)
    assert p.metrics["train_accuracy"] != p.metrics["test_accuracy"]


def test_probe_module_adds_a_nonzero_bias():
    X, y, _ = planted(d=16)
    p = fit_probe(X, y, "h")
    assert abs(p.bias) > 0.1
    x = torch.tensor(X[:7], dtype=torch.float32)
    expected = 1 / (1 + np.exp(-(X[:7] @ p.weight.numpy().astype(np.float64) + p.bias)))
    np.testing.assert_allclose(p.module()(x).numpy(), expected, atol=1e-5)


def test_sweep_keeps_the_layer_with_the_highest_held_out_auroc(rich):
    data = synthetic_labelled(160, 3, n_filler=10)
    flip = np.random.default_rng(0).random(len(data)) < 0.25
    data = type(data)(data.texts, np.where(flip, 1 - data.labels, data.labels), "noisy")
    sweep = probe_sweep(rich, data, test_size=60, seed=0, progress=False)
    aurocs = sweep.table.set_index("hook")["test_auroc"]
    assert aurocs.nunique() == len(aurocs)  # no ties: the choice is informative
    assert sweep.best_hook == aurocs.idxmax()
