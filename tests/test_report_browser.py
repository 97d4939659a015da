"""The HTML report in a real headless browser (skipped where no Chromium is installed)."""

import importlib.util
from pathlib import Path

import pytest

from mechtox.cli import main

_spec = importlib.util.spec_from_file_location("check_report", Path(__file__).resolve().parents[1] / "tools" / "check_report.py")
check_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_report)

BROWSER = check_report.find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium here (apt-get install chromium to run this check)")


def _tiny_report(tmp_path):
    """The report of a workspace holding one probe sweep of the tiny model."""
    ws = tmp_path / "ws"
    assert main(["probe", "-w", str(ws), "-q", "--model", "tiny", "--data", "builtin:toxicity", "--n-train", "120",
                 "--n-test", "60", "--out", "p"]) == 0
    assert main(["report", "-w", str(ws)]) == 0
    return ws / "report.html"


def test_report_renders_without_console_errors_and_a_broken_one_is_caught(tmp_path):
    report = _tiny_report(tmp_path)
    good = check_report.check(report, BROWSER)
    assert good["errors"] == [] and good["drawn_svgs"] > 0, good
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace("</body>", "<script>undefinedFunction()</script></body>"))
    bad = check_report.check(broken, BROWSER)
    assert any("undefinedFunction" in e for e in bad["errors"]), bad["console"]
    assert check_report.main([str(broken)]) == 1 and check_report.main([str(report)]) == 0



def test_report_fits_1280_pixels_and_its_screenshot_is_not_blank(tmp_path):
    report = _tiny_report(tmp_path)
    assert 0 < check_report.page_width(report, BROWSER, 1280) <= 1280
    wide = tmp_path / "wide.html"  # the measurement sees an overflowing page
    wide.write_text(report.read_text().replace("<body>", "<body><div style='width:3000px'>x</div>", 1))
    assert check_report.page_width(wide, BROWSER, 1280) > 1280
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shot = check_report.screenshot(report, BROWSER, tmp_path / "report.png")
    empty = check_report.screenshot(blank, BROWSER, tmp_path / "blank.png")
    assert empty > 0 and shot > 3 * empty, (shot, empty)  # measured: 54 kB against 12 kB for a blank page
