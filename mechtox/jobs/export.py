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


def run(cfg: ExportConfig, ctx: Context, model=None) -> ExportResult:
    import torch

    from mechtox.models import _quiet_transformers, export_hf, foreign_parameters_in_use

    model = model if model is not None else ctx.load(cfg.name)
    foreign = foreign_parameters_in_use(model)
    if foreign:
        print(f"warning: {len(foreign)} non-zero parameters the architecture lacks (e.g. {foreign[0]}) are left out: "
              "the export differs from the model")
    path = export_hf(model, Path(cfg.hf).expanduser(), force=cfg.force)
    # the check a user would do: transformers loads it and gives the model's logits
    from transformers import AutoModelForCausalLM

    _quiet_transformers()  # its loading bar follows --quiet, whichever way the model came
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = model.to_tokens("The export check: a short text.", prepend_bos=model.cfg.default_prepend_bos).cpu()
    with torch.no_grad():
        ours = model(ids.to(model.cfg.device)).float().cpu()
        theirs = hf(ids).logits.float()
    return ExportResult(cfg, path, type(hf).__name__, float((ours - theirs).abs().max()))


def write(res: ExportResult, ctx: Context) -> Path:
    return res.path  # written atomically by run (it is the job's only output, checked before returning)


def summary(res: ExportResult, ctx: Context) -> str:
    return (f"wrote {res.path} ({res.architecture}); transformers loads it and its logits differ from "
            f"{res.config.name!r} by at most {res.max_logit_diff:.2e}")
