import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_docs_are_up_to_date():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_readme_has_exactly_two_setup_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("## Set up and run", 1)[1].split("```", 2)[1]
    cmds = [ln for ln in block.splitlines()[1:] if ln.strip()]
    assert [c.split("#")[0].strip() for c in cmds] == ["make main", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
