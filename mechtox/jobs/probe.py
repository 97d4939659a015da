"""``mechtox probe``: fit toxicity probes at every layer from one activation pass and save one."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mechtox.errors import MechtoxError
from mechtox.jobs._base import (
    DEFAULT_DATA,
    MODEL_HELP,
    Context,
    JobConfig,
    check_out,
    model_spec,
    option,
    positive,
)

FIT_LENGTH = 64  # tokens per text of a fit without --max-length

HELP = "fit toxicity probes at every layer from one activation pass and save the best"


@dataclass(frozen=True)
class ProbeConfig(JobConfig):
    model: str | None = option(None, MODEL_HELP.replace("default: base, the workspace's base model",
                                                          "default: base, the workspace's base model; with --eval, "
                                                          "the model the probe was fitted on"))
    data: str | None = option(None, "labelled text: CSV/TSV/JSONL path (optionally .gz) or HF id "
                              + DEFAULT_DATA.format("jigsaw_balanced.csv"))
    text_col: str | None = option(None, "the text column of --data (default: the first of text, comment_text, "
                                        "tweet, sentence, comment there; --eval-data's is found so)")
    label_col: str | None = option(None, "the label column: 0/1, a score in [0, 1], toxic/non-toxic or OFF/NOT "
                                         "(default: the first of label, toxic, toxicity, target, subtask_a, offensive)")
    layers: str = option("all", "'all', 'last', '5', '0,4,8' or '10-20'")
    method: Literal["logreg", "diffmean", "svm"] = option(
        "logreg", "logreg (logistic regression), diffmean (difference of means) or svm (linear SVM)",
        choices=["logreg", "diffmean", "svm"])
    pooling: Literal["mean", "last", "tokens"] = option(
        "mean", "what a text's probe logit is read from: the mean of its token activations, the last one, or "
                "'tokens': the probe applied to every token and a text's logit the log-mean-exp of theirs, fitted "
                "that way (a toxic word in a long text is not averaged away; keeps every token's activations, so "
                "sweep a few --layers)", choices=["mean", "last", "tokens"])
    n_train: int | str = option(3000, "training texts (stratified; default 3000; 'all': every text not held out)",
                                type=lambda v: v if v == "all" or not v.lstrip("-").isdigit() else int(v))
    n_test: int = option(1000, "held-out texts (default 1000)")
    max_length: int | None = option(None, "tokens per text (default: 64 for a fit; for --eval, as many as the probe "
                                          "was fitted on)", type=int)
    batch_size: int = option(16, "texts per forward pass")
    save: str = option("best", "which probe to save: 'best' (by --select-on), 'final', 'together' (with "
                               "--together) or a layer number")
    together: bool = option(False, "also fit one probe on all the --layers together (their pooled activations side "
                                   "by side); it scores texts (probe --eval, eval --probe), not neurons")
    out: str = option("probe", "name of the saved probe (default 'probe')")
    eval: str | None = option(None, "score this saved probe on --data instead of fitting one: accuracy, F1 and AUROC "
                                    "with bootstrap 95%% intervals, the offline scorer's AUROC on the same texts, a "
                                    "calibration figure and how many of the texts the probe was fitted on (run "
                                    "probe-eval-NAME-DATA, + -AGGREGATE when scored by token, + -on-MODEL for a --model other than "
                                    "the probe's own)", metavar="NAME")
    limit: int | None = option(None, "--eval: a stratified sample of N texts of --data; --eval-data: of that file "
                                     "(default: all)", type=int)
    unseen: bool = option(False, "--eval: leave out the texts the probe was fitted on (its saved record of them), so "
                                 "that on the file it was fitted from it is scored on held-out texts only")
    aggregate: Literal["pooled", "max", "logsumexp", "logmeanexp"] = option(
        "pooled", "--eval: score each text as the probe was fitted ('pooled'), or apply the probe to every token and "
                  "take the max, logsumexp or logmeanexp of the logits (a toxic word in a long text is not averaged "
                  "away)", choices=["pooled", "max", "logsumexp", "logmeanexp"])
    C: float | str = option("1", "inverse regularization of the logistic probe on standardised features, or 'cv': chosen "
                         "by 5-fold cross-validation on the training texts among 0.001, 0.01, 0.1, 1 (reported)",
                    flags=("--C",))
    eval_data: str | None = option(None, "labelled texts of another source: the sweep also reports each layer's "
                                         "transfer AUROC there")
    select_on: str = option("test_auroc", "what --save best maximises: held-out or transfer AUROC",
                            choices=["test_auroc", "transfer_auroc"])
    drop_negatives: str | None = option(
        None, "leave out of the fit the non-toxic training texts this regular expression finds, or a named topic "
              "('wikipedia': the platform's own business, which Jigsaw's non-toxic texts name twice as often as its "
              "toxic ones); held-out texts are all kept", metavar="REGEX")
    match_cue: list[str] | None = option(
        None, "repeatable: reweight the non-toxic training texts so that every combination of the cues is as "
              "frequent among them as among the toxic ones (weights clipped at 5); a cue is 'you', 'capitals', "
              "'exclaim', a topic ('wikipedia') or a regular expression", metavar="CUE", append=True)

    def model_specs(self) -> list[str]:  # --eval without --model: the probe's own model, found when it runs
        return [self.model] if self.model else [] if self.eval else ["base"]

    @property
    def fit_length(self) -> int:
        """Tokens per text of a fit (--max-length, 64 without it)."""
        return self.max_length or FIT_LENGTH

    def check(self) -> None:
        if isinstance(self.n_train, str) and self.n_train != "all":
            raise MechtoxError(f"--n-train {self.n_train!r}: give a whole number or 'all'")
        check_out(self.out, "probe name")
        check_out(self.eval, "probe name")
        positive(self.limit, "--limit")
        positive(self.max_length, "--max-length")
        positive(self.batch_size, "--batch-size")
        for name in ("n_test",) + (() if self.n_train == "all" else ("n_train",)):
            if getattr(self, name) < 2:
                raise MechtoxError(f"--{name.replace('_', '-')} {getattr(self, name)}: a stratified split needs a "
                                   "text of each label on each side; give at least 2")
        if self.C != "cv":
            try:
                if not (float(self.C) > 0 and math.isfinite(float(self.C))):
                    raise ValueError
            except ValueError:
                raise MechtoxError(f"--C {self.C!r}: give a positive number or 'cv'") from None
        if self.limit is not None and not (self.eval or self.eval_data):
            raise MechtoxError(f"--limit {self.limit} samples the texts of --eval or --eval-data; without them it would "
                               "do nothing (--n-train and --n-test size the fit)")
        if not self.eval:
            from mechtox._flags import layer_numbers

            layer_numbers(self.layers)  # a malformed --layers is an error before anything loads
        if self.select_on == "transfer_auroc" and not self.eval_data:
            raise MechtoxError("--select-on transfer_auroc needs --eval-data FILE")
        if self.save not in ("best", "final", "together") and not self.save.lstrip("-").isdigit():
            raise MechtoxError(f"--save must be 'best', 'final', 'together' or a layer number, not {self.save!r}")
        if self.unseen and not self.eval:
            raise MechtoxError("--unseen leaves a saved probe's training texts out of its scoring: it needs --eval NAME")
        if self.aggregate != "pooled" and not self.eval:
            raise MechtoxError("--aggregate scores a saved probe: it needs --eval NAME")
        if self.pooling == "tokens" and self.method != "logreg" and not self.eval:
            raise MechtoxError(f"--pooling tokens fits a logistic probe on every token: it needs --method logreg, "
                               f"not {self.method}")
        if self.save == "together" and not self.together:
            raise MechtoxError("--save together needs --together")
        if (self.drop_negatives or self.match_cue) and self.eval:
            raise MechtoxError("--drop-negatives and --match-cue shape a probe's training texts: they do not go "
                               "with --eval")
        if self.drop_negatives or self.match_cue:
            from mechtox.probe import _pattern

            for what, pattern in [("--drop-negatives", self.drop_negatives)] + [("--match-cue", c) for c in self.match_cue or ()]:
                if pattern:
                    _pattern(pattern, what)


@dataclass
class ProbeResult:
    config: ProbeConfig
    sweep: Any      # mechtox.probe.ProbeSweep
    probe: Any      # the saved Probe
    hook: str
    n_texts: int
    source: str


def run(cfg: ProbeConfig, ctx: Context, model=None):
    return evaluate_saved(cfg, ctx, model) if cfg.eval else fit(cfg, ctx, model)


def fit(cfg: ProbeConfig, ctx: Context, model=None) -> ProbeResult:
    import numpy as np

    from mechtox.data import load_labelled

    data = load_labelled(cfg.data, cfg.text_col, cfg.label_col)  # a bad file is an error before TransformerLens loads
    from mechtox.probe import leave_out_seen, probe_sweep, split_indices, stratified_subset

    n_train = len(data) - cfg.n_test if cfg.n_train == "all" else int(cfg.n_train)
    if n_train + cfg.n_test > len(data) or n_train < 2:
        n, test = len(data), max(1, len(data) // 5)  # an 80 / 20 split of what there is
        if n < 3:
            raise MechtoxError(f"{data.source} has {n} rows; a probe needs at least 2 to fit on and 1 to test")
        if cfg.n_train == "all":
            raise MechtoxError(f"{data.source} has {n} rows: --n-test {cfg.n_test} leaves {max(n_train, 0)} to fit on "
                               f"(at least 2 needed); pass a smaller --n-test, e.g. {test}")
        raise MechtoxError(f"{data.source} has {n} rows, fewer than --n-train {cfg.n_train} + --n-test {cfg.n_test}; "
                           f"pass smaller ones, e.g. --n-train {n - test} --n-test {test}, or --n-train all --n-test {test}")
    transfer = None
    if cfg.eval_data:
        transfer = load_labelled(cfg.eval_data)
        transfer = stratified_subset(transfer, cfg.limit, ctx.seed) if cfg.limit else transfer
    # A stratified subset of n_train + n_test rows, then a stratified split of it.
    data = stratified_subset(data, n_train + cfg.n_test, ctx.seed)
    split, transfer, n_repeats, n_seen = leave_out_seen(data, split_indices(data.labels, cfg.n_test, ctx.seed, n_train),
                                                        transfer)
    left_out = [f"{n_repeats} of the {cfg.n_test} held-out texts repeat training texts and are left out of the test "
                "metrics"] if n_repeats else []
    left_out += [f"{n_seen} of the --eval-data texts are training texts and are left out of the transfer "
                 "AUROC"] if n_seen else []
    if cfg.C == "cv" and min(np.bincount(np.asarray(data.labels, int)[split[0]], minlength=2)) < 2:
        raise MechtoxError(f"--C cv: cross-validation needs at least 2 training texts of each label, and the "
                           f"{n_train} training texts have fewer; give --C a number or a larger --n-train")
    weight, shaping = training_weights(cfg, data, split[0])
    model = model if model is not None else ctx.load(cfg.model or "base")
    print(f"probe: {len(data)} texts from {data.source} ({n_train} train / {len(split[1])} test, "
          f"{cfg.fit_length} tokens, {cfg.pooling} pooling, C {cfg.C})"
          + (f"; transfer AUROC on {len(transfer)} texts from {transfer.source}" if transfer else ""), flush=True)
    if shaping:
        print(f"probe: of the training texts, {shaping}", flush=True)
    for line in left_out:
        print(f"probe: {line}", flush=True)
    sweep = probe_sweep(model, data, layers=cfg.layers, method=cfg.method, pooling=cfg.pooling,
                        max_length=cfg.fit_length, batch_size=cfg.batch_size, test_size=cfg.n_test,
                        train_size=n_train, seed=ctx.seed, progress=ctx.progress,
                        C=cfg.C if cfg.C == "cv" else float(cfg.C), select_on=cfg.select_on, transfer=transfer,
                        together=cfg.together, sample_weight=weight, split=split)
    hook = sweep.choose(cfg.save)
    probe = dataclasses.replace(sweep.probes[hook], name=cfg.out,
                                provenance={**sweep.probes[hook].provenance, "model": model_spec(cfg.model or "base", ctx.ws)})
    if shaping:
        probe = dataclasses.replace(probe, provenance={**probe.provenance, "drop_negatives": cfg.drop_negatives,
                                                       "match_cue": cfg.match_cue, "training_texts": shaping})
    return ProbeResult(cfg, sweep, probe, hook, len(data), data.source)


def fitted_on(name: str, probe, ws) -> str:
    """The model spec the saved ``probe`` (named ``name``) records it was fitted on, if the
    workspace can still load it (``base`` otherwise: a direction, or a probe saved by an older
    mechtox, names none)."""
    spec = probe.provenance.get("model")
    if not isinstance(spec, str) or not spec:
        return "base"
    try:
        ws.resolve_model(spec)
    except MechtoxError as e:
        raise MechtoxError(f"probe {name!r} was fitted on {spec!r}, which cannot be loaded now ({e}); pass --model "
                           "to score it on another model") from None
    print(f"probe {name!r} is scored on the model it was fitted on, {spec} (--model scores it on another)", flush=True)
    return spec


def training_weights(cfg: ProbeConfig, data, train) -> tuple[Any, str]:
    """Per-text weights from --drop-negatives and --match-cue (None without them), and a line saying
    what they did, on the training texts ``train`` (indices; the held-out texts get 0 here, and are
    scored unweighted all the same)."""
    import numpy as np

    from mechtox.probe import cue_weights, matching

    if not (cfg.drop_negatives or cfg.match_cue):
        return None, ""
    y = np.asarray(data.labels).astype(int)
    keep = np.zeros(len(y), bool)
    keep[train] = True
    neg_train = int((keep & (y == 0)).sum())
    said = []
    if cfg.drop_negatives:
        keep &= ~(matching(data.texts, cfg.drop_negatives) & (y == 0))
        said.append(f"{neg_train - int((keep & (y == 0)).sum())} of the {neg_train} non-toxic ones left out "
                    f"(--drop-negatives {cfg.drop_negatives})")
        if not (keep & (y == 0)).any():
            raise MechtoxError(f"--drop-negatives {cfg.drop_negatives!r} finds every non-toxic training text of "
                               f"{data.source}: nothing is left to fit against")
    if cfg.match_cue:
        w = cue_weights(data.texts, y, cfg.match_cue, keep)
        neg = keep & (y == 0)
        said.append(f"non-toxic texts reweighted on {' / '.join(cfg.match_cue)} (weights {w[neg].min():.2f}-"
                    f"{w[neg].max():.2f}, {int((w[neg] == 0).sum())} at 0)")
    else:
        w = keep.astype(float)
    return w, "; ".join(said)


FEW_PER_LABEL = 20  # below this many texts of a label, percentile bootstrap intervals undercover


@dataclass
class ProbeEvalResult:
    config: ProbeConfig
    metrics: Any        # DataFrame: metric, value, ci_low, ci_high (probe rows, then the scorer's AUROC)
    reliability: Any    # DataFrame: per bin of predicted probability
    meta: dict

    run_name: str = ""


def eval_run_name(cfg: ProbeConfig, other_model: bool) -> str:
    """``probe-eval-PROBE-DATA`` (``-AGGREGATE`` when scored by token, ``-on-MODEL`` when --model is
    not the model the probe was fitted on): a probe scored on a second data set, or by another
    model, keeps the first one's run."""
    from mechtox.jobs._base import data_label, spec_label

    agg = cfg.aggregate
    name = (f"probe-eval-{cfg.eval}-{data_label(cfg.data)}" + ("" if agg == "pooled" else f"-{agg}")
            + (f"-on-{spec_label(cfg.model)}" if cfg.model and other_model else ""))
    return spec_label(name, most=100)


