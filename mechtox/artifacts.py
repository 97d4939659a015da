"""Names of the files the commands write in a workspace, shared by the jobs and the report.

A run folder is ``<workspace>/runs/<name>/``; a table ``STEM`` is written as ``STEM.csv``,
``STEM.md`` and ``STEM.json`` (the rows plus what they mean; see :func:`write_table`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mechtox import _io
from mechtox.tables import markdown

# directions/<probe>/
SWEEP = "sweep.csv"                      # one row per layer of a probe sweep
SWEEP_FIGURE = "sweep.html"
# runs/probe-eval-<probe>-<data>/ (+ -<aggregate> when scored by token, -on-<model> with --model)
PROBE_EVAL = "probe-eval"                # table stem: accuracy, F1, AUROC with bootstrap intervals
RELIABILITY = "reliability.csv"
# runs/<rank run>/
RANKING = "ranking.csv"                  # every neuron, by cosine with the direction
TOP_NEURONS = "top_neurons.csv"          # rank: the top neurons of its ranking
TOP_BY_METHOD = "top_neurons_by_method.csv"  # directions: the top 10 of each method (a method column)
SVD = "svd.csv"
# runs/<directions run>/
DIRECTIONS = "directions"                # table stem: one row per method and ranking kind
ABLATION = "ablation"                    # table stem: the causal check
AGREEMENT = "agreement.csv"
OUTLIERS = "outliers.csv"
TOKEN_STATS = "token_stats.csv"
# runs/<eval run>/
EVAL = "eval"                            # table stem
CONTINUATIONS = "continuations.jsonl"
# runs/train-<model>/
TRAIN_PREFIX = "train-"
METRICS = "metrics.jsonl"
GOODHART = "probe-goodhart"              # table stem
# runs/<attribution run>/
ATTRIBUTION_MODES = ("own", "shared")
ABLATION_VS_AFTER = "ablation-vs-after"  # table stem
# the main job
MAIN_STATE = "main.json"                 # runs/<out>/main.json: each step's settings, key and time
MAIN_SUMMARY = "main.json"               # <workspace>/main.json: size, model, data, total time
REPORT = "report.html"


def attribution(mode: str, part: str) -> str:
    """``attribution-<mode>-<part>``: part is groups (table stem), neurons.csv, per-layer.csv,
    top-neurons.csv, groups.html, layers.html, scatter.html, heads.csv, head-groups (table stem),
    kinds-per-layer.csv or kinds.html."""
    return f"attribution-{mode}-{part}"


def train_run(model_name: str) -> str:
    return TRAIN_PREFIX + model_name


def write_table(run: Path, stem: str, table: pd.DataFrame, meta: dict) -> None:
    """``stem.csv``, ``stem.md`` and ``stem.json`` (``meta`` plus the rows), each atomically."""
    _io.write_text(run / f"{stem}.csv", table.to_csv(index=False))
    _io.write_text(run / f"{stem}.md", markdown(table) + "\n")
    _io.write_json(run / f"{stem}.json", {**meta, "rows": json.loads(table.to_json(orient="records"))})
