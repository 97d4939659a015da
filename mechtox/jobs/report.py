"""``mechtox report``: one self-contained HTML report of the workspace's results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechtox.errors import MechtoxError
from mechtox.jobs._base import Context, JobConfig, option

HELP = "one self-contained HTML report of the workspace's results"
RANDOM = False  # draws no random numbers (reads results and writes HTML): the CLI seeds nothing, so torch need not load


@dataclass(frozen=True)
class ReportConfig(JobConfig):
    out: str | None = option(None, "output file (default: <workspace>/report.html)")
    title: str = option("mechtox report", "the title of the page")
    notes: str = ""   # a line under the title; not a flag


@dataclass
class ReportResult:
    path: Path


def run(cfg: ReportConfig, ctx: Context) -> ReportResult:
    from mechtox.report import write_report

    ws = ctx.ws
    if not ws.root.is_dir():
        raise MechtoxError(f"no workspace at {ws.root}; run some commands first (e.g. mechtox run)")
    return ReportResult(write_report(ws.root, cfg.out, title=cfg.title, notes=cfg.notes))


def write(res: ReportResult, ctx: Context) -> Path:
    return res.path  # the report is written atomically by run (it is the job's only output)


def summary(res: ReportResult, ctx: Context) -> str:
    return f"wrote {res.path} ({res.path.stat().st_size / 2**20:.1f} MiB)"
