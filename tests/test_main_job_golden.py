"""The main job's outputs on the tiny model, toy data and seed 0, against a snapshot recorded
before the application layer was refactored (issue 17): the refactor must change nothing a user
sees. Numbers are stored at 6 significant digits and compared by :func:`differences`: integers (counts,
ranks, neuron ids) and text exactly, other numbers to 0.1% (or one unit of their last printed digit, or
1e-5 near zero): another CPU's floating-point rounding moves the 6th digit, and a 3-decimal table cell
by one unit. Times, dates and the workspace path are left out, and of the main job's own bookkeeping
(``runs/main/main.json``) only the steps it records.

Rerecord (only for an intended change of results, and say so in the commit):
``python -m tests.test_main_job_golden --write``.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "golden" / "main_tiny.json.gz"
_FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")
_VOLATILE = re.compile(r"second|saved_at|_at$|elapsed|tok_per|per_second")


_PKG_PATH = re.compile(r"[^\s\"',]*/mechtox/resources/")  # the clone's location: not part of the result


def _paths(obj):
    """The package's location replaced by ``<pkg>`` everywhere (it differs between clones)."""
    if isinstance(obj, dict):
        return {k: _paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_paths(v) for v in obj]
    return _PKG_PATH.sub("<pkg>/resources/", obj) if isinstance(obj, str) else obj


_NUMBER = re.compile(f"({_FLOAT.pattern}|-?\\d+)")  # _FLOAT or an integer, captured: re.split keeps them
REL, ABS = 1e-3, 1e-5


def _unit(s: str) -> float:
    """One unit of the last printed digit of a decimal such as ``0.313`` (0 for exponent forms)."""
    return 0.0 if "e" in s.lower() or "." not in s else 10.0 ** -len(s.split(".")[1])


def _close(a: float, b: float, unit: float = 0.0) -> bool:
    return abs(a - b) <= max(REL * max(abs(a), abs(b)), ABS, unit * 1.01)  # 1.01: 0.313 - 0.312 > 0.001 in floats


