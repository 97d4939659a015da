"""Multi-step jobs behind the CLI (each step a library call; outputs written atomically)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import numpy as np
import pandas as pd

from mechtox import _io, plotting
from mechtox.data import data_file
from mechtox.errors import MechtoxError
from mechtox.tables import markdown


def compare_directions(ws, model, args) -> dict[str, Any]:
    """``mechtox directions``: fit every direction method, rank neurons with each, validate.

    Writes ``runs/<out>/directions.{md,csv,json}``, ``ablation.{md,csv,json}``,
    ``agreement.csv``, ``top_neurons.csv``, ``outliers.csv``, ``token_stats.csv`` and figures;
    saves each direction in the workspace under its method name.
    """
    from mechtox.activations import collect_activations
    from mechtox.data import load_labelled, load_prompts, load_text
    from mechtox.directions import (
        DIRECTION_METHODS,
        activation_contrast,
        benign_attribution,
        copy_stats,
        final_resid_hook,
        generation_diffmean_direction,
        gradient_direction,
        metric_scale,
        neuron_attribution,
        outlier_dims,
        rerank_by_attribution,
        split_generations,
        token_log_odds,
        token_sets,
        toxic_lens_neurons,
        unembedding_direction,
        unflagged_prompts,
        words_to_tokens,
    )
    from mechtox.neurons import decode_neurons, expected_max_cosine, rank_neurons
    from mechtox.probe import Direction, fit_probe, split_indices
    from mechtox.scorers import get_scorer
    from mechtox.validation import agreement, causal_validation, goal_check, precision_at_k
    from mechtox.workspace import check_name

    check_name(args.out, "run name")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in DIRECTION_METHODS]
    if bad:
        raise MechtoxError(f"unknown direction method(s) {bad}; use {', '.join(DIRECTION_METHODS)}")
    contrast = getattr(args, "contrast", None)
    if contrast is None:  # the default follows --methods
        contrast = "unembed" if "unembed" in methods else ""
    contrast_methods = [m.strip() for m in contrast.split(",") if m.strip()]
    rerank_methods = [m.strip() for m in (getattr(args, "rerank", "") or "").split(",") if m.strip()]
    for flag, chosen in (("--contrast", contrast_methods), ("--rerank", rerank_methods)):
        unknown = [m for m in chosen if m not in methods and not (flag == "--rerank" and m == "lens")]
        if unknown:
            raise MechtoxError(f"{flag} {unknown}: not among --methods {methods}")
    ks = [int(k) for k in str(args.ks).split(",")]
    t0 = time.perf_counter()
    progress = not args.quiet
    data = load_labelled(args.data)
    if args.n_texts < len(data):
        keep, _ = split_indices(data.labels, test_size=len(data) - args.n_texts, seed=args.seed)
        data = data.subset(keep)
    prompts = load_prompts(args.prompts)
    text = load_text(getattr(args, "text", None))
    scorer = get_scorer("profanity")
    prompt_filter = getattr(args, "prompt_filter", "all")
    fit_prompts = getattr(args, "fit_prompts", "rest")
    if fit_prompts not in ("rest", "flagged"):
        raise MechtoxError(f"unknown --fit-prompts {fit_prompts!r}; use rest or flagged")
    if fit_prompts == "flagged" and prompt_filter != "unflagged":
        raise MechtoxError("--fit-prompts flagged fits on the prompts --prompt-filter unflagged removes; "
                           "add --prompt-filter unflagged")
    benign_tokens = getattr(args, "benign_tokens", 4096)
    if benign_tokens < 0:
        raise MechtoxError("--benign-tokens must be 0 or more")
    removed: list[str] = []
    if prompt_filter == "unflagged":
        keep = unflagged_prompts(prompts.prompts, scorer)
        if not keep:
            raise MechtoxError(f"--prompt-filter unflagged: every prompt of {prompts.source} has a word the scorer "
                               "flags; give other prompts (--prompts) or use --prompt-filter all")
        print(f"prompt filter: {len(keep)} of {len(prompts)} prompts have no word the scorer flags (their toxic "
              "continuations are not copies)")
        kept = set(keep)
        removed = [p for i, p in enumerate(prompts.prompts) if i not in kept]
        prompts = prompts.subset(keep, "unflagged")
    elif prompt_filter != "all":
        raise MechtoxError(f"unknown --prompt-filter {prompt_filter!r}; use all or unflagged")
    run = ws.run_dir(args.out)

    print(f"directions: {len(data)} labelled texts from {data.source}; prompts from {prompts.source}; metric {args.metric}")
    stats = token_log_odds(model, data)
    sets = token_sets(stats, args.k_tokens)
    if args.toxic_words:
        sets = dataclasses.replace(sets, toxic=words_to_tokens(model, args.toxic_words.split(",")))
    _io.write_text(run / "token_stats.csv", stats.to_csv(index=False))
    print(f"toxic token set ({len(sets.toxic)}): {' | '.join(sets.strings(model)[:25])} ...")
    print(f"non-toxic token set ({len(sets.nontoxic)}): {' | '.join(sets.strings(model, 'nontoxic')[:15])} ...")

    hook = final_resid_hook(model)
    # Generation-based methods fit on prompts AFTER the ones the causal check evaluates on.
    n_eval = args.n_eval_prompts
    gen_prompts = prompts.prompts[n_eval: n_eval + args.n_gen_prompts]
    if fit_prompts == "flagged":
        gen_prompts = removed[: args.n_gen_prompts]
        if not gen_prompts:
            raise MechtoxError("--fit-prompts flagged: the filter removed no prompt; use --fit-prompts rest")
        print(f"generation-based methods fit on {len(gen_prompts)} prompts the filter removed (attribution leaves out "
              "words copied from the prompt); the causal check uses the unflagged prompts")
    elif len(gen_prompts) < 20:
        gen_prompts = prompts.prompts[: args.n_gen_prompts]
        print(f"  note: {prompts.source} has {len(prompts)} prompts, too few to keep the {n_eval} evaluation prompts "
              "apart from the generation prompts: they overlap")
    gens_cache: list = []

    def generations():
        if not gens_cache:
            from mechtox.generation import generate

            gens_cache.append(generate(model, gen_prompts, 20, 32, 25, progress=progress))
        return gens_cache[0]

    dirs: dict[str, Direction] = {}
    for m in methods:
        t = time.perf_counter()
        if m == "probe":
            if args.probe:
                dirs[m] = Direction.load(ws.require_direction(args.probe), model)
            else:
                acts = collect_activations(model, data.texts, [hook], "mean", progress=progress)[hook]
                dirs[m] = fit_probe(acts, data.labels, hook, "logreg", seed=args.seed, model_name=model.cfg.model_name,
                                    name="probe-final", provenance={"data": data.source})
        elif m == "unembed":
            dirs[m] = unembedding_direction(model, sets)
        elif m == "gen-diffmean":
            dirs[m] = generation_diffmean_direction(model, gen_prompts, scorer, hook, progress=progress,
                                                    generations=generations())
        elif m == "gradient":
            neutral = [x for x, y in zip(data.texts, data.labels, strict=True) if y == 0][:200]
            dirs[m] = gradient_direction(model, neutral, hook, "toxic_tokens", sets.toxic, progress=progress)
        print(f"  {m}: fitted in {time.perf_counter() - t:.0f} s")
    for m, d in dirs.items():
        if not (m == "probe" and args.probe):
            d = dataclasses.replace(d, name=d.name or m, provenance={**d.provenance, "metric_for_ranking": args.metric})
            d.save(ws.direction_dir(d.name))
            dirs[m] = d

    scale = metric_scale(model, args.metric, data.texts[:200], progress=progress)
    rankings = {m: rank_neurons(model, d, name=m, scale=scale) for m, d in dirs.items()}
    if contrast_methods:
        t = time.perf_counter()
        contrast = activation_contrast(model, gen_prompts, scorer, progress=progress, generations=generations())
        print(f"  activation contrast: {contrast.n_toxic} toxic / {contrast.n_nontoxic} non-toxic generations "
              f"({time.perf_counter() - t:.0f} s)")
        for m in contrast_methods:
            r = rank_neurons(model, dirs[m], mean_acts=contrast.diff, name=f"{m} (contrast)", scale=scale, chance_draws=0)
            tab = r.table.sort_values(["act_proj", "layer", "neuron"], ascending=[False, True, True], kind="stable")
            tab = tab.assign(score=tab["act_proj"], rank=np.arange(len(tab))).reset_index(drop=True)
            rankings[r.direction_name] = dataclasses.replace(r, table=tab, chance_range=rankings[m].chance_range)
            _io.write_text(run / f"ranking-{m}-contrast.csv", tab.head(1000).to_csv(index=False))
    tables = {m: r.table for m, r in rankings.items()}
    copies = None
    with_attribution = getattr(args, "attribution", False)
    if gens_cache or with_attribution or rerank_methods:
        tox_idx, _ = split_generations(generations(), scorer)
        copies = copy_stats(generations(), tox_idx, scorer)
        print(f"  of {copies.n_toxic} toxic continuations, {copies.n_flagged} contain a word the scorer flags alone; "
              f"{copies.n_copied} ({copies.copied_share:.0%}) repeat such a word from their prompt")
        if prompt_filter == "all" and copies.copied_share > 0.5:
            print("  note: most of this toxicity is copied from the prompts (attention), which ablating neurons that "
                  "write toxic tokens cannot remove; --prompt-filter unflagged tests those neurons on toxicity the "
                  "model writes itself")
        if with_attribution or rerank_methods:
            t = time.perf_counter()
            att = neuron_attribution(model, generations(), tox_idx, scorer, skip_copied=fit_prompts == "flagged",
                                     progress=progress)
            print(f"  attribution: {att.n_sequences} continuations, {att.n_tokens} toxic-word tokens "
                  f"({time.perf_counter() - t:.0f} s)")
            if with_attribution:
                tables["attribution"] = att.table()
                _io.write_text(run / "ranking-attribution.csv", tables["attribution"].head(1000).to_csv(index=False))
            use = att
            if rerank_methods and benign_tokens > 0:
                t = time.perf_counter()
                use = att.specific(benign_attribution(model, text, benign_tokens, start=args.ppl_tokens,
                                                      progress=progress))
                print(f"  benign attribution: {benign_tokens} Wikitext-2 tokens after the perplexity ones "
                      f"({time.perf_counter() - t:.0f} s); --rerank scores = per-token use minus benign use")
            for m in rerank_methods:
                if m == "lens":
                    cands = toxic_lens_neurons(model, sets.toxic, att.mean_act)
                    tab = rerank_by_attribution(cands, use, None)
                    print(f"  lens (reranked): {len(tab)} of the {len(cands)} neurons whose signed logit lens has a "
                          "toxic token have a positive score")
                else:
                    tab = rerank_by_attribution(rankings[m].table, use, args.rerank_top)
                    print(f"  {m} (reranked): {len(tab)} of its top {args.rerank_top} by cosine have a positive score")
                tables[f"{m} (reranked)"] = tab
                _io.write_text(run / f"ranking-{m}-reranked.csv", tab.to_csv(index=False))
    rows, tops = [], []
    n_vec = model.cfg.n_layers * model.cfg.d_mlp
    for m, tab in tables.items():
        base_m = m.removesuffix(" (contrast)").removesuffix(" (reranked)")
        signed = m != base_m or m == "attribution"
        ranked_by = ("attribution" if m == "attribution" else "contrast" if m.endswith(" (contrast)") else
                     "toxic-lens neurons by attribution" if m == "lens (reranked)" else
                     f"cosine top-{args.rerank_top} by attribution" if m.endswith(" (reranked)") else "cosine")
        if m.endswith(" (reranked)") and benign_tokens > 0:
            ranked_by += " minus benign use"
        row = {"method": m, "hook": dirs[base_m].hook_name if base_m in dirs else "mlp.hook_post (all layers)",
               "metric": args.metric, "ranked_by": ranked_by,
               "top_cosine": float("nan"), "chance_max_high": float("nan"), "above_chance": float("nan"),
               "precision@20": precision_at_k(model, tab, sets.toxic, 20, signed=signed),
               "precision@100": precision_at_k(model, tab, sets.toxic, 100, signed=signed),
               "cos_with_probe": float("nan")}
        if m in rankings:
            r = rankings[m]
            row |= {"top_cosine": float(tab["cosine"].iloc[0]), "chance_max_high": r.chance_range[1],
                    "above_chance": r.above_chance}
            if "probe" in dirs:
                row["cos_with_probe"] = float(dirs[base_m].vector @ dirs["probe"].vector)
        rows.append(row)
        top = decode_neurons(model, tab.head(10), 8, signed=signed)
        top.insert(0, "method", m)
        tops.append(top)
    table = pd.DataFrame(rows)
    top_df = pd.concat(tops)
    _io.write_text(run / "top_neurons.csv", top_df.to_csv(index=False))
    agree = agreement(tables, k=100) if len(tables) > 1 else pd.DataFrame()
    _io.write_text(run / "agreement.csv", agree.to_csv(index=False))
    outl = outlier_dims(model, data.texts[:100], progress=progress)
    _io.write_text(run / "outliers.csv", outl.to_csv(index=False))
    summary = outl.groupby("dim").agg(layers=("layer", "count"), max_ratio=("ratio", "max"),
                                      frac_tokens=("frac_tokens", "mean")).reset_index() if len(outl) else outl

    abl = None
    if args.n_eval_prompts:
        print(f"causal check: ablating top-k neurons, k in {ks}, on {args.n_eval_prompts} prompts "
              f"({args.random_draws} random draws at k=100)")
        abl = causal_validation(model, tables, prompts.prompts[: args.n_eval_prompts],
                                scorer, ks=ks, random_ks=[100] if 100 in ks else ks[:1], draws=args.random_draws,
                                text=text, ppl_tokens=args.ppl_tokens, seed=args.seed, progress=progress)
        k100 = abl.table[abl.table["k"] == (100 if 100 in ks else ks[0])].set_index("method")
        for col in ("drop", "random_drop_mean", "random_drop_std", "ppl", "random_ppl_mean"):
            table[f"{col}@100"] = table["method"].map(k100[col]) if col in k100 else np.nan
        if "random_drop_mean" in k100:
            checks = [goal_check(r["precision@20"], r["drop@100"], r["random_drop_mean@100"], r["random_drop_std@100"],
                                 r["ppl@100"], r["random_ppl_mean@100"]) for r in table.to_dict("records")]
            for part in ("precise", "causal", "specific", "goal"):
                table[part] = [c[part] for c in checks]
        cols = [c for c in abl.table.columns if c != "random_drops"]
        draws = {f"{r['method']}@{r['k']}": [float(x) for x in r["random_drops"]]
                 for r in abl.table.to_dict("records") if isinstance(r.get("random_drops"), list)}
        _write_table(run, "ablation", abl.table[cols], {"baseline": abl.baseline, "n_prompts": args.n_eval_prompts,
                                                         "scorer": scorer.name, "metric": args.metric, "mode": "zero",
                                                         "random_drops": draws})
        plotting.save_figure(plotting.ablation_figure(abl.table), run / "ablation.html")

    meta = {"model": model.cfg.model_name, "data": data.source, "prompts": prompts.source, "prompt_filter": prompt_filter,
            "fit_prompts": fit_prompts, "rerank": rerank_methods, "benign_tokens": benign_tokens if rerank_methods else None,
            "metric": args.metric, "k_tokens": args.k_tokens, "toxic_tokens": sets.strings(model),
            "copies": dataclasses.asdict(copies) | {"copied_share": copies.copied_share} if copies else None, "expected_max_cosine": expected_max_cosine(model.cfg.d_model, n_vec),
            "baseline": abl.baseline if abl else None, "seconds": time.perf_counter() - t0}
    _write_table(run, "directions", table, meta)
    print("\n" + markdown(table))
    if "goal" in table:
        passing = table.loc[table["goal"], "method"].tolist()
        print(f"\nmethods passing the goal (precision@20 >= 0.5, top-100 drop >= 3x random, PPL within 10% of "
              f"random) on {args.n_eval_prompts} prompts with {args.random_draws} random draws: "
              f"{', '.join(passing) if passing else 'none'}")
        if passing and args.random_draws < 8:
            print("  few random draws estimate the random spread poorly: confirm a pass with --random-draws 8 and "
                  "more --n-eval-prompts before trusting it (see docs/results.md)")
    if len(agree):
        print("\nagreement of top-100 lists and of all cosines:\n" + markdown(agree))
    if len(summary):
        print("\nmassive residual dimensions (max |x| > 20x the median dimension's): " + markdown(summary))
    print("\ntop neurons per method:\n" + markdown(top_df, ["method", "layer", "neuron", "cosine", "tokens"], max_rows=40))
    if abl is not None:
        print(f"\nablation (baseline toxicity {abl.baseline['toxicity']:.4f}, PPL {abl.baseline['ppl']:.2f}):\n"
              + markdown(abl.table, [c for c in abl.table.columns if c != "random_drops"], digits=4))
    print(f"wrote {run} in {time.perf_counter() - t0:.0f} s; directions saved as {', '.join(d.name for d in dirs.values())}")
    return {"table": table, "rankings": rankings, "directions": dirs, "ablation": abl, "agreement": agree}


def _write_table(run, stem: str, table: pd.DataFrame, meta: dict) -> None:
    _io.write_text(run / f"{stem}.csv", table.to_csv(index=False))
    _io.write_text(run / f"{stem}.md", markdown(table) + "\n")
    _io.write_json(run / f"{stem}.json", {**meta, "rows": json.loads(table.to_json(orient="records"))})


# ----------------------------------------------------------------------------- pairs


def make_pairs(ws, model, args) -> dict[str, Any]:
    """``mechtox pairs``: chosen = greedy continuation, rejected = the continuation steered toward
    toxicity along a direction (Lee et al.'s PPLM construction, done with activation steering);
    both scored. Or convert a ParaDetox TSV (``--paradetox``)."""
    from mechtox.data import (
        PreferencePairs,
        is_wiki_samples,
        load_pairs,
        load_prompts,
        load_wiki_samples,
        save_pairs,
    )
    from mechtox.generation import generate
    from mechtox.interventions import applied, steer
    from mechtox.probe import Direction
    from mechtox.scorers import get_scorer
    from mechtox.workspace import check_name

    check_name(args.out, "pairs name")
    path = ws.pairs_path(args.out)
    if args.paradetox:
        pairs = load_pairs(args.paradetox, limit=args.n)
        save_pairs(pairs, path)
        print(f"wrote {len(pairs)} ParaDetox pairs to {path}")
        return {"pairs": pairs}
    src = args.prompts or data_file("wiki_samples.jsonl")
    if is_wiki_samples(src):
        prompts = load_wiki_samples(src, limit=args.n)[0]
    else:
        prompts = load_prompts(src, limit=args.n).prompts
    direction = Direction.load(ws.require_direction(args.direction), model)
    scorer = get_scorer("profanity")
    progress = not args.quiet
    print(f"pairs: {len(prompts)} prompts from {src}; rejected = steered +{args.alpha:g} x "
          f"{args.direction!r} at {direction.hook_name}")
    chosen = generate(model, prompts, args.max_new_tokens, 32, args.batch_size, progress=progress)
    with applied(model, steer(direction, args.alpha)):
        rejected = generate(model, prompts, args.max_new_tokens, 32, args.batch_size, progress=progress)
    sc, sr = scorer(chosen.continuations), scorer(rejected.continuations)
    keep = [i for i in range(len(prompts)) if chosen.continuations[i].strip() and rejected.continuations[i].strip()
            and chosen.continuations[i] != rejected.continuations[i]]
    extra = [{"chosen_score": float(sc[i]), "rejected_score": float(sr[i]), "scorer": scorer.name,
              "direction": args.direction, "alpha": args.alpha} for i in keep]
    pairs = PreferencePairs([prompts[i] for i in keep], [chosen.continuations[i] for i in keep],
                            [rejected.continuations[i] for i in keep], str(src), extra)
    if not len(pairs):
        raise MechtoxError("no usable pairs (all continuations empty or identical); raise --alpha")
    save_pairs(pairs, path)
    print(f"wrote {len(pairs)} pairs to {path}: mean {scorer.name} chosen {np.mean([e['chosen_score'] for e in extra]):.3f}, "
          f"rejected {np.mean([e['rejected_score'] for e in extra]):.3f}")
    for i in range(min(3, len(pairs))):
        print(f"  {pairs.prompt[i][-50:]!r}\n    chosen:   {pairs.chosen[i][:80]!r}\n    rejected: {pairs.rejected[i][:80]!r}")
    return {"pairs": pairs}


# ----------------------------------------------------------------------------- training


def training_task(args) -> str | None:
    """The benign task of ``train sft`` / ``train sap``: ``--task``, else the real
    wiki_samples.jsonl (:func:`~mechtox.data.data_file`); None for the other objectives."""
    if args.objective not in ("sft", "sap"):
        return None
    return getattr(args, "task", None) or data_file("wiki_samples.jsonl")


def needs_pairs(args) -> bool:
    """Every objective trains on pairs except ``sft`` with a task of its own."""
    return not (args.objective == "sft" and training_task(args))


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


def run_training(ws, model, args) -> dict[str, Any]:
    """``mechtox train OBJECTIVE``: train, save the named model, curves and the probe check."""
    from mechtox.data import load_pairs
    from mechtox.models import save_checkpoint
    from mechtox.probe import Direction, ProbeScorer
    from mechtox.training import (
        DPOObjective,
        ProbeSFTObjective,
        SAPObjective,
        SFTObjective,
        TrainConfig,
        lee_et_al_config,
        rank_pairs_by_probe,
        train,
    )
    from mechtox.workspace import check_name

    check_name(args.out, "model name")
    if args.out == "base":
        raise MechtoxError("--out base would hide the base model; choose another name")
    task = training_task(args)
    pairs = load_pairs(ws.require_pairs(args.pairs), limit=args.limit) if needs_pairs(args) else None
    kw = dict(objective=args.objective, lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size,
              grad_accum=args.grad_accum, warmup_steps=args.warmup_steps, max_steps=args.steps, clip=args.clip,
              beta=args.beta, dtype=args.dtype, eval_every=args.eval_every, patience=args.patience,
              checkpoint_every=args.checkpoint_every, seed=args.seed, probe_lambda=args.probe_lambda,
              max_completion_tokens=args.max_completion_tokens, sap_layers=getattr(args, "sap_layers", "auto"),
              sap_rho=getattr(args, "sap_rho", 1e-3), sap_eps=getattr(args, "sap_eps", 0.25))
    if args.lee_et_al:
        cfg = lee_et_al_config(**{k: v for k, v in kw.items() if k in ("objective", "seed", "eval_every", "dtype",
                                                                          "checkpoint_every", "patience")})
    else:
        cfg = TrainConfig(**kw)
    probes = [Direction.load(ws.require_direction(n), model) for n in (args.probe.split(",") if args.probe else [])]
    held_out = [Direction.load(ws.require_direction(n), model) for n in (args.held_out.split(",") if args.held_out else [])]
    progress = not args.quiet
    if cfg.objective == "dpo-probe":
        if not probes:
            raise MechtoxError("train dpo-probe needs --probe NAME (the probe that ranks the pairs)")
        pairs, swapped = rank_pairs_by_probe(pairs, ProbeScorer(model, probes[0]))
        print(f"ranked {len(pairs)} pairs by probe {probes[0].name!r}: {swapped} swapped")
    if cfg.objective == "sft-probe":
        if not probes:
            raise MechtoxError("train sft-probe needs --probe NAME[,NAME...] (the probes trained against)")
        objective = ProbeSFTObjective(model, pairs.prompt, pairs.chosen, probes, cfg)
    elif cfg.objective in ("sft", "sap"):
        t_prompts, t_targets, t_source = load_task(ws, task, pairs, args.limit)
        if cfg.objective == "sft":
            objective = SFTObjective(model, t_prompts, t_targets, cfg)
        else:
            objective = SAPObjective(model, t_prompts, t_targets, pairs, cfg)
            print(f"sap: task {t_source}, safety pairs {pairs.source}, vectors after blocks {objective.layers}")
    else:
        objective = DPOObjective(model, pairs, cfg)
    source = t_source if cfg.objective in ("sft", "sap") else pairs.source
    state = ws.root / "training" / args.out
    print(f"train {cfg.objective}: {len(objective)} examples from {source}, {cfg.max_steps} steps x "
          f"{cfg.batch_size * cfg.grad_accum}, lr {cfg.lr:g} ({cfg.optimizer}), {cfg.dtype}, device {model.cfg.device}")
    res = train(model, objective, cfg, state, resume=args.resume, progress=progress)
    hist = res.history
    save_checkpoint(model, ws.model_dir(args.out), extra={
        "trained_from": args.model, "objective": cfg.objective, "data": source,
        "config": dataclasses.asdict(cfg), "steps": res.steps, "stopped_early": res.stopped_early,
        "final_loss": hist[-1]["loss"] if hist else None, "best_val_loss": res.best_val,
        "probes": [p.name for p in probes], "held_out_probes": [p.name for p in held_out]})
    run = ws.run_dir(f"train-{args.out}")
    _io.write_text(run / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in hist))
    plotting.save_figure(plotting.training_figure(pd.DataFrame(hist)), run / "curves.html")
    last = hist[-1] if hist else {}
    print(f"saved model {args.out!r} to {ws.model_dir(args.out)} after {res.steps} steps in {res.seconds:.0f} s "
          f"({res.tokens_per_second:.0f} tok/s); final loss {last.get('loss', float('nan')):.4f}, "
          f"best val {res.best_val:.4f}{' (stopped early)' if res.stopped_early else ''}")
    goodhart = None
    if (probes or held_out) and args.goodhart_n:
        from mechtox.data import load_labelled
        from mechtox.probe import split_indices
        from mechtox.training import probe_goodhart

        data = load_labelled(getattr(args, "data", None))
        n = min(args.goodhart_n, len(data))
        if n < len(data):
            keep, _ = split_indices(data.labels, test_size=len(data) - n, seed=args.seed + 1)
            data = data.subset(keep)
        before = ws.load_model(args.model, device=args.device, dtype=args.dtype)
        goodhart = probe_goodhart(before, model, probes, data, held_out, test_size=0.25, seed=args.seed,
                                  progress=progress)
        _write_table(run, "probe-goodhart", goodhart, {"data": data.source, "n_texts": len(data),
                                                       "split": "stratified 75/25, seed " + str(args.seed)})
        print("probe accuracy before / after / retrained (Goodhart):\n" + markdown(goodhart, digits=3))
    return {"result": res, "config": cfg, "goodhart": goodhart}


# ----------------------------------------------------------------------------- attribution


def run_attribution(ws, before, after, args) -> dict[str, Any]:
    """``mechtox attribute``: per-neuron attribution (token modes), groups with both denominators,
    per-layer contributions, top neurons, the exactness check, and the ablation-vs-after table."""
    from mechtox.attribution import REDUCING, attribute
    from mechtox.data import load_prompts, load_text, load_wiki_samples
    from mechtox.evaluate import EvalConfig, evaluate
    from mechtox.generation import generate
    from mechtox.interventions import NOOP, ablate, set_neurons
    from mechtox.neurons import decode_neurons
    from mechtox.probe import Direction
    from mechtox.scorers import get_scorer
    from mechtox.workspace import check_name

    check_name(args.out, "run name")
    direction = Direction.load(ws.require_direction(args.direction), before)
    prompts = load_prompts(args.prompts, limit=args.n)
    progress = not args.quiet
    run = ws.run_dir(args.out)
    modes = ["own", "shared"] if args.mode == "both" else [args.mode]
    t0 = time.perf_counter()
    gens = {"before": generate(before, prompts.prompts, args.max_new_tokens, 32, 25, stop_at_eos=False, progress=progress)}
    if "own" in modes:
        gens["after"] = generate(after, prompts.prompts, args.max_new_tokens, 32, 25, stop_at_eos=False, progress=progress)
    results = {}
    for mode in modes:
        res = attribute(before, after, direction, mode=mode, generations=dict(gens), progress=progress)
        results[mode] = res
        tag = f"attribution-{mode}"
        _io.write_text(run / f"{tag}-neurons.csv", res.neurons.to_csv(index=False))
        _io.write_text(run / f"{tag}-per-layer.csv", res.per_layer.to_csv(index=False))
        _write_table(run, f"{tag}-groups", res.groups, {
            "mode": mode, "mode_meaning": "each model's own greedy continuations" if mode == "own"
            else "both models read the before model's continuations",
            "direction": args.direction, "before": args.before, "after": args.after, "n_prompts": len(prompts),
            "n_tokens": res.n_tokens, "check": res.check,
            "denominators": "share_of_gross: / sum of the reducing groups; share_of_net: / sum over all neurons"})
        top = res.neurons.reindex(res.neurons["delta"].abs().sort_values(ascending=False).index).head(args.top)
        top = decode_neurons(before, top, 8)
        _io.write_text(run / f"{tag}-top-neurons.csv", top.to_csv(index=False))
        plotting.save_figure(plotting.attribution_groups_figure(res.groups, f"Contributions by group ({mode} tokens)"),
                             run / f"{tag}-groups.html")
        plotting.save_figure(plotting.attribution_layers_figure(res.per_layer, f"Per-layer contributions ({mode} tokens)"),
                             run / f"{tag}-layers.html")
        plotting.save_figure(plotting.attribution_scatter(res.neurons, f"Activation change vs cosine ({mode} tokens)"),
                             run / f"{tag}-scatter.html")
        print(f"\n== attribution of {args.before} -> {args.after} along {args.direction!r}, {mode} tokens "
              f"({res.n_tokens['before']} / {res.n_tokens['after']} tokens)")
        print(markdown(res.groups, ["group", "n", "contribution", "from_activation", "from_weights",
                                    "share_of_gross", "share_of_net"], digits=4))
        c = res.check
        print(f"exactness: change of the residual projection {c['total_change']:.6f} = neurons {c['neurons']:.6f} + rest "
              f"{c['total_change'] - c['neurons'] - c['error']:.6f}; error {c['error']:.2e}")
        print(markdown(top, ["layer", "neuron", "group", "cos_before", "act_before", "act_after", "delta", "tokens"],
                       digits=4, max_rows=10))

    abl = None
    if args.n_eval_prompts:
        res = results.get("own") or results[modes[0]]
        t = res.neurons
        by_cos = t.sort_values("cos_before", ascending=False)
        pos = by_cos[by_cos["act_before"] > 0]
        means_after = torch_means(t, before.cfg.n_layers, before.cfg.d_mlp, "act_after")
        ivs = [NOOP]
        for k in [int(x) for x in str(args.ablate_ks).split(",")]:
            ivs.append(dataclasses.replace(ablate(by_cos.head(k)), name=f"ablate top-{k} toxic (cosine)"))
            ivs.append(dataclasses.replace(ablate(pos.head(k)), name=f"ablate top-{k} toxic with positive activation"))
        damp = t[t["group"] == "TP-"]
        ivs.append(set_neurons(damp, means_after, name=f"patch {len(damp)} dampened toxic neurons (TP-) to after-mean"))
        for g in REDUCING[1:]:  # TP- is the dampened-toxic patch above
            sel = t[t["group"] == g]
            if len(sel):
                ivs.append(set_neurons(sel, means_after, name=f"patch group {g} ({len(sel)}) to after-mean"))
        evp = prompts.prompts[: args.n_eval_prompts]
        text = load_text(getattr(args, "text", None))
        wiki = load_wiki_samples()
        cfg = EvalConfig(ppl_tokens=args.ppl_tokens, f1_prompts=args.f1_prompts if wiki else 0)
        scorer = get_scorer("profanity")
        print(f"\n== ablation and patching on {args.before} vs the {args.after} model ({len(evp)} prompts)")
        tb, _ = evaluate(before, ivs, evp, scorer, text, wiki, cfg, progress=progress, model_label=args.before)
        ta, _ = evaluate(after, [NOOP], evp, scorer, text, wiki, cfg, progress=progress, model_label=args.after)
        abl = pd.concat([tb, ta], ignore_index=True)
        _write_table(run, "ablation-vs-after", abl, {"n_prompts": len(evp), "scorer": scorer.name})
        print(markdown(abl, digits=4))
    print(f"\nwrote {run} in {time.perf_counter() - t0:.0f} s")
    return {"results": results, "ablation": abl}


def torch_means(table: pd.DataFrame, n_layers: int, d_mlp: int, col: str):
    """A [n_layers, d_mlp] tensor of ``table[col]`` (missing layers: 0)."""
    import torch

    out = torch.zeros(n_layers, d_mlp)
    rows = torch.tensor(table["layer"].to_numpy(dtype="int64", copy=True))
    cols = torch.tensor(table["neuron"].to_numpy(dtype="int64", copy=True))
    out[rows, cols] = torch.tensor(table[col].to_numpy(dtype="float32", copy=True))
    return out


# ----------------------------------------------------------------------------- the main job

SIZES: dict[str, dict[str, Any]] = {
    # 2 CPU cores: about 15-20 minutes in all (measured: see docs/results.md)
    "small": dict(n_train=800, n_test=400, dir_texts=1500, dir_eval_prompts=50, dir_draws=2, pairs=400, steps=24,
                  batch=8, lr=1e-5, eval_prompts=100, attr_prompts=40, ppl_tokens=4000, f1_prompts=50,
                  methods="probe,unembed,gen-diffmean", gen_prompts=100, goodhart_n=400),
    # a check that every step runs on the real model and data (a few minutes on 2 CPU cores; not results):
    # no causal ablation check of the directions and no Goodhart check, the two slowest parts
    "quick": dict(n_train=160, n_test=160, dir_texts=300, dir_eval_prompts=0, dir_draws=1, pairs=24, steps=3,
                  batch=4, lr=1e-5, eval_prompts=16, attr_prompts=8, ppl_tokens=1000, f1_prompts=8,
                  methods="probe,unembed,gen-diffmean", gen_prompts=30, k_tokens=20, goodhart_n=0),
    # a GPU: the papers' sizes
    "full": dict(n_train=3000, n_test=1000, dir_texts=4000, dir_eval_prompts=300, dir_draws=3, pairs=2000, steps=500,
                 batch=16, lr=5e-6, eval_prompts=1196, attr_prompts=400, ppl_tokens=40000, f1_prompts=500,
                 methods="probe,unembed,gen-diffmean,gradient", gen_prompts=400, goodhart_n=800),
}


def main_job(ws, args) -> dict[str, Any]:
    """``mechtox run``: probe -> directions -> ranking -> pairs -> DPO -> evaluation ->
    attribution -> report, on the base model. Finished steps (recorded with their settings in
    ``runs/<out>/main.json``) are reused when the command is run again."""
    from types import SimpleNamespace

    import torch

    from mechtox.cli import fit_and_save_probe, rank_and_save
    from mechtox.data import find_data_file
    from mechtox.report import write_report

    size = args.size if args.size != "auto" else ("full" if torch.cuda.is_available() else "small")
    S = dict(SIZES[size])
    data_dir = getattr(args, "data_dir", None)
    toy = str(data_dir) == "builtin"
    if toy:  # the template-built toy data (tests on the tiny model) is small: scale down
        S.update(n_train=160, n_test=80, dir_texts=240, pairs=30, eval_prompts=30, attr_prompts=20, dir_eval_prompts=20,
                 k_tokens=10)
    real = "builtin" if toy else find_data_file("jigsaw_balanced.csv", data_dir)[1].describe()
    run = ws.run_dir(args.out)
    state_path = run / "main.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() and not args.fresh else {}
    state.setdefault("steps", {})
    t_start = time.perf_counter()
    common = dict(workspace=str(ws.root), device=args.device, dtype=args.dtype, seed=args.seed, quiet=args.quiet)
    print(f"== mechtox main job: {size} settings on {args.model}; workspace {ws.root}")
    model_cache: dict[str, Any] = {}

    def model(spec: str):
        if spec not in model_cache:
            t = time.perf_counter()
            model_cache[spec] = ws.load_model(spec, device=args.device, dtype=args.dtype)
            print(f"   loaded {spec} in {time.perf_counter() - t:.1f} s")
        return model_cache[spec]

    def step(name: str, settings: dict[str, Any], fn) -> None:
        rec = state["steps"].get(name)
        if rec and rec.get("settings") == settings:
            print(f"\n== {name}: done before ({rec['seconds']:.0f} s), reused")
            return
        print(f"\n== {name}")
        t = time.perf_counter()
        fn()
        state["steps"][name] = {"settings": settings, "seconds": time.perf_counter() - t}
        state.update(size=size, model=args.model, data=real)
        _io.write_json(state_path, state)

    labelled = data_file("jigsaw_balanced.csv", data_dir)
    prompts = data_file("rtp_challenge.jsonl", data_dir)
    text_src = data_file("wikitext2_test.raw", data_dir)
    wiki_src = None if toy else data_file("wiki_samples.jsonl", data_dir)
    ns = lambda **kw: SimpleNamespace(**common, **kw)  # noqa: E731

    step("1 probe sweep (Lee et al.: every layer, mean-pooled)", {"n": [S["n_train"], S["n_test"]], "data": labelled},
         lambda: fit_and_save_probe(ws, model(args.model), ns(layers="all", method="logreg", pooling="mean", max_length=64,
                                                              batch_size=16, save="final", text_col=None, label_col=None),
                                    labelled, "probe", S["n_train"], S["n_test"]))
    step("2 direction methods compared (probe vs unembedding...)",
         {"n": S["dir_texts"], "methods": S["methods"], "eval": S["dir_eval_prompts"], "contrast": "unembed",
          "data": [labelled, prompts, text_src]},
         lambda: compare_directions(ws, model(args.model), ns(
             data=labelled, prompts=prompts, text=text_src, methods=S["methods"], probe="probe", n_texts=S["dir_texts"],
             k_tokens=S.get("k_tokens", 50),
             toxic_words=None, n_gen_prompts=S["gen_prompts"], n_eval_prompts=S["dir_eval_prompts"], ks="100",
             random_draws=S["dir_draws"], metric="raw", ppl_tokens=S["ppl_tokens"], contrast="unembed",
             out=f"{args.out}-directions")))
    step("3 toxic neurons along the probe (Lee et al.) and the generation diff-of-means", {"top": 20},
         lambda: [rank_and_save(ws, model(args.model), ns(), d, f"{args.out}-rank-{d}", 20) for d in ("probe", "gen-diffmean")])
    # Real human-written pairs when present (ParaDetox: toxic sentence vs its non-toxic paraphrase);
    # otherwise pairs generated by steering (Lee et al.'s construction; see docs/results.md for alpha).
    paradetox = None if toy else data_file("paradetox.tsv", data_dir)
    step("4 preference pairs" + (" (ParaDetox: non-toxic paraphrase preferred)" if paradetox else
                                 " (greedy vs steered toward toxicity)"), {"n": S["pairs"], "alpha": args.alpha, "src": paradetox},
         lambda: make_pairs(ws, model(args.model), ns(
             paradetox=paradetox, prompts=prompts, n=S["pairs"], direction="unembed", alpha=args.alpha, max_new_tokens=20,
             batch_size=25, out=f"{args.out}-pairs")))

    def do_train():
        import shutil

        shutil.rmtree(ws.root / "training" / f"{args.out}-dpo", ignore_errors=True)
        fresh = ws.load_model(args.model, device=args.device, dtype=args.dtype)  # training changes weights in place
        run_training(ws, fresh, ns(
            model=args.model, pairs=f"{args.out}-pairs", limit=None, objective="dpo", lr=S["lr"], optimizer="adamw",
            batch_size=S["batch"], grad_accum=1, warmup_steps=max(1, S["steps"] // 10), steps=S["steps"], clip=10.0,
            beta=0.1, eval_every=max(1, S["steps"] // 4), patience=0, checkpoint_every=max(1, S["steps"] // 4),
            probe_lambda=1.0, max_completion_tokens=32, lee_et_al=False, resume=False, probe=None, held_out="probe",
            goodhart_n=S.get("goodhart_n", S["n_train"]), data=labelled, out=f"{args.out}-dpo"))

    step("5 DPO on the pairs", {"steps": S["steps"], "lr": S["lr"], "batch": S["batch"], "pairs": S["pairs"]}, do_train)

    def do_eval():
        from mechtox.data import load_prompts, load_text, load_wiki_samples
        from mechtox.evaluate import EvalConfig, evaluate
        from mechtox.interventions import NOOP
        from mechtox.probe import Direction
        from mechtox.scorers import get_scorer

        ps = load_prompts(prompts, limit=S["eval_prompts"]).prompts
        text = load_text(text_src)
        wiki = load_wiki_samples(wiki_src) if wiki_src else None
        base = model(args.model)
        probe = Direction.load(ws.require_direction("probe"), base)
        cfg = EvalConfig(ppl_tokens=S["ppl_tokens"], f1_prompts=S["f1_prompts"] if wiki else 0)
        scorer = get_scorer("profanity")
        rows = []
        for spec in (args.model, f"{args.out}-dpo"):
            t, _ = evaluate(model(spec), [NOOP], ps, scorer, text, wiki, cfg, probe=probe, judge=base,
                            progress=not args.quiet, model_label=spec)
            rows.append(t)
        table = pd.concat(rows, ignore_index=True)
        _write_table(ws.run_dir(f"{args.out}-eval"), "eval", table, {
            "n_prompts": len(ps), "prompts": prompts, "scorer": scorer.name, "probe": "probe (read by the base model)",
            "toxicity": "mean profanity-check probability of the continuation scored alone; toxic_frac: share > 0.5"})
        print(markdown(table, digits=4))

    step("6 evaluation: base vs DPO (toxicity, probe, perplexity, F1)",
         {"n": S["eval_prompts"], "ppl": S["ppl_tokens"], "f1": S["f1_prompts"]}, do_eval)
    step("7 attribution of the DPO change to neurons", {"n": S["attr_prompts"]},
         lambda: run_attribution(ws, model(args.model), model(f"{args.out}-dpo"), ns(
             before=args.model, after=f"{args.out}-dpo", direction="probe", prompts=prompts, n=S["attr_prompts"],
             max_new_tokens=20, mode="both", top=20, n_eval_prompts=0, ablate_ks="100", ppl_tokens=S["ppl_tokens"],
             f1_prompts=0, out=f"{args.out}-attribution")))
    total = sum(v["seconds"] for v in state["steps"].values())
    state["total_seconds_of_steps"] = total
    _io.write_json(state_path, state)
    _io.write_json(ws.root / "main.json", {"size": size, "model": args.model, "steps_seconds_total": round(total),
                                           "this_call_seconds": round(time.perf_counter() - t_start),
                                           "data": real})
    path = write_report(ws.root, title=f"mechtox main job ({size} settings, {args.model})",
                        notes=f"{size} settings: " + ", ".join(f"{k}={v}" for k, v in S.items()))
    print(f"\n== report: {path} ({path.stat().st_size / 2**20:.1f} MiB); steps took {total:.0f} s in all, "
          f"this call {time.perf_counter() - t_start:.0f} s")
    return state