def evaluate_saved(cfg: ProbeConfig, ctx: Context, model=None) -> ProbeEvalResult:
    """A saved probe scored on another labelled set (transfer), beside the offline scorer."""
    from mechtox.data import load_labelled
    name = cfg.eval
    assert name is not None  # run() sends a config with --eval here
    path = ctx.ws.require_direction(name)
    data = load_labelled(cfg.data, cfg.text_col, cfg.label_col)  # both checked before TransformerLens loads
    import pandas as pd

    from mechtox.probe import (
        Direction,
        ProbeScorer,
        bootstrap_metrics,
        fitted_length,
        reliability_table,
        seen_in_training,
        stratified_subset,
    )
    from mechtox.scorers import get_scorer

    probe = Direction.load(path, several_layers_ok=True)  # checked against the model once it is loaded
    n_unseen_left_out = None
    if cfg.unseen:  # before the sample and the model: what is left is what --limit samples
        from mechtox import _io
        from mechtox.probe import unseen

        record = probe.provenance.get("fitted_text_hashes")
        if not isinstance(record, str):
            raise MechtoxError(f"--unseen: probe {cfg.eval!r} keeps no record of the texts it was fitted on (a "
                               "direction, or a probe saved by an older mechtox); leave out --unseen")
        data, n_unseen_left_out = unseen(data, _io.recorded(record))
    if cfg.limit:
        data = stratified_subset(data, cfg.limit, ctx.seed)
    spec = cfg.model or fitted_on(name, probe, ctx.ws)
    model = model if model is not None else ctx.load(spec)
    probe.check_model(model)
    n_toxic = int(data.labels.sum())
    print(f"probe --eval {cfg.eval}: {len(data)} texts from {data.source} ({n_toxic} toxic)", flush=True)
    fitted = fitted_length(probe)
    length = cfg.max_length or fitted  # as the probe was fitted, unless --max-length says otherwise
    probe_scorer = ProbeScorer(model, probe, batch_size=cfg.batch_size, max_length=length, aggregate=cfg.aggregate)
    p = probe_scorer(data.texts)
    metrics = bootstrap_metrics(data.labels, p, seed=ctx.seed).assign(scorer=probe_scorer.name)
    if cfg.aggregate != "pooled":  # a max over tokens of a probe not fitted so is not calibrated: 0.5 is no threshold
        metrics = metrics[metrics["metric"] == "auroc"]
    scorer = get_scorer("profanity")
    other = bootstrap_metrics(data.labels, scorer(data.texts), seed=ctx.seed).assign(scorer=scorer.name)
    table = pd.concat([metrics, other[other["metric"] == "auroc"]], ignore_index=True)
    table = table[["scorer", "metric", "value", "ci_low", "ci_high"]]
    meta = {"probe": cfg.eval, "model": spec, "probe_model": probe.provenance.get("model"), "hook": probe.hook_name, "aggregate": cfg.aggregate, "max_length": length,
            "data": data.source, "n_texts": len(data),
            "n_toxic": n_toxic, "probe_data": probe.provenance.get("data"),
            "intervals": "percentile bootstrap over texts, 1000 resamples, seed " + str(ctx.seed)}
    notes = []
    if cfg.aggregate != "pooled":
        notes.append(f"--aggregate {cfg.aggregate}: AUROC only; accuracy and F1 need a threshold, and the "
                     "sigmoid of a token maximum is not calibrated (see the reliability figure)")
    if length != fitted:
        notes.append(f"texts read to {length} tokens (--max-length), the probe was fitted on texts cut to "
                     f"{fitted}: its scores shift with the length; leave out --max-length to score them as it was "
                     "fitted")
    seen = seen_in_training(probe, data.texts)
    if seen is not None:
        meta["n_seen_in_training"] = seen
    if n_unseen_left_out is not None:
        meta["n_left_out_as_fitted"] = n_unseen_left_out
        notes.append(f"{n_unseen_left_out} texts the probe was fitted on left out (--unseen)")
    if seen:
        notes.append(f"{seen} of these {len(data)} texts are among those the probe was fitted on: they score as "
                     "training data, not as new data; to measure transfer, score texts it was not fitted on")
    if min(n_toxic, len(data) - n_toxic) < FEW_PER_LABEL:
        notes.append(f"only {n_toxic} toxic and {len(data) - n_toxic} non-toxic texts: with fewer than "
                     f"{FEW_PER_LABEL} of a label the bootstrap intervals are too narrow to trust; score more texts")
    if notes:
        meta["note"] = "; ".join(notes)
    other_model = bool(cfg.model) and model_spec(cfg.model or "", ctx.ws) != probe.provenance.get("model")
    return ProbeEvalResult(cfg, table, reliability_table(data.labels, p), meta, eval_run_name(cfg, other_model))


