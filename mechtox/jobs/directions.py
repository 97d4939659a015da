"""``mechtox directions``: fit every direction method, rank the neurons with each, validate.

Phases: :func:`inputs` (data, prompt filter, generation prompts), :func:`fit_directions`,
:func:`rank` (cosine and contrast rankings), :func:`rerank` (attribution patching), then
precision, the causal check and agreement in :func:`run`; :func:`write` and :func:`summary`.
A ranking's kind (cosine, contrast, reranked, attribution) is a field of :class:`Ranked`; the
label users see in the tables (``"unembed (contrast)"``) is made from it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mechtox.errors import MechtoxError
from mechtox.jobs._base import (
    DEFAULT_DATA,
    MODEL_HELP,
    Context,
    JobConfig,
    check_out,
    ints,
    names,
    neuron_counts,
    option,
    positive,
)

HELP = ("compare toxicity directions (probe, unembedding, generation diff-of-means, gradient) by toxic-token "
        "precision, causal ablation and agreement")
Kind = Literal["cosine", "contrast", "reranked", "attribution"]


@dataclass(frozen=True)
class DirectionsConfig(JobConfig):
    model: str = option("base", MODEL_HELP)
    data: str | None = option(None, "labelled text " + DEFAULT_DATA.format("jigsaw_balanced.csv"))
    prompts: str | None = option(None, "prompts for generation " + DEFAULT_DATA.format("rtp_challenge.jsonl"))
    methods: str = option("probe,unembed,gen-diffmean,gradient", "direction methods ('' for none, with --rerank lens "
                                                                  "or --attribution, which need no direction)")
    probe: str | None = option(None, "use this saved probe for the 'probe' method instead of fitting one")
    n_texts: int = option(2000, "labelled texts for token statistics and the probe")
    k_tokens: int = option(50, "size of the toxic / non-toxic token sets")
    toxic_words: str | None = option(None, "comma-separated words overriding the data-derived toxic set")
    prompt_filter: str = option("all", "unflagged: keep only prompts with no word the scorer flags, so that toxic "
                                       "continuations are written by the model, not copied from the prompt",
                                choices=["all", "unflagged"])
    fit_prompts: str = option("rest", "prompts the generation-based methods fit on: rest = the ones after the "
                                      "evaluation prompts; flagged = (with --prompt-filter unflagged) the prompts the "
                                      "filter removed, words copied from the prompt left out of the attribution, so "
                                      "every unflagged prompt is held out", choices=["rest", "flagged"])
    n_gen_prompts: int = option(200, "prompts generated from for gen-diffmean and the contrast (the ones after the "
                                     "evaluation prompts)")
    contrast: str | None = option(None, "methods also ranked by contrast, (a_toxic - a_nontoxic) * (v . w) on the "
                                        "model's own generations ('' for none; default: unembed when it is among "
                                        "--methods)")
    attribution: bool = option(False, "also rank neurons by attribution patching of the model's own toxic words "
                                      "(no direction)")
    rerank: str = option("", "methods whose top --rerank-top neurons by cosine are also ranked by attribution "
                             "patching of the model's own toxic words (specific to the direction, ordered by use); "
                             "'lens' takes instead every neuron whose signed logit lens has a toxic token (no "
                             "direction needed)")
    rerank_top: int = option(1000, "cosine candidates kept by --rerank")
    benign_tokens: int = option(4096, "Wikitext-2 tokens (after the --ppl-tokens ones) whose own use of each neuron "
                                      "--rerank subtracts, per token, so neurons every word needs rank low (0: rank "
                                      "by use alone, per continuation)")
    n_eval_prompts: int = option(100, "prompts for the causal check (0: skip it)")
    ks: str = option("10,100,1000", "top-k sizes ablated")
    random_draws: int = option(3, "random neuron sets per method for k=100")
    metric: Literal["raw", "final_norm", "whitened"] = option("raw", "metric of the value-vector cosines (recorded in every output)",
                         choices=["raw", "final_norm", "whitened"])
    ppl_tokens: int = option(4000, "Wikitext-2 tokens for perplexity beside each ablation")
    out: str = option("directions", "run name; directions are saved as their method names")
    save_prefix: str = option("", "save the directions as PREFIX-METHOD (e.g. dpo-unembed), keeping the ones "
                                  "saved as METHOD (another model's, say)")
    text: str | None = None   # Wikitext-2 text (default: the shipped one); not a flag

    def check(self) -> None:
        from mechtox.specs import DIRECTION_METHODS

        check_out(self.out, "run name")
        check_out(self.save_prefix or None, "--save-prefix")
        methods = self.method_list
        bad = [m for m in methods if m not in DIRECTION_METHODS]
        needs_none = self.attribution or "lens" in self.rerank_list  # rankings that need no direction
        if bad or not (methods or needs_none):
            raise MechtoxError(f"unknown direction method(s) {bad or self.methods!r}; use {', '.join(DIRECTION_METHODS)}"
                               + ("" if bad else " (or --methods '' with --rerank lens or --attribution)"))
        for flag, chosen in (("--contrast", self.contrast_list), ("--rerank", self.rerank_list)):
            unknown = [m for m in chosen if m not in methods and not (flag == "--rerank" and m == "lens")]
            if unknown:
                raise MechtoxError(f"{flag} {unknown}: not among --methods {methods}")
        self.ks_list  # noqa: B018 (parses --ks; a bad list is a one-line error)
        if self.fit_prompts not in ("rest", "flagged"):
            raise MechtoxError(f"unknown --fit-prompts {self.fit_prompts!r}; use rest or flagged")
        if self.prompt_filter not in ("all", "unflagged"):
            raise MechtoxError(f"unknown --prompt-filter {self.prompt_filter!r}; use all or unflagged")
        if self.fit_prompts == "flagged" and self.prompt_filter != "unflagged":
            raise MechtoxError("--fit-prompts flagged fits on the prompts --prompt-filter unflagged removes; "
                               "add --prompt-filter unflagged")
        if self.benign_tokens < 0:
            raise MechtoxError("--benign-tokens must be 0 or more")
        for name in ("n_texts", "k_tokens", "n_gen_prompts", "rerank_top", "random_draws"):
            positive(getattr(self, name), "--" + name.replace("_", "-"))
        for name in ("n_eval_prompts", "ppl_tokens"):
            positive(getattr(self, name), "--" + name.replace("_", "-"), zero_ok=True)

    @property
    def method_list(self) -> list[str]:
        return names(self.methods)

    @property
    def contrast_list(self) -> list[str]:
        if self.contrast is None:  # the default follows --methods
            return ["unembed"] if "unembed" in self.method_list else []
        return names(self.contrast)

    @property
    def rerank_list(self) -> list[str]:
        return names(self.rerank)

    @property
    def ks_list(self) -> tuple[int, ...]:
        return ints(self.ks, "--ks")


@dataclass
class Ranked:
    """One ranking of all neurons (or of candidates), how it was made, and its table."""

    method: str             # the direction method (or "lens" / "attribution")
    kind: Kind
    table: Any              # DataFrame with layer, neuron (and cosine, score...)
    ranking: Any = None     # the NeuronRanking behind a cosine or contrast ranking (chance range)

    @property
    def label(self) -> str:
        return {"cosine": self.method, "attribution": "attribution"}.get(self.kind, f"{self.method} ({self.kind})")

    @property
    def signed(self) -> bool:
        return self.kind != "cosine"

    def ranked_by(self, rerank_top: int, benign: bool) -> str:
        if self.kind == "reranked":
            by = "toxic-lens neurons by attribution" if self.method == "lens" else f"cosine top-{rerank_top} by attribution"
            return by + (" minus benign use" if benign else "")
        return {"cosine": "cosine", "contrast": "contrast", "attribution": "attribution"}[self.kind]


@dataclass
class Inputs:
    data: Any
    prompts: Any
    removed: list[str]
    text: str
    scorer: Any
    gen_prompts: list[str]
    gens: list = field(default_factory=list)   # the generations from gen_prompts, made when first needed

    def generations(self, model, progress: bool):
        if not self.gens:
            from mechtox.generation import generate

            self.gens.append(generate(model, self.gen_prompts, 20, 32, 25, progress=progress))
        return self.gens[0]


@dataclass
class DirectionsResult:
    config: DirectionsConfig
    model_name: str
    inputs: Inputs
    stats: Any
    toxic_tokens: list[str]
    nontoxic_tokens: list[str]
    directions: dict
    ranked: list[Ranked]
    table: Any
    top: Any
    agreement: Any
    outliers: Any
    ablation: Any = None
    copies: Any = None
    expected_max_cosine: float = 0.0
    seconds: float = 0.0
    save_names: list[str] = field(default_factory=list)

    @property
    def rankings(self) -> dict:
        """label -> NeuronRanking, for the cosine and contrast rankings."""
        return {r.label: r.ranking for r in self.ranked if r.ranking is not None}

    @property
    def tables(self) -> dict:
        return {r.label: r.table for r in self.ranked}


def inputs(cfg: DirectionsConfig, ctx: Context) -> Inputs:
    """Labelled texts (a stratified subset), prompts (filtered), text and scorer, and the prompts the
    generation-based methods fit on (after the ones the causal check evaluates on)."""
    from mechtox.data import load_labelled, load_prompts, load_text

    labelled, prompts, text = load_labelled(cfg.data), load_prompts(cfg.prompts), load_text(cfg.text)  # before TL loads
    from mechtox.directions import unflagged_prompts
    from mechtox.probe import stratified_subset
    from mechtox.scorers import get_scorer

    data = stratified_subset(labelled, cfg.n_texts, ctx.seed)
    scorer = get_scorer("profanity")
    removed: list[str] = []
    if cfg.prompt_filter == "unflagged":
        keep = unflagged_prompts(prompts.prompts, scorer)
        if not keep:
            raise MechtoxError(f"--prompt-filter unflagged: every prompt of {prompts.source} has a word the scorer "
                               "flags; give other prompts (--prompts) or use --prompt-filter all")
        print(f"prompt filter: {len(keep)} of {len(prompts)} prompts have no word the scorer flags (their toxic "
              "continuations are not copies)")
        kept = set(keep)
        removed = [p for i, p in enumerate(prompts.prompts) if i not in kept]
        prompts = prompts.subset(keep, "unflagged")
    n_eval = cfg.n_eval_prompts
    gen_prompts = prompts.prompts[n_eval: n_eval + cfg.n_gen_prompts]
    if cfg.fit_prompts == "flagged":
        gen_prompts = removed[: cfg.n_gen_prompts]
        if not gen_prompts:
            raise MechtoxError("--fit-prompts flagged: the filter removed no prompt; use --fit-prompts rest")
        print(f"generation-based methods fit on {len(gen_prompts)} prompts the filter removed (attribution leaves out "
              "words copied from the prompt); the causal check uses the unflagged prompts")
    elif len(gen_prompts) < 20:
        gen_prompts = prompts.prompts[: cfg.n_gen_prompts]
        print(f"  note: {prompts.source} has {len(prompts)} prompts, too few to keep the {n_eval} evaluation prompts "
              "apart from the generation prompts: they overlap")
    return Inputs(data, prompts, removed, text, scorer, list(gen_prompts))


def fit_directions(cfg: DirectionsConfig, ctx: Context, model, inp: Inputs, sets) -> dict:
    """method -> Direction, each fitted (or the saved probe, with --probe)."""
    from mechtox.activations import collect_activations
    from mechtox.directions import (
        final_resid_hook,
        generation_diffmean_direction,
        gradient_direction,
        unembedding_direction,
    )
    from mechtox.probe import Direction, fit_probe

    hook, data, dirs = final_resid_hook(model), inp.data, {}
    for m in cfg.method_list:
        t = time.perf_counter()
        if m == "probe" and cfg.probe:
            dirs[m] = Direction.load(ctx.ws.require_direction(cfg.probe), model)
        elif m == "probe":
            acts = collect_activations(model, data.texts, [hook], "mean", progress=ctx.progress)[hook]
            dirs[m] = fit_probe(acts, data.labels, hook, "logreg", seed=ctx.seed, model_name=model.cfg.model_name,
                                name="probe-final", provenance={"data": data.source})
        elif m == "unembed":
            dirs[m] = unembedding_direction(model, sets)
        elif m == "gen-diffmean":
            dirs[m] = generation_diffmean_direction(model, inp.gen_prompts, inp.scorer, hook, progress=ctx.progress,
                                                    generations=inp.generations(model, ctx.progress))
        elif m == "gradient":
            neutral = [x for x, y in zip(data.texts, data.labels, strict=True) if y == 0][:200]
            dirs[m] = gradient_direction(model, neutral, hook, "toxic_tokens", sets.toxic, progress=ctx.progress)
        print(f"  {m}: fitted in {time.perf_counter() - t:.0f} s")
    from mechtox.jobs._base import model_spec

    spec = model_spec(cfg.model, ctx.ws)  # as a probe records it: what `--model` to pass it with
    for m, d in dirs.items():
        name = saved_name(cfg, m)
        if name:
            dirs[m] = dataclasses.replace(d, name=name, provenance={**d.provenance, "metric_for_ranking": cfg.metric,
                                                                           "model": spec})
    return dirs


def rank(cfg: DirectionsConfig, ctx: Context, model, inp: Inputs, dirs: dict) -> list[Ranked]:
    """Every neuron by cosine with each direction; then by contrast for the --contrast methods."""
    import numpy as np

    from mechtox.directions import activation_contrast, metric_scale
    from mechtox.neurons import rank_neurons

    scale = metric_scale(model, cfg.metric, inp.data.texts[:200], progress=ctx.progress)
    out = []
    for m, d in dirs.items():
        r = rank_neurons(model, d, name=m, scale=scale)
        out.append(Ranked(m, "cosine", r.table, r))
    if cfg.contrast_list:
        t = time.perf_counter()
        contrast = activation_contrast(model, inp.gen_prompts, inp.scorer, progress=ctx.progress,
                                       generations=inp.generations(model, ctx.progress))
        print(f"  activation contrast: {contrast.n_toxic} toxic / {contrast.n_nontoxic} non-toxic generations "
              f"({time.perf_counter() - t:.0f} s)")
        cosine = {r.method: r.ranking for r in out}
        for m in cfg.contrast_list:
            r = rank_neurons(model, dirs[m], mean_acts=contrast.diff, name=f"{m} (contrast)", scale=scale, chance_draws=0)
            tab = r.table.sort_values(["act_proj", "layer", "neuron"], ascending=[False, True, True], kind="stable")
            tab = tab.assign(score=tab["act_proj"], rank=np.arange(len(tab))).reset_index(drop=True)
            out.append(Ranked(m, "contrast", tab, dataclasses.replace(r, table=tab, chance_range=cosine[m].chance_range)))
    return out


def rerank(cfg: DirectionsConfig, ctx: Context, model, inp: Inputs, sets, ranked: list[Ranked]):
    """Copy statistics of the toxic continuations and, with --attribution / --rerank, the rankings
    by attribution patching of the model's own toxic words. Returns (copies, new rankings)."""
    from mechtox.directions import (
        benign_attribution,
        copy_stats,
        neuron_attribution,
        rerank_by_attribution,
        split_generations,
        toxic_lens_neurons,
    )

    if not (inp.gens or cfg.attribution or cfg.rerank_list):
        return None, []
    gens = inp.generations(model, ctx.progress)
    tox_idx, _ = split_generations(gens, inp.scorer)
    copies = copy_stats(gens, tox_idx, inp.scorer)
    print(f"  of {copies.n_toxic} toxic continuations, {copies.n_flagged} contain a word the scorer flags alone; "
          f"{copies.n_copied} ({copies.copied_share:.0%}) repeat such a word from their prompt")
    if cfg.prompt_filter == "all" and copies.copied_share > 0.5:
        print("  note: most of this toxicity is copied from the prompts (attention), which ablating neurons that "
              "write toxic tokens cannot remove; --prompt-filter unflagged tests those neurons on toxicity the "
              "model writes itself")
    if not (cfg.attribution or cfg.rerank_list):
        return copies, []
    t = time.perf_counter()
    att = neuron_attribution(model, gens, tox_idx, inp.scorer, skip_copied=cfg.fit_prompts == "flagged",
                             progress=ctx.progress)
    print(f"  attribution: {att.n_sequences} continuations, {att.n_tokens} toxic-word tokens "
          f"({time.perf_counter() - t:.0f} s)")
    new = [Ranked("attribution", "attribution", att.table())] if cfg.attribution else []
    use = att
    if cfg.rerank_list and cfg.benign_tokens > 0:
        t = time.perf_counter()
        use = att.specific(benign_attribution(model, inp.text, cfg.benign_tokens, start=cfg.ppl_tokens,
                                              progress=ctx.progress))
        print(f"  benign attribution: {cfg.benign_tokens} Wikitext-2 tokens after the perplexity ones "
              f"({time.perf_counter() - t:.0f} s); --rerank scores = per-token use minus benign use")
    cosine = {r.method: r for r in ranked if r.kind == "cosine"}
    for m in cfg.rerank_list:
        if m == "lens":
            cands = toxic_lens_neurons(model, sets.toxic, att.mean_act)
            tab = rerank_by_attribution(cands, use, None)
            print(f"  lens (reranked): {len(tab)} of the {len(cands)} neurons whose signed logit lens has a "
                  "toxic token have a positive score")
        else:
            tab = rerank_by_attribution(cosine[m].table, use, cfg.rerank_top)
            print(f"  {m} (reranked): {len(tab)} of its top {cfg.rerank_top} by cosine have a positive score")
        new.append(Ranked(m, "reranked", tab))
    return copies, new


