"""Data: labelled toxicity text, prompt sets, preference pairs, raw text; tokenisation.

Every loader takes a local path (CSV / TSV / JSONL / JSON / plain text, each optionally
gzipped), an HF ``datasets`` id (for users with the hub), ``data:NAME`` for a real data file found
by :func:`data_file`, or ``builtin:NAME`` for the template-built toy data (unit tests on the tiny
model only). Without a source, each loader reads its real default (:data:`DEFAULT_FILES`): from
``$MECHTOX_DATA``, else ``shared/data`` beside the project, else the bundle shipped in
``mechtox/resources/data``, and says once, in one line, which folder that is.
Malformed input raises :class:`~mechtox.errors.DataError` naming the file and line.

Tokenisation, padding side and attention masks live in :func:`tokenize` only.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechtox._typecheck import is_whole_number
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
# A labelled file's columns when --text-col / --label-col are not given: the first of these it has.
# They cover this project's files (text, label), Jigsaw's Kaggle CSVs (comment_text with toxic, or
# target in the unintended-bias one), Civil Comments (text, toxicity) and OLID (tweet, subtask_a).
TEXT_COLUMNS = ("text", "comment_text", "tweet", "sentence", "comment")
LABEL_COLUMNS = ("label", "toxic", "toxicity", "target", "subtask_a", "offensive")


def builtin_path(name: str) -> Path:
    """Path of a template-built toy file in ``mechtox/resources`` (tests on the tiny model only)."""
    if name not in BUILTIN:
        raise DataError(f"no builtin data {name!r}; builtins are {sorted(BUILTIN)}")
    return Path(str(resources.files("mechtox") / "resources" / BUILTIN[name]))


# ----------------------------------------------------------------------------- where the real data comes from

#: The real data files every default reads, by role. All of them are shipped (gzipped) in
#: ``mechtox/resources/data``, so the defaults serve on any machine.
DEFAULT_FILES = {
    "labelled": "jigsaw_balanced.csv",
    "prompts": "rtp_challenge.jsonl",
    "nontoxic_prompts": "rtp_nontoxic.jsonl",
    "pairs": "paradetox.tsv",
    "text": "wikitext2_test.raw",
    "wiki_samples": "wiki_samples.jsonl",
}

# The template-built toy files standing in for the real ones where a test asks for them
# (``data_dir="builtin"``): the tiny random model's tokenizer knows only their words.
_TOY = {"jigsaw_balanced.csv": "builtin:toxicity", "rtp_challenge.jsonl": "builtin:prompts",
        "rtp_nontoxic.jsonl": "builtin:prompts", "wikitext2_test.raw": "builtin:text"}
_TOY_LINE = "builtin template-built toy data (for tests on the tiny model; not for results)"


@dataclass(frozen=True)
class DataDir:
    """A folder of real data files and why it was chosen (``origin``)."""

    path: Path
    origin: str

    def describe(self) -> str:
        return f"{self.path} ({self.origin})"


def bundled_data_dir() -> Path:
    """The real-data bundle shipped inside the package (see its ``SOURCES.md``)."""
    return Path(str(resources.files("mechtox") / "resources" / "data"))


def _beside_project() -> list[Path]:
    """``shared/data`` beside (or inside) the source checkout the package is imported from.

    Found from the package's own location, never from the working directory, so a notebook in
    ``docs/`` and a shell in the repository see the same data. An installed wheel has no checkout.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        return []
    return [root.parent / "shared" / "data", root / "shared" / "data"]


