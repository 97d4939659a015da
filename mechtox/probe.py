"""Linear probes for toxicity and the directions they define (Lee et al. 2024, item 1).

:func:`fit_probe` fits one probe on pooled activations; :func:`probe_sweep` fits one per layer
from a single activation pass. Methods: logistic regression, difference of means, linear SVM.
Features are standardised for fitting, and the weight is mapped back so that the returned
direction lives in residual-stream coordinates: ``logit = x @ weight + bias``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from mechtox import _io
from mechtox.activations import FINAL_HOOK, Pooling, collect_activations, parse_layers, pool
from mechtox.data import LabelledTexts
from mechtox.errors import IncompatibleError, MechtoxError

Method = Literal["logreg", "diffmean", "svm"]
METHODS: tuple[str, ...] = ("logreg", "diffmean", "svm")


@dataclass(frozen=True)
class Direction:
    """A unit direction in the residual stream at ``hook_name``, with its provenance.

    ``weight``/``bias`` are set for probes (``logit = x @ weight + bias``); other directions
    (unembedding, gradient...) have ``weight=None``.
    """

    vector: Float[Tensor, " d_model"]
    hook_name: str
    method: str
    model_name: str = ""
    pooling: str = "mean"
    name: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    weight: Float[Tensor, " d_model"] | None = None
    bias: float = 0.0

    @property
    def hooks(self) -> tuple[str, ...]:
        """The hook points read: one, or several for a probe fitted on layers together (``hook_name``
        joins them with ``+``; its weights are over their pooled activations concatenated)."""
        return tuple(self.hook_name.split("+"))

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0]) // len(self.hooks)

    @property
    def is_probe(self) -> bool:
        return self.weight is not None

    def logits(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """Probe logits of pooled activations (probes only)."""
        if self.weight is None:
            raise MechtoxError(f"direction {self.name or self.method!r} is no probe: it has no classifier weights")
        w = self.weight.to(acts.device, acts.dtype)
        return acts @ w + self.bias

    def check_model(self, model: HookedTransformer) -> None:
        """Raise :class:`IncompatibleError` if ``model`` cannot use this direction."""
        if model.cfg.d_model != self.d_model:
            raise IncompatibleError(
                f"direction {self.name or self.method!r} has d_model {self.d_model} but model "
                f"{model.cfg.model_name!r} has d_model {model.cfg.d_model}; fit it on this model"
            )
        for h in self.hooks:
            if h not in model.hook_dict:
                raise IncompatibleError(f"direction {self.name!r} lives at {h}, which model {model.cfg.model_name!r} "
                                        "does not have")

    # -- persistence: safetensors + JSON
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``direction.safetensors`` + ``direction.json`` into directory ``path``, atomically."""
        from safetensors.torch import save_file

        tensors = {"vector": self.vector.detach().float().cpu().contiguous()}
        if self.weight is not None:
            tensors["weight"] = self.weight.detach().float().cpu().contiguous()
        meta = {k: v for k, v in asdict(self).items() if k not in ("vector", "weight")}
        meta["d_model"] = self.d_model
        meta["kind"] = "probe" if self.is_probe else "direction"

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            save_file(tensors, str(tmp / "direction.safetensors"))
            (tmp / "direction.json").write_text(json.dumps(meta, indent=2, default=_json_default))

        return _io.write_with(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: HookedTransformer | None = None,
             several_layers_ok: bool = False) -> Direction:
        """Load a saved direction or probe; with ``model``, check it fits (d_model, hook). A probe
        over several layers loads only where ``several_layers_ok`` (scoring texts): ranking
        neurons, attribution and training need one direction at one hook."""
        from safetensors.torch import load_file

        path = Path(path)
        meta_file = path / "direction.json"
        if not meta_file.is_file():
            raise MechtoxError(f"{path} holds no direction (no direction.json)")
        meta = json.loads(meta_file.read_text())
        t = load_file(str(path / "direction.safetensors"))
        kind = meta.pop("kind", "direction")
        meta.pop("d_model", None)
        klass = Probe if kind == "probe" else Direction
        d = klass(vector=t["vector"], weight=t.get("weight"), **meta)
        if len(d.hooks) > 1 and not several_layers_ok:
            raise IncompatibleError(f"probe {d.name!r} reads {len(d.hooks)} layers together ({d.hook_name}); only "
                                    "scoring texts takes it (mechtox probe --eval, eval --probe); neurons, attribution "
                                    "and training need a probe at one layer")
        if model is not None:
            d.check_model(model)
        return d