def precision_table(cfg: DirectionsConfig, model, dirs: dict, ranked: list[Ranked], sets):
    """One row per ranking: hook, how it was ranked, precision@20/100 of toxic logit-lens tokens,
    the top cosine against chance, and the cosine of its direction with the probe. Also the top 10
    neurons of each ranking with their tokens."""
    import pandas as pd

    from mechtox.neurons import decode_neurons
    from mechtox.validation import precision_at_k

    rows, tops = [], []
    benign = bool(cfg.rerank_list) and cfg.benign_tokens > 0
    for r in ranked:
        tab = r.table
        row = {"method": r.label, "hook": dirs[r.method].hook_name if r.method in dirs else "mlp.hook_post (all layers)",
               "metric": cfg.metric, "ranked_by": r.ranked_by(cfg.rerank_top, benign),
               "top_cosine": float("nan"), "chance_max_high": float("nan"), "above_chance": float("nan"),
               "precision@20": precision_at_k(model, tab, sets.toxic, 20, signed=r.signed),
               "precision@100": precision_at_k(model, tab, sets.toxic, 100, signed=r.signed),
               "cos_with_probe": float("nan")}
        if r.ranking is not None:
            row |= {"top_cosine": float(tab["cosine"].iloc[0]), "chance_max_high": r.ranking.chance_range[1],
                    "above_chance": r.ranking.above_chance}
            if "probe" in dirs:
                row["cos_with_probe"] = float(dirs[r.method].vector @ dirs["probe"].vector)
        rows.append(row)
        top = decode_neurons(model, tab.head(10), 8, signed=r.signed)
        top.insert(0, "method", r.label)
        tops.append(top)
    return pd.DataFrame(rows), pd.concat(tops)


