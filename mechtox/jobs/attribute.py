"""``mechtox attribute``: attribute the change from --before to --after to individual neurons."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mechtox.jobs._base import (
    DEFAULT_DATA,
    Context,
    JobConfig,
    check_out,
    ints,
    neuron_counts,
    option,
    positive,
    spec_label,
)

HELP = "attribute the change from --before to --after to individual neurons and attention heads"


@dataclass(frozen=True)
class AttributeConfig(JobConfig):
    before: str = option("base", "the model before fine-tuning (default: base, the workspace's base model)")
    after: str = option(None, "the fine-tuned model (e.g. dpo)", required=True)
    direction: str = option("probe", "the direction projected onto (default: the probe, as `mechtox probe` saves it)",
                            flags=("--direction", "--probe"))
    prompts: str | None = option(None, "prompts " + DEFAULT_DATA.format("rtp_challenge.jsonl"))
    n: int = option(200, "prompts to attribute over")
    max_new_tokens: int = option(20, "tokens generated per prompt (greedy)")
    mode: Literal["own", "shared", "both"] = option("both", "own: each model's own continuations; shared: both read the before model's",
                       choices=["own", "shared", "both"])
    top: int = option(20, "neurons and heads listed, by the size of their change")
    n_eval_prompts: int = option(100, "prompts for the ablation-vs-after table (0: skip)")
    ablate_ks: str = option("100,200,1000", "numbers of top neurons ablated in the ablation-vs-after table")
    ppl_tokens: int = option(8000, "tokens of Wikitext-2 for perplexity in that table")
    f1_prompts: int = option(100, "Wikitext-2 prompts for F1 in that table")
    out: str | None = option(None, "run name (default attribute-<before>-<after>, + -<direction> for a direction "
                                   "other than probe: attributions along two directions keep apart)")
    text: str | None = None   # Wikitext-2 text for perplexity (default: the shipped one); not a flag

    def check(self) -> None:
        check_out(self.out, "run name")
        ints(self.ablate_ks, "--ablate-ks")
        for name in ("n", "max_new_tokens", "top"):
            positive(getattr(self, name), "--" + name.replace("_", "-"))
        for name in ("n_eval_prompts", "ppl_tokens", "f1_prompts"):
            positive(getattr(self, name), "--" + name.replace("_", "-"), zero_ok=True)

    @property
    def run_name(self) -> str:
        along = "" if self.direction == "probe" else f"-{self.direction}"
        return self.out or spec_label(f"attribute-{spec_label(self.before)}-{spec_label(self.after)}{along}", most=100)


@dataclass
class AttributeResult:
    config: AttributeConfig
    results: dict               # mode -> mechtox.attribution.Attribution
    tops: dict                  # mode -> top neurons with their tokens
    n_prompts: int
    head_tops: dict = field(default_factory=dict)  # mode -> top heads with the source tokens they attend to
    toxic_continuations: tuple[int, int] = (0, 0)  # (toxic, all) before-model continuations the patterns are read on
    ablation: Any = None        # the ablation-vs-after table
    n_eval: int = 0
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    trained_on: int | None = None  # how many of the prompts --after was trained on (None: no record)


def run(cfg: AttributeConfig, ctx: Context, before=None, after=None) -> AttributeResult:
    import time
    import warnings

    from mechtox.data import load_prompts

    ws = ctx.ws
    ws.resolve_model(cfg.after)
    ws.require_direction(cfg.direction)
    prompts = load_prompts(cfg.prompts, limit=cfg.n)  # all three checked before TransformerLens loads
    trained = ws.trained_on(cfg.after, list(prompts.prompts))
    import pandas as pd

    from mechtox.attribution import attribute, check_decomposable, head_sources, target_layer
    from mechtox.generation import generate
    from mechtox.models import same_architecture
    from mechtox.neurons import decode_neurons
    from mechtox.probe import Direction

    before = before if before is not None else ctx.load(cfg.before)
    after = after if after is not None else ctx.load(cfg.after)
    same_architecture(before, after)
    check_decomposable(before)
    # sizes the model cannot have: left out (or an error) before the slow work
    ks = (neuron_counts(ints(cfg.ablate_ks, "--ablate-ks"), before.cfg.n_layers * before.cfg.d_mlp, "--ablate-ks")
          if cfg.n_eval_prompts else [])
    direction = Direction.load(ws.require_direction(cfg.direction), before)
    target_layer(before, direction.hook_name)  # a direction attribution cannot split: an error before generating
    modes: list[Literal["own", "shared"]] = ["own", "shared"] if cfg.mode == "both" else [cfg.mode]
    t0 = time.perf_counter()
    gens = {"before": generate(before, prompts.prompts, cfg.max_new_tokens, 32, 25, stop_at_eos=False,
                               progress=ctx.progress)}
    if "own" in modes:
        gens["after"] = generate(after, prompts.prompts, cfg.max_new_tokens, 32, 25, stop_at_eos=False,
                                 progress=ctx.progress)
    results, tops, top_heads = {}, {}, {}
    for mode in modes:
        with warnings.catch_warnings():  # a failed exactness check is a WARNING line of the summary instead
            warnings.filterwarnings("ignore", message="the attribution's exactness check failed")
            res = attribute(before, after, direction, mode=mode, generations=dict(gens), progress=ctx.progress)
        results[mode] = res
        top = res.neurons.reindex(res.neurons["delta"].abs().sort_values(ascending=False).index).head(cfg.top)
        tops[mode] = decode_neurons(before, top, 8)
        top_heads[mode] = res.heads.reindex(res.heads["delta"].abs().sort_values(ascending=False).index).head(cfg.top)
    # what the top heads (of any mode) attend to, both models reading the before model's toxic continuations
    toxic = _toxic(gens["before"].continuations)
    union = pd.concat(top_heads.values())[["layer", "head"]].drop_duplicates()
    src = {name: head_sources(m, gens["before"], union, toxic or None).set_index(["layer", "head"])
           for name, m in (("before", before), ("after", after))}
    head_tops = {}
    for mode, t in top_heads.items():
        key = pd.MultiIndex.from_frame(t[["layer", "head"]])
        head_tops[mode] = t.assign(first_share=src["before"].loc[key, "first_share"].to_numpy(),
                                   attends_to=src["before"].loc[key, "attends_to"].to_numpy(),
                                   first_share_after=src["after"].loc[key, "first_share"].to_numpy(),
                                   attends_to_after=src["after"].loc[key, "attends_to"].to_numpy())
    out = AttributeResult(cfg, results, tops, len(prompts), head_tops,
                          (len(toxic), len(gens["before"].continuations)), trained_on=trained)
    if cfg.n_eval_prompts:
        _ablation_vs_after(out, ctx, before, after, prompts.prompts[: cfg.n_eval_prompts], ks)
    out.seconds = time.perf_counter() - t0
    return out


def _toxic(continuations: list[str], threshold: float = 0.5) -> list[int]:
    """Indices of the continuations the offline scorer calls toxic (may be empty)."""
    from mechtox.scorers import get_scorer

    scores = get_scorer("profanity")(continuations)
    return [i for i, p in enumerate(scores) if p > threshold]


def _ablation_vs_after(out: AttributeResult, ctx: Context, before, after, evp: list[str], ks: list[int]) -> None:
    """Yang et al.'s table: ablating or patching neurons of the before model vs the after model."""
    import pandas as pd

    from mechtox.attribution import ablation_vs_patching
    from mechtox.data import load_text, load_wiki_samples
    from mechtox.evaluate import EvalConfig, evaluate
    from mechtox.interventions import NOOP
    from mechtox.scorers import get_scorer

    cfg = out.config
    res = out.results.get("own") or next(iter(out.results.values()))
    ivs = ablation_vs_patching(res.neurons, before.cfg.n_layers, before.cfg.d_mlp, ks, heads=res.heads, z_after=res.z_after,
                               act_after=res.act_after_mean)
    text = load_text(cfg.text)
    wiki = load_wiki_samples()
    ecfg = EvalConfig(ppl_tokens=cfg.ppl_tokens, f1_prompts=cfg.f1_prompts if wiki else 0)
    scorer = get_scorer("profanity")
    print(f"\n== ablation and patching on {cfg.before} vs the {cfg.after} model ({len(evp)} prompts)")
    tb, _ = evaluate(before, ivs, evp, scorer, text, wiki, ecfg, progress=ctx.progress, model_label=cfg.before)
    ta, _ = evaluate(after, [NOOP], evp, scorer, text, wiki, ecfg, progress=ctx.progress, model_label=cfg.after)
    out.ablation = pd.concat([tb, ta], ignore_index=True)
    out.n_eval = len(evp)
    out.meta = {"n_prompts": len(evp), "scorer": scorer.name}


