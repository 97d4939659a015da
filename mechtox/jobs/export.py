"""``mechtox export NAME --hf DIR``: a workspace model as a ``transformers`` directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechtox.errors import MechtoxError
from mechtox.jobs._base import Context, JobConfig, check_writable, option

HELP = "write a model as a transformers directory (weights, config, tokenizer, generation config)"
RANDOM = False  # draws no random numbers (writes and checks weights; its check is greedy): the CLI seeds nothing, so torch need not load


@dataclass(frozen=True)
class ExportConfig(JobConfig):
    name: str = option("base", "the model to export (a workspace alias, checkpoint path...)", positional=True)
    hf: str = option(None, "the directory to write (it must not exist or be empty, unless --force)", required=True,
                     metavar="DIR")
    force: bool = option(False, "replace a non-empty DIR")

    def check(self) -> None:
        out = Path(self.hf).expanduser()
        check_writable(out, "--hf")  # a file there, or a folder that cannot be created or written
        if out.is_dir() and any(out.iterdir()) and not self.force:
            raise MechtoxError(f"--hf {out} is not empty; pass --force to replace it or give another directory")

    @property
    def model(self) -> str:  # the CLI resolves every config's model before any work
        return self.name


@dataclass
class ExportResult:
    config: ExportConfig
    path: Path
    architecture: str
    max_logit_diff: float


EXACT = 1e-3  # the largest logit difference an export may show, relative to the largest logit (at least 1)


def run(cfg: ExportConfig, ctx: Context, model=None) -> ExportResult:
    if model is None:
        from mechtox.model_files import EXPORT_ARCHITECTURES, export_refusal

        arch = ctx.ws.model_architecture(cfg.name)  # from the files: refused before torch and the model load
        if arch is not None and arch not in EXPORT_ARCHITECTURES:
            raise MechtoxError(export_refusal(arch))
    import torch

    from mechtox.models import _quiet_transformers, export_hf, foreign_parameters_in_use

    model = model if model is not None else ctx.load(cfg.name)
    foreign = foreign_parameters_in_use(model)
    if foreign:
        print(f"warning: {len(foreign)} non-zero parameters the architecture lacks (e.g. {foreign[0]}) are left out: "
              "the export differs from the model")
    ids = model.to_tokens("The export check: a short text.", prepend_bos=model.cfg.default_prepend_bos).cpu()
    reference = model
    if model.cfg.dtype != torch.float32:  # the export holds the weights in float32: compare with them in float32
        import dataclasses

        from mechtox.models import _build

        reference = _build(dataclasses.replace(model.cfg, dtype=torch.float32),  # rotary tables computed anew
                           {n: p.detach().cpu() for n, p in model.named_parameters()})
    with torch.no_grad():
        ours = reference(ids.to(reference.cfg.device)).float().cpu()
    del reference
    found: dict = {}

    def check(folder: Path) -> None:
        """The check a user would do, on the written folder before it takes DIR's place:
        transformers loads it and gives the model's logits."""
        from transformers import AutoModelForCausalLM

        _quiet_transformers()  # its loading bar follows --quiet, whichever way the model came
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = hf(ids).logits.float()
        found.update(architecture=type(hf).__name__, diff=float((ours - theirs).abs().max()))
        tolerance = EXACT * max(1.0, float(ours.abs().max()))
        if not foreign and not found["diff"] <= tolerance:  # written so that a NaN difference fails too
            raise MechtoxError(f"the export of {cfg.name!r} is not the model: transformers' logits differ from it by "
                               f"{found['diff']:.3g} (at most {tolerance:.3g} allowed), so nothing was written to "
                               f"{cfg.hf}; please report it with the model's architecture "
                               f"({model.cfg.original_architecture})")

    path = export_hf(model, Path(cfg.hf).expanduser(), force=cfg.force, check=check)
    return ExportResult(cfg, path, found["architecture"], found["diff"])


def write(res: ExportResult, ctx: Context) -> Path:
    return res.path  # written atomically by run (it is the job's only output, checked before returning)


def summary(res: ExportResult, ctx: Context) -> str:
    return (f"wrote {res.path} ({res.architecture}); transformers loads it and its logits differ from "
            f"{res.config.name!r} by at most {res.max_logit_diff:.2e}")
