"""``mechtox rank``: rank all MLP neurons by the cosine of their value vector with a direction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechtox.errors import MechtoxError
from mechtox.jobs._base import (
    MODEL_HELP,
    Context,
    JobConfig,
    check_out,
    option,
    positive,
    spec_label,
)

HELP = "rank all MLP neurons by cosine of their value vector with a direction"


@dataclass(frozen=True)
class RankConfig(JobConfig):
    model: str = option("base", MODEL_HELP)
    probe: str = option("probe", "saved probe or direction name", flags=("--probe", "--direction"))
    top: int = option(100, "neurons listed with their logit-lens tokens")
    tokens: int = option(8, "logit-lens tokens per neuron")
    act_data: str | None = option(None, "toxic text for the activation-weighted ranking (labelled file: toxic rows "
                                        "are used)")
    act_limit: int = option(300, "texts for the activation-weighted ranking")
    svd_top: int = option(128, "value vectors in the SVD")
    out: str | None = option(None, "run name (default rank-<probe>, rank-<probe>-<model> for a --model other than "
                                   "base: rankings of two models keep apart)")

    def check(self) -> None:
        check_out(self.out, "run name")
        for name in ("top", "tokens", "act_limit", "svd_top"):
            positive(getattr(self, name), "--" + name.replace("_", "-"))

    @property
    def run_name(self) -> str:
        return self.out or spec_label(f"rank-{self.probe}" + ("" if self.model == "base" else f"-{spec_label(self.model)}"),
                                      most=100)


@dataclass
class RankResult:
    config: RankConfig
    ranking: Any    # mechtox.neurons.NeuronRanking
    top: Any        # DataFrame of the top neurons with their tokens
    svd: Any
    svd_tokens: list
    has_acts: bool
    d_model: int
    model_name: str


def run(cfg: RankConfig, ctx: Context, model=None) -> RankResult:
    ctx.ws.require_direction(cfg.probe)  # before TransformerLens loads
    from mechtox.neurons import (
        decode_neurons,
        logit_lens,
        mean_activations,
        rank_neurons,
        toxic_svd,
    )
    from mechtox.probe import Direction

    data = None
    if cfg.act_data:  # before the model: a bad file is a quick error
        from mechtox.data import load_labelled

        data = load_labelled(cfg.act_data, both_labels=False)  # toxic text alone will do
        if not data.labels.any():
            raise MechtoxError(f"--act-data {data.source} has no toxic rows (label 1): the activation-weighted ranking "
                               "reads toxic text")
    model = model if model is not None else ctx.load(cfg.model)
    direction = Direction.load(ctx.ws.require_direction(cfg.probe), model)
    mean_acts = None
    if data is not None:
        toxic = [t for t, y in zip(data.texts, data.labels, strict=True) if y == 1][: cfg.act_limit]
        print(f"mean activations on {len(toxic)} toxic texts from {data.source}", flush=True)
        mean_acts = mean_activations(model, toxic, progress=ctx.progress)
    ranking = rank_neurons(model, direction, mean_acts, name=cfg.probe)
    top = decode_neurons(model, ranking.top(cfg.top), cfg.tokens)
    svd = toxic_svd(model, ranking, direction, top_n=cfg.svd_top)
    return RankResult(cfg, ranking, top, svd, logit_lens(model, svd.vectors, cfg.tokens), mean_acts is not None,
                      model.cfg.d_model, model.cfg.model_name)


def output(cfg: RankConfig, ws) -> Path:
    """The path (file or run folder) whose presence shows the job's results are written (the main job's reuse test)."""
    return ws.run_dir(cfg.run_name)


def write(res: RankResult, ctx: Context):
    import pandas as pd

    from mechtox import _io, artifacts, plotting

    run = output(res.config, ctx.ws)
    _io.write_text(run / artifacts.RANKING, res.ranking.table.to_csv(index=False))
    _io.write_text(run / artifacts.TOP_NEURONS, res.top.to_csv(index=False))
    svd = res.svd
    svd_df = pd.DataFrame({"component": range(len(svd.singular_values)), "singular_value": svd.singular_values.numpy(),
                           "cos_with_direction": svd.cos_with_direction.numpy(),
                           "tokens": [" | ".join(t) for t in res.svd_tokens]})
    _io.write_text(run / artifacts.SVD, svd_df.to_csv(index=False))
    plotting.save_figure(plotting.cosine_histogram(res.ranking.table, res.ranking.chance_range), run / "cosine_hist.html")
    plotting.save_figure(plotting.top_neurons_figure(res.top.head(40)), run / "top_neurons.html")
    return run


def summary(res: RankResult, ctx: Context) -> str:
    from mechtox.tables import markdown

    ranking = res.ranking
    cols = ["layer", "neuron", "cosine", "norm"] + (["mean_act", "act_proj"] if res.has_acts else []) + ["tokens"]
    lo, hi = ranking.chance_range
    top_cos = float(ranking.table["cosine"].iloc[0])
    lines = [markdown(res.top, cols, max_rows=20),
             f"top cosine {top_cos:.3f}; the largest cosine of {len(ranking.table)} random vectors in "
             f"{res.d_model} dims ranges {lo:.3f}-{hi:.3f} (10 draws); {ranking.above_chance} neurons lie above it"]
    if top_cos <= hi:
        lines.append(f"WARNING: the top cosines are within the range expected for random vectors: this ranking of "
                     f"{res.config.probe!r} may be noise on {res.model_name}. Try another direction (mechtox directions).")
    lines.append(f"SVD U[0] (|cos| with direction {float(res.svd.cos_with_direction[0]):.3f}) promotes: "
                 f"{' | '.join(res.svd_tokens[0])}")
    lines.append(f"wrote {ctx.ws.run_dir(res.config.run_name)}/ranking.csv, top_neurons.csv, svd.csv, "
                 "cosine_hist.html, top_neurons.html")
    return "\n".join(lines)
