"""``mechtox models``: list the workspace's models, directions, pair sets, runs and training states
(or set the base), as tables read from their small JSON files (no model loads, nothing heavy imports)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mechtox.jobs._base import Context, JobConfig, option

HELP = "list the models, directions and pair sets in the workspace"
RANDOM = False  # draws no random numbers (lists and sets names): the CLI seeds nothing, so torch need not load


@dataclass(frozen=True)
class ModelsConfig(JobConfig):
    set_base: str | None = option(None, "make MODEL the workspace's base model", metavar="MODEL")
    drop_state: list[str] | None = option(
        None, "repeatable: delete the resumable training state of NAME, a training saved as a model (its weights, "
              "optimizer moments and reference log-probs: 2 GB for SmolLM2, 5 GB for Gemma 3 270M); the model, its "
              "metrics and its command stay, but it can no longer be continued with --resume. An interrupted "
              "training's state is its only copy and is refused", metavar="NAME", append=True)


@dataclass
class ModelsResult:
    root: str
    base: str
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)
    """section -> (columns, rows)"""
    new_base: str | None = None
    dropped: list[tuple[str, int]] = field(default_factory=list)
    """(name, bytes freed) of each training state deleted"""


def run(cfg: ModelsConfig, ctx: Context) -> ModelsResult:
    ws = ctx.ws
    dropped = drop_states(ws, cfg.drop_state) if cfg.drop_state else []
    if cfg.set_base:
        ws.set_base(cfg.set_base)  # checks the model exists first
    return ModelsResult(str(ws.root), ws.base_spec, listing(ws), cfg.set_base, dropped)


def drop_states(ws, names: list[str]) -> list[tuple[str, int]]:
    """Delete the training states ``names`` (all checked first: one bad name deletes nothing), each
    of a training that was saved as a model; returns (name, bytes freed)."""
    import shutil

    from mechtox.errors import MechtoxError

    states = _states(ws)
    saved = set(ws.models()[1:])
    for name in dict.fromkeys(names):
        if name not in states:
            have = ", ".join(states) or "none"
            raise MechtoxError(f"--drop-state {name}: no training state of that name in {ws.root} (there: {have})")
        if name not in saved:
            raise MechtoxError(f"--drop-state {name}: that training was interrupted and its state is its only copy; "
                               "continue it with --resume (see `mechtox models`), or delete "
                               f"{states[name]} yourself to give it up")
    out = []
    for name in dict.fromkeys(names):
        size = _size(states[name])
        shutil.rmtree(states[name])
        out.append((name, size))
    return out


def _states(ws) -> dict[str, Path]:
    """Each training state of the workspace: name -> its ``state`` folder."""
    return {d.name: d / "state" for d in sorted((ws.root / "training").glob("*"))
            if (d / "state" / "trainer.json").is_file()}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # half-written or foreign: listed with blanks rather than failing the listing


def _when(stamp: str | float | None) -> str:
    if isinstance(stamp, (int, float)):
        return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")
    return (stamp or "").replace("T", " ")[:16]


def listing(ws) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """What the workspace holds, one table per kind (empty kinds left out)."""
    from mechtox.model_files import checkpoint_info

    nan = float("nan")
    saved = ws.models()[1:]  # one read of models/ for the models table and the training states' status
    models = []
    for name in saved:
        info = checkpoint_info(ws.model_dir(name))
        models.append([name, info.get("cfg", {}).get("model_name", ""), info.get("trained_from", ""),
                       info.get("objective", ""), info.get("steps", ""),
                       nan if info.get("best_val_loss") is None else info["best_val_loss"],
                       _when(info.get("saved_at")), _gb(_size(ws.model_dir(name)))])
    directions = []
    for name in ws.directions():
        d = _json(ws.direction_dir(name) / "direction.json")
        directions.append([name, d.get("kind", ""), d.get("hook_name", ""), d.get("method", ""),
                           d.get("metrics", {}).get("test_auroc", nan), d.get("model_name", "")])
    pairs = []
    for name in ws.pairs():
        path = ws.pairs_path(name)
        with open(path, "rb") as f:
            pairs.append([name, sum(1 for line in f if line.strip()), _when(path.stat().st_mtime)])
    runs = []
    for name in ws.runs():
        files = [p for p in ws.run_dir(name).rglob("*") if p.is_file()]
        runs.append([name, len(files), _when(max((p.stat().st_mtime for p in files), default=None))])
    states = []
    for name, state in _states(ws).items():
        t = _json(state / "trainer.json")
        of = t.get("config", {}).get("max_steps", "?")
        again = _json(state.parent / "command.json").get("resume", f"mechtox train ... --out {name} --resume")
        states.append([name, f"{t.get('step', '?')} of {of}", "saved as a model; `mechtox models --drop-state "
                       f"{name}` deletes this state" if name in saved else
                       f"interrupted: continue with `{again}`", _gb(_size(state))])
    out = {"models": (["name", "architecture", "trained from", "objective", "steps", "best val loss", "saved", "size"],
                      models),
           "directions and probes": (["name", "kind", "hook", "method", "test AUROC", "model"], directions),
           "pair sets": (["name", "pairs", "written"], pairs),
           "runs": (["name", "files", "last written"], runs),
           "training states": (["name", "step", "status", "size"], states)}
    return {k: v for k, v in out.items() if v[1]}


def write(res: ModelsResult, ctx: Context) -> None:
    return None  # set_base wrote workspace.json, drop_states deleted; listing writes nothing


def summary(res: ModelsResult, ctx: Context) -> str:
    from mechtox.tables import markdown_rows

    lines = [f"dropped the training state of {name} ({_gb(size)} freed); the model stays" for name, size in res.dropped]
    lines += [f"base is now {res.new_base}"] if res.new_base else []
    lines += [f"workspace: {res.root}", f"base -> {res.base}"]
    for title, (columns, rows) in res.tables.items():
        lines += ["", f"{title} ({len(rows)})", markdown_rows(columns, rows)]
    if not res.tables:
        lines.append("(nothing else yet: start with `mechtox probe` or `mechtox run`)")
    return "\n".join(lines)
