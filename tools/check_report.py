"""Open a mechtox HTML report in headless Chromium and fail on JavaScript errors.

    python tools/check_report.py mechtox-runs/report.html [--browser chromium]

Loads the file with JavaScript on (virtual time lets plotly draw), reads the browser's console
log and the rendered DOM, and prints how many plotly figures were drawn. Exit status 1 when the
console shows an error or no figure was drawn; 2 when no browser is installed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser(name: str | None = None) -> str | None:
    for b in ([name] if name else BROWSERS):
        path = shutil.which(b)
        if path:
            return path
    return None


def check(report: Path, browser: str, timeout: int = 120) -> dict:
    """Console errors and the number of drawn plotly figures of ``report``."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
             report.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout)
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln]
    errors = [ln for ln in console if re.search(r"Uncaught|Error|error", ln)]
    figures = r.stdout.count('class="main-svg"')
    containers = r.stdout.count("plotly-graph-div")
    return {"returncode": r.returncode, "console": console, "errors": errors, "drawn_svgs": figures,
            "figure_divs": containers, "dom_chars": len(r.stdout)}


_MEASURE = ("<script>window.addEventListener('load',()=>setTimeout(()=>document.body.setAttribute("
            "'data-scroll-width',document.documentElement.scrollWidth),500))</script></body>")


def page_width(report: Path, browser: str, width: int = 1280, timeout: int = 120) -> int:
    """The page's scroll width in a ``width``-pixel window (more than ``width``: a horizontal scrollbar)."""
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "measure.html"
        probe.write_text(report.read_text().replace("</body>", _MEASURE, 1))
        r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={d}/profile",
                            f"--window-size={width},1000", "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()],
                           capture_output=True, text=True, timeout=timeout)
    m = re.search(r'data-scroll-width="(\d+)"', r.stdout)
    return int(m.group(1)) if m else -1


def screenshot(page: Path, browser: str, out: Path, width: int = 1280, height: int = 2000, timeout: int = 120) -> int:
    """A PNG of the top of ``page``; returns its size in bytes (a blank page compresses to very little)."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={d}",
                        f"--window-size={width},{height}", "--virtual-time-budget=15000", "--hide-scrollbars",
                        f"--screenshot={out}", page.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
    return out.stat().st_size if out.is_file() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--browser", default=None)
    args = ap.parse_args(argv)
    browser = find_browser(args.browser)
    if browser is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    res = check(args.report, browser)
    print(f"{args.report}: {args.report.stat().st_size / 2**20:.1f} MiB; {res['figure_divs']} figure divs, "
          f"{res['drawn_svgs']} plotly SVG layers drawn; {len(res['console'])} console messages, "
          f"{len(res['errors'])} errors")
    for ln in res["errors"][:20]:
        print("  " + ln)
    ok = res["returncode"] == 0 and not res["errors"] and res["drawn_svgs"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