def output(cfg: AttributeConfig, ws) -> Path:
    """The path (file or run folder) whose presence shows the job's results are written (the main job's reuse test)."""
    return ws.run_dir(cfg.run_name)


def write(res: AttributeResult, ctx: Context):
    from mechtox import _io, artifacts, plotting

    cfg = res.config
    run = output(cfg, ctx.ws)
    for mode, r in res.results.items():
        def a(part: str, mode: str = mode) -> str:
            return artifacts.attribution(mode, part)

        _io.write_text(run / a("neurons.csv"), r.neurons.to_csv(index=False))
        _io.write_text(run / a("per-layer.csv"), r.per_layer.to_csv(index=False))
        artifacts.write_table(run, a("groups"), r.groups, {
            "mode": mode, "mode_meaning": "each model's own greedy continuations" if mode == "own"
            else "both models read the before model's continuations",
            "direction": cfg.direction, "before": cfg.before, "after": cfg.after, "n_prompts": res.n_prompts,
            "n_tokens": r.n_tokens, "check": r.check, "check_passed": r.check_passed, "check_limit": r.check_limit,
            "denominators": "share_of_gross: / sum of the reducing groups; share_of_net: / sum over all neurons",
            **({} if res.trained_on is None else {"n_prompts_trained_on": res.trained_on})})
        _io.write_text(run / a("top-neurons.csv"), res.tops[mode].to_csv(index=False))
        _io.write_text(run / a("heads.csv"), r.heads.to_csv(index=False))
        _io.write_text(run / a("top-heads.csv"), res.head_tops[mode].to_csv(index=False))
        _io.write_text(run / a("kinds-per-layer.csv"), r.layers.to_csv(index=False))
        artifacts.write_table(run, a("head-groups"), r.head_groups, {
            "mode": mode, "direction": cfg.direction, "before": cfg.before, "after": cfg.after, "check": r.check,
            "denominators": "share_of_gross: / sum of the reducing head groups; share_of_net: / sum over all heads",
            "attends_to": "top-heads.csv: the source tokens each head attends to from the before model's "
                          + _on(res.toxic_continuations) + ", read in each model"})
        plotting.save_figure(plotting.attribution_layers_figure(r.layers, f"Neurons vs heads per layer ({mode} tokens)"),
                             run / a("kinds.html"))
        plotting.save_figure(plotting.attribution_groups_figure(r.groups, f"Contributions by group ({mode} tokens)"),
                             run / a("groups.html"))
        plotting.save_figure(plotting.attribution_layers_figure(r.per_layer, f"Per-layer contributions ({mode} tokens)"),
                             run / a("layers.html"))
        plotting.save_figure(plotting.attribution_scatter(r.neurons, f"Activation change vs cosine ({mode} tokens)"),
                             run / a("scatter.html"))
    if res.ablation is not None:
        artifacts.write_table(run, artifacts.ABLATION_VS_AFTER, res.ablation, res.meta)
    return run


