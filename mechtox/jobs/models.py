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


@dataclass
class ModelsResult:
    root: str
    base: str
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)
    """section -> (columns, rows)"""
    new_base: str | None = None


def run(cfg: ModelsConfig, ctx: Context) -> ModelsResult:
    ws = ctx.ws
    if cfg.set_base:
        ws.set_base(cfg.set_base)  # checks the model exists first
    return ModelsResult(str(ws.root), ws.base_spec, listing(ws), cfg.set_base)


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
                       info.get("objective", ""), info.get("steps", ""), info.get("best_val_loss", nan),
                       _when(info.get("saved_at"))])
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
    for d in sorted(p for p in (ws.root / "training").glob("*") if (p / "state" / "trainer.json").is_file()):
        t = _json(d / "state" / "trainer.json")
        of = t.get("config", {}).get("max_steps", "?")
        again = _json(d / "command.json").get("resume", f"mechtox train ... --out {d.name} --resume")
        states.append([d.name, f"{t.get('step', '?')} of {of}", "saved as a model" if d.name in saved else
                       f"interrupted: continue with `{again}`"])
    out = {"models": (["name", "architecture", "trained from", "objective", "steps", "best val loss", "saved"], models),
           "directions and probes": (["name", "kind", "hook", "method", "test AUROC", "model"], directions),
           "pair sets": (["name", "pairs", "written"], pairs),
           "runs": (["name", "files", "last written"], runs),
           "training states": (["name", "step", "status"], states)}
    return {k: v for k, v in out.items() if v[1]}


def write(res: ModelsResult, ctx: Context) -> None:
    return None  # set_base wrote workspace.json; listing writes nothing


def summary(res: ModelsResult, ctx: Context) -> str:
    from mechtox.tables import markdown_rows

    lines = [f"base is now {res.new_base}"] if res.new_base else []
    lines += [f"workspace: {res.root}", f"base -> {res.base}"]
    for title, (columns, rows) in res.tables.items():
        lines += ["", f"{title} ({len(rows)})", markdown_rows(columns, rows)]
    if not res.tables:
        lines.append("(nothing else yet: start with `mechtox probe` or `mechtox run`)")
    return "\n".join(lines)