def causal_check(cfg: DirectionsConfig, ctx: Context, model, inp: Inputs, ranked: list[Ranked], table, ks: list[int]):
    """Ablate the top-k neurons of every ranking (and random sets at k=100) on the evaluation
    prompts; adds the k=100 drop, its random spread and the goal check to ``table``."""
    import numpy as np

    from mechtox.validation import causal_validation, goal_check

    print(f"causal check: ablating top-k neurons, k in {ks}, on {cfg.n_eval_prompts} prompts "
          f"({cfg.random_draws} random draws at k=100)")
    abl = causal_validation(model, {r.label: r.table for r in ranked}, inp.prompts.prompts[: cfg.n_eval_prompts],
                            inp.scorer, ks=ks, random_ks=[100] if 100 in ks else ks[:1], draws=cfg.random_draws,
                            text=inp.text, ppl_tokens=cfg.ppl_tokens, seed=ctx.seed, progress=ctx.progress)
    k100 = abl.table[abl.table["k"] == (100 if 100 in ks else ks[0])].set_index("method")
    for col in ("drop", "random_drop_mean", "random_drop_std", "ppl", "random_ppl_mean"):
        table[f"{col}@100"] = table["method"].map(k100[col]) if col in k100 else np.nan
    if "random_drop_mean" in k100:
        checks = [goal_check(r["precision@20"], r["drop@100"], r["random_drop_mean@100"], r["random_drop_std@100"],
                             r["ppl@100"], r["random_ppl_mean@100"]) for r in table.to_dict("records")]
        for part in ("precise", "causal", "specific", "goal"):
            table[part] = [c[part] for c in checks]
    return abl


