"""What every job shares: its options declared once on a frozen config dataclass, the common
context (workspace, device, dtype, seed, quiet) and small parsers that fail as one-line errors.

A config field made with :func:`option` carries its command-line flags and help text; the CLI
builds each command's arguments from its config class, so defaults and help live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechtox import _typecheck
from mechtox.errors import MechtoxError

# Where a data flag's default comes from (mechtox.data.data_dirs).
DEFAULT_DATA = ("(default: {} from $MECHTOX_DATA, else shared/data beside the project, else the real-data bundle "
                "shipped with mechtox)")

MODEL_HELP = "the model (default: base, the workspace's base model; `mechtox --help` lists every form of MODEL)"


def option(default: Any = None, help: str | None = None, *, flags: Sequence[str] | None = None,
           type: Any = None, choices: Sequence[str] | None = None, metavar: str | None = None,
           required: bool = False, positional: bool = False, append: bool = False) -> Any:
    """A config field and its command-line option (``--name-with-dashes`` unless ``flags``)."""
    meta = dict(help=help, flags=tuple(flags) if flags else None, type=type, choices=choices, metavar=metavar,
                required=required, positional=positional, append=append)
    return dataclasses.field(default=default, metadata={"cli": meta})


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """The base of every command's config (and of :class:`Context`): the fields are checked against
    their annotations when a config is made (a one-line error naming the option), then the
    subclass's :meth:`check` checks the values. ``ProbeConfig(n_test="500")`` from Python is refused
    there, not a TypeError inside a check or a job."""

    def __post_init__(self) -> None:
        check_types(self)
        self.check()

    def check(self) -> None:
        """The subclass's checks of the values (all types already hold)."""

    def model_specs(self) -> list[str]:
        """The model specs the job will load (resolved by the CLI before any data is read)."""
        return [s for s in (getattr(self, a, None) for a in ("model", "before", "after")) if s]


def check_types(cfg: Any) -> None:
    """:func:`mechtox._typecheck.check_types`, naming each option's flag."""
    def where(f: dataclasses.Field) -> str:
        meta = f.metadata.get("cli")
        return f" ({(meta['flags'] or (flag(f.name),))[0]})" if meta and not meta["positional"] else ""

    _typecheck.check_types(cfg, where)


def _default_said(help: str, default: Any) -> str:
    """`` (default X)`` for a help text that does not say its default already (none for flags and
    options without a default)."""
    if default is None or isinstance(default, bool) or "default" in help or default == "":
        return ""
    return f" (default {default})".replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, cls: type, absent_unless_given: bool = False) -> None:
    """Add an argparse option for every :func:`option` field of the dataclass ``cls``, in order.
    ``absent_unless_given``: an option left out sets nothing (the config's default applies), so the
    same option can be given before a subcommand or after it."""
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("cli")
        if meta is None:
            continue
        kw: dict[str, Any] = {}
        if meta["help"] is not None:
            kw["help"] = meta["help"] + _default_said(meta["help"], f.default)
        if meta["positional"]:
            parser.add_argument(f.name, choices=meta["choices"], **kw)
            continue
        flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
        if flags[0].lstrip("-").replace("-", "_") != f.name:
            kw["dest"] = f.name
        if absent_unless_given:
            kw["default"] = argparse.SUPPRESS
        if isinstance(f.default, bool):
            parser.add_argument(*flags, action="store_true", **kw)
            continue
        typ = meta["type"] or (type(f.default) if isinstance(f.default, (int, float)) else None)
        if typ is not None:
            kw["type"] = typ
        for k in ("choices", "metavar"):
            if meta[k] is not None:
                kw[k] = meta[k]
        if meta["required"]:
            kw["required"] = True
        elif not absent_unless_given:
            kw["default"] = f.default
        if meta["append"]:
            kw["action"] = "append"
        parser.add_argument(*flags, **kw)


def command_line(command: str, config: Any, ctx: Any = None, **extra: Any) -> str:
    """The ``mechtox`` command that makes ``config`` (and ``ctx``): the positional fields, then every
    option whose value differs from its default, then ``extra`` (``resume=True`` -> ``--resume``);
    quoted for a POSIX shell. Fields that are not options are left out."""
    import shlex

    argv = ["mechtox", command]
    values = [(f, getattr(config, f.name)) for f in dataclasses.fields(config)]
    if ctx is not None:
        values += [(f, getattr(ctx, f.name)) for f in dataclasses.fields(ctx)]
    argv += [str(v) for f, v in values if f.metadata.get("cli", {}).get("positional")]
    for f, value in values:
        meta = f.metadata.get("cli")
        if meta is None or meta["positional"] or value == f.default:
            continue
        flag_ = (meta["flags"] or ("--" + f.name.replace("_", "-"),))[0]
        if value is True:
            argv.append(flag_)
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag_, str(v)]
        elif value is not None and value is not False:
            argv += [flag_, str(value)]
    for name, value in extra.items():
        if value is True:
            argv.append(flag(name))
        elif value not in (None, False):
            argv += [flag(name), str(value)]
    return shlex.join(argv)


