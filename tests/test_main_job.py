"""The main job end to end on the tiny model with the template-built toy data (fast), and its step reuse."""

import json

from mechtox.cli import main


def test_main_job_on_tiny_reuses_steps(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    toy = ["--data-dir", "builtin"]  # the tiny model's tokenizer knows only the toy data's words
    assert main(["run", "-w", str(ws), "--model", "tiny", "-q", *toy]) == 0
    out = capsys.readouterr().out
    state = json.loads((ws / "runs" / "main" / "main.json").read_text())
    assert len(state["steps"]) == 7 and state["size"] == "small"
    assert (ws / "models" / "main-dpo" / "model.safetensors").is_file()
    report = (ws / "report.html").read_text()
    assert len(report) > 1_000_000  # plotly.js is embedded: the file opens offline
    for heading in ("Probe sweep: probe", "Direction methods: main-directions", "Training: main-dpo",
                    "Attribution (own tokens)", "Attribution (shared tokens)", "Evaluation: main-eval"):
        assert heading in report, heading
    assert '<script src="http' not in report and "<script src='http" not in report  # nothing fetched
    groups = json.loads((ws / "runs" / "main-attribution" / "attribution-own-groups.json").read_text())
    assert abs(groups["check"]["error"]) < 1e-4
    assert "exactness" in out
    assert main(["run", "-w", str(ws), "--model", "tiny", "-q", *toy]) == 0
    again = capsys.readouterr().out
    assert again.count("reused") == 7
