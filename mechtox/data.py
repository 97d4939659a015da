"""Data: labelled toxicity text, prompt sets, preference pairs, raw text; tokenisation.

Every loader takes a local path (CSV / TSV / JSONL / JSON / plain text), an HF ``datasets``
id (for users with the hub), or ``builtin:NAME`` for the small data set shipped with mechtox
(template-built, enough for the main job on a fresh machine; never for reported results).
Malformed input raises :class:`~mechtox.errors.DataError` naming the file and line.

Tokenisation, padding side and attention masks live in :func:`tokenize` only.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechtox.errors import DataError

BUILTIN = {
    "toxicity": "toxicity_small.csv",
    "prompts": "prompts_small.jsonl",
    "text": "text_small.txt",
}

# Columns of well-known HF data sets, so users need not name them.
_HF_COLUMNS = {
    "google/jigsaw_toxicity_pred": ("comment_text", "toxic"),
    "jigsaw_toxicity_pred": ("comment_text", "toxic"),
    "civil_comments": ("text", "toxicity"),
    "google/civil_comments": ("text", "toxicity"),
}


def builtin_path(name: str) -> Path:
    """Path of a data file shipped in ``mechtox/resources``."""
    if name not in BUILTIN:
        raise DataError(f"no builtin data {name!r}; builtins are {sorted(BUILTIN)}")
    return Path(str(resources.files("mechtox") / "resources" / BUILTIN[name]))


def shared_data_dir() -> Path | None:
    """The real data folder (``$MECHTOX_DATA``, else ``../shared/data`` or ``./shared/data``), if any."""
    env = os.environ.get("MECHTOX_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for c in candidates:
        if (c / "SOURCES.md").is_file() or (c / "jigsaw_balanced.csv").is_file():
            return c
    return None


def shared_file(name: str, fallback: str | None) -> str | None:
    """``name`` in the real data folder (:func:`shared_data_dir`) when it is there, else ``fallback``."""
    d = shared_data_dir()
    return str(d / name) if d is not None and (d / name).is_file() else fallback


def _resolve(source: str | os.PathLike[str]) -> Path | None:
    """A local path for ``source`` or None when it should be an HF id."""
    s = str(source)
    if s.startswith("builtin:"):
        return builtin_path(s.split(":", 1)[1])
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise DataError(f"{p} is a directory; pass a data file")
        return p
    if p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".txt", ".raw") or os.sep in s and not _looks_like_hf_id(s):
        raise DataError(f"no such data file: {p}")
    return None


def _looks_like_hf_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV / TSV / JSONL / JSON file as dicts; errors name file and line."""
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None:
                raise DataError(f"{path} is empty")
            for row in reader:
                rows.append(row)
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: bad JSON line ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
                obj["__line__"] = i
                rows.append(obj)
    elif suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: bad JSON ({e.msg})") from None
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise DataError(f"{path}: expected a JSON list of objects")
        rows = obj
    else:
        raise DataError(f"{path}: unknown format {suffix!r}; use .csv, .tsv, .jsonl or .json")
    if not rows:
        raise DataError(f"{path} has no data rows")
    return rows


