"""One self-contained HTML report of a workspace: tables and interactive plotly figures.

The report is rebuilt from the files the commands wrote (CSV / JSON), so it can be made at any
time and never reruns a model. plotly.js is embedded once; the file opens offline.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

from mechtox import _io, plotting
from mechtox import artifacts as A
from mechtox.tables import MISSING

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.7em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td.t{text-align:left;font-family:monospace;white-space:pre}.note{color:#555;font-size:.9em}.warn{color:#a00;font-weight:bold}
table{display:block;max-width:100%;overflow-x:auto}ul.summary li{margin:.4em 0;line-height:1.4}
"""


def _table(df: pd.DataFrame, max_rows: int = 40, digits: int = 4) -> str:
    df = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for r in df.itertuples(index=False):
        cells = []
        for v in r:
            if isinstance(v, float):
                cells.append(f"<td>{v:.{digits}g}</td>" if not math.isnan(v) else f"<td>{MISSING}</td>")
            else:
                cells.append(f"<td class='t'>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _fig(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


class _Unreadable(Exception):
    """A result file that exists but cannot be read (edited by hand, damaged): its run is left out
    of the report, which says so, rather than the whole report failing."""


def _parse(path: Path, read):
    try:
        return read(path)
    except (ValueError, UnicodeDecodeError, KeyError, pd.errors.ParserError) as e:  # JSONDecodeError is a ValueError
        raise _Unreadable(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]) from None


def _read_csv(path: Path) -> pd.DataFrame | None:
    return _parse(path, pd.read_csv) if path.is_file() else None


def _read_json(path: Path) -> dict | None:
    return _load_json(path) if path.is_file() else None


def _load_json(path: Path) -> dict:
    """A JSON record known to exist (found by a glob)."""
    record = _parse(path, lambda p: json.loads(p.read_text()))
    if not isinstance(record, dict):
        raise _Unreadable(f"{path}: not a JSON object")
    return record


ORDER = ("probe", "directions", "neurons", "interventions", "training", "evaluation", "attribution")
"""The report's sections, in the order of the work (after the summary)."""
PAPER_SHARES = {"TP-": 0.318, "TN+": 0.239, "AP+": 0.070, "AN-": 0.373}
"""Yang et al. 2024's shares of the gross reduction on GPT-2 medium (../shared/DESIGN.md)."""


def _h2(text: str, anchor: str) -> str:
    return f"<h2 id='{html.escape(anchor)}'>{html.escape(text)}</h2>"


def build_report(root: str | os.PathLike[str], title: str = "mechtox report", notes: str = "") -> str:
    """The HTML of a report over the workspace at ``root``: a summary of the findings, then one
    section per kind of result in the order of the work (:data:`ORDER`)."""
    from plotly.offline import get_plotlyjs

    root = Path(root)
    sec: dict[str, list[str]] = {k: [] for k in ORDER}
    left_out: list[str] = []
    sweeps = sorted((root / "directions").glob("*/" + A.SWEEP)) if (root / "directions").is_dir() else []
    for d in sweeps:
        _unless_unreadable(_sweep_section, d, sec, left_out)
    runs = root / "runs"
    for run in sorted(runs.iterdir()) if runs.is_dir() else []:
        _unless_unreadable(_run_sections, run, sec, left_out)
    try:
        parts = [_summary(root)]
        meta = _read_json(root / A.MAIN_SUMMARY)
    except _Unreadable as e:
        parts, meta = [], None
        left_out.append(f"the summary ({e})")
    if meta:
        row = {_LABELS.get(k, k): v for k, v in meta.items() if not isinstance(v, (dict, list))}
        parts.append("<h2 id='run'>Run</h2>" + _table(pd.DataFrame([row])))
    if notes:
        parts.append(f"<p class='note'>{html.escape(notes)}</p>")
    if left_out:
        for what in left_out:
            print(f"report: left out {what}", file=sys.stderr)
        parts.append("<p class='note'>Left out, as a file could not be read: "
                     + "; ".join(html.escape(w) for w in left_out) + ".</p>")
    for k in ORDER:
        parts += sec[k]
    if not any(sec.values()):
        parts.append("<p>This workspace holds no results yet.</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body><h1>{html.escape(title)}</h1>"
            + "\n".join(p for p in parts if p) + "</body></html>")


