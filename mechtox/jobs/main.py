"""``mechtox run``, the main job: probe -> directions -> ranking -> pairs -> DPO -> evaluation ->
attribution -> report, on the base model, at one of three sizes.

Each step is one or more jobs with their configs. A finished step is reused when its key (a hash
of its configs, the contents of the data files they name, the shared settings, what the model's
name points at now and the keys of the steps it depends on) is the one recorded in
``runs/<out>/main.json`` and its outputs still exist as it wrote them: changing a setting, or a data
file in place, reruns that step and everything downstream of it, and nothing else; an output another
command replaced (``mechtox probe`` saves 'probe' too) reruns the step that wrote it; another model
behind the same name (``models --set-base``, a checkpoint saved again) reruns everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import mechtox.jobs.attribute as attribute
import mechtox.jobs.directions as directions
import mechtox.jobs.pairs as pairs
import mechtox.jobs.probe as probe
import mechtox.jobs.rank as rank
import mechtox.jobs.report as report
import mechtox.jobs.train as train
from mechtox._io import file_sha256
from mechtox.errors import MechtoxError
from mechtox.jobs._base import (
    MODEL_HELP,
    Context,
    JobConfig,
    changed,
    check_out,
    execute,
    option,
    positive,
    steering_alpha,
)

HELP = ("the main job: probe, directions, neurons, pairs, DPO, evaluation, attribution, report (finished steps "
        "are reused)")

SIZES: dict[str, dict[str, Any]] = {
    # 2 CPU cores: under 20 minutes in all (measured: see docs/results.md)
    "small": dict(n_train=800, n_test=400, dir_texts=1500, dir_eval_prompts=30, dir_draws=2, pairs=400, steps=24,
                  batch=8, lr=1e-5, eval_prompts=100, attr_prompts=40, ppl_tokens=4000, f1_prompts=25,
                  methods="probe,unembed,gen-diffmean", gen_prompts=150, goodhart_n=100, dir_ppl_tokens=1000,
                  benign_tokens=2048, evals=2),
    # a check that every step runs on the real model and data (a few minutes on 2 CPU cores; not results):
    # no causal ablation check of the directions and no Goodhart check, the two slowest parts
    "quick": dict(n_train=160, n_test=160, dir_texts=240, dir_eval_prompts=0, dir_draws=1, pairs=24, steps=3,
                  batch=4, lr=1e-5, eval_prompts=12, attr_prompts=8, ppl_tokens=512, f1_prompts=8,
                  methods="probe,unembed,gen-diffmean", gen_prompts=25, k_tokens=20, goodhart_n=0, benign_tokens=0,
                  checkpoints=1),  # a resumable state (1.9 GB on SmolLM2, ~10 s to write) at the end only
    # a GPU: the papers' sizes (all 281 unflagged challenge prompts checked, the 915 others fitted on)
    "full": dict(n_train=3000, n_test=1000, dir_texts=4000, dir_eval_prompts=281, dir_draws=3, pairs=2000, steps=500,
                 batch=16, lr=5e-6, eval_prompts=1196, attr_prompts=400, ppl_tokens=40000, f1_prompts=500,
                 methods="probe,unembed,gen-diffmean,gradient", gen_prompts=915, goodhart_n=800, benign_tokens=4096),
}
# the template-built toy data (tests on the tiny model) is small: scale down
_TOY = dict(n_train=160, n_test=80, dir_texts=240, pairs=30, eval_prompts=30, attr_prompts=20, dir_eval_prompts=20,
            k_tokens=10, goodhart_n=400, gen_prompts=100, benign_tokens=0)


@dataclass(frozen=True)
class MainConfig(JobConfig):
    model: str = option("base", MODEL_HELP)
    size: str = option("auto", "small: 15-20 minutes on 2 CPU cores; full: the papers' sizes (auto: full on a GPU); "
                               "quick: a few minutes, a check that every step runs (not results)",
                       choices=["auto", "quick", "small", "full"])
    data_dir: str | None = option(None, "folder of the data files (jigsaw_balanced.csv, rtp_challenge.jsonl, "
                                        "paradetox.tsv, wikitext2_test.raw, wiki_samples.jsonl; each may be .gz); "
                                        "default: $MECHTOX_DATA, else shared/data beside the project, else the "
                                        "real-data bundle shipped with mechtox. 'builtin': the template-built toy "
                                        "data, for tests on the tiny model only", metavar="DIR")
    alpha: float = option(8.0, "steering strength of the rejected continuations of generated pairs: the toy data "
                                "only (--data-dir builtin); with real data the job trains on ParaDetox's pairs")
    dpo_steps: int | None = option(None, "DPO steps (default: the size's; small 24, full 500)", type=int)
    fresh: bool = option(False, "redo every step")
    out: str = option("main", "run name prefix (default 'main')")

    def check(self) -> None:
        from mechtox.data import data_dirs

        check_out(self.out, "run name prefix")
        positive(self.dpo_steps, "--dpo-steps")
        steering_alpha(self.alpha)
        if changed(self, ("alpha",)) and not self.toy:
            raise MechtoxError(f"--alpha {self.alpha:g} steers generated pairs, and with real data the main job trains "
                               "on ParaDetox's human pairs: it would do nothing. For steered pairs: mechtox pairs "
                               "--alpha A --out NAME, then mechtox train dpo --pairs NAME")
        if self.size not in ("auto", *SIZES):
            raise MechtoxError(f"unknown --size {self.size!r}; use auto, {', '.join(SIZES)}")
        if self.data_dir is not None and self.data_dir != "builtin":
            data_dirs(self.data_dir)  # a missing folder is a one-line error now, not after the model loads

    @property
    def toy(self) -> bool:
        return self.data_dir == "builtin"


@dataclass(frozen=True)
class CompareEvalConfig(JobConfig):
    """Step 6: the base and the trained model evaluated alike (toxicity, probe score read by the
    base model, perplexity, F1)."""

    models: tuple[str, ...]
    prompts: str
    text: str
    wiki: str | None
    n: int
    ppl_tokens: int
    f1_prompts: int
    probe: str = "probe"
    out: str = "main-eval"


@dataclass
class Step:
    name: str
    jobs: list[tuple[Any, Any]]           # (job module or function, config)
    deps: list[str] = field(default_factory=list)
    title: str = ""


def size_of(cfg: MainConfig) -> str:
    import torch

    return cfg.size if cfg.size != "auto" else ("full" if torch.cuda.is_available() else "small")


def settings(cfg: MainConfig) -> dict[str, Any]:
    S = dict(SIZES[size_of(cfg)])
    if cfg.toy:
        S.update(_TOY)
    return S


def plan(cfg: MainConfig) -> list[Step]:
    """The seven steps with their configs and dependencies."""
    from mechtox.data import data_file

    S, M, out, dd = settings(cfg), cfg.model, cfg.out, cfg.data_dir
    labelled, prompts = data_file("jigsaw_balanced.csv", dd), data_file("rtp_challenge.jsonl", dd)
    text, wiki = data_file("wikitext2_test.raw", dd), None if cfg.toy else data_file("wiki_samples.jsonl", dd)
    # Real human-written pairs when present (ParaDetox: toxic sentence vs its non-toxic paraphrase);
    # otherwise pairs generated by steering (Lee et al.'s construction; see docs/results.md for alpha).
    paradetox = None if cfg.toy else data_file("paradetox.tsv", dd)
    steps = cfg.dpo_steps or S["steps"]
    return [
        Step("probe", [(probe, probe.ProbeConfig(model=M, data=labelled, n_train=S["n_train"], n_test=S["n_test"],
                                                 C="cv", save="final", out="probe"))],
             title="1 probe sweep (Lee et al.: every layer, mean-pooled; C by cross-validation)"),
        # every ranking side by side on the prompts with no word the scorer flags (the toxicity the model writes
        # itself, not copies of the prompt), the generation-based ones fitted on the other prompts: the cosine
        # rankings (probe, unembedding, generation diff-of-means), the unembedding contrast, and the ranking that
        # works (docs/results.md): neurons whose logit lens has a toxic token, ordered by how much the model's own
        # toxic words use them beyond ordinary text. (The 30 toy prompts have 2 flagged ones, too few to fit on:
        # there it runs on all prompts.)
        Step("directions", [(directions, directions.DirectionsConfig(
            model=M, data=labelled, prompts=prompts, text=text, methods=S["methods"], probe="probe", contrast="unembed",
            rerank="lens", prompt_filter="all" if cfg.toy else "unflagged", fit_prompts="rest" if cfg.toy else "flagged",
            n_texts=S["dir_texts"], k_tokens=S.get("k_tokens", 50), n_gen_prompts=S["gen_prompts"],
            n_eval_prompts=S["dir_eval_prompts"], ks="100", random_draws=S["dir_draws"], metric="raw",
            benign_tokens=S["benign_tokens"], ppl_tokens=S.get("dir_ppl_tokens", S["ppl_tokens"]),
            out=f"{out}-directions"))], ["probe"],
             "2 direction methods compared on prompts with no flagged word (probe, unembedding, toxic-lens...)"),
        Step("rank", [(rank, rank.RankConfig(model=M, probe=d, top=20, out=f"{out}-rank-{d}"))
                      for d in ("probe", "gen-diffmean")], ["probe", "directions"],
             "3 toxic neurons along the probe (Lee et al.) and the generation diff-of-means"),
        Step("pairs", [(pairs, pairs.PairsConfig(model=M, paradetox=paradetox, n=S["pairs"], out=f"{out}-pairs")
                        if paradetox else pairs.PairsConfig(model=M, prompts=prompts, n=S["pairs"], direction="unembed",
                                                            alpha=cfg.alpha, out=f"{out}-pairs"))],
             [] if paradetox else ["directions"],
             "4 preference pairs" + (" (ParaDetox: non-toxic paraphrase preferred)" if paradetox else
                                     " (greedy vs steered toward toxicity)")),
        Step("train", [(train, train.TrainJobConfig(
            objective="dpo", model=M, pairs=f"{out}-pairs", lr=S["lr"], batch_size=S["batch"],
            warmup_steps=max(1, steps // 10), steps=steps, clip=10.0, beta=0.1,
            eval_every=max(1, steps // S.get("evals", 4)), checkpoint_every=max(1, steps // S.get("checkpoints", S.get("evals", 4))),
            max_completion_tokens=32, held_out="probe",
            goodhart_n=S.get("goodhart_n", S["n_train"]), data=labelled, out=f"{out}-dpo"))], ["pairs", "probe"],
             "5 DPO on the pairs"),
        Step("eval", [(compare_eval, CompareEvalConfig((M, f"{out}-dpo"), prompts, text, wiki, S["eval_prompts"],
                                                       S["ppl_tokens"], S["f1_prompts"] if wiki else 0,
                                                       out=f"{out}-eval"))], ["train", "probe"],
             "6 evaluation: base vs DPO (toxicity, probe, perplexity, F1)"),
        Step("attribution", [(attribute, attribute.AttributeConfig(
            before=M, after=f"{out}-dpo", direction="probe", prompts=prompts, n=S["attr_prompts"], mode="both",
            top=20, n_eval_prompts=0, ablate_ks="100", ppl_tokens=S["ppl_tokens"], f1_prompts=0,
            out=f"{out}-attribution"))], ["train", "probe"], "7 attribution of the DPO change to neurons and heads"),
    ]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _contents(value: Any) -> str | None:
    """A digest of the file ``value`` names (None when it names none): a data file edited in place
    keeps its path, and its step must not be reused."""
    from pathlib import Path

    if not isinstance(value, str) or not value or not Path(value).is_file():
        return None
    p = Path(value).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(p)[:16]
    return _DIGESTS[key]


def step_key(step: Step, ctx: Context, keys: dict[str, str], model: str = "") -> str:
    """A hash of the step's configs, the contents of the files they name (data), the settings every
    step shares, what the model's name points at (``model``: :meth:`Workspace.model_identity`) and
    its dependencies' keys."""
    configs = [dataclasses.asdict(c) for _, c in step.jobs]
    values = [v for c in configs for f in c.values() for v in (f if isinstance(f, list) else [f])]
    files = {v: d for v in values if (d := _contents(v)) is not None}
    blob = {"jobs": [[getattr(j, "__name__", str(j)), c] for (j, _), c in zip(step.jobs, configs, strict=True)],
            "dtype": ctx.dtype, "seed": ctx.seed, "model": model, "deps": {d: keys[d] for d in step.deps}}
    if files:  # (left out when none: the keys of toy-data runs are what they were)
        blob["files"] = files
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compare_eval(cfg: CompareEvalConfig, ctx: Context, models: dict):
    """Step 6 (see :class:`CompareEvalConfig`); writes ``runs/<out>/eval.*`` and returns the table."""
    import pandas as pd

    from mechtox import artifacts
    from mechtox.data import load_prompts, load_text, load_wiki_samples
    from mechtox.evaluate import EvalConfig, evaluate
    from mechtox.interventions import NOOP
    from mechtox.jobs.evaluate import trained_note
    from mechtox.probe import Direction
    from mechtox.scorers import get_scorer

    ps = load_prompts(cfg.prompts, limit=cfg.n).prompts
    text = load_text(cfg.text)
    wiki = load_wiki_samples(cfg.wiki) if cfg.wiki else None
    base = models[cfg.models[0]]
    probe_dir = Direction.load(ctx.ws.require_direction(cfg.probe), base)
    ecfg = EvalConfig(ppl_tokens=cfg.ppl_tokens, f1_prompts=cfg.f1_prompts if wiki else 0)
    scorer = get_scorer("profanity")
    rows = [evaluate(models[spec], [NOOP], ps, scorer, text, wiki, ecfg, probe=probe_dir, judge=base,
                     progress=ctx.progress, model_label=spec)[0] for spec in cfg.models]
    table = pd.concat(rows, ignore_index=True)
    trained = {spec: n for spec in cfg.models if (n := ctx.ws.trained_on(spec, list(ps)))}
    for spec, n in trained.items():
        print(f"   note: {trained_note(n, len(ps), spec, advice='')}")
    artifacts.write_table(ctx.ws.run_dir(cfg.out), artifacts.EVAL, table, {
        "n_prompts": len(ps), "prompts": cfg.prompts, "scorer": scorer.name, "probe": "probe (read by the base model)",
        "toxicity": "mean profanity-check probability of the continuation scored alone; toxic_frac: share > 0.5",
        **({"n_prompts_trained_on": trained} if trained else {})})
    return table


