"""The workspace: a directory of named models, directions, pair sets and runs.

Layout (default ``./mechtox-runs``, or ``$MECHTOX_HOME``, or ``--workspace``)::

    workspace.json          {"base": "<model spec>"}  (the model called ``base``)
    models/NAME/            mechtox checkpoints (written by ``mechtox train ... --out NAME``)
    directions/NAME/        probes and other directions (``mechtox probe/directions --out NAME``)
    pairs/NAME.jsonl        preference pairs (``mechtox pairs --out NAME``)
    runs/NAME/              outputs of eval / rank / attribute / report

A model spec on the CLI is an alias in ``models/`` (or ``base``), a TransformerLens model
name, the offline default ``smollm2-135m-instruct``, or a path (checkpoint dir or ``.gguf``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mechtox import _io
from mechtox.errors import MechtoxError, ModelNotFoundError, closest

DEFAULT_WORKSPACE = "mechtox-runs"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# Which command creates a model alias, by its conventional name.
_CREATORS = {
    "dpo": "mechtox train dpo --out dpo",
    "sft-probe": "mechtox train sft-probe --out sft-probe",
    "dpo-probe": "mechtox train dpo-probe --out dpo-probe",
    "sap": "mechtox train sap --out sap",
}


def check_name(name: str, what: str = "name") -> str:
    """Validate a workspace name (letters, digits, ``_.-``; no path separators)."""
    if not _NAME_RE.match(name):
        raise MechtoxError(f"invalid {what} {name!r}: use letters, digits, '_', '.', '-' (no '/')")
    return name


def _file_stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class ModelRef:
    """Where a model spec points: how to load it and what to call it."""

    spec: str
    kind: Literal["checkpoint", "gguf", "hf", "hub", "weights", "default", "pretrained", "tiny"]
    location: str
    name: str


class Workspace:
    """A workspace directory. Creating the object touches nothing on disk."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        if root is None:
            root = os.environ.get("MECHTOX_HOME") or DEFAULT_WORKSPACE
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -- paths
    def model_dir(self, name: str) -> Path:
        return self.root / "models" / check_name(name, "model name")

    def direction_dir(self, name: str) -> Path:
        return self.root / "directions" / check_name(name, "direction name")

    def pairs_path(self, name: str) -> Path:
        return self.root / "pairs" / f"{check_name(name, 'pairs name')}.jsonl"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / check_name(name, "run name")

    # -- listings
    def _list(self, sub: str, suffix: str = "") -> list[str]:
        d = self.root / sub
        if not d.is_dir():
            return []
        names = []
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if suffix and p.name.endswith(suffix):
                names.append(p.name[: -len(suffix)])
            elif not suffix and p.is_dir():
                names.append(p.name)
        return names

    def models(self) -> list[str]:
        """Model aliases: ``base`` and every complete checkpoint in ``models/``."""
        from mechtox.model_files import is_checkpoint

        return ["base"] + [n for n in self._list("models") if is_checkpoint(self.root / "models" / n)]

    def directions(self) -> list[str]:
        return [n for n in self._list("directions") if (self.root / "directions" / n / "direction.json").is_file()]

    def pairs(self) -> list[str]:
        return self._list("pairs", ".jsonl")

    def runs(self) -> list[str]:
        return self._list("runs")

    # -- base model
    def _meta(self) -> dict:
        f = self.root / "workspace.json"
        if not f.is_file():
            return {}
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MechtoxError(f"{f} is not valid JSON ({e}); fix or delete it") from e
        if not isinstance(meta, dict) or not isinstance(meta.get("base", ""), str):
            raise MechtoxError(f'{f} should be an object like {{"base": "MODEL"}}, not {json.dumps(meta)[:60]}; fix or '
                               "delete it (mechtox models --set-base MODEL writes it)")
        return meta

    @property
    def base_spec(self) -> str:
        """The spec that ``base`` stands for (default: the offline SmolLM2)."""
        from mechtox.model_files import DEFAULT_MODEL

        return self._meta().get("base", DEFAULT_MODEL)

    def set_base(self, spec: str) -> None:
        """Make ``spec`` the workspace's ``base`` model."""
        if spec == "base":
            raise MechtoxError("base cannot point at itself")
        self.resolve_model(spec)  # an unknown model is an error now, not at the next load
        meta = self._meta()
        meta["base"] = spec
        _io.write_json(self.root / "workspace.json", meta)

    # -- resolution
    def resolve_model(self, spec: str) -> ModelRef:
        """Resolve a model spec, or raise a one-line :class:`ModelNotFoundError` (loads nothing:
        it reads names and files only)."""
        from mechtox import model_files as M

        if spec == "base":
            ref = self.resolve_model(self.base_spec)
            return ModelRef(spec, ref.kind, ref.location, ref.name if ref.kind != "default" else "base")
        if spec == "tiny":
            return ModelRef(spec, "tiny", "", "tiny")
        if spec.startswith("hf:"):
            if not spec[3:]:
                raise ModelNotFoundError("hf: needs a hub id, e.g. hf:someone/gpt2-medium-dpo")
            return ModelRef(spec, "hub", spec[3:], spec[3:].rsplit("/", 1)[-1])
        base, at, weights = spec.rpartition("@")
        if at and base and Path(weights).suffix in M.WEIGHT_SUFFIXES:
            if not Path(weights).expanduser().is_file():
                raise ModelNotFoundError(f"{spec}: no weights file {weights} (BASE@FILE loads a state dict over BASE)")
            inner = self.resolve_model(base)  # the base must resolve too, before anything loads
            return ModelRef(spec, "weights", spec, f"{inner.name}+{Path(weights).stem}")  # location: BASE@FILE
        if _NAME_RE.match(spec) and M.is_checkpoint(self.root / "models" / spec):
            return ModelRef(spec, "checkpoint", str(self.root / "models" / spec), spec)
        if spec.lower() in (M.DEFAULT_MODEL, "smollm2", "smollm2-135m"):
            return ModelRef(spec, "default", "", M.DEFAULT_MODEL)
        p = Path(spec).expanduser()
        if p.exists():
            if p.is_file() and p.suffix == ".gguf":
                return ModelRef(spec, "gguf", str(p), p.stem)
            if M.is_checkpoint(p):
                return ModelRef(spec, "checkpoint", str(p), p.name)
            if M.is_hf_dir(p):
                return ModelRef(spec, "hf", str(p), p.name)
            if p.is_dir() and (p / "config.json").is_file():
                raise ModelNotFoundError(f"{spec} has a config.json but no weights ({', '.join(M.HF_WEIGHT_FILES)}); "
                                         "copy them in, or pass the directory that has them")
            raise ModelNotFoundError(f"{spec} is neither a mechtox checkpoint directory, a transformers directory "
                                     "(config.json + model.safetensors or pytorch_model.bin) nor a .gguf file")
        if M.is_official_name(spec):
            return ModelRef(spec, "pretrained", spec, spec)
        if at and base and Path(weights).expanduser().is_file():
            raise ModelNotFoundError(f"{spec}: BASE@FILE loads a state-dict file ({', '.join(M.WEIGHT_SUFFIXES)}), "
                                     f"and {weights} is none of these; convert it, or rename it if it is one")
        if spec.endswith(".gguf") or spec.startswith(("/", "./", "../", "~")):
            raise ModelNotFoundError(f"{spec}: no such file or directory")
        models = self.models()
        have = ", ".join(models)
        how = _CREATORS.get(spec, f"mechtox train dpo --out {spec}" if _NAME_RE.match(spec) else "")
        near = closest(spec, [*models, *M.known_model_names()])
        hint = f"; did you mean {near!r}?" if near else f"; create it with `{how}`" if how else ""
        if not near and spec.count("/") == 1:
            hint = f"; for a hub model that TransformerLens does not list, pass hf:{spec}"
        raise ModelNotFoundError(
            f"no model {spec!r} in {self.root} (it has: {have}) and it is no TransformerLens "
            f"model name or path{hint}"
        )

    def trained_on(self, spec: str, prompts: list[str]) -> int | None:
        """How many of ``prompts`` are prompts of the data that mechtox trained ``spec`` on (its
        validation share included; the checkpoint records them as :func:`mechtox._io.text_hashes`);
        None for a model without such a record (not trained by mechtox, or by an older version)."""
        from mechtox import model_files as M

        ref = self.resolve_model(spec)
        if ref.kind != "checkpoint":
            return None
        return _io.count_recorded(M.checkpoint_info(ref.location).get("trained_prompt_hashes"), prompts)

    def model_architecture(self, spec: str) -> str | None:
        """The ``transformers`` architecture of ``spec`` (``LlamaForCausalLM``...) as its files say it,
        without loading weights: "" for a model with none (``tiny``), None where only loading would tell
        (official names, hub ids)."""
        from mechtox import model_files as M

        ref = self.resolve_model(spec)
        if ref.kind == "weights":
            return self.model_architecture(ref.location.rpartition("@")[0])
        if ref.kind == "default":
            return "LlamaForCausalLM"  # SmolLM2
        if ref.kind == "tiny":
            return ""
        try:
            if ref.kind == "checkpoint":
                return M.checkpoint_info(ref.location)["cfg"].get("original_architecture") or ""
            if ref.kind == "hf":
                conf = json.loads((Path(ref.location) / "config.json").read_text())
                known = {**M.HF_ARCHITECTURES, **M.TL_ARCHITECTURES}.get(conf.get("model_type"))
                return known or (conf.get("architectures") or [None])[0]  # what loading converts it as
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            return None  # loading says what is wrong with the files
        return None

    def model_identity(self, spec: str) -> str:
        """What ``spec`` names now, as a string that changes when the model does: where it resolves
        (so ``base`` re-pointed by ``models --set-base`` is another model) and, for files on disk,
        the name, size and modification time of each file (a checkpoint saved again at the same
        path is another model). Reads file metadata only."""
        ref = self.resolve_model(spec)
        parts = [ref.kind, ref.location]
        if ref.kind == "weights":
            base, _, weights = ref.location.rpartition("@")
            parts = [ref.kind, self.model_identity(base), _file_stamp(Path(weights).expanduser())]
        elif ref.kind in ("checkpoint", "hf", "gguf", "default"):
            from mechtox import model_files as M

            where = Path(ref.location) if ref.kind != "default" else M.smollm2_gguf_path()  # a reinstalled package
            files = sorted(where.iterdir()) if where.is_dir() else [where]
            parts += [_file_stamp(f) for f in files if f.is_file()]
        return "|".join(parts)

    def load_model(self, spec: str, device: str | None = None, dtype: str = "float32"):
        """Resolve ``spec`` and load it as a ``HookedTransformer`` (refused if a weight is not finite)."""
        from mechtox import models as M

        return M.check_finite(self._load(spec, device, dtype), spec)

    def _load(self, spec: str, device: str | None, dtype: str):
        from mechtox import models as M

        ref = self.resolve_model(spec)
        if ref.kind == "checkpoint":
            model = M.load_checkpoint(ref.location, device=device, dtype=dtype)
        elif ref.kind == "gguf":
            model = M.load_gguf(ref.location, device=device, dtype=dtype)
        elif ref.kind == "hf":
            model = M.load_hf_dir(ref.location, device=device, dtype=dtype)
        elif ref.kind == "hub":
            model = M.load_hub(ref.location, device=device, dtype=dtype)
        elif ref.kind == "weights":
            base_spec, _, weights = ref.location.rpartition("@")
            model = M.apply_weights(self._load(base_spec, device, dtype), Path(weights).expanduser())
        elif ref.kind == "default":
            model = M.load_gguf(None, device=device, dtype=dtype)
        elif ref.kind == "tiny":
            model = M.tiny_model(device=device or "cpu")
        else:
            model = M.load_pretrained(ref.location, device=device, dtype=dtype)
        return model

    def require_direction(self, name: str) -> Path:
        d = self.direction_dir(name)
        if not (d / "direction.json").is_file():
            have = ", ".join(self.directions()) or "none"
            near = closest(name, self.directions())
            how = (f"did you mean {near!r}?" if near else
                   f"create it with `mechtox probe --out {name}` or `mechtox directions`")
            raise MechtoxError(f"no direction or probe {name!r} in {self.root} (it has: {have}); {how}")
        from mechtox.probe import Direction

        Direction.load(d, several_layers_ok=True)  # a damaged one is an error now, before any model loads
        return d

    def require_pairs(self, name: str) -> Path:
        p = Path(name)
        if p.suffix in (".jsonl", ".tsv") and p.is_file():
            return p
        path = self.pairs_path(name)
        if not path.is_file():
            have = ", ".join(self.pairs()) or "none"
            near = closest(name, self.pairs())
            how = (f"did you mean {near!r}?" if near else
                   f"create them with `mechtox pairs --model base --out {name}` or pass a .jsonl/.tsv path")
            raise MechtoxError(f"no pairs {name!r} in {self.root} (it has: {have}); {how}")
        return path
