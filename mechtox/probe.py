"""Linear probes for toxicity and the directions they define (Lee et al. 2024, item 1).

:func:`fit_probe` fits one probe on pooled activations; :func:`probe_sweep` fits one per layer
from a single activation pass. Methods: logistic regression, difference of means, linear SVM.
Features are standardised for fitting, and the weight is mapped back so that the returned
direction lives in residual-stream coordinates: ``logit = x @ weight + bias``. A probe fitted
with ``pooling="tokens"`` reads every token instead: a text's logit is the log-mean-exp of its
token logits, in the fit as in scoring (:func:`fit_token_weights`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from mechtox import _io
from mechtox._io import text_hashes
from mechtox.activations import FINAL_HOOK, Pooling, collect_activations, parse_layers, pool
from mechtox.data import LabelledTexts, one_or_many
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

    def __repr__(self) -> str:
        auroc = self.metrics.get("test_auroc")
        bits = [repr(self.name) if self.name else "", self.hook_name, self.method, f"dim {int(self.vector.shape[-1])}",
                self.model_name, f"test AUROC {auroc:.3f}" if isinstance(auroc, float) and math.isfinite(auroc) else ""]
        return f"{type(self).__name__}({', '.join(b for b in bits if b)})"

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
            spec = self.provenance.get("model")
            fitted = (f"was fitted on {self.model_name!r}" if self.model_name else "was fitted on another model")
            fitted += (f" (--model {spec})" if isinstance(spec, str) and spec else "")
            raise IncompatibleError(
                f"direction {self.name or self.method!r} {fitted}, d_model {self.d_model}; model "
                f"{model.cfg.model_name!r} has d_model {model.cfg.d_model}: pass the model it was fitted on, "
                "or fit it on this one"
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
        _io.refuse_to_replace(path, lambda p: (p / "direction.json").is_file(), "saved direction or probe")

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
        path = Path(path)
        meta, t = _read_direction_files(path)
        kind = meta.pop("kind", "direction")
        meta.pop("d_model", None)
        klass = Probe if kind == "probe" else Direction
        known = {f.name for f in fields(klass)} - {"vector", "weight"}
        needed = {f.name for f in fields(klass) if f.default is MISSING and f.default_factory is MISSING} - {"vector"}
        if set(meta) - known or needed - set(meta):
            odd = sorted(set(meta) - known) or sorted(needed - set(meta))
            what = "unknown fields" if set(meta) - known else "missing fields"
            raise MechtoxError(f"{path / 'direction.json'} has {what} {odd} (written by another version of mechtox, or "
                               "edited); fit or save it again")
        d = klass(vector=t["vector"], weight=t.get("weight"), **meta)
        if len(d.hooks) > 1 and not several_layers_ok:
            raise IncompatibleError(f"probe {d.name!r} reads {len(d.hooks)} layers together ({d.hook_name}); only "
                                    "scoring texts takes it (mechtox probe --eval, eval --probe); neurons, attribution "
                                    "and training need a probe at one layer")
        if model is not None:
            d.check_model(model)
        return d


def _read_direction_files(path: str | os.PathLike[str]) -> tuple[dict, dict]:
    """The metadata (``direction.json``) and tensors (``direction.safetensors``) of a saved
    direction or probe; a file missing, cut short or edited into something unreadable is a one-line
    error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta_file, tensor_file = path / "direction.json", path / "direction.safetensors"
    if not meta_file.is_file():
        raise MechtoxError(f"{path} holds no direction (no direction.json)")
    redo = "fit or save it again, or delete the folder"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MechtoxError(f"{meta_file} is damaged ({str(e).splitlines()[0]}); {redo}") from None
    if not isinstance(meta, dict):
        raise MechtoxError(f"{meta_file} is damaged (not a JSON object); {redo}")
    if not tensor_file.is_file():
        raise MechtoxError(f"{path} has no direction.safetensors beside its direction.json; {redo}")
    try:
        tensors = load_file(str(tensor_file))
    except SafetensorError as e:
        raise MechtoxError(f"{tensor_file} is damaged ({e}); {redo}") from None
    vector, weight = tensors.get("vector"), tensors.get("weight")
    if vector is None or vector.ndim != 1 or (weight is not None and weight.shape != vector.shape):
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
        raise MechtoxError(f"{tensor_file} is damaged (tensors {shapes or 'none'}; a vector and, for a probe, a "
                           f"weight of the same length are needed); {redo}")
    if not all(x.isfinite().all() for x in (vector, weight) if x is not None) or not vector.any():
        raise MechtoxError(f"{tensor_file} holds NaN, inf or a zero vector; {redo}")
    return meta, tensors


@dataclass(frozen=True, repr=False)
class Probe(Direction):
    """A toxicity probe: a :class:`Direction` with classifier weights (``P(toxic) = sigmoid(x @ weight + bias)``)."""

    def module(self) -> ProbeModule:
        """A differentiable torch module of this probe (for training objectives)."""
        return ProbeModule(self)


class ProbeModule(nn.Module):
    """``acts -> P(toxic)`` as a torch module with frozen buffers; differentiable in ``acts``."""

    weight: Tensor
    bias: Tensor

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
        """P(toxic) of per-token activations pooled as the probe was trained: the probe on their
        mean or last one, or (``tokens``) the log-mean-exp of its logits over the real tokens."""
        if self.pooling != "tokens":
            return self(pool(acts, mask, self.pooling))
        z = (acts @ self.weight.to(acts.dtype) + self.bias.to(acts.dtype)).masked_fill(mask == 0, -torch.inf)
        return torch.sigmoid(torch.logsumexp(z, 1) - mask.sum(1).clamp_min(1).to(z.dtype).log())