class _Models(dict):
    """Models loaded once per main job, by spec."""

    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx

    def __missing__(self, spec: str):
        t = time.perf_counter()
        self[spec] = self.ctx.ws.load_model(spec, device=self.ctx.device, dtype=self.ctx.dtype)
        print(f"   loaded {spec} in {time.perf_counter() - t:.1f} s")
        return self[spec]


def _run_step(step: Step, ctx: Context, models: _Models) -> None:
    import shutil

    from mechtox.tables import markdown

    for job, cfg in step.jobs:
        if job is compare_eval:
            print(markdown(compare_eval(cfg, ctx, models), digits=4))
        elif job is train:
            shutil.rmtree(ctx.ws.root / "training" / cfg.name, ignore_errors=True)
            models.pop(cfg.name, None)
            fresh = ctx.ws.load_model(cfg.model, device=ctx.device, dtype=ctx.dtype)  # training changes weights in place
            execute(job, cfg, ctx, model=fresh, replace=True)  # the step is redone: its model is replaced
        elif job is attribute:
            execute(job, cfg, ctx, before=models[cfg.before], after=models[cfg.after])
        else:
            execute(job, cfg, ctx, model=models[cfg.model])


def _outputs(step: Step, ctx: Context) -> list:
    """The step's outputs: each job's (a file or a run folder) and the directions a directions job
    saves (the rank and, on toy data, pairs steps read them by name)."""
    out = [ctx.ws.run_dir(cfg.out) if job is compare_eval else job.output(cfg, ctx.ws) for job, cfg in step.jobs]
    saved = [directions.saved_name(cfg, m) for job, cfg in step.jobs if job is directions for m in cfg.method_list]
    return out + [ctx.ws.direction_dir(name) / "direction.json" for name in saved if name]


