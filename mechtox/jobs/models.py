"""``mechtox models``: list the workspace's models, directions, pair sets and runs (or set the base)."""

from __future__ import annotations

from dataclasses import dataclass

from mechtox.jobs._base import Context, option

HELP = "list the models, directions and pair sets in the workspace"
RANDOM = False  # draws no random numbers (lists and sets names): the CLI seeds nothing, so torch need not load


@dataclass(frozen=True)
class ModelsConfig:
    set_base: str | None = option(None, "make MODEL the workspace's base model", metavar="MODEL")


@dataclass
class ModelsResult:
    root: str
    base: str
    lines: list[str]
    new_base: str | None = None


def run(cfg: ModelsConfig, ctx: Context) -> ModelsResult:
    from mechtox.model_files import checkpoint_info

    ws = ctx.ws
    if cfg.set_base:
        ws.resolve_model(cfg.set_base)
        ws.set_base(cfg.set_base)
    lines = []
    for name in ws.models()[1:]:
        info = checkpoint_info(ws.model_dir(name))
        lines.append(f"  model {name}: {info['cfg'].get('model_name')} ({info.get('saved_at', '')})")
    lines += [f"  direction {n}" for n in ws.directions()]
    lines += [f"  pairs {n}" for n in ws.pairs()]
    lines += [f"  run {n}" for n in ws.runs()]
    return ModelsResult(str(ws.root), ws.base_spec, lines, cfg.set_base)


def write(res: ModelsResult, ctx: Context) -> None:
    return None  # set_base wrote workspace.json; listing writes nothing


def summary(res: ModelsResult, ctx: Context) -> str:
    head = [f"base is now {res.new_base}"] if res.new_base else []
    return "\n".join(head + [f"workspace: {res.root}", f"base -> {res.base}"] + res.lines)