def differences(got, want, where: str = "") -> list[str]:
    """Where ``got`` differs from ``want`` (empty: the same result): structure, text and integers
    exactly; floats by :func:`_close`."""
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))}"]
        return [d for k in want for d in differences(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, want {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in differences(g, w, f"{where}[{i}]")]
    if isinstance(want, str) and isinstance(got, str):
        gs, ws = _NUMBER.split(got), _NUMBER.split(want)
        if len(gs) != len(ws):
            return [f"{where}: {len(gs) // 2} numbers, want {len(ws) // 2}"]
        out = []
        for i, (g, w) in enumerate(zip(gs, ws, strict=True)):
            if g == w:
                continue
            # text and integers exactly; a float within tolerance (a hash such as '836e989' reads as inf: exactly)
            if i % 2 == 1 and any(c in g + w for c in ".eE"):
                fg, fw = float(g), float(w)
                if math.isfinite(fg) and math.isfinite(fw) and _close(fg, fw, max(_unit(g), _unit(w))):
                    continue
            line = want.count("\n", 0, sum(len(x) for x in ws[:i])) + 1
            out.append(f"{where} line {line}: {g!r}, want {w!r}")
        return out
    if isinstance(want, float) and isinstance(got, float):
        same = (got == want or (math.isnan(got) and math.isnan(want))
                or (math.isfinite(got) and math.isfinite(want) and _close(got, want)))
        return [] if same else [f"{where}: {got!r}, want {want!r}"]
    return [] if type(got) is type(want) and got == want else [f"{where}: {got!r}, want {want!r}"]


def _num(s: str) -> str:
    return f"{float(s):.6g}"


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not _VOLATILE.search(k)}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj


def snapshot(ws: Path) -> dict[str, object]:
    """Every table and record the main job writes (not figures, weights or optimizer state)."""
    out: dict[str, object] = {}
    root = str(ws)
    for p in sorted(ws.rglob("*")):
        rel = p.relative_to(ws).as_posix()
        if not p.is_file() or "/state/" in rel or p.suffix not in (".csv", ".json", ".jsonl", ".md"):
            continue
        text = p.read_text().replace(root, "<ws>")
        if p.suffix == ".json":
            out[rel] = _clean(json.loads(text))
        elif p.suffix == ".jsonl":
            out[rel] = [_clean(json.loads(line)) for line in text.splitlines() if line.strip()]
        else:
            out[rel] = _FLOAT.sub(lambda m: _num(m.group()), text)
    return out


def run_tiny_main_job(ws: Path) -> None:
    from mechtox.cli import main

    assert main(["run", "-w", str(ws), "--model", "tiny", "-q", "--data-dir", "builtin", "--seed", "0"]) == 0


def test_main_job_outputs_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    run_tiny_main_job(ws)
    out = capsys.readouterr().out
    assert "exactness" in out and "attention heads:" in out and "+ heads" in out  # the check closes over both
    _check_report(ws)
    got = _paths(snapshot(ws))
    want = _paths(json.loads(gzip.decompress(SNAPSHOT.read_bytes())))
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    for name in want:
        if name == STATE:  # the step bookkeeping: its format changed with the refactor (keys, dependencies)
            assert _steps(got[name]) == _steps(want[name])
            continue
        assert not (diff := differences(got[name], want[name], name)), diff[:10]


STATE = "runs/main/main.json"


def test_comparison_tolerates_rounding_not_changes():
    assert differences("TP-,0.313,5244\n", "TP-,0.312,5244\n") == []          # a 3-decimal cell one unit off
    assert differences({"x": 0.679939, "e": -1.75e-07}, {"x": 0.679938, "e": -8.3e-08}) == []
    assert differences("TP-,0.313,5244\n", "TP-,0.315,5244\n")                # two units: a change
    assert differences({"x": 1.0}, {"x": 1.002}) and not differences({"x": 1.0}, {"x": 1.0005})
    assert differences("n,5245", "n,5244") and differences({"n": 3}, {"n": 4})  # integers exactly
    assert differences("TN+,1.0", "TP-,1.0") and differences({"a": True}, {"a": 1})
    assert differences("key 836e989", "key 836e988") and differences({"x": float("nan")}, {"x": 1.0})
    assert differences({"x": 1.0}, {"x": float("inf")}) and not differences({"x": float("nan")}, {"x": float("nan")})
    assert differences("a,0.5,b", "a,0.5") and differences([1.0], [1.0, 2.0]) and differences({"a": 1}, {"b": 1})
    # on the recorded snapshot: each file equals itself; a 0.5% change anywhere in a table is seen
    want = _paths(json.loads(gzip.decompress(SNAPSHOT.read_bytes())))
    assert all(differences(want[name], want[name]) == [] for name in want)
    table = want["runs/main-eval/eval.csv"]
    first = _FLOAT.search(table)
    moved = _num(str(float(first.group()) * 1.005))
    changed = table[:first.start()] + moved + table[first.end():]
    assert differences(changed, table, "eval") == [f"eval line 2: {moved!r}, want {first.group()!r}"]


def _check_report(ws: Path) -> None:
    assert (ws / "models" / "main-dpo" / "model.safetensors").is_file()
    report = (ws / "report.html").read_text()
    assert len(report) > 1_000_000  # plotly.js is embedded: the file opens offline
    for heading in ("Probe sweep: probe", "Direction methods: main-directions", "Training: main-dpo",
                    "Attribution (own tokens)", "Attribution (shared tokens)", "Evaluation: main-eval"):
        assert heading in report, heading
    assert '<script src="http' not in report and "<script src='http" not in report  # nothing fetched
    # the toy job trains and evaluates on its 30 prompts; its probe check leaves out the probe's 160 texts
    assert "; main-dpo was trained on 30 of them</p>" in report
    assert "Probe accuracy before / after / retrained, on 80 texts no probe was fitted on (160 texts a probe" in report
    # it opens with the findings, then follows the order of the work
    order = ["id='summary'", "Probe sweep: probe", "Direction methods:", "Neuron ranking:", "Training: main-dpo",
             "Evaluation: main-eval", "Attribution (own tokens)"]
    at = [report.index(x) for x in order]
    assert at == sorted(at), dict(zip(order, at, strict=True))
    summary = report[report.index("id='summary'"): report.index("</ul>", report.index("id='summary'"))]
    for finding in ("Probe", "Neurons along the probe", "random neurons of the same layers", "Fine-tuning", "by neuron group",
                    "Neurons vs heads", "The head that changed most"):
        assert finding in summary, finding


def _steps(state: dict) -> tuple:
    return sorted(state["steps"]), state["size"], state["model"], state["data"]


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        run_tiny_main_job(Path(d) / "ws")
        snap = snapshot(Path(d) / "ws")
    SNAPSHOT.write_bytes(gzip.compress(json.dumps(snap, sort_keys=True).encode(), mtime=0))
    print(f"wrote {SNAPSHOT} ({len(snap)} files)")