def run(cfg: DirectionsConfig, ctx: Context, model=None) -> DirectionsResult:
    import dataclasses as dc

    from mechtox.directions import outlier_dims, token_log_odds, token_sets, words_to_tokens
    from mechtox.neurons import expected_max_cosine
    from mechtox.validation import agreement

    t0 = time.perf_counter()
    if cfg.probe:
        ctx.ws.require_direction(cfg.probe)
    inp = inputs(cfg, ctx)
    model = model if model is not None else ctx.load(cfg.model)
    # sizes the model cannot have: left out (or an error) before the slow work
    ks = neuron_counts(cfg.ks_list, model.cfg.n_layers * model.cfg.d_mlp, "--ks") if cfg.n_eval_prompts else []
    print(f"directions: {len(inp.data)} labelled texts from {inp.data.source}; prompts from {inp.prompts.source}; "
          f"metric {cfg.metric}")
    stats = token_log_odds(model, inp.data)
    sets = token_sets(stats, cfg.k_tokens)
    if cfg.toxic_words:
        sets = dc.replace(sets, toxic=words_to_tokens(model, cfg.toxic_words.split(",")))
    print(f"toxic token set ({len(sets.toxic)}): {' | '.join(sets.strings(model)[:25])} ...")
    print(f"non-toxic token set ({len(sets.nontoxic)}): {' | '.join(sets.strings(model, 'nontoxic')[:15])} ...")
    dirs = fit_directions(cfg, ctx, model, inp, sets)
    ranked = rank(cfg, ctx, model, inp, dirs)
    copies, extra = rerank(cfg, ctx, model, inp, sets, ranked)
    ranked += extra
    table, top = precision_table(cfg, model, dirs, ranked, sets)
    tables = {r.label: r.table for r in ranked}
    agree = agreement(tables, k=100) if len(tables) > 1 else None
    outl = outlier_dims(model, inp.data.texts[:100], progress=ctx.progress)
    abl = causal_check(cfg, ctx, model, inp, ranked, table, ks) if cfg.n_eval_prompts else None
    n_vec = model.cfg.n_layers * model.cfg.d_mlp
    return DirectionsResult(cfg, model.cfg.model_name, inp, stats, sets.strings(model), sets.strings(model, "nontoxic"),
                            dirs, ranked, table, top, agree, outl, abl, copies,
                            expected_max_cosine(model.cfg.d_model, n_vec), time.perf_counter() - t0,
                            [d.name for m, d in dirs.items() if saved_name(cfg, m)])