def _unless_unreadable(section, path: Path, sec: dict[str, list[str]], left_out: list[str]) -> None:
    """``section(path, sec)``; where one of its files is unreadable, nothing of it stays in ``sec``."""
    sizes = {k: len(v) for k, v in sec.items()}
    try:
        section(path, sec)
    except _Unreadable as e:
        for k, n in sizes.items():
            del sec[k][n:]
        left_out.append(f"{path.relative_to(path.parent.parent)} ({e})")


def _sweep_section(d: Path, sec: dict[str, list[str]]) -> None:
    sweep = _read_csv(d)
    if sweep is None or "test_auroc" not in sweep or "hook" not in sweep:
        raise _Unreadable(f"{d}: not a probe sweep table")
    sec["probe"].append(_h2(f"Probe sweep: {d.parent.name}", f"probe-{d.parent.name}"))
    shaped = ((_read_json(d.parent / "direction.json") or {}).get("provenance") or {}).get("training_texts")
    if shaped:  # --drop-negatives / --match-cue: say what the fit saw
        sec["probe"].append(f"<p class='note'>Of the training texts, {html.escape(str(shaped))}.</p>")
    sec["probe"].append(_fig(plotting.probe_sweep_figure(sweep)))
    cols = [c for c in ("hook", "test_accuracy", "test_f1", "test_auroc", "transfer_auroc", "C_by_cv") if c in sweep]
    if len(sweep) > 12:  # the figure shows every layer; the table only the best and the last
        sweep = pd.concat([sweep.nlargest(5, "test_auroc"), sweep.tail(1)]).drop_duplicates("hook")
    sec["probe"].append(_table(sweep[cols].rename(columns=_LABELS)))


_LABELS = {"steps_seconds_total": "seconds (steps, in all)", "this_call_seconds": "seconds (this call)",
           "test_accuracy": "held-out accuracy", "test_f1": "held-out F1", "test_auroc": "held-out AUROC",
           "transfer_auroc": "transfer AUROC", "C_by_cv": "C (by CV)", "train_accuracy": "train accuracy"}


