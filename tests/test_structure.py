"""The package's structure (issue 17): no import cycle inside ``mechtox`` (imports inside functions
included), library modules never import the job layer or the CLI, and no function grows past
the length a reader can hold (120 lines; 80 in the CLI and the job layer; cli.py 300 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mechtox"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PKG.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The mechtox modules ``path`` imports anywhere in its body (``from pkg import sub`` counts as
    importing ``pkg``, whose ``__init__`` runs first, and ``pkg.sub`` when that is a module)."""
    me = _module(path) if PKG in path.parents else "outside"
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mechtox")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("mechtox"):
                continue
            out |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES} | {mod}
    out.discard(me)
    return {m for m in out if m in MODULES}


GRAPH = {m: imports(p) for m, p in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from mechtox.cli import main\n    import mechtox.jobs.main\n    from mechtox.directions import methods\n")
    assert {"mechtox.cli", "mechtox.jobs.main", "mechtox.directions", "mechtox.directions.methods"} <= imports(a)
    saved = dict(GRAPH)
    try:
        GRAPH["mechtox.errors"] = GRAPH["mechtox.errors"] | {"mechtox.cli"}  # errors -> cli -> ... -> errors
        assert _cycle() is not None
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_library_never_imports_the_job_layer_or_the_cli():
    app = {m for m in MODULES if m in ("mechtox.cli", "mechtox.__main__") or m.startswith("mechtox.jobs")}
    for m, deps in GRAPH.items():
        if m not in app and m != "mechtox":
            assert not deps & app, (m, deps & app)


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_long_functions():
    too_long = []
    for m, p in MODULES.items():
        limit = 80 if m == "mechtox.cli" or m.startswith("mechtox.jobs") else 120
        too_long += [f"{m}.{name}: {n} lines" for name, n in _functions(p) if n > limit]
    assert not too_long, too_long
    assert len((PKG / "cli.py").read_text().splitlines()) <= 300
