"""Figures: each function takes a result (DataFrame / dataclass) and returns a plotly Figure.

Nothing here calls ``.show()`` or writes files except :func:`save_figure`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mechtox import _io


def save_figure(fig: go.Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as HTML (plotly.js written once beside it, so it works offline), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    js = path.parent / "plotly.min.js"
    if not js.exists():
        from plotly.offline import get_plotlyjs

        _io.write_text(js, get_plotlyjs())
    html = fig.to_html(include_plotlyjs="plotly.min.js", full_html=True)
    return _io.write_text(path, html)


def probe_sweep_figure(table: pd.DataFrame, title: str = "Probe accuracy and AUROC per layer") -> go.Figure:
    """Held-out accuracy / AUROC (and train accuracy) per layer of a probe sweep."""
    x = [str(h).replace("blocks.", "L").replace(".hook_resid_post", "") if "blocks." in str(h) else "final"
         for h in table["hook"]]
    fig = go.Figure()
    for col, dash in (("test_accuracy", None), ("test_auroc", None), ("train_accuracy", "dot")):
        if col in table:
            fig.add_trace(go.Scatter(x=x, y=table[col], mode="lines+markers", name=col, line={"dash": dash}))
    fig.update_layout(title=title, xaxis_title="hook", yaxis_title="score", yaxis_range=[0.4, 1.0],
                      template="plotly_white")
    return fig


def cosine_histogram(ranking_table: pd.DataFrame, chance_range: tuple[float, float] | None = None,
                     title: str = "Cosine of value vectors with the direction") -> go.Figure:
    """Histogram of all neurons' cosines, with the chance range of the top cosine marked."""
    fig = go.Figure(go.Histogram(x=ranking_table["cosine"], nbinsx=200, name="neurons"))
    if chance_range is not None and np.all(np.isfinite(chance_range)):
        for v, label in zip(chance_range, ("chance max (low)", "chance max (high)"), strict=True):
            fig.add_vline(x=v, line_dash="dash", line_color="red", annotation_text=label)
    fig.update_layout(title=title, xaxis_title="cos(v, w)", yaxis_title="neurons", yaxis_type="log",
                      template="plotly_white")
    return fig


def top_neurons_figure(top: pd.DataFrame, value: str = "cosine", title: str = "Top toxic neurons") -> go.Figure:
    """Horizontal bars of the top neurons, labelled L{layer}.N{neuron} with decoded tokens on hover."""
    labels = [f"L{int(r.layer)}.N{int(r.neuron)}" for r in top.itertuples()]
    hover = top["tokens"] if "tokens" in top else None
    fig = go.Figure(go.Bar(x=top[value], y=labels, orientation="h", hovertext=hover,
                           text=[str(t)[:60] for t in hover] if hover is not None else None,
                           textposition="auto"))
    fig.update_layout(title=title, xaxis_title=value, yaxis_autorange="reversed", template="plotly_white",
                      height=max(400, 22 * len(top)))
    return fig
