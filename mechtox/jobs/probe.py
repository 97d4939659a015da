"""``mechtox probe``: fit toxicity probes at every layer from one activation pass and save one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from mechtox.errors import MechtoxError
from mechtox.jobs._base import DEFAULT_DATA, Context, check_out, option, positive

HELP = "fit toxicity probes at every layer from one activation pass and save the best"


@dataclass(frozen=True)
class ProbeConfig:
    model: str = option("base")
    data: str | None = option(None, "labelled text: CSV/TSV/JSONL path (optionally .gz) or HF id "
                              + DEFAULT_DATA.format("jigsaw_balanced.csv"))
    text_col: str | None = option(None)
    label_col: str | None = option(None)
    layers: str = option("all", "'all', 'last', '5', '0,4,8' or '10-20'")
    method: Literal["logreg", "diffmean", "svm"] = option("logreg", choices=["logreg", "diffmean", "svm"])
    pooling: Literal["mean", "last"] = option("mean", choices=["mean", "last"])
    n_train: int = option(3000, "training texts (stratified; default 3000)")
    n_test: int = option(1000, "held-out texts (default 1000)")
    max_length: int = option(64, "tokens per text (default 64)")
    batch_size: int = option(16)
    save: str = option("best", "which probe to save: 'best' (held-out AUROC), 'final' or a layer number")
    out: str = option("probe", "name of the saved probe (default 'probe')")

    def __post_init__(self) -> None:
        check_out(self.out, "probe name")
        for name in ("n_train", "n_test", "max_length", "batch_size"):
            positive(getattr(self, name), "--" + name.replace("_", "-"))
        if self.save not in ("best", "final") and not self.save.lstrip("-").isdigit():
            raise MechtoxError(f"--save must be 'best', 'final' or a layer number, not {self.save!r}")


@dataclass
class ProbeResult:
    config: ProbeConfig
    sweep: Any      # mechtox.probe.ProbeSweep
    probe: Any      # the saved Probe
    hook: str
    n_texts: int
    source: str


def run(cfg: ProbeConfig, ctx: Context, model=None) -> ProbeResult:
    from mechtox.data import load_labelled
    from mechtox.probe import probe_sweep, stratified_subset

    data = load_labelled(cfg.data, cfg.text_col, cfg.label_col)
    if cfg.n_train + cfg.n_test > len(data):
        raise MechtoxError(f"{data.source} has {len(data)} rows, fewer than --n-train {cfg.n_train} + --n-test {cfg.n_test}")
    model = model if model is not None else ctx.load(cfg.model)
    # A stratified subset of n_train + n_test rows, then a stratified split of it.
    data = stratified_subset(data, cfg.n_train + cfg.n_test, ctx.seed)
    print(f"probe: {len(data)} texts from {data.source} ({cfg.n_train} train / {cfg.n_test} test, "
          f"{cfg.max_length} tokens, {cfg.pooling} pooling)", flush=True)
    sweep = probe_sweep(model, data, layers=cfg.layers, method=cfg.method, pooling=cfg.pooling,
                        max_length=cfg.max_length, batch_size=cfg.batch_size, test_size=cfg.n_test,
                        train_size=cfg.n_train, seed=ctx.seed, progress=ctx.progress)
    hook = sweep.choose(cfg.save)
    probe = dataclasses.replace(sweep.probes[hook], name=cfg.out)
    return ProbeResult(cfg, sweep, probe, hook, len(data), data.source)


def write(res: ProbeResult, ctx: Context):
    from mechtox import _io, artifacts, plotting

    d = ctx.ws.direction_dir(res.config.out)
    res.probe.save(d)
    _io.write_text(d / artifacts.SWEEP, res.sweep.table.to_csv(index=False))
    plotting.save_figure(plotting.probe_sweep_figure(res.sweep.table), d / artifacts.SWEEP_FIGURE)
    return d


def summary(res: ProbeResult, ctx: Context) -> str:
    from mechtox.tables import markdown

    m = res.probe.metrics
    return (markdown(res.sweep.table, ["hook", "test_accuracy", "test_f1", "test_auroc", "train_accuracy"]) + "\n"
            f"saved probe {res.config.out!r} at {res.hook} (held-out accuracy {m['test_accuracy']:.3f}, "
            f"AUROC {m['test_auroc']:.3f}) to {ctx.ws.direction_dir(res.config.out)}")