@dataclass(frozen=True)
class Probe(Direction):
    """A toxicity probe: a :class:`Direction` with classifier weights (``P(toxic) = sigmoid(x @ weight + bias)``)."""

    def module(self) -> ProbeModule:
        """A differentiable torch module of this probe (for training objectives)."""
        return ProbeModule(self)


class ProbeModule(nn.Module):
    """``acts -> P(toxic)`` as a torch module with frozen buffers; differentiable in ``acts``."""

    def __init__(self, probe: Direction):
        super().__init__()
        if probe.weight is None:
            raise MechtoxError("a ProbeModule needs a probe (a direction with weights)")
        self.register_buffer("weight", probe.weight.detach().float().clone())
        self.register_buffer("bias", torch.tensor(float(probe.bias)))
        self.hook_name = probe.hook_name
        self.pooling = probe.pooling

    def forward(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        return torch.sigmoid(acts @ self.weight.to(acts.dtype) + self.bias.to(acts.dtype))

    def pooled(self, acts: Float[Tensor, "batch pos d_model"], mask: Tensor) -> Float[Tensor, " batch"]:
        """P(toxic) of per-token activations pooled as the probe was trained (mean or last)."""
        return self(pool(acts, mask, self.pooling))


Aggregate = Literal["pooled", "max", "logsumexp"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)


class ProbeScorer:
    """Score texts with a probe on ``model``'s own activations (a toxicity scorer)."""

    def __init__(self, model: HookedTransformer, probe: Direction, batch_size: int = 16, max_length: int = 64,
                 aggregate: Aggregate = "pooled"):
        probe.check_model(model)
        if not probe.is_probe:
            raise MechtoxError(f"{probe.name!r} is a direction without classifier weights; a scorer needs a probe")
        if aggregate not in AGGREGATES:
            raise MechtoxError(f"unknown aggregate {aggregate!r}; use one of {', '.join(AGGREGATES)}")
        self.model, self.probe, self.aggregate = model, probe, aggregate
        self.batch_size, self.max_length = batch_size, max_length
        self.name = f"probe:{probe.name or probe.method}" + ("" if aggregate == "pooled" else f":{aggregate}")

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """One logit per text: the probe on the text's pooled activations (``pooled``, as it was
        fitted), or the probe applied to every token and the logits' ``max`` or ``logsumexp``."""
        texts = [t if t.strip() else " " for t in texts]
        hooks = list(self.probe.hooks)
        pooling = self.probe.pooling if self.aggregate == "pooled" else "tokens"
        acts = collect_activations(self.model, texts, hooks, pooling, self.batch_size, self.max_length,
                                   progress=False)
        x = torch.cat([acts[h] for h in hooks], dim=-1)  # one hook, or several layers side by side
        z = self.probe.logits(x.double())
        if self.aggregate == "pooled":
            return z.numpy()
        text = acts.token_index[:, 0]
        top = torch.full((len(texts),), -torch.inf, dtype=z.dtype).scatter_reduce(0, text, z, "amax")
        if self.aggregate == "max":
            return top.numpy()
        return (top + torch.zeros_like(top).index_add(0, text, (z - top[text]).exp()).log()).numpy()  # stable

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities: the sigmoid of :meth:`logits` (for ``logsumexp`` a score in (0, 1), not calibrated)."""
        return torch.sigmoid(torch.from_numpy(self.logits(texts))).numpy()


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# ----------------------------------------------------------------------------- fitting


def split_indices(labels: np.ndarray, test_size: float | int = 0.25, seed: int = 0,
                  train_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices (seeded)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=test_size, train_size=train_size, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(te)


def stratified_subset(data: LabelledTexts, n: int, seed: int = 0) -> LabelledTexts:
    """A stratified, seeded subset of ``n`` rows of ``data`` (all of it when ``n >= len(data)``)."""
    if n >= len(data):
        return data
    keep, _ = split_indices(data.labels, test_size=len(data) - n, seed=seed)
    return data.subset(keep)


def _metrics(y: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = (logits > 0).astype(int)
    return {"accuracy": float(accuracy_score(y, pred)), "f1": float(f1_score(y, pred)),
            "auroc": float(roc_auc_score(y, logits)) if len(set(y.tolist())) > 1 else float("nan")}


def fit_direction_weights(X: np.ndarray, y: np.ndarray, method: Method = "logreg", C: float = 1.0,
                          seed: int = 0) -> tuple[np.ndarray, float]:
    """Fit a linear classifier on ``X`` (raw coordinates); return ``(weight, bias)`` in raw coordinates.

    Standardisation is internal: the classifier sees ``(X - mu) / sigma`` and its weight is
    mapped back (``w_raw = w / sigma``, ``b_raw = b - mu @ w_raw``). Difference of means and
    SVM directions are calibrated into probabilities with a 1-D logistic fit on the projection.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if not np.isfinite(X).all():
        raise MechtoxError("activations contain NaN or inf; check the model and the data (fp16 overflow?)")
    if len(set(y.tolist())) < 2:
        raise MechtoxError("a probe needs both classes in its training data")
    mu = X.mean(0)
    sigma = X.std(0)
    sigma = np.where(sigma < 1e-8, 1.0, sigma)
    Z = (X - mu) / sigma
    if method == "logreg":
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
        clf.fit(Z, y)
        w = clf.coef_[0] / sigma
        return w, float(clf.intercept_[0] - mu @ w)
    if method == "diffmean":
        d = X[y == 1].mean(0) - X[y == 0].mean(0)
    elif method == "svm":
        svm = LinearSVC(C=C * 0.01, max_iter=20000, random_state=seed)
        svm.fit(Z, y)
        d = svm.coef_[0] / sigma
    else:
        raise MechtoxError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    proj = (X @ d).reshape(-1, 1)
    cal = LogisticRegression(C=1e4, max_iter=1000).fit(proj, y)
    scale = float(cal.coef_[0, 0])
    return d * scale, float(cal.intercept_[0])


CV_CS = (1e-3, 1e-2, 1e-1, 1.0)
"""The regularization strengths ``C="cv"`` chooses among (on standardised features)."""


def cv_scores(X: np.ndarray, y: np.ndarray, method: Method = "logreg", seed: int = 0, folds: int = 5) -> dict[float, float]:
    """Mean held-out AUROC of each C of :data:`CV_CS` in stratified ``folds``-fold cross-validation
    on ``(X, y)`` (each fold standardised on its own training part, as a probe is)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    folds = max(2, min(folds, int(np.bincount(y).min())))
    scores = {}
    for c in CV_CS:
        aucs = []
        for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
            w, b = fit_direction_weights(X[tr], y[tr], method, c, seed)
            aucs.append(roc_auc_score(y[va], X[va] @ w + b))
        scores[c] = float(np.mean(aucs))
    return scores


def choose_C(X: np.ndarray, y: np.ndarray, method: Method = "logreg", seed: int = 0, folds: int = 5) -> float:
    """The C of :data:`CV_CS` with the best :func:`cv_scores` on the training texts (ties: the
    stronger regularization)."""
    scores = cv_scores(X, y, method, seed, folds)
    return max(CV_CS, key=lambda c: (scores[c], -c))


def fit_probe(X: Float[Tensor, "n d_model"] | np.ndarray, y: np.ndarray, hook_name: str,
              method: Method = "logreg", test_size: float | int = 0.25, seed: int = 0,
              train_size: int | None = None, C: float | str = 1.0, model_name: str = "", pooling: str = "mean",
              name: str = "", provenance: dict[str, Any] | None = None,
              split: tuple[np.ndarray, np.ndarray] | None = None) -> Probe:
    """Fit a probe on pooled activations ``X`` with labels ``y``; held-out metrics with a
    stratified, seeded split (accuracy, F1 and AUROC on train and test). ``C="cv"`` chooses the
    regularization by cross-validation on the training texts (:func:`choose_C`; in the metrics)."""
    Xn = X.numpy() if isinstance(X, Tensor) else np.asarray(X)
    Xn = Xn.astype(np.float64)
    y = np.asarray(y).astype(int)
    tr, te = split if split is not None else split_indices(y, test_size, seed, train_size)
    chosen = C == "cv"
    if chosen:
        C = choose_C(Xn[tr], y[tr], method, seed) if method != "diffmean" else 1.0
    elif isinstance(C, str):
        raise MechtoxError(f"C must be a number or 'cv', not {C!r}")
    w, b = fit_direction_weights(Xn[tr], y[tr], method, float(C), seed)
    metrics = {f"train_{k}": v for k, v in _metrics(y[tr], Xn[tr] @ w + b).items()}
    metrics |= {f"test_{k}": v for k, v in _metrics(y[te], Xn[te] @ w + b).items()}
    metrics |= {"n_train": int(len(tr)), "n_test": int(len(te))} | ({"C_by_cv": float(C)} if chosen else {})
    wt = torch.as_tensor(w, dtype=torch.float32)
    return Probe(vector=wt / wt.norm(), hook_name=hook_name, method=method, model_name=model_name,
                 pooling=pooling, name=name, metrics=metrics,
                 provenance={"seed": seed, "C": C, **(provenance or {})}, weight=wt, bias=b)


@dataclass(frozen=True)
class ProbeSweep:
    """One probe per hook from a single activation pass."""

    table: pd.DataFrame
    probes: dict[str, Probe]
    best_hook: str

    @property
    def best(self) -> Probe:
        return self.probes[self.best_hook]

    def choose(self, save: str = "best") -> str:
        """The hook of the probe to keep: ``"best"`` (by the sweep's selection metric), ``"final"``
        (the last hook swept), ``"together"`` (the probe over all swept layers) or a layer number."""
        if save == "best":
            return self.best_hook
        if save == "final":
            return str(self.table[self.table["layer"] >= 0]["hook"].iloc[-1])
        if save == "together":
            rows = self.table[self.table["layer"] == -1]
            if rows.empty:
                raise MechtoxError("--save together needs --together (a probe fitted on the layers together)")
            return str(rows["hook"].iloc[0])
        try:
            layer = int(save)
        except ValueError:
            raise MechtoxError(f"--save must be 'best', 'final' or a layer number, not {save!r}") from None
        rows = self.table[self.table["layer"] == layer]
        if rows.empty:
            raise MechtoxError(f"--save {layer}: no probe at that layer (layers swept: {sorted(set(self.table['layer']))})")
        return str(rows["hook"].iloc[0])


def probe_sweep(model: HookedTransformer, data: LabelledTexts, layers: str | Sequence[int] = "all",
                site: str = "resid_post", include_final: bool = True, method: Method = "logreg",
                pooling: Pooling = "mean", max_length: int = 64, batch_size: int = 16,
                test_size: float | int = 0.25, train_size: int | None = None, seed: int = 0,
                C: float | str = 1.0, progress: bool = True, select_on: str = "test_auroc",
                transfer: LabelledTexts | None = None, together: bool = False) -> ProbeSweep:
    """Fit a probe at every requested layer (and the final normalised stream) from ONE pass.

    The best hook is chosen by ``select_on`` (held-out AUROC by default; the table shows all).
    With ``transfer`` (labelled texts of another source), the table also has each layer's
    ``transfer_auroc`` there, so ``select_on="transfer_auroc"`` picks the layer that transfers.
    With ``together``, one more probe is fitted on the swept layers' pooled activations side by
    side (its row has layer -1 and the hooks joined with ``+``).
    """
    from transformer_lens.utilities import get_act_name

    layer_ids = parse_layers(layers, model.cfg.n_layers)
    hooks = [get_act_name(site, layer) for layer in layer_ids]
    if include_final and model.cfg.normalization_type is not None:
        hooks.append(FINAL_HOOK)
    acts = dict(collect_activations(model, data.texts, hooks, pooling, batch_size, max_length, progress).acts)
    split = split_indices(data.labels, test_size, seed, train_size)
    rows, probes = [], {}
    prov = {"data": data.source, "max_length": max_length, "n_texts": len(data)}
    for i, h in enumerate(hooks):
        p = fit_probe(acts[h], data.labels, h, method, seed=seed, C=C, model_name=model.cfg.model_name,
                      pooling=pooling, provenance=prov, split=split)
        probes[h] = p
        layer = layer_ids[i] if i < len(layer_ids) else model.cfg.n_layers
        rows.append({"hook": h, "layer": layer, **p.metrics})
    joint = "+".join(hooks)
    if together and len(hooks) > 1:
        acts[joint] = torch.cat([acts[h] for h in hooks], dim=-1)
        probes[joint] = fit_probe(acts[joint], data.labels, joint, method, seed=seed, C=C,
                                  model_name=model.cfg.model_name, pooling=pooling, provenance=prov, split=split)
        rows.append({"hook": joint, "layer": -1, **probes[joint].metrics})
    if transfer is not None:
        t_acts = dict(collect_activations(model, transfer.texts, hooks, pooling, batch_size, max_length, progress).acts)
        if joint in probes:
            t_acts[joint] = torch.cat([t_acts[h] for h in hooks], dim=-1)
        for row in rows:
            h = row["hook"]
            row["transfer_auroc"] = _metrics(transfer.labels, probes[h].logits(t_acts[h]).numpy())["auroc"]
    table = pd.DataFrame(rows)
    best = str(table.loc[table[select_on].idxmax(), "hook"])
    return ProbeSweep(table, probes, best)


# ----------------------------------------------------------------------------- transfer


def bootstrap_metrics(labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      threshold: float = 0.5) -> pd.DataFrame:
    """Accuracy, F1 and AUROC of probabilities ``probs`` for binary ``labels``, each with a
    percentile bootstrap 95% interval over ``n_boot`` resamples of the texts (seeded; the same
    resamples for every metric and, with the same seed and size, for every scorer)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y, p = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    if len(y) != len(p) or len(y) < 2 or len(set(y.tolist())) < 2:
        raise MechtoxError("scoring a probe needs texts of both labels")
    fns = {"accuracy": lambda y, p: accuracy_score(y, p > threshold),
           "f1": lambda y, p: f1_score(y, p > threshold, zero_division=0.0),
           "auroc": roc_auc_score}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    rows = []
    for name, fn in fns.items():
        boots = [fn(y[i], p[i]) for i in idx if len(set(y[i].tolist())) > 1]
        lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
        rows.append({"metric": name, "value": float(fn(y, p)), "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows)


def reliability_table(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Texts binned by predicted probability (equal-width bins): mean prediction, fraction toxic, count."""
    y, p = np.asarray(labels).astype(float), np.asarray(probs, dtype=np.float64)
    b = np.minimum((p * bins).astype(int), bins - 1)
    rows = [{"bin": k, "lower": k / bins, "upper": (k + 1) / bins, "n": int((b == k).sum()),
             "mean_predicted": float(p[b == k].mean()), "fraction_toxic": float(y[b == k].mean())}
            for k in range(bins) if (b == k).any()]
    return pd.DataFrame(rows)
