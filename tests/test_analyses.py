"""CI runs every analysis (and the tutorial notebook) in the short configuration: tiny model, shipped data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANALYSES = sorted(p.name for p in (REPO / "analyses").glob("[0-9]*.py"))


@pytest.mark.parametrize("script", ANALYSES)
def test_analysis_runs_in_ci_configuration(script, tmp_path):
    env = {**os.environ, "MECHTOX_MODEL": "tiny", "MECHTOX_SIZE": "ci", "MECHTOX_RESULTS": str(tmp_path),
           "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, script], cwd=REPO / "analyses", env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert any(tmp_path.iterdir())


def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MECHTOX_MODEL", "tiny")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the kernel's temporary files
    (tmp_path / "tmp").mkdir()
    nb = nbformat.read(REPO / "docs" / "tutorial.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    # the training cell writes no checkpoint (2 GB on SmolLM2), in its folder or a temporary one
    assert not list(tmp_path.rglob("optimizer.pt")) and not list(tmp_path.rglob("trainer.json"))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "exactness check" in text and "DPO loss" in text


def test_tutorial_notebook_matches_its_script():
    import jupytext

    nb = jupytext.read(REPO / "docs" / "tutorial.ipynb")
    script = jupytext.read(REPO / "docs" / "tutorial.py")
    assert [c.source for c in nb.cells] == [c.source for c in script.cells]
