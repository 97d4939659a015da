"""Write docs/api.md (from the docstrings) and docs/cli.md (from the argument parser).

Run: python tools/gen_docs.py          (tests check that both are up to date: --check)
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

MODULES = ["mechtox.model_files", "mechtox.models", "mechtox.workspace", "mechtox.data", "mechtox.scorers", "mechtox.activations",
           "mechtox.probe", "mechtox.neurons", "mechtox.directions", "mechtox.validation", "mechtox.interventions",
           "mechtox.generation", "mechtox.evaluate", "mechtox.train_config", "mechtox.training", "mechtox.hf_backend", "mechtox.distributed", "mechtox.attribution", "mechtox.plotting",
           "mechtox.report"]


def render() -> str:
    out = ["# API reference", "", "Generated from the docstrings by `python tools/gen_docs.py`; do not edit by hand.", ""]
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        out += [f"## `{name}`", "", inspect.cleandoc(mod.__doc__ or ""), ""]
        for attr, obj in vars(mod).items():
            home = getattr(obj, "__module__", None) or ""
            if attr.startswith("_") or not (home == name or (hasattr(mod, "__path__") and home.startswith(name + "."))):
                continue  # a package documents what its modules define and it re-exports
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            kind = "class" if inspect.isclass(obj) else "def"
            out += [f"### {kind} `{attr}{sig if kind == 'def' else ''}`", "", inspect.cleandoc(obj.__doc__ or "(no docstring)"), ""]
    return "\n".join(out).rstrip() + "\n"


def render_cli() -> str:
    import argparse

    from mechtox.cli import build_parser

    parser = build_parser()
    out = ["# CLI reference", "", "Generated from the argument parser by `python tools/gen_docs.py`; do not edit by hand.",
           "", "```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [f"## `mechtox {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def main() -> int:
    import os

    os.environ["COLUMNS"] = "100"
    docs = Path(__file__).resolve().parents[1] / "docs"
    pages = {docs / "api.md": render(), docs / "cli.md": render_cli()}
    if "--check" in sys.argv:
        stale = [p.name for p, t in pages.items() if not p.is_file() or p.read_text() != t]
        if stale:
            print(f"stale: {stale}; run python tools/gen_docs.py")
        return 1 if stale else 0
    for p, t in pages.items():
        p.write_text(t)
        print(f"wrote {p} ({len(t)} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
