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
    x = ["together" if "+" in str(h) else str(h).replace("blocks.", "L").replace(".hook_resid_post", "")
         if "blocks." in str(h) else "final" for h in table["hook"]]
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


def eval_figure(table: pd.DataFrame, title: str = "Toxicity and perplexity under interventions") -> go.Figure:
    """Bars of toxicity per intervention (and perplexity on a second axis when present)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    labels = table["intervention"].astype(str)
    if "model" in table and table["model"].nunique() > 1:  # one bar per model and intervention, never on top of another
        labels = table["model"].astype(str) + (" · " + labels).where(labels != "none", "")
    if labels.duplicated().any():
        labels = labels + [f" ({i + 1})" for i in range(len(labels))]
    fig.add_trace(go.Bar(x=labels, y=table["toxicity"], name="toxicity (mean score)"), secondary_y=False)
    if "toxic_frac" in table:
        fig.add_trace(go.Bar(x=labels, y=table["toxic_frac"], name="share > 0.5"), secondary_y=False)
    if "ppl" in table:
        fig.add_trace(go.Scatter(x=labels, y=table["ppl"], name="perplexity", mode="markers+lines"), secondary_y=True)
    fig.update_layout(title=title, barmode="group", template="plotly_white")
    fig.update_yaxes(title_text="toxicity", secondary_y=False)
    fig.update_yaxes(title_text="perplexity", secondary_y=True)
    return fig


def ablation_figure(table: pd.DataFrame, k: int = 100, title: str | None = None) -> go.Figure:
    """Drop in toxicity from ablating each method's top-k vs random neurons (mean, std of draws)."""
    rows = table[table["k"] == k]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=rows["method"], y=rows["drop"], name=f"top-{k} ablated"))
    if "random_drop_mean" in rows:
        fig.add_trace(go.Bar(x=rows["method"], y=rows["random_drop_mean"], name=f"random {k} (same layers)",
                             error_y={"type": "data", "array": rows["random_drop_std"].fillna(0)}))
    fig.update_layout(title=title or f"Drop in generation toxicity: top-{k} vs random neurons", barmode="group",
                      yaxis_title="toxicity drop", template="plotly_white")
    return fig


def training_figure(history: pd.DataFrame, title: str = "Training curves") -> go.Figure:
    """Loss (and validation loss, DPO reward margins / accuracies, probe score) per step."""
    from plotly.subplots import make_subplots

    extra = [c for c in ("rewards/margins", "rewards/accuracies", "probe_score", "lm_loss") if c in history]
    fig = make_subplots(rows=1 + bool(extra), cols=1, shared_xaxes=True)
    fig.add_trace(go.Scatter(x=history["step"], y=history["loss"], name="loss"), row=1, col=1)
    if "val_loss" in history:
        v = history.dropna(subset=["val_loss"])
        fig.add_trace(go.Scatter(x=v["step"], y=v["val_loss"], name="val_loss", mode="lines+markers"), row=1, col=1)
    for c in extra:
        fig.add_trace(go.Scatter(x=history["step"], y=history[c], name=c), row=2, col=1)
    fig.update_layout(title=title, template="plotly_white")
    fig.update_xaxes(title_text="step", row=1 + bool(extra), col=1)  # under the bottom plot, not between the two
    return fig


def attribution_groups_figure(groups: pd.DataFrame, title: str = "Contributions by group") -> go.Figure:
    """Each group's contribution as a share of the gross reduction and of the net change, in two
    panels (the net share can be many times larger when increasing groups cancel the reduction)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of gross reduction", "share of net change"))
    fig.add_trace(go.Bar(x=groups["group"], y=groups["share_of_gross"], name="share of gross"), row=1, col=1)
    fig.add_trace(go.Bar(x=groups["group"], y=groups["share_of_net"], name="share of net"), row=1, col=2)
    fig.update_layout(title=title, yaxis_tickformat=".0%", yaxis2_tickformat=".0%", template="plotly_white",
                      showlegend=False)
    return fig


def attribution_layers_figure(per_layer: pd.DataFrame, title: str = "Per-layer contributions") -> go.Figure:
    """Stacked contributions per layer, one colour per group."""
    fig = go.Figure()
    for g in [c for c in per_layer.columns if c != "layer"]:
        fig.add_trace(go.Bar(x=per_layer["layer"], y=per_layer[g], name=g))
    fig.update_layout(title=title, barmode="relative", xaxis_title="layer", yaxis_title="contribution (delta)",
                      template="plotly_white")
    return fig


def attribution_scatter(neurons: pd.DataFrame, title: str = "Activation change vs cosine", max_points: int = 20000) -> go.Figure:
    """Change of mean activation against cos(v_before, w), the largest contributions first."""
    top = neurons.reindex(neurons["delta"].abs().sort_values(ascending=False).index).head(max_points)
    fig = go.Figure(go.Scattergl(
        x=top["cos_before"], y=top["act_after"] - top["act_before"], mode="markers",
        marker={"size": 4, "color": top["delta"], "colorscale": "RdBu", "colorbar": {"title": "delta"}},
        text=[f"L{int(a)}.N{int(b)} {g}" for a, b, g in zip(top["layer"], top["neuron"], top["group"], strict=True)]))
    fig.update_layout(title=title, xaxis_title="cos(v_before, w)", yaxis_title="mean activation after - before",
                      template="plotly_white")
    return fig


def reliability_figure(table: pd.DataFrame, title: str = "Probe calibration (reliability)") -> go.Figure:
    """Mean predicted P(toxic) against the fraction of toxic texts, per bin (the diagonal is perfect)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line=dict(dash="dash", color="grey")))
    fig.add_trace(go.Scatter(x=table["mean_predicted"], y=table["fraction_toxic"], mode="lines+markers",
                             name="probe", text=[f"{n} texts" for n in table["n"]]))
    fig.update_layout(title=title, xaxis_title="mean predicted P(toxic)", yaxis_title="fraction toxic",
                      xaxis_range=[0, 1], yaxis_range=[0, 1], height=420)
    return fig