def from_args(cls: type, args: argparse.Namespace, **override: Any) -> Any:
    """An instance of the config class ``cls`` from parsed arguments (checked when made: :class:`JobConfig`)."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: override[n] if n in override else getattr(args, n) for n in names if n in override or hasattr(args, n)})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def changed(cfg: Any, fields: Sequence[str]) -> list[str]:
    """The flags of those of ``fields`` that ``cfg`` sets to other than their defaults: the settings
    a run would ignore are found so, and refused rather than dropped silently."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return [flag(n) for n in fields if getattr(cfg, n) != defaults[n]]


def ints(text: str | Sequence[int], what: str) -> tuple[int, ...]:
    """``"10,100"`` -> ``(10, 100)``; anything else is a one-line error naming the flag."""
    if not isinstance(text, str):
        return tuple(int(x) for x in text)
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise MechtoxError(f"{what} {text!r}: give comma-separated whole numbers, e.g. 10,100") from None
    if not out or any(k <= 0 for k in out):
        raise MechtoxError(f"{what} {text!r}: give one or more positive whole numbers, e.g. 10,100")
    return out


def names(text: str | None) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def neuron_counts(ks: Sequence[int], n_neurons: int, what: str) -> list[int]:
    """The top-k sizes of ``ks`` a model of ``n_neurons`` MLP neurons has (a larger k ablated every
    neuron under a "top-k" label); the others are named in a note, and none left is an error."""
    keep = [k for k in ks if k <= n_neurons]
    if len(keep) < len(ks):
        if not keep:
            raise MechtoxError(f"{what} {','.join(map(str, ks))}: the model has {n_neurons:,} MLP neurons; give sizes "
                               "up to that")
        print(f"  note: {what} {', '.join(str(k) for k in ks if k > n_neurons)} left out: the model has "
              f"{n_neurons:,} MLP neurons", flush=True)
    return keep


def finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise MechtoxError(f"{what} {value}: give a finite number")


def steering_alpha(value: float, what: str = "--alpha") -> None:
    """A steering strength for the rejected side of generated pairs: finite and above 0 (0 makes
    both sides the same, so every pair is dropped after generating them; a negative one steers away
    from toxicity and inverts the preference)."""
    finite(value, what)
    if value <= 0:
        raise MechtoxError(f"{what} {value:g}: must be above 0 (the rejected continuation is steered toward toxicity "
                           f"by alpha x the direction; {'0 leaves both sides the same' if value == 0 else 'a negative one steers away from it'})")


def positive(value: int | None, what: str, zero_ok: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise MechtoxError(f"{what} {value}: must be {'0 or more' if zero_ok else 'at least 1'}")


def spec_label(spec: str, most: int = 40) -> str:
    """A model spec as part of a run name: a path (``./ckpt``, ``/tmp/gemma/ckpt``), ``hf:org/name``
    or ``BASE@FILE`` with every other character than letters, digits, ``_.-`` turned into ``-``
    (a run named after ``./tiny`` was refused after all the work); one over ``most`` characters is
    cut, with a hash of the whole spec to keep two long ones apart."""
    import hashlib
    import re

    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.removeprefix("./")).strip("-.") or "model"
    if len(label) > most:
        label = label[-(most - 9):].lstrip("-.") + "-" + hashlib.sha1(spec.encode()).hexdigest()[:8]
    return label


def data_label(spec: str | None, default: str = "jigsaw_balanced.csv") -> str:
    """A data spec as part of a run name: a file's name without its suffixes, ``data:NAME``'s NAME,
    an HF id's last part, ``default``'s name when None."""
    from pathlib import PurePath

    s = default if spec is None else spec.split(":", 1)[1] if spec.startswith(("builtin:", "data:")) else spec
    name = PurePath(s.rstrip("/\\")).name or s
    for _ in range(2):  # olid.csv.gz -> olid
        stem = PurePath(name).stem
        name = stem if stem and PurePath(name).suffix.lower() in (".gz", ".csv", ".tsv", ".jsonl", ".json", ".txt") else name
    return spec_label(name, most=40)