# ----------------------------------------------------------------------------- labelled text


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with binary toxicity labels (1 = toxic)."""

    texts: list[str]
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabelledTexts:
        idx = np.asarray(idx)
        return LabelledTexts([self.texts[i] for i in idx], self.labels[idx], self.source)


def _to_label(value: Any, where: str, threshold: float) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        s = str(value).strip().lower()
        if s in ("toxic", "true", "yes"):
            return 1
        if s in ("non-toxic", "nontoxic", "clean", "false", "no"):
            return 0
        raise DataError(f"{where}: label {value!r} is not a number or toxic/non-toxic") from None
    if np.isnan(x):
        raise DataError(f"{where}: label is NaN")
    return int(x >= threshold)


def load_labelled(source: str | os.PathLike[str], text_col: str | None = None, label_col: str | None = None,
                  split: str = "train", limit: int | None = None, threshold: float = 0.5) -> LabelledTexts:
    """Load binary-labelled text from a file or an HF data set.

    Labels may be 0/1, scores in [0, 1] (thresholded at ``threshold``), booleans or the words
    toxic / non-toxic. Both classes must be present.
    """
    path = _resolve(source)
    if path is not None:
        rows = _read_rows(path)
        text_col = text_col or "text"
        label_col = label_col or "label"
        cols = set(rows[0]) - {"__line__"}
        for c in (text_col, label_col):
            if c not in cols:
                raise DataError(f"{path}: no column {c!r} (columns: {', '.join(sorted(cols))}); pass --text-col/--label-col")
        texts, labels = [], []
        for i, r in enumerate(rows):
            line = r.get("__line__", i + 2)
            t = r.get(text_col)
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"{path}:{line}: empty or missing text")
            texts.append(t)
            labels.append(_to_label(r.get(label_col), f"{path}:{line}", threshold))
        src = str(path)
    else:
        texts, labels, src = _load_labelled_hf(str(source), text_col, label_col, split, threshold)
    y = np.asarray(labels, dtype=np.int64)
    if len(texts) == 0:
        raise DataError(f"{src} has no rows")
    if len(set(y.tolist())) < 2:
        raise DataError(f"{src}: only one class ({int(y[0])}) present; a probe needs toxic and non-toxic examples")
    data = LabelledTexts(texts, y, src)
    if limit is not None and limit < len(data):
        data = data.subset(np.arange(limit))
    return data


def _load_labelled_hf(name: str, text_col: str | None, label_col: str | None, split: str,
                      threshold: float) -> tuple[list[str], list[int], str]:
    default = _HF_COLUMNS.get(name, ("text", "label"))
    text_col, label_col = text_col or default[0], label_col or default[1]
    ds = _hf_load(name, split)
    for c in (text_col, label_col):
        if c not in ds.column_names:
            raise DataError(f"HF data set {name}: no column {c!r} (columns: {', '.join(ds.column_names)})")
    texts = list(ds[text_col])
    labels = [_to_label(v, f"{name}[{i}]", threshold) for i, v in enumerate(ds[label_col])]
    return texts, labels, f"hf:{name}:{split}"


def _hf_load(name: str, split: str, config: str | None = None):
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError("loading from the HF hub needs the datasets package") from e
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds
        raise DataError(
            f"{name!r} is no local file and could not be loaded from the HF hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}); pass a local CSV/TSV/JSONL path"
        ) from None


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptSet:
    """Prompts, with RealToxicityPrompts' Perspective scores when the source has them."""

    prompts: list[str]
    source: str
    prompt_toxicity: np.ndarray | None = None
    continuations: list[str] | None = None
    continuation_toxicity: np.ndarray | None = None
    continuation_scores: list[dict[str, float]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def head(self, n: int | None) -> PromptSet:
        if n is None or n >= len(self):
            return self
        return self.subset(range(n))

    def subset(self, idx: Sequence[int], note: str | None = None) -> PromptSet:
        """The prompts at ``idx`` (with their scores); ``note`` is appended to the source."""
        idx = list(idx)

        def pick(x):
            if x is None:
                return None
            return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]

        return PromptSet(pick(self.prompts), f"{self.source} [{note}]" if note else self.source,
                         pick(self.prompt_toxicity), pick(self.continuations), pick(self.continuation_toxicity),
                         pick(self.continuation_scores))


def _score(d: Any, key: str = "toxicity") -> float:
    if isinstance(d, dict) and d.get(key) is not None:
        return float(d[key])
    return float("nan")


