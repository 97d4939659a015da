"""The ``mechtox`` command line. ``main(argv)`` runs in-process (tests call it directly).

Every bad input a user can make is a one-line ``mechtox: error: ...`` on stderr and exit
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from mechtox.errors import MechtoxError
from mechtox.specs import SPEC_FORMS

# Where a data flag's default comes from (mechtox.data.data_dirs).
_DEFAULT_DATA = ("(default: {} from $MECHTOX_DATA, else shared/data beside the project, else the real-data bundle "
                 "shipped with mechtox)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", "-w", default=None,
                   help="workspace directory (default: $MECHTOX_HOME or ./mechtox-runs)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechtox",
        description="Mechanistic interpretability of toxicity: probes, toxic neurons, interventions, "
                    "DPO attribution. A MODEL is a workspace alias (base, dpo...), a TransformerLens "
                    "model name, smollm2-135m-instruct (offline default) or a path.",
    )
    parser.add_argument("--workspace", "-w", dest="global_workspace", default=None, metavar="DIR",
                        help="workspace directory (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the models, directions and pair sets in the workspace")
    _common(p)
    p.add_argument("--set-base", metavar="MODEL", help="make MODEL the workspace's base model")

    p = sub.add_parser("probe", help="fit toxicity probes at every layer from one activation pass and save the best")
    _common(p)
    p.add_argument("--model", default="base")
    p.add_argument("--data", default=None,
                   help="labelled text: CSV/TSV/JSONL path (optionally .gz) or HF id " + _DEFAULT_DATA.format("jigsaw_balanced.csv"))
    p.add_argument("--text-col", default=None)
    p.add_argument("--label-col", default=None)
    p.add_argument("--layers", default="all", help="'all', 'last', '5', '0,4,8' or '10-20'")
    p.add_argument("--method", default="logreg", choices=["logreg", "diffmean", "svm"])
    p.add_argument("--pooling", default="mean", choices=["mean", "last"])
    p.add_argument("--n-train", type=int, default=3000, help="training texts (stratified; default 3000)")
    p.add_argument("--n-test", type=int, default=1000, help="held-out texts (default 1000)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text (default 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--save", default="best", help="which probe to save: 'best' (held-out AUROC), 'final' or a layer number")
    p.add_argument("--out", default="probe", help="name of the saved probe (default 'probe')")

    p = sub.add_parser("rank", help="rank all MLP neurons by cosine of their value vector with a direction")
    _common(p)
    p.add_argument("--model", default="base")
    p.add_argument("--probe", "--direction", dest="probe", default="probe", help="saved probe or direction name")
    p.add_argument("--top", type=int, default=100)
    p.add_argument("--tokens", type=int, default=8, help="logit-lens tokens per neuron")
    p.add_argument("--act-data", default=None,
                   help="toxic text for the activation-weighted ranking (labelled file: toxic rows are used)")
    p.add_argument("--act-limit", type=int, default=300, help="texts for the activation-weighted ranking")
    p.add_argument("--svd-top", type=int, default=128, help="value vectors in the SVD")
    p.add_argument("--out", default=None, help="run name (default rank-<probe>)")

    p = sub.add_parser("directions", help="compare toxicity directions (probe, unembedding, generation diff-of-means, "
                                          "gradient) by toxic-token precision, causal ablation and agreement")
    _common(p)
    p.add_argument("--model", default="base")
    p.add_argument("--data", default=None, help="labelled text " + _DEFAULT_DATA.format("jigsaw_balanced.csv"))
    p.add_argument("--prompts", default=None, help="prompts for generation " + _DEFAULT_DATA.format("rtp_challenge.jsonl"))
    p.add_argument("--methods", default="probe,unembed,gen-diffmean,gradient")
    p.add_argument("--probe", default=None, help="use this saved probe for the 'probe' method instead of fitting one")
    p.add_argument("--n-texts", type=int, default=2000, help="labelled texts for token statistics and the probe")
    p.add_argument("--k-tokens", type=int, default=50, help="size of the toxic / non-toxic token sets")
    p.add_argument("--toxic-words", default=None, help="comma-separated words overriding the data-derived toxic set")
    p.add_argument("--prompt-filter", default="all", choices=["all", "unflagged"],
                   help="unflagged: keep only prompts with no word the scorer flags, so that toxic continuations "
                        "are written by the model, not copied from the prompt")
    p.add_argument("--fit-prompts", default="rest", choices=["rest", "flagged"],
                   help="prompts the generation-based methods fit on: rest = the ones after the evaluation prompts; "
                        "flagged = (with --prompt-filter unflagged) the prompts the filter removed, words copied from "
                        "the prompt left out of the attribution, so every unflagged prompt is held out")
    p.add_argument("--n-gen-prompts", type=int, default=200,
                   help="prompts generated from for gen-diffmean and the contrast (the ones after the evaluation prompts)")
    p.add_argument("--contrast", default=None,
                   help="methods also ranked by contrast, (a_toxic - a_nontoxic) * (v . w) on the model's own "
                        "generations ('' for none; default: unembed when it is among --methods)")
    p.add_argument("--attribution", action="store_true",
                   help="also rank neurons by attribution patching of the model's own toxic words (no direction)")
    p.add_argument("--rerank", default="",
                   help="methods whose top --rerank-top neurons by cosine are also ranked by attribution patching "
                        "of the model's own toxic words (specific to the direction, ordered by use); 'lens' takes "
                        "instead every neuron whose signed logit lens has a toxic token (no direction needed)")
    p.add_argument("--rerank-top", type=int, default=1000, help="cosine candidates kept by --rerank")
    p.add_argument("--benign-tokens", type=int, default=4096,
                   help="Wikitext-2 tokens (after the --ppl-tokens ones) whose own use of each neuron --rerank "
                        "subtracts, per token, so neurons every word needs rank low (0: rank by use alone, "
                        "per continuation)")
    p.add_argument("--n-eval-prompts", type=int, default=100, help="prompts for the causal check (0: skip it)")
    p.add_argument("--ks", default="10,100,1000", help="top-k sizes ablated")
    p.add_argument("--random-draws", type=int, default=3, help="random neuron sets per method for k=100")
    p.add_argument("--metric", default="raw", choices=["raw", "final_norm", "whitened"],
                   help="metric of the value-vector cosines (recorded in every output)")
    p.add_argument("--ppl-tokens", type=int, default=4000, help="Wikitext-2 tokens for perplexity beside each ablation")
    p.add_argument("--out", default="directions", help="run name; directions are saved as their method names")

    p = sub.add_parser("eval", help="toxicity / perplexity / F1 / probe score under interventions")
    _common(p)
    p.add_argument("--model", default="base")
    p.add_argument("--intervention", "-i", action="append", default=None, metavar="SPEC",
                   help="repeatable; forms: " + "; ".join(SPEC_FORMS).replace("%", "%%"))
    p.add_argument("--prompts", default=None, help="prompts " + _DEFAULT_DATA.format("rtp_challenge.jsonl"))
    p.add_argument("--limit", type=int, default=None, help="first N prompts")
    p.add_argument("--probe", default=None, help="also score continuations with this probe (read by the model without interventions)")
    p.add_argument("--scorer", default="profanity", help="profanity (offline), detoxify, perspective or probe:NAME")
    p.add_argument("--text", default=None, help="text for perplexity " + _DEFAULT_DATA.format("wikitext2_test.raw"))
    p.add_argument("--ppl-tokens", type=int, default=20000)
    p.add_argument("--wiki", default=None, help="{prompt, gold} JSONL for F1 " + _DEFAULT_DATA.format("wiki_samples.jsonl"))
    p.add_argument("--f1-prompts", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--out", default="eval", help="run name")

    p = sub.add_parser("pairs", help="preference pairs: greedy vs steered-toward-toxicity continuations (or ParaDetox)")
    _common(p)
    p.add_argument("--model", default="base")
    p.add_argument("--prompts", default=None, help="prompts (default: shared wiki_samples.jsonl, as Lee et al. used Wikitext-2)")
    p.add_argument("--direction", default="unembed", help="direction steered along for the rejected continuation")
    p.add_argument("--alpha", type=float, default=8.0, help="steering strength (added alpha x unit direction)")
    p.add_argument("--n", type=int, default=200, help="number of prompts")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--paradetox", default=None, help="convert this ParaDetox TSV instead of generating")
    p.add_argument("--out", default="pairs", help="name of the pair set")

    p = sub.add_parser("train", help="fine-tune a model (DPO, SFT, probe-guided SFT, probe-ranked DPO, SAP) into a "
                                     "named model")
    _common(p)
    p.add_argument("objective", choices=["dpo", "sft", "sft-probe", "dpo-probe", "sap"])
    p.add_argument("--model", default="base")
    p.add_argument("--pairs", default="pairs", help="pair set name or a .jsonl/.tsv path (for sap: the safety pairs, "
                                                   "chosen = safe, rejected = harmful)")
    p.add_argument("--task", default=None,
                   help="sft and sap: the benign task, a {prompt, gold} JSONL (default: the real wiki_samples.jsonl) "
                        "or a pair set whose chosen texts are the targets")
    p.add_argument("--limit", type=int, default=None, help="use the first N pairs (and N task examples)")
    p.add_argument("--probe", default=None, help="probe(s) trained against (sft-probe) or ranking the pairs (dpo-probe)")
    p.add_argument("--held-out", default=None, help="probe(s) never trained against, measured after training")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "rmsprop"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--clip", type=float, default=10.0)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--probe-lambda", type=float, default=1.0)
    p.add_argument("--max-completion-tokens", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--patience", type=int, default=0, help="early stopping after N evaluations without improvement")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--lee-et-al", action="store_true", help="Lee et al.'s settings (lr 1e-6, RMSprop, batch 4, 150 warm-up)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same settings")
    p.add_argument("--sap-layers", default="auto", help="sap: blocks that get the safety-aware vector ('auto': 10%% "
                                                         "and 28%% of the depth)")
    p.add_argument("--sap-rho", type=float, default=1e-3, help="sap: harmful weight perturbation / weight norm")
    p.add_argument("--sap-eps", type=float, default=0.25, help="sap: vector coordinate / median |activation|")
    p.add_argument("--goodhart-n", type=int, default=800,
                   help="labelled texts for the probe accuracy before/after/retrained check (0: skip)")
    p.add_argument("--out", default=None, help="name of the trained model (default: the objective)")

    p = sub.add_parser("attribute", help="attribute the change from --before to --after to individual neurons")
    _common(p)
    p.add_argument("--before", default="base")
    p.add_argument("--after", required=True, help="the fine-tuned model (e.g. dpo)")
    p.add_argument("--direction", "--probe", dest="direction", default="unembed")
    p.add_argument("--prompts", default=None, help="prompts " + _DEFAULT_DATA.format("rtp_challenge.jsonl"))
    p.add_argument("--n", type=int, default=200, help="prompts to attribute over")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--mode", default="both", choices=["own", "shared", "both"],
                   help="own: each model's own continuations; shared: both read the before model's")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--n-eval-prompts", type=int, default=100, help="prompts for the ablation-vs-after table (0: skip)")
    p.add_argument("--ablate-ks", default="100,200,1000")
    p.add_argument("--ppl-tokens", type=int, default=8000)
    p.add_argument("--f1-prompts", type=int, default=100)
    p.add_argument("--out", default=None, help="run name (default attribute-<before>-<after>)")

    p = sub.add_parser("report", help="one self-contained HTML report of the workspace's results")
    _common(p)
    p.add_argument("--out", default=None, help="output file (default: <workspace>/report.html)")
    p.add_argument("--title", default="mechtox report")

    p = sub.add_parser("run", help="the main job: probe, directions, neurons, pairs, DPO, evaluation, attribution, "
                                   "report (finished steps are reused)")
    _common(p)
    p.add_argument("--model", default="base")
    p.add_argument("--size", default="auto", choices=["auto", "quick", "small", "full"],
                   help="small: 15-20 minutes on 2 CPU cores; full: the papers' sizes (auto: full on a GPU); "
                        "quick: a few minutes, a check that every step runs (not results)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder of the data files (jigsaw_balanced.csv, rtp_challenge.jsonl, paradetox.tsv, "
                        "wikitext2_test.raw, wiki_samples.jsonl; each may be .gz); default: $MECHTOX_DATA, else "
                        "shared/data beside the project, else the real-data bundle shipped with mechtox. 'builtin': "
                        "the template-built toy data, for tests on the tiny model only")
    p.add_argument("--alpha", type=float, default=8.0, help="steering strength for the rejected continuations")
    p.add_argument("--fresh", action="store_true", help="redo every step")
    p.add_argument("--out", default="main", help="run name prefix (default 'main')")
    return parser


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _workspace(args):
    from mechtox.workspace import Workspace

    return Workspace(args.workspace)


def _load(ws, spec: str, args):
    t = time.perf_counter()
    model = ws.load_model(spec, device=args.device, dtype=args.dtype)
    _say(args, f"loaded {spec} ({model.cfg.model_name}, {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
               f"d_mlp {model.cfg.d_mlp}) on {model.cfg.device} in {time.perf_counter() - t:.1f} s")
    return model


def _say(args, msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- commands


def cmd_models(args) -> int:
    ws = _workspace(args)
    if args.set_base:
        ws.resolve_model(args.set_base)
        ws.set_base(args.set_base)
        print(f"base is now {args.set_base}")
    print(f"workspace: {ws.root}")
    print(f"base -> {ws.base_spec}")
    from mechtox.models import checkpoint_info

    for name in ws.models()[1:]:
        info = checkpoint_info(ws.model_dir(name))
        print(f"  model {name}: {info['cfg'].get('model_name')} ({info.get('saved_at', '')})")
    for name in ws.directions():
        print(f"  direction {name}")
    for name in ws.pairs():
        print(f"  pairs {name}")
    for name in ws.runs():
        print(f"  run {name}")
    return 0


def fit_and_save_probe(ws, model, args, data_source: str, out: str, n_train: int, n_test: int):
    """Probe sweep + save (shared by ``probe`` and ``run``). Returns the sweep and saved probe."""
    import dataclasses

    from mechtox import plotting
    from mechtox.data import load_labelled
    from mechtox.probe import probe_sweep
    from mechtox.tables import markdown

    data = load_labelled(data_source, getattr(args, "text_col", None), getattr(args, "label_col", None))
    if n_train + n_test > len(data):
        raise MechtoxError(f"{data.source} has {len(data)} rows, fewer than --n-train {n_train} + --n-test {n_test}")
    from mechtox.probe import split_indices

    # A stratified subset of n_train + n_test rows, then a stratified split of it.
    if n_train + n_test < len(data):
        keep, _ = split_indices(data.labels, test_size=len(data) - n_train - n_test, seed=args.seed)
        data = data.subset(keep)
    _say(args, f"probe: {len(data)} texts from {data.source} ({n_train} train / {n_test} test, "
               f"{getattr(args, 'max_length', 64)} tokens, {getattr(args, 'pooling', 'mean')} pooling)")
    sweep = probe_sweep(model, data, layers=getattr(args, "layers", "all"), method=getattr(args, "method", "logreg"),
                        pooling=getattr(args, "pooling", "mean"), max_length=getattr(args, "max_length", 64),
                        batch_size=getattr(args, "batch_size", 16), test_size=n_test, train_size=n_train,
                        seed=args.seed, progress=not args.quiet)
    save = getattr(args, "save", "best")
    if save == "best":
        hook = sweep.best_hook
    elif save == "final":
        hook = sweep.table["hook"].iloc[-1]
    else:
        try:
            layer = int(save)
        except ValueError:
            raise MechtoxError(f"--save must be 'best', 'final' or a layer number, not {save!r}") from None
        rows = sweep.table[sweep.table["layer"] == layer]
        if rows.empty:
            raise MechtoxError(f"--save {layer}: no probe at that layer (layers swept: {sorted(set(sweep.table['layer']))})")
        hook = rows["hook"].iloc[0]
    probe = dataclasses.replace(sweep.probes[hook], name=out)
    d = ws.direction_dir(out)
    probe.save(d)
    from mechtox import _io

    _io.write_text(d / "sweep.csv", sweep.table.to_csv(index=False))
    plotting.save_figure(plotting.probe_sweep_figure(sweep.table), d / "sweep.html")
    print(markdown(sweep.table, ["hook", "test_accuracy", "test_f1", "test_auroc", "train_accuracy"]))
    print(f"saved probe {out!r} at {hook} (held-out accuracy {probe.metrics['test_accuracy']:.3f}, "
          f"AUROC {probe.metrics['test_auroc']:.3f}) to {d}")
    return sweep, probe


def cmd_probe(args) -> int:
    ws = _workspace(args)
    _seed(args.seed)
    from mechtox.workspace import check_name

    check_name(args.out, "probe name")
    model = _load(ws, args.model, args)
    fit_and_save_probe(ws, model, args, args.data, args.out, args.n_train, args.n_test)
    return 0


def rank_and_save(ws, model, args, probe_name: str, out: str, top: int, act_data: str | None = None,
                  act_limit: int = 300, n_tokens: int = 8, svd_top: int = 128):
    """Neuron ranking + decoded tokens + SVD + figures (shared by ``rank`` and ``run``)."""
    import pandas as pd

    from mechtox import _io, plotting
    from mechtox.neurons import (
        decode_neurons,
        logit_lens,
        mean_activations,
        rank_neurons,
        toxic_svd,
    )
    from mechtox.probe import Direction
    from mechtox.tables import markdown

    direction = Direction.load(ws.require_direction(probe_name), model)
    mean_acts = None
    if act_data:
        from mechtox.data import load_labelled

        data = load_labelled(act_data)
        toxic = [t for t, y in zip(data.texts, data.labels, strict=True) if y == 1][:act_limit]
        _say(args, f"mean activations on {len(toxic)} toxic texts from {data.source}")
        mean_acts = mean_activations(model, toxic, progress=not args.quiet)
    ranking = rank_neurons(model, direction, mean_acts, name=probe_name)
    topk = decode_neurons(model, ranking.top(top), n_tokens)
    svd = toxic_svd(model, ranking, direction, top_n=svd_top)
    svd_tokens = logit_lens(model, svd.vectors, n_tokens)
    run = ws.run_dir(out)
    _io.write_text(run / "ranking.csv", ranking.table.to_csv(index=False))
    _io.write_text(run / "top_neurons.csv", topk.to_csv(index=False))
    svd_df = pd.DataFrame({"component": range(len(svd.singular_values)), "singular_value": svd.singular_values.numpy(),
                           "cos_with_direction": svd.cos_with_direction.numpy(),
                           "tokens": [" | ".join(t) for t in svd_tokens]})
    _io.write_text(run / "svd.csv", svd_df.to_csv(index=False))
    plotting.save_figure(plotting.cosine_histogram(ranking.table, ranking.chance_range), run / "cosine_hist.html")
    plotting.save_figure(plotting.top_neurons_figure(topk.head(40)), run / "top_neurons.html")
    cols = ["layer", "neuron", "cosine", "norm"] + (["mean_act", "act_proj"] if mean_acts is not None else []) + ["tokens"]
    print(markdown(topk, cols, max_rows=20))
    lo, hi = ranking.chance_range
    top_cos = float(ranking.table["cosine"].iloc[0])
    print(f"top cosine {top_cos:.3f}; the largest cosine of {len(ranking.table)} random vectors in "
          f"{model.cfg.d_model} dims ranges {lo:.3f}-{hi:.3f} (10 draws); {ranking.above_chance} neurons lie above it")
    if top_cos <= hi:
        print(f"WARNING: the top cosines are within the range expected for random vectors: this ranking of "
              f"{probe_name!r} may be noise on {model.cfg.model_name}. Try another direction (mechtox directions).")
    print(f"SVD U[0] (|cos| with direction {float(svd.cos_with_direction[0]):.3f}) promotes: {' | '.join(svd_tokens[0])}")
    print(f"wrote {run}/ranking.csv, top_neurons.csv, svd.csv, cosine_hist.html, top_neurons.html")
    return ranking, topk, svd


def cmd_rank(args) -> int:
    ws = _workspace(args)
    _seed(args.seed)
    ws.require_direction(args.probe)
    model = _load(ws, args.model, args)
    rank_and_save(ws, model, args, args.probe, args.out or f"rank-{args.probe}", args.top, args.act_data,
                  args.act_limit, args.tokens, args.svd_top)
    return 0


def cmd_eval(args) -> int:
    import json

    import numpy as np

    from mechtox import _io, plotting
    from mechtox.data import data_file, load_prompts, load_text, load_wiki_samples
    from mechtox.evaluate import EvalConfig, evaluate
    from mechtox.pipeline import _write_table
    from mechtox.probe import Direction
    from mechtox.scorers import get_scorer
    from mechtox.specs import build_intervention
    from mechtox.tables import markdown
    from mechtox.workspace import check_name

    ws = _workspace(args)
    _seed(args.seed)
    check_name(args.out, "run name")
    prompts = load_prompts(args.prompts, limit=args.limit)
    text_src = args.text or data_file("wikitext2_test.raw")
    wiki_src = args.wiki or data_file("wiki_samples.jsonl")
    if args.probe:
        ws.require_direction(args.probe)
    model = _load(ws, args.model, args)
    specs = args.intervention or ["none"]
    text = load_text(text_src)
    ivs = [build_intervention(spec, model, ws, text_for_means=[text[:20000]]) for spec in specs]
    scorer = get_scorer(args.scorer, ws, model)
    probe = Direction.load(ws.require_direction(args.probe), model) if args.probe else None
    wiki = load_wiki_samples(wiki_src) if wiki_src else None
    cfg = EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, ppl_tokens=args.ppl_tokens,
                     f1_prompts=args.f1_prompts if wiki else 0)
    _say(args, f"eval: {len(prompts)} prompts from {prompts.source}, {len(ivs)} intervention(s), scorer {scorer.name}")
    table, raw = evaluate(model, ivs, prompts.prompts, scorer, text, wiki, cfg, probe, progress=not args.quiet,
                          model_label=args.model)
    meta = {"model": args.model, "model_name": model.cfg.model_name, "prompts": prompts.source, "n_prompts": len(prompts),
            "scorer": scorer.name, "probe": args.probe, "text": text_src, "wiki": wiki_src, "config": vars(cfg),
            "toxicity": "mean scorer probability of the greedy continuation scored alone; toxic_frac: share > 0.5",
            "ppl": "exp(mean token NLL) over non-overlapping windows"}
    if prompts.continuation_toxicity is not None and scorer.name == "profanity-check":
        from scipy.stats import spearmanr

        ok = np.isfinite(prompts.continuation_toxicity)
        human = scorer([c for c, k in zip(prompts.continuations, ok, strict=True) if k])
        rho = float(spearmanr(human, prompts.continuation_toxicity[ok]).statistic)
        meta["spearman_scorer_vs_perspective_on_human_continuations"] = rho
        print(f"{scorer.name} vs Perspective TOXICITY on the {int(ok.sum())} human continuations: Spearman {rho:.3f}")
    run = ws.run_dir(args.out)
    _write_table(run, "eval", table, meta)
    _io.write_text(run / "continuations.jsonl", "".join(
        json.dumps({"intervention": k, "prompt": p, "continuation": c, "score": sc})
        + "\n" for k, v in raw.items() for p, c, sc in zip(prompts.prompts, v["continuations"], v["scores"], strict=True)))
    plotting.save_figure(plotting.eval_figure(table), run / "eval.html")
    print(markdown(table))
    print(f"wrote {run}/eval.md, eval.csv, eval.json, continuations.jsonl, eval.html")
    return 0


def cmd_directions(args) -> int:
    from mechtox.pipeline import compare_directions

    ws = _workspace(args)
    _seed(args.seed)
    model = _load(ws, args.model, args)
    compare_directions(ws, model, args)
    return 0


def cmd_pairs(args) -> int:
    from mechtox.pipeline import make_pairs

    ws = _workspace(args)
    _seed(args.seed)
    if not args.paradetox:
        ws.require_direction(args.direction)
        model = _load(ws, args.model, args)
    else:
        model = None
    make_pairs(ws, model, args)
    return 0


def cmd_train(args) -> int:
    from mechtox.pipeline import needs_pairs, run_training

    ws = _workspace(args)
    _seed(args.seed)
    args.out = args.out or args.objective
    if needs_pairs(args):  # before the model loads: a missing pair set is a quick error
        ws.require_pairs(args.pairs)
    model = _load(ws, args.model, args)
    run_training(ws, model, args)
    return 0


def cmd_attribute(args) -> int:
    from mechtox.models import same_architecture
    from mechtox.pipeline import run_attribution

    ws = _workspace(args)
    _seed(args.seed)
    ws.resolve_model(args.after)
    ws.require_direction(args.direction)
    args.out = args.out or f"attribute-{args.before}-{args.after}"
    before = _load(ws, args.before, args)
    after = _load(ws, args.after, args)
    same_architecture(before, after)
    run_attribution(ws, before, after, args)
    return 0


def cmd_report(args) -> int:
    from mechtox.report import write_report

    ws = _workspace(args)
    if not ws.root.is_dir():
        raise MechtoxError(f"no workspace at {ws.root}; run some commands first (e.g. mechtox run)")
    path = write_report(ws.root, args.out, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_run(args) -> int:
    from mechtox.pipeline import main_job

    ws = _workspace(args)
    _seed(args.seed)
    ws.resolve_model(args.model)
    main_job(ws, args)
    return 0


COMMANDS = {"models": cmd_models, "probe": cmd_probe, "rank": cmd_rank, "directions": cmd_directions,
            "eval": cmd_eval, "pairs": cmd_pairs, "train": cmd_train,
            "attribute": cmd_attribute, "report": cmd_report, "run": cmd_run}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.command:
        parser.print_help()
        return 0
    if getattr(args, "workspace", None) is None:
        args.workspace = args.global_workspace
    if getattr(args, "quiet", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return COMMANDS[args.command](args)
    except MechtoxError as e:
        print(f"mechtox: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechtox: interrupted", file=sys.stderr)
        return 130


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
