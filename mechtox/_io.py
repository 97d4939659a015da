"""Atomic file writes: a reader never sees a half-written file, a crash leaves the old one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Works for files and directories: whatever the body writes at the yielded path replaces
    ``path`` in one ``os.replace`` (directories: the old one is moved aside first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_dir():
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        elif tmp.exists():
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def refuse_to_replace(path: str | os.PathLike[str], ours: Callable[[Path], bool], what: str) -> None:
    """Raise unless ``path`` is free for a folder write: absent, an empty folder, or an earlier
    ``what`` (``ours(path)``), which is replaced. A user's file or other folder is never replaced."""
    from mechtox.errors import MechtoxError

    path = Path(path)
    if path.exists() and not ours(path) and (path.is_file() or any(path.iterdir())):
        raise MechtoxError(f"{path} exists and is not a {what}; refusing to replace it: give a new path "
                           f"(or an earlier {what}, which is replaced)")


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN written as null is the caller's job)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 24) -> str:
    """The SHA-256 of a file's contents, read in chunks (0.12-0.17 s for SmolLM2's 98 MB GGUF file;
    seconds for a file of many GB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


HASH_CHARS = 12
"""Hex characters kept of each text's SHA-1 in a record of the texts a probe or model was fitted on."""


def text_hashes(texts: Sequence[str]) -> list[str]:
    """A short hash of each text (surrounding white space ignored): what a saved probe keeps of the
    texts it was fitted on (``provenance["fitted_text_hashes"]``) and a trained model of its training
    prompts (``trained_prompt_hashes``), concatenated, so that scoring it on other data can say how
    many of those texts it saw in training."""
    return [hashlib.sha1(t.strip().encode("utf-8")).hexdigest()[:HASH_CHARS] for t in texts]


def recorded(record: object) -> set[str]:
    """The hashes in a record of :func:`text_hashes` (concatenated); none for no record."""
    if not isinstance(record, str):
        return set()
    return {record[i: i + HASH_CHARS] for i in range(0, len(record), HASH_CHARS)}


def count_recorded(record: object, texts: Sequence[str]) -> int | None:
    """How many of ``texts`` a record of :func:`text_hashes` (concatenated) holds; None for no record."""
    if not isinstance(record, str):
        return None
    seen = recorded(record)
    return sum(h in seen for h in text_hashes(texts))


def cache_dir() -> Path:
    """Where mechtox caches what it can compute or fetch again (converted weights, Perspective scores):
    ``$MECHTOX_CACHE`` or ``~/.cache/mechtox``."""
    env = os.environ.get("MECHTOX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mechtox"
