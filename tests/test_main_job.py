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


def _ran(out: str) -> list[str]:
    line = [x for x in out.splitlines() if "steps run now:" in x][-1]
    return [s.strip() for s in line.split("steps run now:")[1].split(",") if s.strip() != "none"]


def test_main_job_reruns_what_a_change_reaches(tmp_path, monkeypatch, capsys):
    """Reuse is keyed on each step's whole config and the keys of the steps it depends on."""
    from mechtox.jobs import main as main_job

    monkeypatch.chdir(tmp_path)
    base = ["run", "-w", str(tmp_path / "ws"), "--model", "tiny", "-q", "--data-dir", "builtin"]
    assert main(base) == 0
    assert _ran(capsys.readouterr().out) == ["probe", "directions", "rank", "pairs", "train", "eval", "attribution"]
    # a new steering strength: new pairs, so a new DPO model, its evaluation and attribution
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == ["pairs", "train", "eval", "attribution"]
    pairs = [json.loads(x) for x in (tmp_path / "ws" / "pairs" / "main-pairs.jsonl").read_text().splitlines()]
    assert {p["alpha"] for p in pairs} == {4.0}
    # a probe fitted on other texts: everything downstream of the probe reruns (the toy pairs are
    # steered along the unembedding direction of step 2, which reads the probe)
    monkeypatch.setitem(main_job._TOY, "n_train", 120)
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == ["probe", "directions", "rank", "pairs", "train", "eval", "attribution"]
    # the trained model deleted: the DPO step reruns; its key is unchanged, so nothing after it does
    import shutil

    shutil.rmtree(tmp_path / "ws" / "models" / "main-dpo")
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == ["train"]
    assert main([*base, "--alpha", "4"]) == 0
    assert _ran(capsys.readouterr().out) == []


def test_step_keys_follow_dependencies_only():
    """With ParaDetox pairs (real data), the pairs do not depend on the probe; DPO and after do."""
    from mechtox.jobs import Context
    from mechtox.jobs import main as main_job

    ctx = Context(workspace="unused-ws")

    def keys(**kw):
        out = {}
        for step in main_job.plan(main_job.MainConfig(size="small", **kw)):
            out[step.name] = main_job.step_key(step, ctx, out)
        return out

    a = keys()
    b = keys(alpha=4.0)  # alpha is a setting of the pairs step, so it and its dependents change
    assert [s for s in a if a[s] != b[s]] == ["pairs", "train", "eval", "attribution"]
    saved = main_job.SIZES["small"]["n_train"]
    try:
        main_job.SIZES["small"]["n_train"] = saved + 1
        c = keys()
    finally:
        main_job.SIZES["small"]["n_train"] = saved
    assert [s for s in a if a[s] != c[s]] == ["probe", "directions", "rank", "train", "eval", "attribution"]
    assert keys() == a  # the same settings give the same keys