def _on(counts: tuple[int, int]) -> str:
    toxic, n = counts
    return (f"{toxic} toxic continuations (of {n}, profanity-check > 0.5)" if toxic else
            f"{n} continuations (none is toxic)")


def summary(res: AttributeResult, ctx: Context) -> str:
    from mechtox.tables import markdown

    cfg, lines = res.config, []
    for mode, r in res.results.items():
        c = r.check
        lines += [f"\n== attribution of {cfg.before} -> {cfg.after} along {cfg.direction!r}, {mode} tokens "
                  f"({r.n_tokens['before']} / {r.n_tokens['after']} tokens)",
                  markdown(r.groups, ["group", "n", "contribution", "from_activation", "from_weights",
                                      "share_of_gross", "share_of_net"], digits=4),
                  markdown(res.tops[mode], ["layer", "neuron", "group", "cos_before", "act_before", "act_after",
                                            "delta", "tokens"], digits=4, max_rows=10),
                  "attention heads:",
                  markdown(r.head_groups, ["group", "n", "contribution", "delta_pattern_value", "delta_weight",
                                           "share_of_gross", "share_of_net"], digits=4),
                  markdown(res.head_tops[mode], ["layer", "head", "group", "p_before", "p_after", "delta",
                                                 "delta_pattern_value", "delta_weight", "attends_to"],
                           digits=4, max_rows=10),
                  f"(attends_to: the source tokens the head attends to from the before model's "
                  f"{_on(res.toxic_continuations)}, with their share of its attention)",
                  f"exactness: change of the residual projection {c['total_change']:.6f} = embeddings "
                  f"{c['embeddings']:.6f} + heads {c['heads']:.6f} + attention biases {c['attention_biases']:.6f} "
                  f"+ neurons {c['neurons']:.6f} + MLP biases {c['mlp_biases']:.6f}; error {c['error']:.2e}"
                  + ("" if r.check_passed else f"\nWARNING: the exactness check failed (error above the "
                     f"{r.check_limit:.1e} allowed): the parts do not add up to the change, so the tables above do "
                     "not describe these models")]
    if res.ablation is not None:
        lines.append(f"\nablation and patching on {cfg.before} vs the {cfg.after} model ({res.n_eval} prompts):\n"
                     + markdown(res.ablation, digits=4))
    if res.trained_on:
        lines.append(f"\nnote: {res.trained_on} of the {res.n_prompts} prompts are prompts {cfg.after} was trained on: "
                     "the change there is the change on its training prompts, not on new ones")
    lines.append(f"\nwrote {ctx.ws.run_dir(cfg.run_name)} in {res.seconds:.0f} s")
    return "\n".join(lines)