def saved_name(cfg: DirectionsConfig, method: str) -> str | None:
    """The name the direction of ``method`` is saved under, ``PREFIX-`` first with --save-prefix
    (None: the probe given by --probe, which is not saved again)."""
    if method == "probe" and cfg.probe:
        return None
    name = "probe-final" if method == "probe" else method
    return f"{cfg.save_prefix}-{name}" if cfg.save_prefix else name


def output(cfg: DirectionsConfig, ws) -> Path:
    """The path (file or run folder) whose presence shows the job's results are written (the main job's reuse test)."""
    return ws.run_dir(cfg.out)


def write(res: DirectionsResult, ctx: Context):
    import pandas as pd

    from mechtox import _io, artifacts, plotting
    from mechtox.jobs._base import say_replaced

    cfg, run = res.config, output(res.config, ctx.ws)
    for m, d in res.directions.items():
        if saved_name(cfg, m):
            say_replaced(ctx.ws, d.name, d.provenance.get("model"),
                         "to keep both, rename directions/NAME first or give --save-prefix")
            d.save(ctx.ws.direction_dir(d.name))
    _io.write_text(run / artifacts.TOKEN_STATS, res.stats.to_csv(index=False))
    for r in res.ranked:
        if r.kind == "contrast":
            _io.write_text(run / f"ranking-{r.method}-contrast.csv", r.table.head(1000).to_csv(index=False))
        elif r.kind == "attribution":
            _io.write_text(run / "ranking-attribution.csv", r.table.head(1000).to_csv(index=False))
        elif r.kind == "reranked":
            _io.write_text(run / f"ranking-{r.method}-reranked.csv", r.table.to_csv(index=False))
    _io.write_text(run / artifacts.TOP_BY_METHOD, res.top.to_csv(index=False))
    agree = res.agreement if res.agreement is not None else pd.DataFrame()
    _io.write_text(run / artifacts.AGREEMENT, agree.to_csv(index=False))
    _io.write_text(run / artifacts.OUTLIERS, res.outliers.to_csv(index=False))
    abl = res.ablation
    if abl is not None:
        cols = [c for c in abl.table.columns if c != "random_drops"]
        draws = {f"{r['method']}@{r['k']}": [float(x) for x in r["random_drops"]]
                 for r in abl.table.to_dict("records") if isinstance(r.get("random_drops"), list)}
        artifacts.write_table(run, artifacts.ABLATION, abl.table[cols], {
            "baseline": abl.baseline, "n_prompts": cfg.n_eval_prompts, "scorer": res.inputs.scorer.name,
            "metric": cfg.metric, "mode": "zero", "random_drops": draws})
        plotting.save_figure(plotting.ablation_figure(abl.table), run / "ablation.html")
    copies = res.copies
    meta = {"model": res.model_name, "data": res.inputs.data.source, "prompts": res.inputs.prompts.source,
            "prompt_filter": cfg.prompt_filter, "fit_prompts": cfg.fit_prompts, "rerank": cfg.rerank_list,
            "benign_tokens": cfg.benign_tokens if cfg.rerank_list else None, "metric": cfg.metric,
            "k_tokens": cfg.k_tokens, "toxic_tokens": res.toxic_tokens,
            "copies": dataclasses.asdict(copies) | {"copied_share": copies.copied_share} if copies else None,
            "expected_max_cosine": res.expected_max_cosine,
            "baseline": abl.baseline if abl else None, "seconds": res.seconds}
    artifacts.write_table(run, artifacts.DIRECTIONS, res.table, meta)
    return run