def output(cfg: ProbeConfig, ws) -> Path:
    """The path (file or run folder) whose presence shows the job's results are written (the main job's reuse test)."""
    return ws.direction_dir(cfg.out) / "direction.json"


def write(res, ctx: Context):
    from mechtox import _io, artifacts, plotting

    if isinstance(res, ProbeEvalResult):
        run = ctx.ws.run_dir(res.run_name)
        artifacts.write_table(run, artifacts.PROBE_EVAL, res.metrics, res.meta)
        _io.write_text(run / artifacts.RELIABILITY, res.reliability.to_csv(index=False))
        plotting.save_figure(plotting.reliability_figure(res.reliability), run / "reliability.html")
        return run

    from mechtox.jobs._base import say_replaced

    d = output(res.config, ctx.ws).parent
    say_replaced(ctx.ws, res.config.out, res.probe.provenance.get("model"), "give --out another name to keep both")
    res.probe.save(d)
    _io.write_text(d / artifacts.SWEEP, res.sweep.table.to_csv(index=False))
    plotting.save_figure(plotting.probe_sweep_figure(res.sweep.table), d / artifacts.SWEEP_FIGURE)
    return d


def summary(res, ctx: Context) -> str:
    from mechtox.tables import markdown

    if isinstance(res, ProbeEvalResult):
        note = f"\n{res.meta['note']}" if "note" in res.meta else ""
        return (markdown(res.metrics, digits=3) + note + f"\nwrote {ctx.ws.run_dir(res.run_name)}: probe-eval.md/csv/json, "
                f"{res.meta['n_texts']} texts from {res.meta['data']}, reliability.csv, reliability.html")

    m = res.probe.metrics
    cols = ["hook", "test_accuracy", "test_f1", "test_auroc", "train_accuracy"]
    cols += [c for c in ("transfer_auroc", "C_by_cv") if c in res.sweep.table]
    return (markdown(res.sweep.table, cols) + "\n"
            f"saved probe {res.config.out!r} at {res.hook} (held-out accuracy {m['test_accuracy']:.3f}, "
            f"AUROC {m['test_auroc']:.3f}) to {ctx.ws.direction_dir(res.config.out)}")