def data_dirs(override: str | os.PathLike[str] | None = None) -> list[DataDir]:
    """The folders searched for a real data file, first first.

    ``override`` (a flag such as ``mechtox run --data-dir``), then ``$MECHTOX_DATA``, then
    ``shared/data`` beside the project, then the bundle shipped with mechtox.
    """
    out = []
    for value, origin in ((override, "--data-dir"), (os.environ.get("MECHTOX_DATA") or None, "$MECHTOX_DATA")):
        if value is None:
            continue
        p = Path(value).expanduser()
        if not p.is_dir():
            raise DataError(f"{origin} {p} is not a folder; point it at a folder of data files, or unset it to use "
                            f"the data shipped with mechtox ({bundled_data_dir()})")
        out.append(DataDir(p, origin))
    out += [DataDir(p, "shared/data beside the project") for p in _beside_project() if p.is_dir()]
    out.append(DataDir(bundled_data_dir(), "the real-data bundle shipped with mechtox"))
    return out


_ANNOUNCED: set[str] = set()


def announce(what: str) -> None:
    """Say once per process, in one line, which data is used."""
    if what not in _ANNOUNCED:
        _ANNOUNCED.add(what)
        print(f"data: {what}", flush=True)


def find_data_file(name: str, override: str | os.PathLike[str] | None = None) -> tuple[Path, DataDir]:
    """``name`` (e.g. ``jigsaw_balanced.csv``; also found gzipped) in the first folder of
    :func:`data_dirs` that has it."""
    dirs = data_dirs(override)
    for d in dirs:
        for candidate in (d.path / name, d.path / f"{name}.gz"):
            if candidate.is_file():
                return candidate, d
    raise DataError(f"no data file {name!r} in {', '.join(d.describe() for d in dirs)}; pass its path, or put it "
                    "in a folder named by $MECHTOX_DATA")