def _output_digests(step: Step, ctx: Context) -> dict[str, str]:
    """Digests of the step's output files (the probe, the directions, the pairs, the trained model's
    config) as it wrote them: a later command can replace them under the same name (`mechtox probe`
    saves 'probe' too), and the steps after would then read another probe than their results came from."""
    return {str(p.relative_to(ctx.ws.root)): file_sha256(p)[:16] for p in _outputs(step, ctx) if p.is_file()}


def _reusable(step: Step, ctx: Context, rec: dict | None, key: str) -> bool:
    if not (rec and rec.get("key") == key and all(p.exists() for p in _outputs(step, ctx))):
        return False
    now, then = _output_digests(step, ctx), rec.get("outputs", {})  # none recorded: an older main.json
    changed = [p for p in now if p in then and now[p] != then[p]]
    if changed:
        print(f"\n== {step.title}: {', '.join(changed)} was replaced since this job wrote it (by another command "
              "with the same name?); redone, so that the steps after read what their results came from (give "
              "your own runs other names, e.g. `mechtox probe --out mine`)")
    return not changed


@dataclass
class MainResult:
    size: str
    state: dict
    ran: list[str]
    reused: list[str]
    seconds: float
    report: Any = None


def run(cfg: MainConfig, ctx: Context) -> MainResult:
    from mechtox import _io
    from mechtox.data import find_data_file

    ws = ctx.ws
    model_id = ws.model_identity(cfg.model)  # resolves it: an unknown model is an error before any step
    size, S = size_of(cfg), settings(cfg)
    real = "builtin" if cfg.toy else find_data_file("jigsaw_balanced.csv", cfg.data_dir)[1].describe()
    steps = plan(cfg)
    state_path = ws.run_dir(cfg.out) / "main.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() and not cfg.fresh else {}
    state.setdefault("steps", {})
    t_start = time.perf_counter()
    print(f"== mechtox main job: {size} settings on {cfg.model}; workspace {ws.root}")
    models, ran, reused = _Models(ctx), [], []
    keys: dict[str, str] = {}
    for step in steps:
        keys[step.name] = key = step_key(step, ctx, keys, model_id)
        rec = state["steps"].get(step.title)
        if _reusable(step, ctx, rec, key):
            print(f"\n== {step.title}: done before ({rec['seconds']:.0f} s), reused")
            reused.append(step.name)
            continue
        print(f"\n== {step.title}")
        t = time.perf_counter()
        _run_step(step, ctx, models)
        state["steps"][step.title] = {"key": key, "deps": step.deps, "seconds": time.perf_counter() - t,
                                      "settings": [dataclasses.asdict(c) for _, c in step.jobs],
                                      "outputs": _output_digests(step, ctx)}
        state.update(size=size, model=cfg.model, data=real)
        _io.write_json(state_path, state)
        ran.append(step.name)
    total = sum(v["seconds"] for k, v in state["steps"].items() if k in {s.title for s in steps})
    state["total_seconds_of_steps"] = total
    _io.write_json(state_path, state)
    _io.write_json(ws.root / "main.json", {"size": size, "model": cfg.model, "steps_seconds_total": round(total),
                                           "this_call_seconds": round(time.perf_counter() - t_start), "data": real})
    res = MainResult(size, state, ran, reused, time.perf_counter() - t_start)
    res.report = report.run(report.ReportConfig(title=f"mechtox main job ({size} settings, {cfg.model})",
                                                notes=f"{size} settings: " + ", ".join(f"{k}={v}" for k, v in S.items())),
                            ctx).path
    return res


def write(res: MainResult, ctx: Context):
    return res.report  # every step wrote its outputs when it ran; the report was rebuilt last


def summary(res: MainResult, ctx: Context) -> str:
    total = res.state["total_seconds_of_steps"]
    return (f"\n== report: {res.report} ({res.report.stat().st_size / 2**20:.1f} MiB); steps took {total:.0f} s in all, "
            f"this call {res.seconds:.0f} s; steps run now: {', '.join(res.ran) or 'none'}")
