"""The job layer: one module per command, each with a frozen config dataclass (its options,
defaults and help; a :class:`~mechtox.jobs._base.JobConfig`, whose fields are checked against their
types and then by its ``check`` when it is made, before any model loads), ``run(config, ctx) ->
result``, ``write(result, ctx)`` (the files) and ``summary(result, ctx)`` (what is printed).

The CLI only parses arguments into these configs and calls :func:`execute`; notebooks and
scripts can do the same::

    from mechtox.jobs import Context, execute, probe
    res = execute(probe, probe.ProbeConfig(n_train=800, n_test=400), Context(workspace="ws"))

Library modules never import this package.
"""

from __future__ import annotations

from typing import Any

from mechtox.jobs import (
    attribute,
    directions,
    evaluate,
    export,
    main,
    models,
    pairs,
    probe,
    rank,
    report,
    train,
)
from mechtox.jobs._base import Context, execute

# command -> (module, config class), in the order `mechtox --help` lists them
COMMANDS: dict[str, tuple[Any, type]] = {
    "models": (models, models.ModelsConfig),
    "probe": (probe, probe.ProbeConfig),
    "rank": (rank, rank.RankConfig),
    "directions": (directions, directions.DirectionsConfig),
    "eval": (evaluate, evaluate.EvalJobConfig),
    "pairs": (pairs, pairs.PairsConfig),
    "train": (train, train.TrainJobConfig),
    "attribute": (attribute, attribute.AttributeConfig),
    "export": (export, export.ExportConfig),
    "report": (report, report.ReportConfig),
    "run": (main, main.MainConfig),
}


__all__ = ["COMMANDS", "Context", "execute"]
