"""``mechtox pairs``: preference pairs, greedy vs steered toward toxicity (or ParaDetox)."""

from __future__ import annotations

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
    option,
    positive,
    steering_alpha,
)

HELP = "preference pairs: greedy vs steered-toward-toxicity continuations (or ParaDetox)"


@dataclass(frozen=True)
class PairsConfig(JobConfig):
    model: str = option("base", MODEL_HELP)
    prompts: str | None = option(None, "prompts (default: shared wiki_samples.jsonl, as Lee et al. used Wikitext-2)")
    direction: str = option("unembed", "direction steered along for the rejected continuation")
    alpha: float = option(8.0, "steering strength (added alpha x unit direction)")
    n: int = option(200, "number of prompts")
    max_new_tokens: int = option(20, "tokens of each continuation")
    batch_size: int = option(25, "prompts generated at once")
    paradetox: str | None = option(None, "convert this ParaDetox TSV instead of generating")
    out: str = option("pairs", "name of the pair set")

    def check(self) -> None:
        check_out(self.out, "pairs name")
        for name in ("n", "max_new_tokens", "batch_size"):
            positive(getattr(self, name), "--" + name.replace("_", "-"))
        steering_alpha(self.alpha)
        if self.paradetox:  # a setting the conversion would ignore is an error, not a silent no-op
            unused = changed(self, ("prompts", "direction", "alpha", "max_new_tokens", "batch_size"))
            if unused:
                raise MechtoxError(f"{', '.join(unused)}: a setting of generated pairs; --paradetox converts a file "
                                   "and does not use it")


@dataclass
class PairsResult:
    config: PairsConfig
    pairs: Any      # mechtox.data.PreferencePairs
    source: str


def run(cfg: PairsConfig, ctx: Context, model=None) -> PairsResult:
    from mechtox.data import data_file, is_wiki_samples, load_pairs, load_prompts, load_wiki_samples

    if cfg.paradetox:
        return PairsResult(cfg, load_pairs(cfg.paradetox, limit=cfg.n), "paradetox")
    ctx.ws.require_direction(cfg.direction)
    src = cfg.prompts or data_file("wiki_samples.jsonl")
    if is_wiki_samples(src):
        prompts = load_wiki_samples(src, limit=cfg.n)[0]
    else:
        prompts = load_prompts(src, limit=cfg.n).prompts
    # the direction and the prompts are checked: now TransformerLens
    from mechtox.probe import Direction
    from mechtox.scorers import get_scorer
    from mechtox.training import steered_pairs

    model = model if model is not None else ctx.load(cfg.model)
    direction = Direction.load(ctx.ws.require_direction(cfg.direction), model)
    print(f"pairs: {len(prompts)} prompts from {src}; rejected = steered +{cfg.alpha:g} x "
          f"{cfg.direction!r} at {direction.hook_name}", flush=True)
    pairs = steered_pairs(model, prompts, direction, cfg.alpha, get_scorer("profanity"), cfg.max_new_tokens,
                          cfg.batch_size, str(src), cfg.direction, ctx.progress)
    if not len(pairs):
        raise MechtoxError("no usable pairs (all continuations empty or identical); raise --alpha")
    return PairsResult(cfg, pairs, "steered")


def output(cfg: PairsConfig, ws) -> Path:
    """The path (file or run folder) whose presence shows the job's results are written (the main job's reuse test)."""
    return ws.pairs_path(cfg.out)


def write(res: PairsResult, ctx: Context):
    from mechtox.data import save_pairs

    path = output(res.config, ctx.ws)
    save_pairs(res.pairs, path)
    return path


def summary(res: PairsResult, ctx: Context) -> str:
    import numpy as np

    pairs, path = res.pairs, ctx.ws.pairs_path(res.config.out)
    if res.source == "paradetox":
        return f"wrote {len(pairs)} ParaDetox pairs to {path}"
    extra = pairs.extra
    lines = [f"wrote {len(pairs)} pairs to {path}: mean {extra[0]['scorer']} chosen "
             f"{np.mean([e['chosen_score'] for e in extra]):.3f}, rejected {np.mean([e['rejected_score'] for e in extra]):.3f}"]
    for i in range(min(3, len(pairs))):
        lines.append(f"  {pairs.prompt[i][-50:]!r}\n    chosen:   {pairs.chosen[i][:80]!r}\n"
                     f"    rejected: {pairs.rejected[i][:80]!r}")
    return "\n".join(lines)
