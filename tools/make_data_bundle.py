"""Rebuild mechtox/resources/data: the real data shipped with mechtox, from a folder of the files
listed in mechtox.data.DEFAULT_FILES (the project's ../shared/data). Files are gzipped without
a timestamp (so a rebuild from the same files is byte-identical) and their licence texts copied.

    python tools/make_data_bundle.py [SRC_DIR]      # default ../shared/data
"""

import argparse
import gzip
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mechtox.data import DEFAULT_FILES, bundled_data_dir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=str(ROOT.parent / "shared" / "data"))
    src = Path(ap.parse_args().src)
    out = bundled_data_dir()
    missing = [n for n in DEFAULT_FILES.values() if not (src / n).is_file()]
    if missing:
        print(f"make_data_bundle: {src} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    (out / "licenses").mkdir(parents=True, exist_ok=True)
    for name in sorted(set(DEFAULT_FILES.values())):
        raw = (src / name).read_bytes()
        (out / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
        print(f"{name}: {len(raw):,} bytes -> {(out / f'{name}.gz').stat().st_size:,}")
    for lic in sorted((src / "licenses").glob("*")):
        shutil.copyfile(lic, out / "licenses" / lic.name)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"bundle: {total / 2**20:.1f} MiB in {out} (see its SOURCES.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