Aggregate = Literal["pooled", "max", "logsumexp", "logmeanexp"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
TOKEN_AGGREGATE = "logmeanexp"
"""How a probe fitted with ``pooling="tokens"`` turns token logits into a text's logit, in the fit and in scoring."""


def aggregate_tokens(z: Float[Tensor, " n_tokens"], text: Tensor, n: int, how: str) -> Float[Tensor, " n"]:
    """Per-text reduction of token logits ``z`` (``text[i]``: the text token ``i`` belongs to):
    ``mean``, ``max``, ``logsumexp`` or ``logmeanexp`` (logsumexp minus the log of the text's
    token count: a smooth max that does not grow with length). Differentiable in ``z``."""
    count = torch.bincount(text, minlength=n).to(z.dtype)
    if how == "mean":
        return torch.zeros(n, dtype=z.dtype).index_add(0, text, z) / count
    if how == "max":
        return torch.full((n,), -torch.inf, dtype=z.dtype).scatter_reduce(0, text, z, "amax")
    top = torch.full((n,), -torch.inf, dtype=z.dtype).scatter_reduce(0, text, z.detach(), "amax")
    lse = top + torch.zeros(n, dtype=z.dtype).index_add(0, text, (z - top[text]).exp()).log()  # stable
    if how == "logsumexp":
        return lse
    if how == "logmeanexp":
        return lse - count.log()
    raise MechtoxError(f"unknown token aggregate {how!r}; use mean, max, logsumexp or logmeanexp")


class ProbeScorer:
    """Score texts with a probe on ``model``'s own activations (a toxicity scorer)."""

    def __init__(self, model: HookedTransformer, probe: Direction, batch_size: int = 16, max_length: int | None = None,
                 aggregate: Aggregate = "pooled"):
        """``max_length``: tokens read of each text (default: as many as the probe was fitted on,
        its ``provenance["max_length"]``, else 64)."""
        probe.check_model(model)
        if not probe.is_probe:
            raise MechtoxError(f"{probe.name!r} is a direction without classifier weights; a scorer needs a probe")
        if aggregate not in AGGREGATES:
            raise MechtoxError(f"unknown aggregate {aggregate!r}; use one of {', '.join(AGGREGATES)}")
        self.model, self.probe, self.aggregate = model, probe, aggregate
        self.batch_size, self.max_length = batch_size, max_length or fitted_length(probe)
        self.name = f"probe:{probe.name or probe.method}" + ("" if aggregate == "pooled" else f":{aggregate}")

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """One logit per text: the probe as it was fitted (``pooled``: on the text's pooled
        activations, or for a probe fitted with ``pooling="tokens"`` the log-mean-exp of its token
        logits), or the probe applied to every token and the logits' ``max``, ``logsumexp`` or
        ``logmeanexp``."""
        texts = [t if t.strip() else " " for t in one_or_many(texts)]
        hooks = list(self.probe.hooks)
        how: str = self.aggregate
        if how == "pooled" and self.probe.pooling == "tokens":
            how = TOKEN_AGGREGATE
        acts = collect_activations(self.model, texts, hooks, self.probe.pooling if how == "pooled" else "tokens",
                                   self.batch_size, self.max_length, progress=False)
        x = torch.cat([acts[h] for h in hooks], dim=-1)  # one hook, or several layers side by side
        z = self.probe.logits(x.double())
        if how == "pooled":
            return z.numpy()
        assert acts.token_index is not None  # collected per token
        return aggregate_tokens(z, acts.token_index[:, 0], len(texts), how).numpy()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities: the sigmoid of :meth:`logits` (for ``max``, ``logsumexp`` and ``logmeanexp``
        of a probe fitted on pooled activations, a score in (0, 1), not calibrated)."""
        return torch.sigmoid(torch.from_numpy(self.logits(texts))).numpy()


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# ----------------------------------------------------------------------------- fitting


def fitted_length(probe: Direction, default: int = 64) -> int:
    """The tokens per text ``probe`` was fitted on (``default`` where it keeps no record)."""
    n = probe.provenance.get("max_length")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else default


def seen_in_training(probe: Direction, texts: Sequence[str]) -> int | None:
    """How many of ``texts`` are among those ``probe`` was fitted on (None: the probe keeps no record
    of them: a direction, or a probe saved by an older mechtox)."""
    return _io.count_recorded(probe.provenance.get("fitted_text_hashes"), texts)


def split_indices(labels: np.ndarray, test_size: float | int = 0.25, seed: int = 0,
                  train_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices (seeded). Too few texts for a stratified split (a label with
    fewer than 2 texts, or a side smaller than the number of labels) is a one-line error."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=2)
    n_test = test_size if isinstance(test_size, numbers.Integral) else math.ceil(float(test_size) * len(idx))
    n_train = train_size if train_size is not None else len(idx) - n_test
    if counts.min() == 0:
        raise MechtoxError(f"a probe needs both classes: the {len(idx)} texts are all "
                           f"{'non-toxic (0)' if counts[0] else 'toxic (1)'}")
    if counts.min() < 2 or min(n_test, n_train) < len(counts):
        raise MechtoxError(f"{len(idx)} texts ({counts[0]} non-toxic, {counts[1]} toxic) cannot be split into "
                           f"{n_train} + {n_test} with both labels on each side; give more texts of each label "
                           f"(at least 2 each) or a larger split")
    tr, te = train_test_split(idx, test_size=test_size, train_size=train_size, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(te)


def without_repeats(texts: Sequence[str], split: tuple[np.ndarray, np.ndarray],
                    labels: np.ndarray | None = None) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """``split`` with the held-out texts that repeat a training text (surrounding white space
    ignored, as :func:`text_hashes`) left out, and how many were: a probe that saw a text in
    training scores it as training data, so such texts would lift the held-out metrics. With
    ``labels``, a held-out set left with one label only is a one-line error."""
    tr, te = split
    fitted = set(text_hashes([texts[i] for i in tr]))
    keep = np.array([h not in fitted for h in text_hashes([texts[i] for i in te])], dtype=bool)
    n = int(len(te) - keep.sum())
    if n and labels is not None and len(np.unique(np.asarray(labels)[te[keep]])) < 2:
        raise MechtoxError(f"{n} of the {len(te)} held-out texts repeat training texts, and without them the held-out "
                           "set has one label only; remove the repeated texts from the data or hold out more texts")
    return (tr, te[keep]), n


def unseen(data: LabelledTexts, fitted: set[str]) -> tuple[LabelledTexts, int]:
    """``data`` less its texts whose :func:`text_hashes` are in ``fitted`` (a probe's record of its
    training texts), and how many those were; what is left must have both labels."""
    new = np.array([h not in fitted for h in text_hashes(data.texts)], dtype=bool)
    if new.all():
        return data, 0
    if len(np.unique(data.labels[new])) < 2:
        seen = (f"all {len(data)} texts of {data.source} are training texts" if not new.any() else
                f"{int((~new).sum())} of the {len(data)} texts of {data.source} are training texts, and the rest have "
                "one label only")
        raise MechtoxError(f"{seen}; give texts the probe is not fitted on")
    return data.subset(np.flatnonzero(new)), int((~new).sum())


def leave_out_seen(data: LabelledTexts, split: tuple[np.ndarray, np.ndarray], transfer: LabelledTexts | None = None
                   ) -> tuple[tuple[np.ndarray, np.ndarray], LabelledTexts | None, int, int]:
    """``split`` of ``data`` without held-out repeats of training texts (:func:`without_repeats`),
    ``transfer`` without the training texts (:func:`unseen`), and how many each lost."""
    split, n_repeats = without_repeats(data.texts, split, data.labels)
    n_seen = 0
    if transfer is not None:
        transfer, n_seen = unseen(transfer, set(text_hashes([data.texts[i] for i in split[0]])))
    return split, transfer, n_repeats, n_seen


def stratified_subset(data: LabelledTexts, n: int, seed: int = 0) -> LabelledTexts:
    """A stratified, seeded subset of ``n`` rows of ``data`` (all of it when ``n >= len(data)``)."""
    if n >= len(data):
        return data
    y = np.asarray(data.labels, dtype=int)
    counts = np.bincount(y, minlength=2)
    if counts.min() >= 2 and min(n, len(y) - n) >= 2:
        keep, _ = split_indices(y, test_size=len(data) - n, seed=seed)
        return data.subset(keep)
    # Too few rows for scikit-learn's stratified split (which also needs both labels among the rows
    # left out): keep each label's share, rounded, drawing the rows at random within each label.
    rng = np.random.default_rng(seed)
    n0 = int(round(counts[0] * n / len(y)))
    take = (n0, n - n0)
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), take[c], replace=False) for c in (0, 1)])
    return data.subset(np.sort(keep))


def _metrics(y: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = (logits > 0).astype(int)
    return {"accuracy": float(accuracy_score(y, pred)), "f1": float(f1_score(y, pred)),
            "auroc": float(roc_auc_score(y, logits)) if len(set(y.tolist())) > 1 else float("nan")}


# ----------------------------------------------------------------------------- confounds in the training texts

TEXT_CUES: dict[str, str] = {
    "you": r"(?i)\b(?:you|your|you're|u)\b",
    "capitals": r"\b[A-Z]{4,}\b",
    "exclaim": r"!",
}
"""Named style cues for :func:`cue_weights` (``mechtox probe --match-cue``): second-person address,
a word of four or more capitals, an exclamation mark. In Jigsaw each is about twice as frequent among
the toxic texts as among the others, so a probe can learn the style as toxicity."""

TOPICS: dict[str, str] = {
    "wikipedia": r"(?i)\b(?:wiki\w*|articles?|edit\w*|page|pages|sources?|sourced|citations?|cite|cited|references?|"
                 r"deletion|delete\w*|talk|section|image|images|copyright|vandal\w*|revert\w*|template|categor\w*|"
                 r"notab\w*|npov|admin\w*|block\w*|user ?page|policy|policies|speedy|afd|wp)\b",
}
"""Named topics for :func:`matching` (``mechtox probe --drop-negatives``). ``wikipedia``: the
platform's own business (articles, edits, sources, deletion, talk pages...), which 59% of Jigsaw's
non-toxic texts name against 28% of its toxic ones (Nejadgholi & Kiritchenko 2020)."""


def _pattern(pattern: str, what: str):
    """A name in :data:`TOPICS` / :data:`TEXT_CUES` or a regular expression, compiled (``what``: the
    option or argument it came from, for the one-line error)."""
    import re

    names = TOPICS | TEXT_CUES
    try:
        return re.compile(names.get(pattern, pattern))
    except re.error as e:
        raise MechtoxError(f"{what} {pattern!r} is neither one of {', '.join(names)} nor a regular expression ({e})") from None


def _matches(texts: Sequence[str], rx) -> np.ndarray:
    return np.array([rx.search(t) is not None for t in texts], dtype=bool)


def matching(texts: Sequence[str], pattern: str) -> np.ndarray:
    """Which ``texts`` a regular expression (or a name in :data:`TOPICS` / :data:`TEXT_CUES`) finds."""
    return _matches(texts, _pattern(pattern, "pattern"))


def cell_weights(cells: np.ndarray, labels: np.ndarray, keep: np.ndarray | None = None, clip: float = 5.0) -> np.ndarray:
    """Per-text weights that make every cell (any integer label per text: a combination of cues, a
    length bin...) as frequent among the non-toxic texts as among the toxic ones. Toxic texts keep
    weight 1; a non-toxic text gets its cell's share among the toxic texts over its share among the
    non-toxic ones, clipped at ``clip`` (0 where no toxic text is in that cell). Texts outside
    ``keep`` (a boolean mask) get 0 and count in neither share."""
    y = np.asarray(labels).astype(int)
    cells = np.asarray(cells)
    keep = np.ones(len(y), bool) if keep is None else np.asarray(keep, dtype=bool)
    if cells.shape != y.shape or keep.shape != y.shape:
        raise MechtoxError(f"cell weights: {cells.shape[0]} cells, {len(y)} labels and {keep.shape[0]} keep flags differ")
    n0, n1 = (keep & (y == 0)).sum(), (keep & (y == 1)).sum()
    if n0 == 0 or n1 == 0:
        raise MechtoxError("cell weights need toxic and non-toxic texts among those kept")
    w = keep.astype(np.float64)
    for c in np.unique(cells[keep & (y == 0)]):
        neg = keep & (y == 0) & (cells == c)
        share1 = (keep & (y == 1) & (cells == c)).sum() / n1
        w[neg] = min(share1 / (neg.sum() / n0), clip)
    return w


def cue_weights(texts: Sequence[str], labels: np.ndarray, cues: Sequence[str], keep: np.ndarray | None = None,
                clip: float = 5.0) -> np.ndarray:
    """:func:`cell_weights` for the combinations of ``cues`` (names in :data:`TEXT_CUES` or
    :data:`TOPICS`, or regular expressions) in ``texts``: so that a probe fitted with these weights
    (``sample_weight``) cannot learn the cues as toxicity."""
    if len(texts) != len(labels):
        raise MechtoxError(f"cue_weights: {len(texts)} texts but {len(labels)} labels")
    if not cues:
        raise MechtoxError("cue_weights needs at least one cue")
    cell = np.zeros(len(texts), dtype=np.int64)
    for cue in cues:
        cell = cell * 2 + _matches(texts, _pattern(cue, "cue"))
    return cell_weights(cell, labels, keep, clip)


def _check_sample_weight(sample_weight: np.ndarray | None, y: np.ndarray) -> np.ndarray:
    """Per-text weights (ones where ``None``), checked: finite, non-negative, a positive total per class."""
    n = len(y)
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if sw.shape != (n,) or not np.isfinite(sw).all() or (sw < 0).any() or min(sw[y == 0].sum(), sw[y == 1].sum()) <= 0:
        raise MechtoxError(f"sample_weight needs one finite, non-negative weight per text ({n}), "
                           "and a positive total in each class")
    return sw


def _standardiser(X: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-column mean and standard deviation a probe standardises ``X`` with, the rows weighted
    by ``weights`` where given (a whole-number weight ``k`` counts a row ``k`` times); a constant
    column's deviation is taken as 1."""
    if weights is None:
        mu, sigma = X.mean(0), X.std(0)
    else:
        mu = np.average(X, axis=0, weights=weights)
        sigma = np.sqrt(np.average(np.square(X - mu), axis=0, weights=weights))
    return mu, np.where(sigma < 1e-8, 1.0, sigma)


def fit_direction_weights(X: np.ndarray, y: np.ndarray, method: Method = "logreg", C: float = 1.0,
                          seed: int = 0, sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Fit a linear classifier on ``X`` (raw coordinates); return ``(weight, bias)`` in raw coordinates.

    Standardisation is internal: the classifier sees ``(X - mu) / sigma`` and its weight is
    mapped back (``w_raw = w / sigma``, ``b_raw = b - mu @ w_raw``). Difference of means and
    SVM directions are calibrated into probabilities with a 1-D logistic fit on the projection.
    ``sample_weight``: a non-negative weight per row, on the loss (or the class means) and on the
    standardising statistics, so that a whole-number weight ``k`` fits as ``k`` copies of the row.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if not np.isfinite(X).all():
        raise MechtoxError("activations contain NaN or inf; check the model and the data (fp16 overflow?)")
    y = np.asarray(y).astype(int)
    if len(set(y.tolist())) < 2:
        raise MechtoxError("a probe needs both classes in its training data")
    sw = _check_sample_weight(sample_weight, y)
    mu, sigma = _standardiser(X, None if sample_weight is None else sw)
    Z = (X - mu) / sigma
    fit_kw = {} if sample_weight is None else {"sample_weight": sw}
    if method == "logreg":
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
        clf.fit(Z, y, **fit_kw)
        w = clf.coef_[0] / sigma
        return w, float(clf.intercept_[0] - mu @ w)
    if method == "diffmean":
        d = np.average(X[y == 1], axis=0, weights=sw[y == 1]) - np.average(X[y == 0], axis=0, weights=sw[y == 0])
    elif method == "svm":
        svm = LinearSVC(C=C * 0.01, max_iter=20000, random_state=seed)
        svm.fit(Z, y, **fit_kw)
        d = svm.coef_[0] / sigma
    else:
        raise MechtoxError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}")
    proj = (X @ d).reshape(-1, 1)
    cal = LogisticRegression(C=1e4, max_iter=1000).fit(proj, y, **fit_kw)
    scale = float(cal.coef_[0, 0])
    return d * scale, float(cal.intercept_[0])


CV_CS = (1e-3, 1e-2, 1e-1, 1.0)
"""The regularization strengths ``C="cv"`` chooses among (on standardised features)."""


def fit_token_weights(X: np.ndarray, text: np.ndarray, y: np.ndarray, C: float = 1.0,
                      init: tuple[np.ndarray, float] | None = None,
                      sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """A logistic probe read on every token (multiple-instance learning): text ``i``'s logit is the
    log-mean-exp over its tokens of ``x_t @ w + b``, and ``w, b`` minimise the texts' mean
    cross-entropy + ``|w|^2 / (2 C n)`` (sklearn's convention for C: with one token per text this
    is its logistic regression) on standardised features (token statistics), by L-BFGS in float64.

    ``X``: token activations ``[n_tokens, d]``; ``text``: each token's text, ``0 .. n - 1``, every
    text with at least one token. Returns ``(weight, bias)`` in raw coordinates, like
    :func:`fit_direction_weights` (the log-mean-exp commutes with the affine map back). ``init``:
    a starting ``(weight, bias)`` in raw coordinates (the objective is convex: only the time changes).
    ``sample_weight``: a non-negative weight per text on its cross-entropy and on its tokens' share of
    the standardising statistics, so that a whole-number weight ``k`` fits exactly as ``k`` copies of
    the text would (``n`` in the penalty is then the weights' sum).
    """
    if not np.isfinite(X).all():
        raise MechtoxError("activations contain NaN or inf; check the model and the data (fp16 overflow?)")
    y = np.asarray(y).astype(int)
    if len(set(y.tolist())) < 2:
        raise MechtoxError("a probe needs both classes in its training data")
    n = len(y)
    t = torch.as_tensor(np.asarray(text), dtype=torch.long)
    if len(t) != len(X) or int(t.min()) < 0 or int(t.max()) >= n or torch.bincount(t, minlength=n).min() == 0:
        raise MechtoxError("token probe: every text needs at least one token, and every token a text")
    sw = _check_sample_weight(sample_weight, y)
    mu, sigma = _standardiser(X, None if sample_weight is None else sw[np.asarray(text)])  # a token: its text's
    Z = torch.from_numpy(((X - mu) / sigma).astype(np.float64))
    yt = torch.as_tensor(y, dtype=torch.float64)
    swt = torch.as_tensor(sw)
    w0, b0 = (np.zeros(Z.shape[1]), 0.0) if init is None else (init[0] * sigma, init[1] + float(mu @ init[0]))
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    lam = 1.0 / (2.0 * C * sw.sum())
    opt = torch.optim.LBFGS([w, b], max_iter=1000, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        z = aggregate_tokens(Z @ w + b, t, n, TOKEN_AGGREGATE)
        bce = nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")
        loss = (swt * bce).sum() / swt.sum() + lam * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / sigma
    return w_raw, float(b.item() - mu @ w_raw)


def _token_subset(X: np.ndarray, text: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of texts ``idx`` (sorted) and their text numbers renumbered ``0 .. len(idx) - 1``."""
    keep = np.isin(text, idx)
    renumber = np.full(int(text.max()) + 1, -1)
    renumber[idx] = np.arange(len(idx))
    return X[keep], renumber[text[keep]]


def _fitter(X: np.ndarray, y: np.ndarray, method: Method, seed: int, text_index: np.ndarray | None,
            sample_weight: np.ndarray | None = None):
    """``fit(idx, C, init) -> (w, b)`` and ``logits(idx, w, b)`` over the texts ``idx``: on pooled
    rows of ``X``, or (with ``text_index``) on token rows, each text's logit the log-mean-exp of its
    tokens' (started from ``init``, a previous ``(w, b)``, where given). ``sample_weight``: one
    weight per text of ``y``, passed on to the fits."""
    sw = (lambda idx: None) if sample_weight is None else (lambda idx: sample_weight[idx])
    if text_index is None:
        return (lambda idx, c, init=None: fit_direction_weights(X[idx], y[idx], method, c, seed, sw(idx)),
                lambda idx, w, b: X[idx] @ w + b)
    if method != "logreg":
        raise MechtoxError(f"a probe on every token is a logistic one: pooling 'tokens' needs method logreg, not {method!r}")
    text = np.asarray(text_index)

    def logits(idx: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
        Xs, ts = _token_subset(X, text, idx)
        return aggregate_tokens(torch.from_numpy(Xs @ w + b), torch.from_numpy(ts), len(idx), TOKEN_AGGREGATE).numpy()

    return (lambda idx, c, init=None: fit_token_weights(*_token_subset(X, text, idx), y[idx], c, init, sw(idx))), logits


def cv_scores(X: np.ndarray, y: np.ndarray, method: Method = "logreg", seed: int = 0, folds: int = 5,
              text_index: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> dict[float, float]:
    """Mean held-out AUROC of each C of :data:`CV_CS` in stratified ``folds``-fold cross-validation
    on ``(X, y)`` (each fold standardised on its own training part, as a probe is). With
    ``text_index``, ``X`` holds token rows and the folds split texts (:func:`fit_token_weights`).
    With ``sample_weight`` (one per text), the fits and the held-out AUROCs are weighted."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    fit, logits = _fitter(X, y, method, seed, text_index, sample_weight)
    fewest = int(np.bincount(y, minlength=2).min())
    if fewest < 2:
        raise MechtoxError(f"choosing C by cross-validation needs at least 2 training texts of each label (the "
                           f"rarer label has {fewest}); give C a number, or more training texts")
    folds = max(2, min(folds, fewest))
    aucs: dict[float, list[float]] = {c: [] for c in CV_CS}
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        prev = None
        for c in sorted(CV_CS):  # strongest regularization first; each fit starts where the last ended
            prev = fit(tr, c, prev)
            aucs[c].append(roc_auc_score(y[va], logits(va, *prev),
                                         sample_weight=None if sample_weight is None else sample_weight[va]))
    return {c: float(np.mean(aucs[c])) for c in CV_CS}


def choose_C(X: np.ndarray, y: np.ndarray, method: Method = "logreg", seed: int = 0, folds: int = 5,
             text_index: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> float:
    """The C of :data:`CV_CS` with the best :func:`cv_scores` on the training texts (ties: the
    stronger regularization)."""
    scores = cv_scores(X, y, method, seed, folds, text_index, sample_weight)
    return max(CV_CS, key=lambda c: (scores[c], -c))


def _check_fit_inputs(X: np.ndarray, y: Any, method: str, C: float | str, text_index: np.ndarray | None) -> np.ndarray:
    """One-line errors for what would otherwise fit silently on misaligned rows or fail deep in
    scikit-learn: ``X`` 2-D with a row per text (per token with ``text_index``), 0/1 labels, a
    known method and a positive C. Returns the labels as ints."""
    if X.ndim != 2:
        raise MechtoxError(f"X must be 2-D (rows x d_model), not of shape {tuple(X.shape)}")
    raw = np.asarray(y, dtype=np.float64).reshape(-1)
    if not np.isin(raw, (0.0, 1.0)).all():
        raise MechtoxError(f"labels must be 0 or 1 (1 = toxic); got {sorted(set(raw.tolist()) - {0.0, 1.0})[:3]}")
    if text_index is None and len(X) != len(raw):
        raise MechtoxError(f"X has {len(X)} rows but there are {len(raw)} labels; give one row per label "
                           "(or text_index, one text number per token row, with pooling 'tokens')")
    if text_index is not None:
        ti = np.asarray(text_index)
        if ti.shape != (len(X),) or (len(ti) and (ti.min() < 0 or ti.max() >= len(raw))):
            raise MechtoxError(f"text_index needs one text number in [0, {len(raw)}) per row of X ({len(X)})")
    if method not in get_args(Method):
        raise MechtoxError(f"unknown probe method {method!r}; use {', '.join(get_args(Method))}")
    if not (C == "cv" or (isinstance(C, numbers.Real) and math.isfinite(C) and C > 0)):
        raise MechtoxError(f"C must be a positive number or 'cv', not {C!r}")
    return raw.astype(int)


def fit_probe(X: Float[Tensor, "n d_model"] | np.ndarray, y: np.ndarray, hook_name: str,
              method: Method = "logreg", test_size: float | int = 0.25, seed: int = 0,
              train_size: int | None = None, C: float | str = 1.0, model_name: str = "", pooling: str = "mean",
              name: str = "", provenance: dict[str, Any] | None = None,
              split: tuple[np.ndarray, np.ndarray] | None = None, text_index: np.ndarray | None = None,
              sample_weight: np.ndarray | None = None) -> Probe:
    """Fit a probe on pooled activations ``X`` with labels ``y``; held-out metrics with a
    stratified, seeded split (accuracy, F1 and AUROC on train and test). ``C="cv"`` chooses the
    regularization by cross-validation on the training texts (:func:`choose_C`; in the metrics).
    With ``text_index`` (``pooling="tokens"``), ``X`` holds every token's activations, ``text_index``
    each token's text, and the probe is fitted on its token logits' log-mean-exp (:func:`fit_token_weights`).
    ``sample_weight``: one non-negative weight per text, used in the fit (and the C search) only; the
    training texts of weight 0 are left out, and the held-out texts are scored unweighted, all of them."""
    Xn = X.numpy() if isinstance(X, Tensor) else np.asarray(X)
    Xn = Xn.astype(np.float64)
    y = _check_fit_inputs(Xn, y, method, C, text_index)
    tr, te = split if split is not None else split_indices(y, test_size, seed, train_size)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if sample_weight.shape != y.shape:
            raise MechtoxError(f"sample_weight needs one weight per text ({len(y)}), not {sample_weight.shape}")
        tr = tr[sample_weight[tr] > 0]
        _check_sample_weight(sample_weight[tr], y[tr])
    fit, logits = _fitter(Xn, y, method, seed, text_index, sample_weight)
    chosen = C == "cv"
    if chosen:
        sw_tr = None if sample_weight is None else sample_weight[tr]
        if method == "diffmean":
            C = 1.0
        elif text_index is None:
            C = choose_C(Xn[tr], y[tr], method, seed, sample_weight=sw_tr)
        else:
            X_tr, text_tr = _token_subset(Xn, np.asarray(text_index), tr)
            C = choose_C(X_tr, y[tr], method, seed, text_index=text_tr, sample_weight=sw_tr)
    w, b = fit(tr, float(C))
    metrics = {f"train_{k}": v for k, v in _metrics(y[tr], logits(tr, w, b)).items()}
    metrics |= {f"test_{k}": v for k, v in _metrics(y[te], logits(te, w, b)).items()}
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
    notes: tuple[str, ...] = ()
    """What the sweep left out of its metrics: held-out or transfer texts that are training texts."""

    @property
    def best(self) -> Probe:
        return self.probes[self.best_hook]

    def summary(self) -> str:
        """One line: how many hooks, the best one and its held-out (and transfer) scores."""
        row = self.table[self.table["hook"] == self.best_hook].iloc[0]
        scores = [f"{name} {row[col]:.3f}" for col, name in (("test_auroc", "test AUROC"), ("test_accuracy", "accuracy"),
                                                              ("transfer_auroc", "transfer AUROC")) if col in row]
        sizes = f"; {int(row['n_train'])} train / {int(row['n_test'])} test" if "n_train" in row else ""
        return f"{len(self.table)} hooks, best {self.best_hook}: {', '.join(scores)}{sizes}"

    def __repr__(self) -> str:
        return f"ProbeSweep({self.summary()})"

    def _repr_html_(self) -> str:
        from mechtox.tables import notebook_html

        return notebook_html(f"ProbeSweep: {self.summary()}", [("one probe per hook", self.table)], max_rows=100)

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


TOKEN_MEMORY_GIB = 8.0
"""The most memory a ``pooling="tokens"`` sweep may plan to hold in token activations."""


def _check_token_memory(n_texts: int, max_length: int, d_model: int, n_hooks: int) -> None:
    gib = n_texts * max_length * d_model * 4 * n_hooks / 2**30
    if gib > TOKEN_MEMORY_GIB:
        raise MechtoxError(f"pooling 'tokens' keeps every token's activations: up to {gib:.1f} GiB for {n_hooks} "
                           f"hooks x {n_texts} texts x {max_length} tokens (the limit is {TOKEN_MEMORY_GIB:g}); "
                           "sweep fewer --layers (e.g. 12,15,18) or fewer texts")


def probe_sweep(model: HookedTransformer, data: LabelledTexts, layers: str | Sequence[int] = "all",
                site: str = "resid_post", include_final: bool = True, method: Method = "logreg",
                pooling: Pooling = "mean", max_length: int = 64, batch_size: int = 16,
                test_size: float | int = 0.25, train_size: int | None = None, seed: int = 0,
                C: float | str = 1.0, progress: bool = True, select_on: str = "test_auroc",
                transfer: LabelledTexts | None = None, together: bool = False,
                sample_weight: np.ndarray | None = None,
                split: tuple[np.ndarray, np.ndarray] | None = None) -> ProbeSweep:
    """Fit a probe at every requested layer (and the final normalised stream) from ONE pass.

    The best hook is chosen by ``select_on`` (held-out AUROC by default; the table shows all).
    With ``transfer`` (labelled texts of another source), the table also has each layer's
    ``transfer_auroc`` there, so ``select_on="transfer_auroc"`` picks the layer that transfers.
    With ``together``, one more probe is fitted on the swept layers' pooled activations side by
    side (its row has layer -1 and the hooks joined with ``+``). ``pooling="tokens"`` fits each
    probe on every token's activations, a text's logit the log-mean-exp of its token logits
    (:func:`fit_token_weights`), and keeps those activations (checked against :data:`TOKEN_MEMORY_GIB`).
    ``sample_weight`` (one per text of ``data``; :func:`cue_weights`, :func:`matching`) weights the
    training texts in every fit, 0 leaving one out; held-out metrics stay unweighted (:func:`fit_probe`).
    ``split``: the ``(train, test)`` indices into ``data``, where the caller has made them already
    (default: :func:`split_indices` with ``test_size``, ``seed`` and ``train_size``). Held-out and
    transfer texts that repeat a training text are left out of the metrics (:func:`without_repeats`;
    :attr:`ProbeSweep.notes` says how many).
    """
    from tqdm.auto import tqdm
    from transformer_lens.utilities import get_act_name

    layer_ids = parse_layers(layers, model.cfg.n_layers)
    hooks = [get_act_name(site, layer) for layer in layer_ids]
    if include_final and model.cfg.normalization_type is not None:
        hooks.append(FINAL_HOOK)
    if pooling == "tokens":
        _check_token_memory(len(data), max_length, model.cfg.d_model, len(hooks) * (2 if together else 1))
    split = split if split is not None else split_indices(data.labels, test_size, seed, train_size)  # before slow work
    split, transfer, n_repeats, n_seen = leave_out_seen(data, split, transfer)
    notes = [f"{n_repeats} held-out texts repeat training texts and are left out of the test metrics"] if n_repeats else []
    if transfer is not None and n_seen:
        notes.append(f"{n_seen} of the {len(transfer) + n_seen} transfer texts ({transfer.source}) are training texts "
                     "and are left out of the transfer AUROC")
    fitted = text_hashes([data.texts[i] for i in split[0]])
    collected = collect_activations(model, data.texts, hooks, pooling, batch_size, max_length, progress)
    acts = dict(collected.acts)
    text_index = collected.token_index[:, 0].numpy() if collected.token_index is not None else None  # per token
    rows, probes = [], {}
    prov = {"data": data.source, "max_length": max_length, "n_texts": len(data),
            "fitted_text_hashes": "".join(fitted)}
    slow = pooling == "tokens" or C == "cv"
    for i, h in enumerate(tqdm(hooks, desc="fitting probes", disable=not (progress and slow), leave=False)):
        p = fit_probe(acts[h], data.labels, h, method, seed=seed, C=C, model_name=model.cfg.model_name,
                      pooling=pooling, provenance=prov, split=split, text_index=text_index,
                      sample_weight=sample_weight)
        probes[h] = p
        layer = layer_ids[i] if i < len(layer_ids) else model.cfg.n_layers
        rows.append({"hook": h, "layer": layer, **p.metrics})
    joint = "+".join(hooks)
    if together and len(hooks) > 1:
        acts[joint] = torch.cat([acts[h] for h in hooks], dim=-1)
        probes[joint] = fit_probe(acts[joint], data.labels, joint, method, seed=seed, C=C,
                                  model_name=model.cfg.model_name, pooling=pooling, provenance=prov, split=split,
                                  text_index=text_index, sample_weight=sample_weight)
        rows.append({"hook": joint, "layer": -1, **probes[joint].metrics})
    if transfer is not None:
        t_collected = collect_activations(model, transfer.texts, hooks, pooling, batch_size, max_length, progress)
        t_acts = dict(t_collected.acts)
        if joint in probes:
            t_acts[joint] = torch.cat([t_acts[h] for h in hooks], dim=-1)
        for row in rows:
            h = row["hook"]
            z = probes[h].logits(t_acts[h].double())
            if t_collected.token_index is not None:  # per token
                z = aggregate_tokens(z, t_collected.token_index[:, 0], len(transfer), TOKEN_AGGREGATE)
            row["transfer_auroc"] = _metrics(transfer.labels, z.numpy())["auroc"]
    table = pd.DataFrame(rows)
    best = str(table.loc[table[select_on].idxmax(), "hook"])
    return ProbeSweep(table, probes, best, tuple(notes))


# ----------------------------------------------------------------------------- transfer


def _resample_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Accuracy, F1 and AUROC of each row of ``[n_boot, n]`` labels ``y`` and scores ``p`` at once
    (AUROC by the Mann-Whitney rank sum, ties at half; NaN for a row with one label only)."""
    from scipy.stats import rankdata  # scikit-learn's own dependency

    pred, pos = p > threshold, y == 1
    tp, fp, fn = (pred & pos).sum(1), (pred & ~pos).sum(1), (~pred & pos).sum(1)
    denom = 2 * tp + fp + fn
    n1 = pos.sum(1).astype(np.float64)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = ((rankdata(p, axis=1) * pos).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return {"accuracy": (pred == pos).mean(1), "f1": np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0),
            "auroc": auroc}


def bootstrap_metrics(labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      threshold: float = 0.5) -> pd.DataFrame:
    """Accuracy, F1 and AUROC of probabilities ``probs`` for binary ``labels``, each with a
    percentile bootstrap 95% interval over ``n_boot`` resamples of the texts (seeded; the same
    resamples for every metric and, with the same seed and size, for every scorer; resamples with
    one label only are left out). The resamples are scored together, in blocks (numpy), not one
    sklearn call each."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y, p = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    if len(y) != len(p) or len(y) < 2 or len(set(y.tolist())) < 2:
        raise MechtoxError("scoring a probe needs texts of both labels")
    value = {"accuracy": accuracy_score(y, p > threshold), "f1": f1_score(y, p > threshold, zero_division=0.0),
             "auroc": roc_auc_score(y, p)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    block = max(1, 2_000_000 // len(y))
    boots: dict[str, list[np.ndarray]] = {k: [] for k in value}
    for start in range(0, n_boot, block):
        yb, pb = y[idx[start:start + block]], p[idx[start:start + block]]
        both = (yb == 1).any(1) & (yb == 0).any(1)
        for k, v in _resample_metrics(yb[both], pb[both], threshold).items():
            boots[k].append(v)
    rows = []
    for name in value:
        b = np.concatenate(boots[name])
        lo, hi = np.percentile(b, [2.5, 97.5]) if len(b) else (np.nan, np.nan)
        rows.append({"metric": name, "value": float(value[name]), "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows)


def reliability_table(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Texts binned by predicted probability (equal-width bins): mean prediction, fraction toxic, count."""
    y, p = np.asarray(labels).astype(float), np.asarray(probs, dtype=np.float64)
    b = np.minimum((p * bins).astype(int), bins - 1)
    rows = [{"bin": k, "lower": k / bins, "upper": (k + 1) / bins, "n": int((b == k).sum()),
             "mean_predicted": float(p[b == k].mean()), "fraction_toxic": float(y[b == k].mean())}
            for k in range(bins) if (b == k).any()]
    return pd.DataFrame(rows)
