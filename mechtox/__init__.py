"""mechtox: mechanistic interpretability of toxicity in language models.

The public API, imported lazily (``import mechtox`` is cheap and has no side effects)::

    import mechtox as mt
    model = mt.load_model("smollm2-135m-instruct")          # or "gpt2-medium", a path, an alias
    data = mt.load_labelled()                                  # Jigsaw (or "data:NAME", a path, an HF id)
    sweep = mt.probe_sweep(model, data.subset(range(0, 12000, 12)))  # 1,000 texts, one pass, every layer
    ranking = mt.rank_neurons(model, sweep.best)              # cos(W_out[l, i], w) for all neurons
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "mechtox.api",
    "Workspace": "mechtox.workspace",
    "tiny_model": "mechtox.models",
    "load_gguf": "mechtox.models",
    "load_checkpoint": "mechtox.models",
    "save_checkpoint": "mechtox.models",
    "export_hf": "mechtox.models",
    "load_labelled": "mechtox.data",
    "load_prompts": "mechtox.data",
    "load_pairs": "mechtox.data",
    "load_text": "mechtox.data",
    "tokenize": "mechtox.data",
    "collect_activations": "mechtox.activations",
    "Direction": "mechtox.probe",
    "Probe": "mechtox.probe",
    "fit_probe": "mechtox.probe",
    "probe_sweep": "mechtox.probe",
    "ProbeScorer": "mechtox.probe",
    "rank_neurons": "mechtox.neurons",
    "mean_activations": "mechtox.neurons",
    "logit_lens": "mechtox.neurons",
    "decode_neurons": "mechtox.neurons",
    "toxic_svd": "mechtox.neurons",
    "get_scorer": "mechtox.scorers",
    "MechtoxError": "mechtox.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mechtox' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
