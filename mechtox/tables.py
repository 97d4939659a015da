"""Small text tables (markdown) for the terminal and reports, without extra dependencies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd


def _fmt(v: object, digits: int) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** (-digits)):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(df: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3, max_rows: int | None = None) -> str:
    """``df`` as a GitHub-style markdown table."""
    if columns is not None:
        df = df[list(columns)]
    if max_rows is not None:
        df = df.head(max_rows)
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)
