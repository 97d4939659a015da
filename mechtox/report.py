"""One self-contained HTML report of a workspace: tables and interactive plotly figures.

The report is rebuilt from the files the commands wrote (CSV / JSON), so it can be made at any
time and never reruns a model. plotly.js is embedded once; the file opens offline.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from mechtox import _io, plotting
from mechtox import artifacts as A

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.7em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td.t{text-align:left;font-family:monospace;white-space:pre}.note{color:#555;font-size:.9em}
"""


def _table(df: pd.DataFrame, max_rows: int = 40, digits: int = 4) -> str:
    df = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for r in df.itertuples(index=False):
        cells = []
        for v in r:
            if isinstance(v, float):
                cells.append(f"<td>{v:.{digits}g}</td>")
            else:
                cells.append(f"<td class='t'>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _fig(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def build_report(root: str | os.PathLike[str], title: str = "mechtox report", notes: str = "") -> str:
    """The HTML of a report over the workspace at ``root``."""
    from plotly.offline import get_plotlyjs

    root = Path(root)
    parts: list[str] = []
    meta = _read_json(root / A.MAIN_SUMMARY)
    if meta:
        parts.append("<h2>Run</h2>" + _table(pd.DataFrame([{k: v for k, v in meta.items() if not isinstance(v, (dict, list))}])))
    if notes:
        parts.append(f"<p class='note'>{html.escape(notes)}</p>")

    for d in sorted((root / "directions").glob("*/" + A.SWEEP)) if (root / "directions").is_dir() else []:
        sweep = pd.read_csv(d)
        parts.append(f"<h2>Probe sweep: {html.escape(d.parent.name)}</h2>")
        parts.append(_fig(plotting.probe_sweep_figure(sweep)))
        parts.append(_table(sweep[["hook", "test_accuracy", "test_f1", "test_auroc", "train_accuracy"]]))

    runs = root / "runs"
    for run in sorted(runs.iterdir()) if runs.is_dir() else []:
        if (run / A.TOP_NEURONS).is_file() and (run / A.RANKING).is_file():
            top = pd.read_csv(run / A.TOP_NEURONS)
            parts.append(f"<h2>Neuron ranking: {html.escape(run.name)}</h2>")
            parts.append(_fig(plotting.top_neurons_figure(top.head(30))))
            parts.append(_table(top[[c for c in ("layer", "neuron", "cosine", "norm", "mean_act", "tokens") if c in top]], 20))
        dj = _read_json(run / f"{A.DIRECTIONS}.json")
        if dj:
            parts.append(f"<h2>Direction methods: {html.escape(run.name)}</h2>")
            parts.append(f"<p class='note'>metric {html.escape(str(dj.get('metric')))}; toxic tokens: "
                         f"{html.escape(' | '.join(dj.get('toxic_tokens', [])[:40]))}</p>")
            parts.append(_table(pd.DataFrame(dj["rows"])))
            abl = _read_csv(run / f"{A.ABLATION}.csv")
            if abl is not None:
                parts.append(_fig(plotting.ablation_figure(abl)))
                parts.append(_table(abl))
            top = _read_csv(run / A.TOP_NEURONS)
            if top is not None:
                parts.append(_table(top[["method", "layer", "neuron", "cosine", "tokens"]], 40))
        pe = _read_json(run / f"{A.PROBE_EVAL}.json")
        if pe:
            parts.append(f"<h2>Probe transfer: {html.escape(str(pe.get('probe')))} on {html.escape(str(pe.get('data')))}"
                         f"</h2><p class='note'>{pe.get('n_texts')} texts ({pe.get('n_toxic')} toxic); "
                         f"{html.escape(str(pe.get('intervals')))}</p>" + _table(pd.DataFrame(pe["rows"])))
            rel = _read_csv(run / A.RELIABILITY)
            if rel is not None:
                parts.append(_fig(plotting.reliability_figure(rel)))
        ev = _read_json(run / f"{A.EVAL}.json")
        if ev:
            t = pd.DataFrame(ev["rows"])
            parts.append(f"<h2>Evaluation: {html.escape(run.name)}</h2><p class='note'>{html.escape(ev.get('toxicity', ''))}; "
                         f"{ev.get('n_prompts')} prompts from {html.escape(str(ev.get('prompts')))}</p>")
            parts.append(_fig(plotting.eval_figure(t)) + _table(t))
        if (run / A.METRICS).is_file() and run.name.startswith(A.TRAIN_PREFIX):
            hist = pd.read_json(run / A.METRICS, lines=True)
            parts.append(f"<h2>Training: {html.escape(run.name[len(A.TRAIN_PREFIX):])}</h2>")
            parts.append(_fig(plotting.training_figure(hist)))
            gh = _read_csv(run / f"{A.GOODHART}.csv")
            if gh is not None:
                parts.append("<p>Probe accuracy before / after / retrained</p>" + _table(gh))
        for mode in A.ATTRIBUTION_MODES:
            gj = _read_json(run / f"{A.attribution(mode, 'groups')}.json")
            if not gj:
                continue
            groups = pd.DataFrame(gj["rows"])
            c = gj.get("check", {})
            split = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in c.items() if k not in ("total_change", "error"))
            parts.append(f"<h2>Attribution ({mode} tokens): {html.escape(run.name)}</h2>"
                         f"<p class='note'>{html.escape(gj.get('mode_meaning', ''))}; {gj.get('n_tokens')} tokens; "
                         f"change of the projection {c.get('total_change', float('nan')):.4g} = {split}; exactness "
                         f"error {c.get('error', float('nan')):.2e}</p>")
            kinds = _read_csv(run / A.attribution(mode, "kinds-per-layer.csv"))
            if kinds is not None:
                parts.append(_fig(plotting.attribution_layers_figure(kinds, "Neurons vs heads per layer")))
            parts.append(_fig(plotting.attribution_groups_figure(groups)))
            per_layer = _read_csv(run / A.attribution(mode, "per-layer.csv"))
            if per_layer is not None:
                parts.append(_fig(plotting.attribution_layers_figure(per_layer)))
            parts.append(_table(groups.drop(columns=["meaning"], errors="ignore")))
            top = _read_csv(run / A.attribution(mode, "top-neurons.csv"))
            if top is not None:
                parts.append(_table(top[["layer", "neuron", "group", "cos_before", "act_before", "act_after", "delta", "tokens"]], 15))
            hg = _read_json(run / f"{A.attribution(mode, 'head-groups')}.json")
            heads = _read_csv(run / A.attribution(mode, "heads.csv"))
            if hg and heads is not None:
                parts.append("<p>Attention heads</p>" + _table(pd.DataFrame(hg["rows"]).drop(columns=["meaning"],
                                                                                              errors="ignore")))
                top_h = heads.reindex(heads["delta"].abs().sort_values(ascending=False).index)
                parts.append(_table(top_h[["layer", "head", "group", "p_before", "p_after", "delta",
                                           "delta_pattern_value", "delta_weight"]], 10))
        ab = _read_json(run / f"{A.ABLATION_VS_AFTER}.json")
        if ab:
            parts.append(f"<h2>Ablation is not enough: {html.escape(run.name)}</h2>" + _table(pd.DataFrame(ab["rows"])))
    if not parts:
        parts.append("<p>This workspace holds no results yet.</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body><h1>{html.escape(title)}</h1>"
            + "\n".join(parts) + "</body></html>")


def write_report(root: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **kw) -> Path:
    """Write the report of the workspace ``root`` (default ``root/report.html``), atomically."""
    path = Path(out) if out else Path(root) / A.REPORT
    return _io.write_text(path, build_report(root, **kw))