def check_out(name: str | None, what: str) -> None:
    from mechtox.workspace import check_name

    if name is not None:
        check_name(name, what)


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise MechtoxError(f"--device {device!r} is no torch device; use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MechtoxError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                               "leave --device out to use the CPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MechtoxError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MechtoxError(f"--device {device}: MPS is not available on this machine; leave --device out")


def check_writable(root: Path, flag: str) -> None:
    """``root`` is a folder, or can be created as one, and can be written (checked before any work)."""
    if root.exists() and not root.is_dir():
        raise MechtoxError(f"{flag} {root} is a file, not a folder; give a folder")
    parent = root
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MechtoxError(f"{flag} {root} cannot be created: {parent} is a file; give another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MechtoxError(f"{flag} {root} cannot be written: no write permission in {parent}")


@dataclasses.dataclass(frozen=True)
class Context(JobConfig):
    """The options every command takes: where results go and how models run."""

    workspace: str | None = option(None, "workspace directory (default: $MECHTOX_HOME or ./mechtox-runs)",
                                   flags=("--workspace", "-w"), metavar="DIR")
    device: str | None = option(None, "torch device (default: cuda when available, else cpu)")
    dtype: str = option("float32", "precision the models run in (default float32)", choices=["float32", "bfloat16", "float16"])
    seed: int = option(0, "seed for every random choice (default 0)")
    quiet: bool = option(False, "no progress bars", flags=("--quiet", "-q"))

    def check(self) -> None:
        check_writable(self.ws.root, "--workspace")
        if not 0 <= self.seed < 2**32:
            raise MechtoxError(f"--seed {self.seed}: give a whole number from 0 to 2**32 - 1")
        _check_device(self.device)

    @property
    def ws(self):
        from mechtox.workspace import Workspace

        return Workspace(self.workspace)

    @property
    def progress(self) -> bool:
        return not self.quiet

    def seed_all(self) -> None:
        from mechtox.train_config import seed_everything

        seed_everything(self.seed)

    def load(self, spec: str, announce: bool = True):
        """The model ``spec`` as a HookedTransformer (and one line saying what was loaded)."""
        from mechtox.distributed import is_main, local_device
        from mechtox.models import default_device

        t = time.perf_counter()
        device = local_device(self.device or default_device())  # under torchrun: this rank's GPU
        model = self.ws.load_model(spec, device=device, dtype=self.dtype)
        if announce and is_main():
            print(f"loaded {spec} ({model.cfg.model_name}, {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
                  f"d_mlp {model.cfg.d_mlp}) on {model.cfg.device} in {time.perf_counter() - t:.1f} s", flush=True)
        return model


def execute(job, config, ctx: Context, **models) -> Any:
    """Run ``job`` (a module of :mod:`mechtox.jobs`) with ``config``, write its files, print its
    summary; return its result. ``models`` passes already-loaded models (``model=``, ``before=``,
    ``after=``)."""
    from mechtox.distributed import is_main

    res = job.run(config, ctx, **models)
    if not is_main():  # under torchrun, rank 0 writes and prints
        return res
    job.write(res, ctx)
    print(job.summary(res, ctx), flush=True)
    return res


def model_spec(spec: str, ws) -> str:
    """The model ``spec`` as it can be given again: the base alias as what it points at, a path
    (a checkpoint, transformers directory or GGUF file outside the workspace, as
    :meth:`Workspace.resolve_model` finds it) made absolute (a probe's record names the model it
    was fitted on)."""
    from pathlib import Path

    if spec == "base":
        return model_spec(ws.base_spec, ws)
    ref = ws.resolve_model(spec)
    in_workspace = ref.kind == "checkpoint" and Path(ref.location) == ws.root / "models" / spec
    return str(Path(ref.location).resolve()) if ref.kind in ("checkpoint", "gguf", "hf") and not in_workspace else spec


def say_replaced(ws, name: str, model: str | None, keep: str) -> None:
    """A line when saving direction ``name`` replaces one the workspace holds from another model
    (whatever read it before now reads this one); ``keep`` says how to keep both (NAME: ``name``)."""
    import json

    path = ws.direction_dir(name) / "direction.json"
    try:
        old = json.loads(path.read_text()).get("provenance", {}).get("model")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(old, str) and old and model and old != model:
        print(f"  note: '{name}' from {old} replaced by this one from {model} ({keep.replace('NAME', name)})",
              flush=True)