def data_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The path of the real data file ``name`` (see :func:`data_dirs`), announced once.

    ``data_dir="builtin"`` gives the template-built toy file instead (tests on the tiny model).
    """
    if str(data_dir) == "builtin":
        if name not in _TOY:
            raise DataError(f"the builtin toy data has no stand-in for {name!r}")
        announce(_TOY_LINE)
        return _TOY[name]
    path, d = find_data_file(name, data_dir)
    announce(d.describe())
    return str(path)


def _default(role: str, source: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    return data_file(DEFAULT_FILES[role]) if source is None else source


def _resolve(source: str | os.PathLike[str]) -> Path | None:
    """A local path for ``source`` or None when it should be an HF id."""
    s = str(source)
    if not s.strip():
        raise DataError("the data source is empty; leave the flag out (None in Python) for the default file, or pass a "
                        "path, data:NAME or an HF id")
    if s.startswith("builtin:"):
        announce(_TOY_LINE)
        return builtin_path(s.split(":", 1)[1])
    if s.startswith("data:"):
        return Path(data_file(s.split(":", 1)[1]))
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise DataError(f"{p} is a directory; pass a data file")
        return p
    if _format(p) in (".csv", ".tsv", ".jsonl", ".json", ".txt", ".raw") or os.sep in s and not _looks_like_hf_id(s):
        raise DataError(f"no such data file: {p}{_data_hint(s)}")
    return None


def _data_hint(name: str) -> str:
    """How to name ``name`` when it is not a path here but a file of the data folders."""
    if os.sep in name:
        return ""
    try:
        find_data_file(name)
    except DataError:
        return ""
    return f"; for the file of that name in the data folder, pass data:{name}"


def _format(path: Path) -> str:
    """The data format of ``path`` from its suffix, looking through a ``.gz``."""
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _unreadable(path: Path, e: Exception) -> DataError:
    where = f" at byte {e.start}" if isinstance(e, UnicodeDecodeError) else ""
    return DataError(f"{path} is not readable UTF-8 text ({type(e).__name__}{where}); save it as UTF-8, or pass a "
                     "CSV/TSV/JSONL/JSON or text file")


def _encoding(head: bytes) -> str:
    """UTF-16 where the bytes begin with its byte-order mark (a spreadsheet's "Unicode text"), else
    UTF-8 with an optional mark (Excel's "CSV UTF-8"; the mark is not text)."""
    return "utf-16" if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"


def _read_text(path: Path) -> str:
    """The whole text of a (possibly gzipped) UTF-8 or UTF-16 (with its mark) file; binary or other
    input is a DataError."""
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode(_encoding(raw))
    except (UnicodeDecodeError, OSError, EOFError, gzip.BadGzipFile) as e:
        raise _unreadable(path, e) from None


def _first_line(path: Path) -> str:
    """The first non-blank line of a (possibly gzipped) UTF-8 or UTF-16 file, read without the rest."""
    try:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(path, "rb") as f:
            encoding = _encoding(f.read(2))
        with opener(path, "rt", encoding=encoding) as f:
            return next((ln for ln in f if ln.strip()), "")
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise _unreadable(path, e) from None


def _looks_like_hf_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _delimiter(text: str, suffix: str) -> str:
    """Tab for .tsv; for .csv a comma, or, when the header has no comma, the semicolon of a spreadsheet
    saved in a locale that writes decimal commas, or the tab of a tab-separated file named .csv."""
    if suffix == ".tsv":
        return "\t"
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return ";" if ";" in header else "\t" if "\t" in header else ","


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV / TSV / JSONL / JSON file as dicts; errors name file and line."""
    suffix = _format(path)
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise DataError(f"{path}: unknown format {suffix!r}; use .csv, .tsv, .jsonl or .json (optionally .gz)")
    text = _read_text(path)
    rows: list[dict[str, Any]] = []
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a text past 131,072 characters is no error
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(text, suffix))
            if reader.fieldnames is None:
                raise DataError(f"{path} is empty")
            reader.fieldnames = [f.strip() for f in reader.fieldnames]  # " text , label " as a spreadsheet may write
            twice = sorted({f for f in reader.fieldnames if f and reader.fieldnames.count(f) > 1})
            if twice:
                raise DataError(f"{path}: the header names {', '.join(map(repr, twice))} more than once; rename the "
                                "columns so that each is named once")
            for row in reader:
                if None in row:  # more fields than the header: an unquoted delimiter inside a text
                    name = {",": "comma", ";": "semicolon", "\t": "tab"}[reader.reader.dialect.delimiter]
                    raise DataError(f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields but "
                                    f"the header has {len(reader.fieldnames)}; put a text that contains a {name} "
                                    f"in double quotes")
                rows.append(row)
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed {suffix[1:].upper()} ({e})") from None
    elif suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
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
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: bad JSON ({e.msg})") from None
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise DataError(f"{path}: expected a JSON list of objects")
        rows = obj
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

    def __post_init__(self) -> None:
        """Built by hand (in a notebook) as well as by the loaders: one 0/1 label per text, checked here
        rather than as a misaligned fit later. Labels are stored as an int array."""
        if isinstance(self.texts, str) or not all(isinstance(t, str) for t in self.texts):
            raise DataError("LabelledTexts needs a list of strings as texts")
        try:
            raw = np.asarray(self.labels, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError("LabelledTexts labels must be numbers 0 or 1") from None
        if len(raw) != len(self.texts):
            raise DataError(f"LabelledTexts has {len(self.texts)} texts but {len(raw)} labels; give one label per text")
        bad = np.flatnonzero(~np.isin(raw, (0.0, 1.0)))
        if len(bad):
            raise DataError(f"LabelledTexts labels must be 0 or 1; row {int(bad[0])} has {float(raw[bad[0]])!r} "
                            "(scores: threshold them, as load_labelled(threshold=...) does)")
        object.__setattr__(self, "labels", raw.astype(np.int64))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabelledTexts:
        """The texts at positions ``idx`` (or where a boolean mask of one entry per text is true)."""
        idx = positions(idx, len(self))
        return LabelledTexts([self.texts[i] for i in idx], self.labels[idx], self.source)

    def __repr__(self) -> str:
        return f"LabelledTexts({len(self):,} texts, {int(np.sum(self.labels)):,} toxic, from {self.source})"


def positions(idx: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Whole-number positions into a sequence of ``n`` (negative ones count from the end, as in
    Python), or a boolean mask of ``n`` entries; anything else is a one-line error (a mask had
    been read as the positions 0 and 1)."""
    a = np.asarray(idx.cpu() if hasattr(idx, "cpu") else list(idx) if isinstance(idx, range) else idx)
    if a.dtype == bool:
        if a.shape != (n,):
            raise DataError(f"a boolean mask needs one entry per item ({n}), not shape {a.shape}")
        return np.flatnonzero(a)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(f"give positions as whole numbers or a boolean mask, not {str(idx)[:40]!r}")
    if a.min() < -n or a.max() >= n:
        raise DataError(f"position {int(a.min() if a.min() < -n else a.max())} is out of range for {n} items")
    return a % n if n else a


def _to_label(value: Any, where: str, threshold: float) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        s = str(value).strip().lower()
        if s in ("toxic", "true", "yes", "offensive", "off"):
            return 1
        if s in ("non-toxic", "nontoxic", "clean", "false", "no", "not offensive", "not"):  # OLID: OFF / NOT
            return 0
        raise DataError(f"{where}: label {value!r} is not a number, toxic/non-toxic or OFF/NOT") from None
    if np.isnan(x):
        raise DataError(f"{where}: label is NaN")
    if not 0 <= x <= 1:
        raise DataError(f"{where}: label {value!r} is outside [0, 1]; labels are 0/1 or scores in [0, 1] "
                        "(map a multi-class label to toxic / non-toxic first)")
    return int(x >= threshold)


def _check_limit(limit: int | None, name: str = "limit") -> None:
    """``limit`` is None (everything) or a whole number of at least 1 (0 read as 'all' in some
    loaders and as 'nothing' in others; a negative one cut from the end)."""
    if limit is not None and not (is_whole_number(limit) and limit >= 1):
        raise DataError(f"{name} must be a whole number of at least 1, or None for everything; not {limit!r}")


def load_labelled(source: str | os.PathLike[str] | None = None, text_col: str | None = None, label_col: str | None = None,
                  split: str = "train", limit: int | None = None, threshold: float = 0.5,
                  both_labels: bool = True) -> LabelledTexts:
    """Load binary-labelled text from a file or an HF data set.

    Labels may be 0/1, scores in [0, 1] (thresholded at ``threshold``), booleans or the words
    toxic / non-toxic (or OLID's OFF / NOT). A file's columns are ``text_col`` and ``label_col``, or
    else the first of :data:`TEXT_COLUMNS` and :data:`LABEL_COLUMNS` it has (so Jigsaw's, OLID's and
    Civil Comments' own files read as they are). Both classes must be present, unless ``both_labels``
    is False (toxic text alone, say). Without ``source``: the Jigsaw slice
    (``jigsaw_balanced.csv``, found as :func:`data_file` says).
    """
    _check_limit(limit, "limit")
    source = _default("labelled", source)
    path = _resolve(source)
    if path is not None:
        rows = _read_rows(path)
        cols = set(rows[0]) - {"__line__"}
        text_col, label_col = (_column(path, cols, given, known, flag) for given, known, flag in
                               ((text_col, TEXT_COLUMNS, "--text-col"), (label_col, LABEL_COLUMNS, "--label-col")))
        texts, labels = [], []
        for i, r in enumerate(rows):
            line = r.get("__line__", i + 2)
            t = r.get(text_col)
            if t is not None and not isinstance(t, str):
                raise DataError(f"{path}:{line}: the text is a {type(t).__name__} ({json.dumps(t)[:40]}), not a string")
            if not t or not t.strip():
                raise DataError(f"{path}:{line}: empty or missing text")
            texts.append(t)
            labels.append(_to_label(r.get(label_col), f"{path}:{line}", threshold))
        src = str(path) if (text_col, label_col) == ("text", "label") else f"{path} ({text_col} / {label_col})"
    else:
        texts, labels, src = _load_labelled_hf(str(source), text_col, label_col, split, threshold)
    y = np.asarray(labels, dtype=np.int64)
    if len(texts) == 0:
        raise DataError(f"{src} has no rows")
    if both_labels and len(set(y.tolist())) < 2:
        raise DataError(f"{src}: only one class ({int(y[0])}) present; a probe needs toxic and non-toxic examples")
    data = LabelledTexts(texts, y, src)
    if limit is not None and limit < len(data):
        data = data.subset(np.arange(limit))
    return data


def _column(path: Path, cols: set[str], given: str | None, known: tuple[str, ...], flag: str) -> str:
    """The column ``given``, or else the first of ``known`` the file has."""
    if given is None:
        found = [c for c in known if c in cols]
        if found:
            return found[0]
    if given is None or given not in cols:
        asked = repr(given) if given is not None else "named " + " / ".join(known)
        raise DataError(f"{path}: no column {asked} (columns: {', '.join(sorted(cols))}; the first row is the "
                        f"header); pass {flag}")
    return given


def _load_labelled_hf(name: str, text_col: str | None, label_col: str | None, split: str,
                      threshold: float) -> tuple[list[str], list[int], str]:
    default = _HF_COLUMNS.get(name, ("text", "label"))
    text_col, label_col = text_col or default[0], label_col or default[1]
    ds = _hf_load(name, split, role="labelled")
    for c in (text_col, label_col):
        if c not in ds.column_names:
            raise DataError(f"HF data set {name}: no column {c!r} (columns: {', '.join(ds.column_names)})")
    texts = list(ds[text_col])
    labels = [_to_label(v, f"{name}[{i}]", threshold) for i, v in enumerate(ds[label_col])]
    return texts, labels, f"hf:{name}:{split}"


def _hub_reachable() -> bool:
    """Whether the HF hub answers (a 3 s TCP check; False when ``HF_HUB_OFFLINE`` is set)."""
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return False
    url = urlparse(hub.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError:
        return False
    return True


def _hf_load(name: str, split: str, config: str | None = None, role: str = "labelled"):
    """``datasets.load_dataset``; with no hub in reach, from the local HF cache only (no retries)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError("loading from the HF hub needs the datasets package") from e
    online = _hub_reachable()
    hint = (f"pass a local CSV/TSV/JSONL path, or leave the flag out for the default {DEFAULT_FILES[role]} "
            "(shipped with mechtox)")
    try:
        if online:
            return datasets.load_dataset(name, config, split=split)
        with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True):
            return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds
        if not online:
            raise DataError(f"{name!r} is no local file, the HF hub cannot be reached (offline) and it is not in "
                            f"the local HF cache; {hint}") from None
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise DataError(f"{name!r} is no local file and could not be loaded from the HF hub "
                        f"({type(e).__name__}: {first}); {hint}") from None


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

    def __repr__(self) -> str:
        from mechtox.tables import shorten

        scored = ", with Perspective scores" if self.prompt_toxicity is not None else ""
        first = f"; first: {shorten(self.prompts[0], 50)!r}" if self.prompts else ""
        return f"PromptSet({len(self):,} prompts from {self.source}{scored}{first})"

    def head(self, n: int | None) -> PromptSet:
        if n is None or n >= len(self):
            return self
        return self.subset(range(n))

    def subset(self, idx: Sequence[int], note: str | None = None) -> PromptSet:
        """The prompts at ``idx`` (or where a boolean mask is true), with their scores; ``note`` is
        appended to the source."""
        idx = positions(idx, len(self)).tolist()

        def pick(x):
            if x is None:
                return None
            return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]

        return PromptSet(pick(self.prompts), f"{self.source} [{note}]" if note else self.source,
                         pick(self.prompt_toxicity), pick(self.continuations), pick(self.continuation_toxicity),
                         pick(self.continuation_scores))


def _score(d: Any, where: str, key: str = "toxicity") -> float:
    """The score ``d[key]`` in [0, 1] (NaN where there is none); another value is a one-line error."""
    if not (isinstance(d, dict) and d.get(key) is not None):
        return float("nan")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise DataError(f"{where}: {key} {v!r} is not a score in [0, 1]")
    return float(v)


def load_prompts(source: str | os.PathLike[str] | None = None, limit: int | None = None, prompt_key: str = "prompt") -> PromptSet:
    """Load prompts: RealToxicityPrompts JSONL (``{"prompt": {"text", "toxicity", ...},
    "continuation": {...}}``), plain JSONL (``{"prompt": "..."}``), a CSV/TSV with a prompt
    column, a text file (one prompt per line) or an HF id (``allenai/real-toxicity-prompts``).
    Without ``source``: the RealToxicityPrompts challenge prompts (``rtp_challenge.jsonl``).
    """
    _check_limit(limit, "limit")
    source = _default("prompts", source)
    path = _resolve(source)
    if path is None:
        ds = _hf_load(str(source), "train", role="prompts")
        rows = [dict(r, __line__=i) for i, r in enumerate(ds.select(range(min(limit or len(ds), len(ds)))))]
        src = f"hf:{source}"
    elif _format(path) in (".txt", ".raw"):
        lines = [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()]
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
            ptox.append(_score(p, f"{src}:{line}: prompt"))
        else:
            text = p
            ptox.append(float("nan"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{src}:{line}: no prompt text (expected key {prompt_key!r})")
        prompts.append(text)
        c = r.get("continuation")
        if isinstance(c, dict):
            conts.append(c.get("text") or "")
            ctox.append(_score(c, f"{src}:{line}: continuation"))
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

    def __post_init__(self) -> None:
        """Pairs built by hand are checked as loaded ones are: three lists of strings, one entry per pair."""
        cols = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        for name, col in cols.items():
            if isinstance(col, str) or not all(isinstance(t, str) for t in col):
                raise DataError(f"PreferencePairs needs {name} as a list of strings")
        sizes = {name: len(col) for name, col in cols.items()}
        if len(set(sizes.values())) > 1 or (self.extra is not None and len(self.extra) != len(self.prompt)):
            raise DataError("PreferencePairs needs one prompt, chosen and rejected text per pair; got "
                            + ", ".join(f"{k} {name}" for name, k in sizes.items())
                            + ("" if self.extra is None else f", {len(self.extra)} extra"))

    def __len__(self) -> int:
        return len(self.prompt)

    def __repr__(self) -> str:
        from mechtox.tables import shorten

        first = (f"; first: {shorten(self.prompt[0], 30)!r} -> chosen {shorten(self.chosen[0], 30)!r}, rejected "
                 f"{shorten(self.rejected[0], 30)!r}") if len(self) else ""
        return f"PreferencePairs({len(self):,} pair{'' if len(self) == 1 else 's'} from {self.source}{first})"

    def to_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i in range(len(self)):
            row = {"prompt": self.prompt[i], "chosen": self.chosen[i], "rejected": self.rejected[i]}
            if self.extra:
                row.update(self.extra[i])
            rows.append(row)
        return rows


_HF_PAIR_COLUMNS = {"en_toxic_comment": "toxic", "en_neutral_comment": "neutral1"}  # s-nlp/paradetox on the hub


def load_pairs(source: str | os.PathLike[str] | None = None, limit: int | None = None) -> PreferencePairs:
    """Load preference pairs: TRL JSONL (``prompt``/``chosen``/``rejected``), ParaDetox TSV
    (``toxic``, ``neutral1``...: chosen = first non-empty neutral paraphrase, rejected =
    the toxic sentence, empty prompt) or an HF id with either layout (``s-nlp/paradetox``).
    Without ``source``: ParaDetox (``paradetox.tsv``)."""
    _check_limit(limit, "limit")
    source = _default("pairs", source)
    path = _resolve(source)
    if path is None:
        ds = _hf_load(str(source), "train", role="pairs")
        rows = [{_HF_PAIR_COLUMNS.get(k, k): v for k, v in r.items()} | {"__line__": i} for i, r in enumerate(ds)]
        if not rows:
            raise DataError(f"HF data set {source} has no rows")
        src, paradetox = f"hf:{source}", "toxic" in rows[0] and "prompt" not in rows[0]
    else:
        rows = _read_rows(path)
        src, paradetox = str(path), _format(path) == ".tsv" and "toxic" in rows[0]
    prompt, chosen, rejected, extra = [], [], [], []
    cols = set(rows[0]) - {"__line__"}
    if paradetox:
        neutral = sorted(c for c in cols if c.startswith("neutral"))
        if not neutral:
            raise DataError(f"{src}: a ParaDetox TSV needs neutral1.. columns (has {', '.join(sorted(cols))})")
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
                raise DataError(f"{src}: no column {c!r} (columns: {', '.join(sorted(cols))}); pairs need "
                                "prompt, chosen, rejected (TRL format) or a ParaDetox layout")
        for i, r in enumerate(rows):
            line = r.get("__line__", i + 2)
            vals = [r.get("prompt"), r.get("chosen"), r.get("rejected")]
            if not all(isinstance(v, str) for v in vals) or not vals[1] or not vals[2]:
                raise DataError(f"{src}:{line}: prompt/chosen/rejected must be strings and chosen/rejected non-empty")
            prompt.append(vals[0])
            chosen.append(vals[1])
            rejected.append(vals[2])
            extra.append({k: v for k, v in r.items() if k not in ("prompt", "chosen", "rejected", "__line__")})
    if not prompt:
        raise DataError(f"{src} has no usable pairs")
    pairs = PreferencePairs(prompt, chosen, rejected, src, extra)
    if limit is not None and limit < len(pairs):
        pairs = PreferencePairs(prompt[:limit], chosen[:limit], rejected[:limit], src, extra[:limit])
    return pairs


def save_pairs(pairs: PreferencePairs, path: str | os.PathLike[str]) -> Path:
    """Write pairs as TRL-format JSONL, atomically."""
    from mechtox import _io

    return _io.write_text(path, "".join(json.dumps(r) + "\n" for r in pairs.to_rows()))


# ----------------------------------------------------------------------------- raw text


def load_text(source: str | os.PathLike[str] | None = None, limit_chars: int | None = None) -> str:
    """Raw text for perplexity: a ``.raw`` / ``.txt`` file, the text column of a CSV / TSV / JSONL /
    JSON file (its rows joined by blank lines; the first of :data:`TEXT_COLUMNS` it has), or an HF id
    (``wikitext`` = ``wikitext-2-raw-v1`` test split). Without ``source``: the Wikitext-2 test split
    (``wikitext2_test.raw``)."""
    _check_limit(limit_chars, "limit_chars")
    source = _default("text", source)
    path = _resolve(source)
    if path is not None and _format(path) in (".csv", ".tsv", ".jsonl", ".json"):
        rows = _read_rows(path)  # a table: its texts, not its syntax (perplexity of JSON punctuation before)
        col = _column(path, set(rows[0]) - {"__line__"}, None, TEXT_COLUMNS, "a .txt/.raw file")
        text = "\n\n".join(r[col] for r in rows if isinstance(r.get(col), str) and r[col].strip())
    elif path is not None:
        text = _read_text(path)
    else:
        name = str(source)
        config = "wikitext-2-raw-v1" if name in ("wikitext", "Salesforce/wikitext") else None
        ds = _hf_load(name, "test", config, role="text")
        col = "text" if "text" in ds.column_names else ds.column_names[0]
        text = "\n".join(t for t in ds[col] if t.strip())
    if not text.strip():
        raise DataError(f"{source} has no text")
    return text[:limit_chars] if limit_chars else text


def is_wiki_samples(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is a local ``{"prompt", "gold"}`` JSONL file (possibly gzipped): its first row
    has a ``gold`` field (a file meant as one, with a bad value, is then refused for that value)."""
    try:
        path = _resolve(source)
    except DataError:
        return False
    if path is None or _format(path) != ".jsonl":
        return False
    try:
        row = json.loads(_first_line(path))
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "gold" in row  # its values are checked by load_wiki_samples


def load_wiki_samples(source: str | os.PathLike[str] | None = None,
                      limit: int | None = None) -> tuple[list[str], list[str]]:
    """``{"prompt", "gold"}`` JSONL (dpo_toxic's Wikitext-2 F1 samples): prompts and gold
    continuations. Without ``source``: ``wiki_samples.jsonl``."""
    _check_limit(limit, "limit")
    source = _default("wiki_samples", source)
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


def one_or_many(texts: str | Sequence[str]) -> list[str]:
    """Texts as a list: one string is one text (as in TransformerLens' ``to_tokens``), not a
    sequence of one-character texts."""
    return [texts] if isinstance(texts, str) else list(texts)


def encode(model, texts: Sequence[str], max_length: int | None = None, prepend_bos: bool | None = None,
           truncate: Literal["left", "right"] = "right") -> list[list[int]]:
    """Token ids of each text (no padding), with the model's BOS convention. One string is one text
    (as in TransformerLens' ``to_tokens``), not a sequence of characters."""
    tok = model.tokenizer
    if tok is None:
        raise DataError("this model has no tokenizer; pass token ids instead of text")
    texts = one_or_many(texts)
    if not texts:
        raise DataError("no texts to tokenize")
    if not all(isinstance(t, str) for t in texts):
        bad = next(t for t in texts if not isinstance(t, str))
        raise DataError(f"texts must be strings; got a {type(bad).__name__} ({str(bad)[:40]!r})")
    if prepend_bos is None:
        prepend_bos = bool(model.cfg.default_prepend_bos)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
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


def token_ids(model, data, max_length: int | None = None, truncate: Literal["left", "right"] = "right") -> list[list[int]]:
    """Each sequence's token ids, cut to ``max_length`` (keeping the first or, with ``truncate="left"``,
    the last ones), from texts (:func:`encode`) or sequences of ids (lists, arrays, a 2-d tensor);
    anything else, an id outside the model's vocabulary or a fractional one is a one-line error."""
    if isinstance(data, str) or any(isinstance(x, str) for x in data):
        return encode(model, data, max_length, truncate=truncate)  # every item a string, or a one-line error
    ids = []
    for i, x in enumerate(data):
        row = np.asarray(x.cpu() if hasattr(x, "cpu") else x if isinstance(x, Sequence | np.ndarray) else None)
        if row.ndim != 1 or (row.size and row.dtype.kind not in "iu"):
            raise DataError(f"data item {i} is {type(x).__name__} {str(x)[:40]!r}: give texts or sequences of "
                            "whole token ids")
        if row.size and not (0 <= row.min() and row.max() < model.cfg.d_vocab):
            raise DataError(f"data item {i} has token id {int(row.min() if row.min() < 0 else row.max())}, outside "
                            f"the model's vocabulary (0-{model.cfg.d_vocab - 1})")
        if max_length is not None and len(row) > max_length:
            row = row[:max_length] if truncate == "right" else row[-max_length:]
        ids.append(row.tolist())
    return ids


def tokenize(model, texts: Sequence[str], max_length: int | None = 64, padding_side: Literal["left", "right"] = "right",
             prepend_bos: bool | None = None, truncate: Literal["left", "right"] = "right") -> TokenBatch:
    """Tokenise and pad ``texts`` for ``model``, with the attention mask."""
    return pad(encode(model, texts, max_length, prepend_bos, truncate), pad_id(model), padding_side)
