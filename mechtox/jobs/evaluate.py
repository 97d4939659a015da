"""``mechtox eval``: toxicity, perplexity, F1 and probe score under interventions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechtox._flags import scorer_probe
from mechtox.jobs._base import (
    DEFAULT_DATA,
    MODEL_HELP,
    Context,
    JobConfig,
    check_out,
    data_label,
    option,
    positive,
    spec_label,
)
from mechtox.specs import SPEC_FORMS, parse_spec

HELP = "toxicity / perplexity / F1 / probe score under interventions"


@dataclass(frozen=True)
class EvalJobConfig(JobConfig):
    model: str = option("base", MODEL_HELP)
    intervention: list[str] | None = option(None, "repeatable; forms: " + "; ".join(SPEC_FORMS).replace("%", "%%"),
                                            flags=("--intervention", "-i"), metavar="SPEC", append=True)
    prompts: str | None = option(None, "prompts " + DEFAULT_DATA.format("rtp_challenge.jsonl"))
    limit: int | None = option(None, "first N prompts", type=int)
    probe: str | None = option(None, "also score continuations with this probe (read by the model without "
                                     "interventions)")
    scorer: str = option("profanity", "profanity (offline), detoxify, perspective or probe:NAME")
    text: str | None = option(None, "text for perplexity: a .txt/.raw file or a table's text column "
                                    + DEFAULT_DATA.format("wikitext2_test.raw"))
    ppl_tokens: int = option(20000, "tokens of --text for perplexity (0: skip it)")
    wiki: str | None = option(None, "{prompt, gold} JSONL for F1 " + DEFAULT_DATA.format("wiki_samples.jsonl"))
    f1_prompts: int = option(200, "prompts of --wiki for F1 (0: skip it)")
    max_new_tokens: int = option(20, "tokens generated per prompt (greedy)")
    batch_size: int = option(25, "prompts generated at once")
    out: str | None = option(None, "run name (default eval-MODEL[-PROMPTS][-INTERVENTIONS], the prompts when "
                                   "--prompts is given: evaluations of two models, prompt sets or interventions "
                                   "keep apart)")

    def check(self) -> None:
        check_out(self.out, "run name")
        positive(self.limit, "--limit")
        positive(self.ppl_tokens, "--ppl-tokens", zero_ok=True)
        positive(self.f1_prompts, "--f1-prompts", zero_ok=True)
        positive(self.max_new_tokens, "--max-new-tokens")
        positive(self.batch_size, "--batch-size")
        scorer_probe(self.scorer)  # an unknown scorer is an error before anything loads
        for spec in self.intervention or []:
            parse_spec(spec)  # the form of every -i, before anything loads

    @property
    def run_name(self) -> str:
        if self.out:
            return self.out
        name = (f"eval-{spec_label(self.model)}" + (f"-{data_label(self.prompts)}" if self.prompts else "")
                + "".join(f"-{spec_label(i)}" for i in self.intervention or []))
        return spec_label(name, most=100)


@dataclass
class EvalJobResult:
    config: EvalJobConfig
    table: Any      # DataFrame, one row per intervention
    raw: dict       # intervention -> continuations and scores
    prompts: list
    meta: dict
    n_human: int = 0    # human continuations the scorer was compared on


def trained_note(n: int, of: int, model: str, advice: str = "; to measure it on new ones, pass --prompts it was "
                                                               "not trained on") -> str:
    """What to say when ``n`` of ``of`` evaluation prompts are prompts ``model`` was trained on."""
    return (f"{n} of the {of} prompts are prompts {model} was trained on: its scores there are not those of new "
            "prompts" + advice)


def run(cfg: EvalJobConfig, ctx: Context, model=None) -> EvalJobResult:
    ws = ctx.ws
    for name in [cfg.probe, scorer_probe(cfg.scorer)] + [parse_spec(spec).direction for spec in cfg.intervention or []]:
        if name:
            ws.require_direction(name)  # every direction named exists, before anything heavy loads
    from mechtox.data import data_file, load_prompts, load_text, load_wiki_samples
    from mechtox.evaluate import EvalConfig, evaluate, scorer_agreement
    from mechtox.probe import Direction
    from mechtox.scorers import get_scorer
    from mechtox.specs import build_intervention

    prompts = load_prompts(cfg.prompts, limit=cfg.limit)
    text_src = cfg.text or data_file("wikitext2_test.raw")
    wiki_src = cfg.wiki or data_file("wiki_samples.jsonl")
    text = load_text(text_src)  # the data files before the model: a bad one is a quick error
    wiki = load_wiki_samples(wiki_src) if wiki_src else None
    trained = ws.trained_on(cfg.model, list(prompts.prompts))
    model = model if model is not None else ctx.load(cfg.model)
    ivs = [build_intervention(spec, model, ws, text_for_means=[text[:20000]]) for spec in cfg.intervention or ["none"]]
    scorer = get_scorer(cfg.scorer, ws, model, progress=ctx.progress)
    probe = Direction.load(ws.require_direction(cfg.probe), model, several_layers_ok=True) if cfg.probe else None
    ecfg = EvalConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, ppl_tokens=cfg.ppl_tokens,
                      f1_prompts=cfg.f1_prompts if wiki else 0)
    print(f"eval: {len(prompts)} prompts from {prompts.source}, {len(ivs)} intervention(s), scorer {scorer.name}",
          flush=True)
    table, raw = evaluate(model, ivs, prompts.prompts, scorer, text, wiki, ecfg, probe, progress=ctx.progress,
                          model_label=cfg.model)
    meta = {"model": cfg.model, "model_name": model.cfg.model_name, "prompts": prompts.source, "n_prompts": len(prompts),
            "scorer": scorer.name, "probe": cfg.probe, "text": text_src, "wiki": wiki_src, "config": vars(ecfg),
            "toxicity": "mean scorer probability of the greedy continuation scored alone; toxic_frac: share > 0.5",
            "ppl": "exp(mean token NLL) over non-overlapping windows"}
    if trained is not None:
        meta["n_prompts_trained_on"] = trained
    agree = scorer_agreement(prompts, scorer) if scorer.name == "profanity-check" else None
    if agree is not None:
        meta["spearman_scorer_vs_perspective_on_human_continuations"] = agree[0]
    return EvalJobResult(cfg, table, raw, list(prompts.prompts), meta, agree[1] if agree else 0)


def write(res: EvalJobResult, ctx: Context):
    import json

    from mechtox import _io, artifacts, plotting

    run = ctx.ws.run_dir(res.config.run_name)
    artifacts.write_table(run, artifacts.EVAL, res.table, res.meta)
    _io.write_text(run / artifacts.CONTINUATIONS, "".join(
        json.dumps({"intervention": k, "prompt": p, "continuation": c, "score": sc}) + "\n"
        for k, v in res.raw.items() for p, c, sc in zip(res.prompts, v["continuations"], v["scores"], strict=True)))
    plotting.save_figure(plotting.eval_figure(res.table), run / "eval.html")
    return run


def summary(res: EvalJobResult, ctx: Context) -> str:
    from mechtox.tables import markdown

    lines = []
    rho = res.meta.get("spearman_scorer_vs_perspective_on_human_continuations")
    if rho is not None:
        lines.append(f"{res.meta['scorer']} vs Perspective TOXICITY on the {res.n_human} human continuations: Spearman {rho:.3f}")
    lines += [markdown(res.table), f"wrote {ctx.ws.run_dir(res.config.run_name)}/eval.md, eval.csv, eval.json, "
                                   "continuations.jsonl, eval.html"]
    if res.meta.get("n_prompts_trained_on"):
        lines.append("note: " + trained_note(res.meta["n_prompts_trained_on"], res.meta["n_prompts"], res.config.model))
    return "\n".join(lines)