def load_prompts(source: str | os.PathLike[str], limit: int | None = None, prompt_key: str = "prompt") -> PromptSet:
    """Load prompts: RealToxicityPrompts JSONL (``{"prompt": {"text", "toxicity", ...},
    "continuation": {...}}``), plain JSONL (``{"prompt": "..."}``), a CSV/TSV with a prompt
    column, a text file (one prompt per line) or an HF id (``allenai/real-toxicity-prompts``).
    """
    path = _resolve(source)
    if path is None:
        ds = _hf_load(str(source), "train")
        rows = [dict(r, __line__=i) for i, r in enumerate(ds.select(range(min(limit or len(ds), len(ds)))))]
        src = f"hf:{source}"
    elif path.suffix.lower() in (".txt", ".raw"):
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"{path} has no prompts")
        return PromptSet(lines, str(path)).head(limit)
    else:
        rows = _read_rows(path)
        src = str(path)
    prompts, ptox, conts, ctox, cscores = [], [], [], [], []
    for r in rows:
        line = r.get("__line__", "?")
        p = r.get(prompt_key)
        if isinstance(p, dict):
            text = p.get("text")
            ptox.append(_score(p))
        else:
            text = p
            ptox.append(float("nan"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{src}:{line}: no prompt text (expected key {prompt_key!r})")
        prompts.append(text)
        c = r.get("continuation")
        if isinstance(c, dict):
            conts.append(c.get("text") or "")
            ctox.append(_score(c))
            cscores.append({k: float(v) for k, v in c.items() if isinstance(v, (int, float)) and v is not None})
        else:
            conts.append(c if isinstance(c, str) else "")
            ctox.append(float("nan"))
            cscores.append({})
    has_ptox = not np.all(np.isnan(ptox))
    has_cont = any(conts)
    ps = PromptSet(
        prompts, src,
        np.asarray(ptox) if has_ptox else None,
        conts if has_cont else None,
        np.asarray(ctox) if has_cont and not np.all(np.isnan(ctox)) else None,
        cscores if has_cont else None,
    )
    return ps.head(limit)


# ----------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PreferencePairs:
    """TRL-format preference pairs: ``prompt``, ``chosen`` (preferred), ``rejected``."""

    prompt: list[str]
    chosen: list[str]
    rejected: list[str]
    source: str
    extra: list[dict[str, Any]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.prompt)

    def to_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i in range(len(self)):
            row = {"prompt": self.prompt[i], "chosen": self.chosen[i], "rejected": self.rejected[i]}
            if self.extra:
                row.update(self.extra[i])
            rows.append(row)
        return rows


def load_pairs(source: str | os.PathLike[str], limit: int | None = None) -> PreferencePairs:
    """Load preference pairs: TRL JSONL (``prompt``/``chosen``/``rejected``) or ParaDetox TSV
    (``toxic``, ``neutral1``...: chosen = first non-empty neutral paraphrase, rejected =
    the toxic sentence, empty prompt)."""
    path = _resolve(source)
    if path is None:
        raise DataError(f"no such pairs file: {source}")
    rows = _read_rows(path)
    prompt, chosen, rejected, extra = [], [], [], []
    cols = set(rows[0])
    if path.suffix.lower() == ".tsv" and "toxic" in cols:
        neutral = sorted(c for c in cols if c.startswith("neutral"))
        if not neutral:
            raise DataError(f"{path}: a ParaDetox TSV needs neutral1.. columns (has {', '.join(sorted(cols))})")
        for r in rows:
            tox = (r.get("toxic") or "").strip()
            good = next((r[c].strip() for c in neutral if r.get(c) and r[c].strip()), "")
            if not tox or not good:
                continue
            prompt.append("")
            chosen.append(" " + good)
            rejected.append(" " + tox)
            extra.append({})
    else:
        for c in ("prompt", "chosen", "rejected"):
            if c not in cols:
                raise DataError(f"{path}: no column {c!r}; pairs need prompt, chosen, rejected (TRL format)")
        for i, r in enumerate(rows):
            line = r.get("__line__", i + 2)
            vals = [r.get("prompt"), r.get("chosen"), r.get("rejected")]
            if not all(isinstance(v, str) for v in vals) or not vals[1] or not vals[2]:
                raise DataError(f"{path}:{line}: prompt/chosen/rejected must be strings and chosen/rejected non-empty")
            prompt.append(vals[0])
            chosen.append(vals[1])
            rejected.append(vals[2])
            extra.append({k: v for k, v in r.items() if k not in ("prompt", "chosen", "rejected", "__line__")})
    if not prompt:
        raise DataError(f"{path} has no usable pairs")
    pairs = PreferencePairs(prompt, chosen, rejected, str(path), extra)
    if limit is not None and limit < len(pairs):
        pairs = PreferencePairs(prompt[:limit], chosen[:limit], rejected[:limit], str(path), extra[:limit])
    return pairs


def save_pairs(pairs: PreferencePairs, path: str | os.PathLike[str]) -> Path:
    """Write pairs as TRL-format JSONL, atomically."""
    from mechtox import _io

    return _io.write_text(path, "".join(json.dumps(r) + "\n" for r in pairs.to_rows()))


# ----------------------------------------------------------------------------- raw text


def load_text(source: str | os.PathLike[str], limit_chars: int | None = None) -> str:
    """Raw text for perplexity: a ``.raw`` / ``.txt`` file or an HF id (``wikitext`` =
    ``wikitext-2-raw-v1`` test split)."""
    path = _resolve(source)
    if path is not None:
        text = path.read_text(encoding="utf-8")
    else:
        name = str(source)
        config = "wikitext-2-raw-v1" if name in ("wikitext", "Salesforce/wikitext") else None
        ds = _hf_load(name, "test", config)
        col = "text" if "text" in ds.column_names else ds.column_names[0]
        text = "\n".join(t for t in ds[col] if t.strip())
    if not text.strip():
        raise DataError(f"{source} has no text")
    return text[:limit_chars] if limit_chars else text


def load_wiki_samples(source: str | os.PathLike[str], limit: int | None = None) -> tuple[list[str], list[str]]:
    """``{"prompt", "gold"}`` JSONL (dpo_toxic's Wikitext-2 F1 samples): prompts and gold continuations."""
    path = _resolve(source)
    if path is None:
        raise DataError(f"no such file: {source}")
    rows = _read_rows(path)
    prompts, golds = [], []
    for r in rows:
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("gold"), str):
            raise DataError(f"{path}:{r.get('__line__', '?')}: needs string fields prompt and gold")
        prompts.append(r["prompt"])
        golds.append(r["gold"])
    return (prompts[:limit], golds[:limit]) if limit else (prompts, golds)


# ----------------------------------------------------------------------------- tokenisation


@dataclass(frozen=True)
class TokenBatch:
    """Token ids with the attention mask (1 = real token). Padding never counts."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    padding_side: str

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(-1)

    def to(self, device: str | torch.device) -> TokenBatch:
        return TokenBatch(self.tokens.to(device), self.attention_mask.to(device), self.padding_side)


def encode(model, texts: Sequence[str], max_length: int | None = None, prepend_bos: bool | None = None,
           truncate: Literal["left", "right"] = "right") -> list[list[int]]:
    """Token ids of each text (no padding), with the model's BOS convention."""
    tok = model.tokenizer
    if tok is None:
        raise DataError("this model has no tokenizer; pass token ids instead of text")
    if prepend_bos is None:
        prepend_bos = bool(model.cfg.default_prepend_bos)
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    out = []
    for x in ids:
        if prepend_bos and tok.bos_token_id is not None:
            x = [tok.bos_token_id] + x
        if max_length is not None and len(x) > max_length:
            x = x[:max_length] if truncate == "right" else x[-max_length:]
        out.append(x)
    return out


def pad(ids: Sequence[Sequence[int]], pad_id: int, padding_side: Literal["left", "right"] = "right") -> TokenBatch:
    """Pad id lists into a :class:`TokenBatch` (empty sequences get one pad token, masked)."""
    n = max(1, max((len(x) for x in ids), default=1))
    tokens = torch.full((len(ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, x in enumerate(ids):
        if not x:
            continue
        t = torch.as_tensor(list(x), dtype=torch.long)
        if padding_side == "right":
            tokens[i, : len(x)], mask[i, : len(x)] = t, 1
        else:
            tokens[i, n - len(x):], mask[i, n - len(x):] = t, 1
    return TokenBatch(tokens, mask, padding_side)


def pad_id(model) -> int:
    tok = model.tokenizer
    if tok is not None and tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return 0


def tokenize(model, texts: Sequence[str], max_length: int | None = 64, padding_side: Literal["left", "right"] = "right",
             prepend_bos: bool | None = None, truncate: Literal["left", "right"] = "right") -> TokenBatch:
    """Tokenise and pad ``texts`` for ``model``, with the attention mask."""
    return pad(encode(model, texts, max_length, prepend_bos, truncate), pad_id(model), padding_side)