def _run_sections(run: Path, sec: dict[str, list[str]]) -> None:
    """The sections of one run folder, each into its kind's list."""
    if (run / A.TOP_NEURONS).is_file() and (run / A.RANKING).is_file():
        top = _parse(run / A.TOP_NEURONS, pd.read_csv)
        sec["neurons"].append(_h2(f"Neuron ranking: {run.name}", f"neurons-{run.name}"))
        sec["neurons"].append(_fig(plotting.top_neurons_figure(top.head(30))))
        sec["neurons"].append(_table(top[[c for c in ("layer", "neuron", "cosine", "norm", "mean_act", "tokens")
                                          if c in top]], 20))
    dj = _read_json(run / f"{A.DIRECTIONS}.json")
    if dj:
        out = sec["directions"]
        out.append(_h2(f"Direction methods: {run.name}", f"directions-{run.name}"))
        out.append(f"<p class='note'>metric {html.escape(str(dj.get('metric')))}; toxic tokens: "
                   f"{html.escape(' | '.join(dj.get('toxic_tokens', [])[:40]))}</p>")
        out.append(_table(pd.DataFrame(dj["rows"])))
        abl = _read_csv(run / f"{A.ABLATION}.csv")
        if abl is not None:
            out.append(_fig(plotting.ablation_figure(abl)) + _table(abl))
        top = _read_csv(run / A.TOP_BY_METHOD)
        if top is not None:
            out.append(_table(top[[c for c in ("method", "layer", "neuron", "cosine", "score", "tokens") if c in top]], 40))
    pe = _read_json(run / f"{A.PROBE_EVAL}.json")
    if pe:
        agg = "" if pe.get("aggregate", "pooled") == "pooled" else f" (by token: {pe['aggregate']})"
        sec["probe"].append(_h2(f"Probe transfer: {pe.get('probe')}{agg} on {pe.get('data')}", f"transfer-{run.name}")
                            + f"<p class='note'>{pe.get('n_texts')} texts ({pe.get('n_toxic')} toxic)"
                            + (f" read by {html.escape(str(pe['model']))}" if pe.get("model") else "") + "; "
                            f"{html.escape(str(pe.get('intervals')))}"
                            + (f"; {html.escape(str(pe['note']))}" if pe.get("note") else "") + "</p>"
                            + _table(pd.DataFrame(pe["rows"])))
        rel = _read_csv(run / A.RELIABILITY)
        if rel is not None:
            sec["probe"].append(_fig(plotting.reliability_figure(rel)))
    ev = _read_json(run / f"{A.EVAL}.json")
    if ev:
        t = pd.DataFrame(ev["rows"])
        kind = "evaluation" if "model" in t and t["model"].nunique() > 1 else "interventions"
        trained = ev.get("n_prompts_trained_on")
        trained = trained if isinstance(trained, dict) else {ev.get("model", "the model"): trained} if trained else {}
        said = "".join(f"; {html.escape(str(m))} was trained on {n} of them" for m, n in trained.items() if n)
        sec[kind].append(_h2(f"Evaluation: {run.name}", f"eval-{run.name}")
                         + f"<p class='note'>{html.escape(ev.get('toxicity', ''))}; {ev.get('n_prompts')} prompts "
                         f"from {html.escape(str(ev.get('prompts')))}{said}</p>" + _fig(plotting.eval_figure(t)) + _table(t))
    if (run / A.METRICS).is_file() and run.name.startswith(A.TRAIN_PREFIX):
        name = run.name[len(A.TRAIN_PREFIX):]
        sec["training"].append(_h2(f"Training: {name}", f"train-{name}"))
        sec["training"].append(_fig(plotting.training_figure(_parse(run / A.METRICS, lambda p: pd.read_json(p, lines=True)))))
        gh = _read_csv(run / f"{A.GOODHART}.csv")
        if gh is not None:
            gm = _read_json(run / f"{A.GOODHART}.json") or {}
            on = (f", on {gm['n_texts']} texts no probe was fitted on ({html.escape(str(gm['left_out']))} left out)"
                  if "left_out" in gm else "")
            sec["training"].append(f"<p>Probe accuracy before / after / retrained{on}</p>" + _table(gh))
    for mode in A.ATTRIBUTION_MODES:
        _attribution_section(run, mode, sec["attribution"])
    ab = _read_json(run / f"{A.ABLATION_VS_AFTER}.json")
    if ab:
        sec["attribution"].append(_h2(f"Ablation is not enough: {run.name}", f"ablation-{run.name}")
                                  + _table(pd.DataFrame(ab["rows"])))


def _attribution_section(run: Path, mode: str, out: list[str]) -> None:
    gj = _read_json(run / f"{A.attribution(mode, 'groups')}.json")
    if not gj:
        return
    groups = pd.DataFrame(gj["rows"])
    c = gj.get("check", {})
    split = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in c.items() if k not in ("total_change", "error"))
    out.append(_h2(f"Attribution ({mode} tokens): {run.name}", f"attribution-{mode}-{run.name}")
               + f"<p class='note'>{html.escape(gj.get('mode_meaning', ''))}; {gj.get('n_tokens')} tokens; "
               f"change of the projection {c.get('total_change', float('nan')):.4g} = {split}; exactness "
               f"error {c.get('error', float('nan')):.2e}</p>"
               + ("" if gj.get("check_passed", True) else
                  "<p class='warn'>The exactness check failed: the parts do not add up to the change of the "
                  "projection, so the tables below do not describe these models.</p>"))
    kinds = _read_csv(run / A.attribution(mode, "kinds-per-layer.csv"))
    if kinds is not None:
        out.append(_fig(plotting.attribution_layers_figure(kinds, "Neurons vs heads per layer")))
    out.append(_fig(plotting.attribution_groups_figure(groups)))
    per_layer = _read_csv(run / A.attribution(mode, "per-layer.csv"))
    if per_layer is not None:
        out.append(_fig(plotting.attribution_layers_figure(per_layer)))
    out.append(_table(groups.drop(columns=["meaning"], errors="ignore")))
    top = _read_csv(run / A.attribution(mode, "top-neurons.csv"))
    if top is not None:
        out.append(_table(top[["layer", "neuron", "group", "cos_before", "act_before", "act_after", "delta", "tokens"]],
                          15))
    hg = _read_json(run / f"{A.attribution(mode, 'head-groups')}.json")
    heads = _read_csv(run / A.attribution(mode, "heads.csv"))
    if hg and heads is not None:
        out.append("<p>Attention heads</p>" + _table(pd.DataFrame(hg["rows"]).drop(columns=["meaning"], errors="ignore")))
        cols = ["layer", "head", "group", "p_before", "p_after", "delta", "delta_pattern_value", "delta_weight"]
        top_h = _read_csv(run / A.attribution(mode, "top-heads.csv"))
        if top_h is not None:  # with what each head attends to
            out.append(f"<p class='note'>attends to: {html.escape(hg.get('attends_to', ''))}</p>")
            cols += ["attends_to", "attends_to_after"]
        else:
            top_h = heads.reindex(heads["delta"].abs().sort_values(ascending=False).index)
        out.append(_table(top_h[cols], 10))


