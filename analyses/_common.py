"""Shared set-up of the analyses: which model and how much data.

Every analysis runs on the offline default (SmolLM2-135M-Instruct) with the real data
(``$MECHTOX_DATA``, else shared/data beside the project, else the bundle shipped with mechtox), on
``gpt2-medium`` with the papers' settings when you have the hub (``MECHTOX_MODEL=gpt2-medium
MECHTOX_SIZE=paper``), and in CI on the tiny random model with the template-built toy data
(``MECHTOX_MODEL=tiny MECHTOX_SIZE=ci``). Figures and tables go to ``results/`` (git-ignored).
"""

import os
from pathlib import Path

import mechtox as mt
from mechtox.data import data_file as _data_file

MODEL = os.environ.get("MECHTOX_MODEL", "smollm2-135m-instruct")
SIZE = os.environ.get("MECHTOX_SIZE", "offline")
RESULTS = Path(os.environ.get("MECHTOX_RESULTS", Path(__file__).resolve().parents[1] / "results"))
RESULTS.mkdir(parents=True, exist_ok=True)



def data_file(name: str, builtin: str) -> str:
    """A real data file (mechtox.data.data_file), or the toy ``builtin`` in CI on the tiny model."""
    return builtin if SIZE == "ci" else _data_file(name)


# How much data each analysis uses, per size. "paper": the papers' settings (needs a GPU and the hub).
N = {
    "ci": dict(train=120, test=60, prompts=8, new_tokens=5, ppl_tokens=200, pairs=16, steps=4, k_tokens=5),
    "offline": dict(train=3000, test=1000, prompts=200, new_tokens=20, ppl_tokens=20000, pairs=200, steps=40, k_tokens=50),
    "paper": dict(train=3000, test=1000, prompts=1199, new_tokens=20, ppl_tokens=200000, pairs=6700, steps=1675, k_tokens=50),
}[SIZE]


def load():
    return mt.load_model(MODEL)


def save(fig, name: str) -> Path:
    from mechtox.plotting import save_figure

    return save_figure(fig, RESULTS / name)
