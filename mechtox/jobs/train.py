"""``mechtox train OBJECTIVE``: fine-tune a model into a named model, with curves and the probe check."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechtox.errors import MechtoxError
from mechtox.jobs._base import (
    MODEL_HELP,
    Context,
    JobConfig,
    changed,
    check_out,
    command_line,
    names,
    option,
    positive,
)
from mechtox.train_config import TrainConfig

HELP = "fine-tune a model (DPO, SFT, probe-guided SFT, probe-ranked DPO, SAP) into a named model"
OBJECTIVES = ["dpo", "sft", "sft-probe", "dpo-probe", "sap"]
_T = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # the library's defaults, stated once


@dataclass(frozen=True)
class TrainJobConfig(JobConfig):
    objective: str = option("dpo", "what to optimise", positional=True, choices=OBJECTIVES)
    model: str = option("base", MODEL_HELP)
    pairs: str = option("pairs", "pair set name or a .jsonl/.tsv path (for sap: the safety pairs, chosen = safe, "
                                 "rejected = harmful)")
    task: str | None = option(None, "sft and sap: the benign task, a {prompt, gold} JSONL (default: the real "
                                    "wiki_samples.jsonl) or a pair set whose chosen texts are the targets")
    limit: int | None = option(None, "use the first N pairs (and N task examples)", type=int)
    probe: str | None = option(None, "probe(s) trained against (sft-probe) or ranking the pairs (dpo-probe)")
    held_out: str | None = option(None, "probe(s) never trained against, measured after training")
    steps: int = option(_T["max_steps"], "optimizer steps")
    lr: float = option(_T["lr"], "peak learning rate (after the warm-up)")
    optimizer: str = option(_T["optimizer"], "AdamW, or RMSprop as Lee et al.", choices=["adamw", "rmsprop"])
    batch_size: int = option(_T["batch_size"], "pairs (or texts) per micro-batch")
    grad_accum: int = option(_T["grad_accum"], "micro-batches per optimizer step")
    warmup_steps: int = option(_T["warmup_steps"], "steps of linear warm-up from 0 to --lr")
    clip: float = option(_T["clip"], "gradient-norm clipping (0: off)")
    beta: float = option(_T["beta"], "DPO temperature (dpo, dpo-probe)")
    probe_lambda: float = option(_T["probe_lambda"], "weight of the probe term (sft-probe)")
    max_completion_tokens: int = option(_T["max_completion_tokens"], "completions keep their first N tokens")
    eval_every: int = option(_T["eval_every"], "validation loss every N steps (0: only at the end)")
    patience: int = option(_T["patience"], "early stopping after N evaluations (--eval-every) without a lower "
                                           "validation loss; the weights at the stop are saved, not the best ones")
    checkpoint_every: int = option(_T["checkpoint_every"], "a resumable training state every N steps")
    backend: str = option(_T["backend"], "where the step runs: hf (the transformers model with the same weights, "
                                         "hooks at TransformerLens names), hooked (the HookedTransformer), auto (hf "
                                         "when every hook the objective needs is mapped)",
                          choices=["auto", "hf", "hooked"])
    compile: bool = option(False, "torch.compile the model's forward (worth it on a GPU)")
    lora_r: int = option(_T["lora_r"], "LoRA rank (0: full fine-tuning); adapters through peft on the hf backend, "
                                       "merged into the saved model")
    lora_alpha: float = option(_T["lora_alpha"], "LoRA scale numerator (update = alpha / r * B A)")
    lora_dropout: float = option(_T["lora_dropout"], "dropout on the LoRA adapters' input")
    lora_targets: str = option(_T["lora_targets"], "modules with adapters: q, k, v, o, gate, up, down (GPT-2 also "
                                                   "c_attn, attn.c_proj, c_fc, mlp.c_proj)")
    fsdp: bool = option(False, "under torchrun: shard the weights, gradients and optimizer state over the processes "
                               "(FSDP; hf backend, full fine-tuning, not sap) instead of replicating them")
    lee_et_al: bool = option(False, "Lee et al.'s settings (lr 1e-6, RMSprop, batch 4, 150 warm-up)")
    resume: bool = option(False, "continue an interrupted run with the same settings")
    sap_layers: str = option(_T["sap_layers"], "sap: blocks that get the safety-aware vector ('auto': 10%% and 28%% "
                                               "of the depth)")
    sap_rho: float = option(_T["sap_rho"], "sap: harmful weight perturbation / weight norm")
    sap_eps: float = option(_T["sap_eps"], "sap: vector coordinate / median |activation|")
    goodhart_n: int = option(800, "labelled texts for the probe accuracy before/after/retrained check (0: skip)")
    data: str | None = None   # labelled texts of the probe check (default: the Jigsaw file); not a flag
    out: str | None = option(None, "name of the trained model (default: the objective)")

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise MechtoxError(f"unknown objective {self.objective!r}; use {', '.join(OBJECTIVES)}")
        check_out(self.name, "model name")
        if self.name == "base":
            raise MechtoxError("--out base would hide the base model; choose another name")
        positive(self.limit, "--limit")
        positive(self.goodhart_n, "--goodhart-n", zero_ok=True)
        if self.objective == "dpo-probe" and not self.probe:
            raise MechtoxError("train dpo-probe needs --probe NAME (the probe that ranks the pairs)")
        if self.objective == "sft-probe" and not self.probe:
            raise MechtoxError("train sft-probe needs --probe NAME[,NAME...] (the probes trained against)")
        self._check_settings_used()
        self.train_config(dtype="float32")  # TrainConfig checks its own fields (steps, lr, batch...)
        from mechtox.distributed import launched

        if self.fsdp and not launched():
            raise MechtoxError("--fsdp shards the model over processes: launch with torchrun --nproc_per_node N "
                               "-m mechtox train ... (N >= 2)")

    def _check_settings_used(self) -> None:
        """A setting the run would ignore is an error, not a silent no-op: --beta outside DPO,
        --probe-lambda outside sft-probe, --sap-* outside sap, --probe outside sft-probe and dpo-probe
        (it had been listed as "trained against" after a plain DPO run), LoRA settings without --lora-r."""
        for settings, objectives, hint in (
                (("beta",), ("dpo", "dpo-probe"), ""), (("probe_lambda",), ("sft-probe",), ""),
                (("sap_layers", "sap_rho", "sap_eps"), ("sap",), ""),
                (("probe",), ("sft-probe", "dpo-probe"), " (to measure a probe before and after training, pass it "
                                                          "as --held-out)")):
            unused = changed(self, settings)
            if unused and self.objective not in objectives:
                raise MechtoxError(f"{', '.join(unused)}: a setting of train {' and '.join(objectives)}; train "
                                   f"{self.objective} does not use it{hint}")
        lora = changed(self, ("lora_alpha", "lora_dropout", "lora_targets"))
        if lora and not self.lora_r:
            raise MechtoxError(f"{', '.join(lora)} set LoRA adapters: add --lora-r N (without it every weight is "
                               "fine-tuned and these do nothing)")

    @property
    def name(self) -> str:
        return self.out or self.objective

    @property
    def task_source(self) -> str | None:
        """The benign task of sft / sap: --task, else the real wiki_samples.jsonl; None for the others."""
        from mechtox.data import data_file

        if self.objective not in ("sft", "sap"):
            return None
        return self.task or data_file("wiki_samples.jsonl")

    @property
    def needs_pairs(self) -> bool:
        """Every objective trains on pairs except sft with a task of its own."""
        return not (self.objective == "sft" and self.task_source)

    def train_config(self, dtype: str, seed: int = 0) -> TrainConfig:
        kw: dict[str, Any] = dict(objective=self.objective, lr=self.lr, optimizer=self.optimizer, batch_size=self.batch_size,
                  grad_accum=self.grad_accum, warmup_steps=self.warmup_steps, max_steps=self.steps, clip=self.clip,
                  beta=self.beta, dtype=dtype, eval_every=self.eval_every, patience=self.patience,
                  checkpoint_every=self.checkpoint_every, seed=seed, probe_lambda=self.probe_lambda,
                  max_completion_tokens=self.max_completion_tokens, sap_layers=self.sap_layers, sap_rho=self.sap_rho,
                  sap_eps=self.sap_eps, backend=self.backend, compile=self.compile,
                  lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                  lora_targets=self.lora_targets, fsdp=self.fsdp)
        if self.lee_et_al:
            from mechtox.train_config import lee_et_al_config

            keep = ("objective", "seed", "eval_every", "dtype", "checkpoint_every", "patience", "backend", "compile", "lora_r",
                    "lora_alpha", "lora_dropout", "lora_targets", "fsdp")
            return lee_et_al_config(**{k: v for k, v in kw.items() if k in keep})
        return TrainConfig(**kw)


@dataclass
class TrainJobResult:
    config: TrainJobConfig
    train_config: TrainConfig
    result: Any         # mechtox.training.TrainResult
    model: Any          # the trained HookedTransformer
    source: str
    probes: list
    held_out: list
    goodhart: Any = None
    goodhart_meta: dict | None = None
    prompts: list[str] = dataclasses.field(default_factory=list)  # of the training data: recorded in the checkpoint
    goodhart_skipped: str = ""  # why the probe check was left out


def load_task(ws, task: str | None, pairs, limit: int | None) -> tuple[list[str], list[str], str]:
    """The benign task of ``train sft`` / ``train sap``: prompts, targets and where they came from.
    ``task`` is a ``{prompt, gold}`` JSONL, or a pair set (name or path) whose chosen texts are the
    targets; None means the pairs already loaded."""
    from mechtox.data import is_wiki_samples, load_pairs, load_wiki_samples

    if task is None:
        if pairs is None:
            raise MechtoxError("no task data: pass --task PATH (a {prompt, gold} JSONL or a pair set)")
        return list(pairs.prompt)[:limit], list(pairs.chosen)[:limit], pairs.source
    if is_wiki_samples(task):
        prompts, golds = load_wiki_samples(task, limit=limit)
        return prompts, golds, str(task)
    p = load_pairs(ws.require_pairs(task), limit=limit)
    return list(p.prompt), list(p.chosen), p.source


def run(cfg: TrainJobConfig, ctx: Context, model=None, replace: bool = False) -> TrainJobResult:
    """Train; ``replace``: a workspace model named ``cfg.name`` is replaced once the new one is saved
    (the main job redoing its step), where the command refuses it."""
    from mechtox.distributed import is_main, launched

    say = print if is_main() else (lambda *a, **k: None)  # under torchrun, rank 0 prints
    ws = ctx.ws
    if cfg.needs_pairs:  # before torch and the model load: a missing pair set is a quick error
        ws.require_pairs(cfg.pairs)
    for n in names(cfg.probe) + names(cfg.held_out):
        ws.require_direction(n)
    from mechtox.model_files import is_checkpoint

    if not (cfg.resume or replace) and is_checkpoint(ws.model_dir(cfg.name)):  # its training state dropped or deleted
        raise MechtoxError(f"the workspace has a model named {cfg.name!r} already ({ws.model_dir(cfg.name)}); "
                           f"choose another --out, or delete that folder to train it anew")
    from mechtox import _io
    from mechtox.data import load_pairs
    from mechtox.probe import Direction, ProbeScorer
    from mechtox.training import make_objective, rank_pairs_by_probe, train

    tcfg = cfg.train_config(ctx.dtype, ctx.seed)
    # the pairs and the task are read before the model loads: a malformed file is a quick error
    pairs = load_pairs(ws.require_pairs(cfg.pairs), limit=cfg.limit) if cfg.needs_pairs else None
    task, source = None, pairs.source if pairs is not None else ""
    if tcfg.objective in ("sft", "sap"):
        t_prompts, t_targets, source = load_task(ws, cfg.task_source, pairs, cfg.limit)
        task = (t_prompts, t_targets)
    check_data = None
    if (cfg.probe or cfg.held_out) and cfg.goodhart_n and is_main():  # read now: a bad file fails before training
        from mechtox.data import load_labelled

        check_data = load_labelled(cfg.data)
    n_examples = len(task[0]) if task is not None else len(pairs) if pairs is not None else 2
    if n_examples < 2:
        raise MechtoxError(f"{source} has {n_examples} example(s); training needs at least 2")
    model = model if model is not None else ctx.load(cfg.model)
    probes = [Direction.load(ws.require_direction(n), model) for n in names(cfg.probe)]
    held_out = [Direction.load(ws.require_direction(n), model) for n in names(cfg.held_out)]
    if tcfg.objective == "dpo-probe":
        assert pairs is not None  # dpo-probe needs pairs
        pairs, swapped = rank_pairs_by_probe(pairs, ProbeScorer(model, probes[0]))
        say(f"ranked {len(pairs)} pairs by probe {probes[0].name!r}: {swapped} swapped")
    objective = make_objective(model, tcfg, pairs, probes, task)
    if tcfg.objective == "sap" and pairs is not None:
        say(f"sap: task {source}, safety pairs {pairs.source}, vectors after blocks {objective.layers}")
    say(f"train {tcfg.objective}: {len(objective)} examples from {source}, {tcfg.max_steps} steps x "
          f"{tcfg.batch_size * tcfg.grad_accum}, lr {tcfg.lr:g} ({tcfg.optimizer}), {tcfg.dtype}, device {model.cfg.device}")
    if getattr(objective, "n_identical", 0):
        say(f"  note: {objective.n_identical} of the {len(objective)} pairs have the same chosen and rejected tokens "
            f"(completions cut to {tcfg.max_completion_tokens} tokens); they add nothing to the gradient")
    out_dir = ws.root / "training" / cfg.name
    again = command_line("train", dataclasses.replace(cfg, resume=False), ctx, resume=True)
    if launched():
        import os

        again = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])} -m {again}"
    if is_main():
        _io.write_json(out_dir / "command.json", {"resume": again})  # for `mechtox models` and after a crash
    try:
        res = train(model, objective, tcfg, out_dir, resume=cfg.resume, progress=ctx.progress)
    except KeyboardInterrupt:
        if is_main() and (out_dir / "state" / "trainer.json").is_file():
            print(f"mechtox: the last checkpoint is in {out_dir / 'state'}; continue with: {again}", file=sys.stderr)
        raise
    prompts = (list(pairs.prompt) if pairs is not None else []) + (list(task[0]) if task is not None else [])
    out = TrainJobResult(cfg, tcfg, res, model, source, probes, held_out, prompts=[p for p in prompts if p.strip()])
    if check_data is not None:
        _goodhart(out, ctx, check_data)
    return out


GOODHART_MIN_PER_LABEL = 4  # texts of each label the probe check needs (a 75 / 25 split with both labels on each side)


def _goodhart(out: TrainJobResult, ctx: Context, data) -> None:
    """The probes' accuracy read by the model before and after training, and retrained on the after
    model, on the labelled texts ``data`` that none of the probes was fitted on (a probe scores its
    own training texts as training data). Too few such texts leave the check out, with a note: it
    runs after training, and must not lose the trained model to an error."""
    import numpy as np

    from mechtox import _io
    from mechtox.probe import stratified_subset
    from mechtox.training import probe_goodhart

    cfg = out.config
    fitted = set().union(*(_io.recorded(p.provenance.get("fitted_text_hashes")) for p in out.probes + out.held_out))
    new = [i for i, h in enumerate(_io.text_hashes(data.texts)) if h not in fitted]
    n_fitted = len(data) - len(new)
    if min(np.bincount(np.asarray(data.labels, int)[new], minlength=2)) < GOODHART_MIN_PER_LABEL:
        out.goodhart_skipped = (f"probe check left out: of the {len(data)} texts of {data.source}, {len(new)} are "
                                f"not among the probes' training texts, fewer than {GOODHART_MIN_PER_LABEL} of one "
                                "label or both")
        return
    data = stratified_subset(data.subset(new), min(cfg.goodhart_n, len(new)), ctx.seed + 1)
    before = ctx.ws.load_model(cfg.model, device=ctx.device, dtype=ctx.dtype)
    out.goodhart = probe_goodhart(before, out.model, out.probes, data, out.held_out, test_size=0.25, seed=ctx.seed,
                                  progress=ctx.progress)
    out.goodhart_meta = {"data": data.source, "n_texts": len(data), "split": "stratified 75/25, seed " + str(ctx.seed),
                         "left_out": f"{n_fitted} texts a probe was fitted on"}


def output(cfg: TrainJobConfig, ws) -> Path:
    """The path (file or run folder) whose presence shows the job's results are written (the main job's reuse test)."""
    return ws.model_dir(cfg.name) / "config.json"


def write(res: TrainJobResult, ctx: Context):
    import json

    import pandas as pd

    from mechtox import _io, artifacts, plotting
    from mechtox.models import save_checkpoint

    cfg, hist = res.config, res.result.history
    save_checkpoint(res.model, output(cfg, ctx.ws).parent, extra={
        "trained_from": cfg.model, "objective": res.train_config.objective, "data": res.source,
        "config": dataclasses.asdict(res.train_config), "backend": res.result.backend, "steps": res.result.steps,
        "stopped_early": res.result.stopped_early, "final_loss": hist[-1]["loss"] if hist else None,
        "best_val_loss": res.result.best_val if math.isfinite(res.result.best_val) else None, "probes": [p.name for p in res.probes],
        "held_out_probes": [p.name for p in res.held_out],
        "trained_prompt_hashes": "".join(sorted(set(_io.text_hashes(res.prompts))))})
    run = ctx.ws.run_dir(artifacts.train_run(cfg.name))
    _io.write_text(run / artifacts.METRICS, "".join(json.dumps(h) + "\n" for h in hist))
    plotting.save_figure(plotting.training_figure(pd.DataFrame(hist)), run / "curves.html")
    if res.goodhart is not None:
        artifacts.write_table(run, artifacts.GOODHART, res.goodhart, res.goodhart_meta or {})
    return ctx.ws.model_dir(cfg.name)


def summary(res: TrainJobResult, ctx: Context) -> str:
    from mechtox.tables import markdown

    r = res.result
    last = r.history[-1] if r.history else {}
    lines = [f"saved model {res.config.name!r} to {ctx.ws.model_dir(res.config.name)} after {r.steps} steps in "
             f"{r.seconds:.0f} s ({r.tokens_per_second:.0f} tok/s); final loss {last.get('loss', float('nan')):.4f}, "
             + (f"best val {r.best_val:.4f}" if math.isfinite(r.best_val) else "no validation examples")
             + (" (stopped early)" if r.stopped_early else ""),
             f"backend {r.backend} ({r.backend_reason}); {r.trainable_params:,} trainable parameters"
             + (f" (LoRA r {res.train_config.lora_r} on {res.train_config.lora_targets}, merged into the saved model)"
                if res.train_config.lora_r else "")]
    if res.goodhart is not None:
        m = res.goodhart_meta or {}
        lines.append(f"probe accuracy before / after / retrained (Goodhart), on {m.get('n_texts')} texts no probe was "
                     f"fitted on ({m.get('left_out')} left out):\n" + markdown(res.goodhart, digits=3))
    if res.goodhart_skipped:
        lines.append(f"note: {res.goodhart_skipped}")
    return "\n".join(lines)
