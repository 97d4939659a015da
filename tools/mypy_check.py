"""Run mypy on mechtox and compare with the listed baseline (tools/mypy_baseline.txt).

A line of the baseline is ``path: [code] message`` (no line number, so edits elsewhere do not
shift it). New errors fail (exit 1); baseline entries that no longer occur are printed so the
list can shrink (``--update`` rewrites it). The job layer and the CLI are kept clean: the
baseline may not hold entries for them.

    python tools/mypy_check.py            # make lint
    python tools/mypy_check.py --update
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tools" / "mypy_baseline.txt"
_LINE = re.compile(r"^(?P<path>[^:]+):\d+: error: (?P<msg>.*?)\s+\[(?P<code>[a-z-]+)\]$")


def errors() -> collections.Counter:
    out = subprocess.run([sys.executable, "-m", "mypy", "mechtox"], cwd=ROOT, capture_output=True, text=True).stdout
    found: collections.Counter = collections.Counter()
    for line in out.splitlines():
        if m := _LINE.match(line):
            found[f"{m['path']}: [{m['code']}] {m['msg']}"] += 1
    return found


def main() -> int:
    found = errors()
    if "--update" in sys.argv:
        BASELINE.write_text("".join(f"{k}\n" * n for k, n in sorted(found.items())))
        print(f"wrote {BASELINE} ({sum(found.values())} entries)")
        return 0
    base = collections.Counter(BASELINE.read_text().splitlines()) if BASELINE.is_file() else collections.Counter()
    new, gone = found - base, base - found
    clean = [k for k in base if k.startswith(("mechtox/jobs/", "mechtox/cli.py"))]
    for k in sorted(gone):
        print(f"fixed (remove from the baseline): {k}")
    for k in sorted(new):
        print(f"NEW: {k}")
    if clean:
        print(f"the baseline must not list the job layer or the CLI: {clean}")
    print(f"mypy: {sum(found.values())} errors, {sum(base.values())} in the baseline, {sum(new.values())} new")
    return 1 if new or clean else 0


if __name__ == "__main__":
    sys.exit(main())