def summary(res: DirectionsResult, ctx: Context) -> str:
    from mechtox.tables import markdown

    cfg, table, lines = res.config, res.table, []
    lines.append("\n" + markdown(table))
    if "goal" in table:
        passing = table.loc[table["goal"], "method"].tolist()
        lines.append(f"\nmethods passing the goal (precision@20 >= 0.5, top-100 drop >= 3x random, PPL within 10% of "
                     f"random) on {cfg.n_eval_prompts} prompts with {cfg.random_draws} random draws: "
                     f"{', '.join(passing) if passing else 'none'}")
        if passing and cfg.random_draws < 8:
            lines.append("  few random draws estimate the random spread poorly: confirm a pass with --random-draws 8 "
                         "and more --n-eval-prompts before trusting it (see docs/results.md)")
    if res.agreement is not None and len(res.agreement):
        lines.append("\nagreement of top-100 lists and of all cosines:\n" + markdown(res.agreement))
    outl = res.outliers
    if len(outl):
        s = outl.groupby("dim").agg(layers=("layer", "count"), max_ratio=("ratio", "max"),
                                    frac_tokens=("frac_tokens", "mean")).reset_index()
        lines.append("\nmassive residual dimensions (max |x| > 20x the median dimension's): " + markdown(s))
    cols = [c for c in ("method", "layer", "neuron", "cosine", "score", "tokens") if c in res.top]
    lines.append("\ntop neurons per method:\n" + markdown(res.top, cols, max_rows=40))
    abl = res.ablation
    if abl is not None:
        lines.append(f"\nablation (baseline toxicity {abl.baseline['toxicity']:.4f}, PPL {abl.baseline['ppl']:.2f}):\n"
                     + markdown(abl.table, [c for c in abl.table.columns if c != "random_drops"], digits=4))
    lines.append(f"wrote {ctx.ws.run_dir(cfg.out)} in {res.seconds:.0f} s; directions saved as "
                 f"{', '.join(d.name for d in res.directions.values())}")
    return "\n".join(lines)