def _first(root: Path, pattern: str, where=lambda path: True) -> Path | None:
    """The first file matching ``pattern`` under runs/ for which ``where`` holds, the main job's
    runs (``main-*``) first."""
    for p in _all(root, pattern):
        try:
            if (p.suffix != ".json" or _load_json(p) is not None) and where(p):
                return p
        except _Unreadable:
            continue  # a damaged file is passed over here; its run's section says it was left out
    return None


def _all(root: Path, pattern: str) -> list[Path]:
    """Every file matching ``pattern`` under runs/, the main job's runs (``main-*``) first."""
    return sorted((root / "runs").glob(pattern), key=lambda p: (not p.parent.name.startswith("main"), p.parent.name))


def _summary(root: Path) -> str:
    """The findings, one sentence each, each linked to its section."""
    items: list[str] = []

    def say(text: str, anchor: str) -> None:
        items.append(f"<li>{text} <a href='#{html.escape(anchor)}'>(figure)</a></li>")

    pj = _read_json(root / "directions" / "probe" / "direction.json")
    if pj and "test_auroc" in pj.get("metrics", {}):
        m = pj["metrics"]
        say(f"<b>Probe</b>: at <code>{html.escape(pj['hook_name'])}</code>, fitted on {m.get('n_train')} texts, it "
            f"separates held-out toxic from non-toxic texts with AUROC <b>{m['test_auroc']:.3f}</b> (accuracy "
            f"{m.get('test_accuracy', float('nan')):.3f}).", "probe-probe")
    dpath = _first(root, f"*/{A.DIRECTIONS}.json")
    if dpath:
        rows = pd.DataFrame(_load_json(dpath)["rows"])
        for r in rows[rows["method"] == "probe"].head(1).itertuples():
            verdict = "above" if getattr(r, "above_chance", 0) else "not above"
            say(f"<b>Neurons along the probe</b>: the top value vector's cosine {r.top_cosine:.3f} is {verdict} what "
                f"random directions reach ({r.chance_max_high:.3f}); {int(r.above_chance)} neurons above chance.",
                f"directions-{dpath.parent.name}")
    for path in _all(root, f"*/{A.DIRECTIONS}.json"):  # each causal check: what passes the goal, else the best
        abl = _read_csv(path.parent / f"{A.ABLATION}.csv")
        if abl is None or not len(abl) or "random_drop_std" not in abl:
            continue
        meta = _load_json(path)
        z = (abl["drop"] - abl["random_drop_mean"]) / abl["random_drop_std"].where(abl["random_drop_std"] > 0)
        if z.isna().all():
            continue
        passing = [r["method"] for r in meta["rows"] if r.get("goal")]
        rows = abl[abl["method"].isin(passing) & z.notna()]
        b = rows.iloc[0] if len(rows) else abl.loc[z.fillna(-1e9).idxmax()]
        beats = b["drop"] > max(0.0, b["random_drop_mean"] + 2 * b["random_drop_std"])  # lowers it, beyond chance
        change = f"lowers toxicity by {b['drop']:.3f}" if b["drop"] > 0 else f"raises toxicity by {-b['drop']:.3f}"
        on = ("prompts with no word the scorer flags" if meta.get("prompt_filter") == "unflagged" else "prompts")
        ameta = _read_json(path.parent / f"{A.ABLATION}.json") or {}
        n, draws = ameta.get("n_prompts"), len(next(iter(ameta.get("random_drops", {}).values()), []))
        what = ("<b>Ranking that meets the goal</b> (precise, causal, specific)" if len(rows)
                else "<b>Best ranking's causal effect</b> (none meets the goal)")
        say(f"{what} on {n or ''} {on}: ablating the top {int(b['k'])} neurons of "
            f"<i>{html.escape(str(b['method']))}</i> {change} at perplexity {b['ppl']:.2f}; random neurons of the same "
            f"layers change it by {-b['random_drop_mean']:+.3f} ± {b['random_drop_std']:.3f} ({draws} draws, perplexity "
            f"{b['random_ppl_mean']:.2f}): {'it beats' if beats else 'it does not beat'} random draws"
            + (" (few draws: confirm with more)." if draws < 8 else "."), f"directions-{path.parent.name}")
    epath = _first(root, f"*/{A.EVAL}.json",  # an evaluation of two models or more
                   lambda p: pd.DataFrame(_load_json(p)["rows"]).get("model", pd.Series(dtype=str)).nunique() > 1)
    if epath:
        t = pd.DataFrame(_load_json(epath)["rows"])
        b, a = t.iloc[0], t.iloc[-1]
        say(f"<b>Fine-tuning</b>: {html.escape(str(a['model']))} writes toxicity {b['toxicity']:.3f} → "
            f"<b>{a['toxicity']:.3f}</b> ({(a['toxicity'] / b['toxicity'] - 1) * 100:+.0f}%) at perplexity "
            f"{b['ppl']:.2f} → {a['ppl']:.2f} ({(a['ppl'] / b['ppl'] - 1) * 100:+.1f}%) against "
            f"{html.escape(str(b['model']))}.", f"eval-{epath.parent.name}")
    gpath = _first(root, f"*/{A.attribution('own', 'groups')}.json")
    if gpath:
        gj = _load_json(gpath)
        g = pd.DataFrame(gj["rows"]).set_index("group")
        shares = ", ".join(f"{k} {g.loc[k, 'share_of_gross'] * 100:.0f}% (paper {PAPER_SHARES[k] * 100:.0f}%)"
                           for k in PAPER_SHARES if k in g.index)
        say(f"<b>What the fine-tuning changed, by neuron group</b> (shares of the gross reduction): {shares}.",
            f"attribution-own-{gpath.parent.name}")
    hpath = _first(root, f"*/{A.attribution('own', 'groups')}.json",  # an attribution with heads
                   lambda p: "heads" in _load_json(p).get("check", {}))
    if hpath:
        c = _load_json(hpath)["check"]
        if c.get("total_change"):
            tot = c["total_change"]
            say(f"<b>Neurons vs heads</b>: of the probe projection's change {tot:.3f}, neurons give {c['neurons']:.3f} "
                f"({c['neurons'] / tot * 100:.0f}%) and attention heads {c['heads']:.3f} ({c['heads'] / tot * 100:.0f}%); "
                f"the parts add up to within {abs(c['error']):.1e}.", f"attribution-own-{hpath.parent.name}")
        top_h = _read_csv(hpath.parent / A.attribution("own", "top-heads.csv"))
        if top_h is not None and len(top_h) and "attends_to" in top_h:
            h = top_h.iloc[0]
            say(f"<b>The head that changed most</b>, L{int(h['layer'])}.H{int(h['head'])} (change {h['delta']:+.3f}, "
                f"{h['delta_pattern_value']:+.3f} of it from its pattern and values), attends to "
                f"<code>{html.escape(str(h['attends_to']))}</code> on the toxic continuations.", f"attribution-own-{hpath.parent.name}")
    if not items:
        return ""
    return "<h2 id='summary'>Summary</h2><ul class='summary'>" + "".join(items) + "</ul>"


def write_report(root: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **kw) -> Path:
    """Write the report of the workspace ``root`` (default ``root/report.html``), atomically."""
    path = Path(out) if out else Path(root) / A.REPORT
    return _io.write_text(path, build_report(root, **kw))
