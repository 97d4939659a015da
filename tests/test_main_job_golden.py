"""The main job's outputs on the tiny model, toy data and seed 0, against a snapshot recorded
before the application layer was refactored (issue 17): the refactor must change nothing a user
sees. Numbers are compared at 6 significant digits; times, dates and the workspace path are left out,
and of the main job's own bookkeeping (``runs/main/main.json``) only the steps it records.

Rerecord (only for an intended change of results, and say so in the commit):
``python -m tests.test_main_job_golden --write``.
"""

from __future__ import annotations

import gzip
import json
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
        assert got[name] == want[name], name


STATE = "runs/main/main.json"


def _check_report(ws: Path) -> None:
    assert (ws / "models" / "main-dpo" / "model.safetensors").is_file()
    report = (ws / "report.html").read_text()
    assert len(report) > 1_000_000  # plotly.js is embedded: the file opens offline
    for heading in ("Probe sweep: probe", "Direction methods: main-directions", "Training: main-dpo",
                    "Attribution (own tokens)", "Attribution (shared tokens)", "Evaluation: main-eval"):
        assert heading in report, heading
    assert '<script src="http' not in report and "<script src='http" not in report  # nothing fetched
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
