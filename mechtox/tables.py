"""Small text tables (markdown) for the terminal and reports, without extra dependencies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only DataFrames' methods are used: listing a workspace needs no pandas
    import pandas as pd


MISSING = "—"
"""How a table cell without a value (NaN: a direction's test AUROC, a score a method does not give) reads."""


def _fmt(v: object, digits: int) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return MISSING
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
    return markdown_rows([str(c) for c in df.columns], df.itertuples(index=False), digits)


def markdown_rows(columns: Sequence[str], rows, digits: int = 3) -> str:
    """Rows (sequences of values, in the order of ``columns``) as a markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def notebook_html(title: str, tables: Sequence[tuple[str, pd.DataFrame]] = (), max_rows: int = 12,
                  digits: int = 3) -> str:
    """What Jupyter shows for a result object: its one-line summary, then its tables (the first
    ``max_rows`` rows each, numbers to ``digits`` significant places)."""
    import html

    parts = [f"<p><b>{html.escape(title)}</b></p>"]
    for caption, df in tables:
        if df is None or df.empty:
            continue
        more = f" (first {max_rows} of {len(df):,} rows)" if len(df) > max_rows else ""
        body = df.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.{digits}g}", border=0, na_rep=MISSING)
        parts.append(f"<p>{html.escape(caption + more)}</p>{body}")
    return "\n".join(parts)


def shorten(text: str, n: int = 60) -> str:
    """``text`` on one line, cut to ``n`` characters (with an ellipsis)."""
    one = " ".join(str(text).split())
    return one if len(one) <= n else one[: n - 1] + "…"
