"""The settings of a training run, :class:`TrainConfig`, and :func:`seed_everything`. This module
imports nothing heavy, so the CLI checks a command's flags, pairs and probes before torch and
TransformerLens load; :mod:`mechtox.training` runs the settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from mechtox._typecheck import check_types
from mechtox.errors import MechtoxError
from mechtox.model_files import LLAMA_MODULE_ARCHITECTURES

# --lora-targets names per architecture (mechtox.hf_backend.lora_target_modules maps them to peft's module names)
_LLAMA_LORA = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
               "down": "down_proj"}
LORA_NAMES = {
    **dict.fromkeys(LLAMA_MODULE_ARCHITECTURES, _LLAMA_LORA),  # Mistral, Qwen 2 / 3, Gemma 1-3, OLMo 2 / 3 too
    # GPT-2 computes q, k and v with one fused module (c_attn): q, k or v adapt all three
    "GPT2LMHeadModel": {"q": "c_attn", "k": "c_attn", "v": "c_attn", "o": "attn.c_proj", "up": "c_fc",
                        "down": "mlp.c_proj", "c_attn": "c_attn", "attn.c_proj": "attn.c_proj", "c_fc": "c_fc",
                        "mlp.c_proj": "mlp.c_proj"},
    # Pythia too (query_key_value)
    "GPTNeoXForCausalLM": {"q": "query_key_value", "k": "query_key_value", "v": "query_key_value",
                           "o": "attention.dense", "up": "dense_h_to_4h", "down": "dense_4h_to_h",
                           "query_key_value": "query_key_value", "attention.dense": "attention.dense",
                           "dense_h_to_4h": "dense_h_to_4h", "dense_4h_to_h": "dense_4h_to_h"},
    "OPTForCausalLM": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "up": "fc1", "down": "fc2",
                       "out_proj": "out_proj", "fc1": "fc1", "fc2": "fc2"},
}


def lora_target_list(spec: str) -> list[str]:
    """The names of a ``--lora-targets`` list such as ``"q, v"``."""
    return [x.strip() for x in spec.split(",") if x.strip()]


@dataclass
class TrainConfig:
    """Settings of a training run (saved with every checkpoint; never mutated by the loop)."""

    objective: Literal["dpo", "sft", "sft-probe", "dpo-probe", "sap"] = "dpo"
    """what to optimise"""
    lr: float = 1e-5
    """peak learning rate (after warm-up)"""
    optimizer: Literal["adamw", "rmsprop"] = "adamw"
    """AdamW (fused on CUDA) or RMSprop (Lee et al.)"""
    weight_decay: float = 0.0
    batch_size: int = 8
    """pairs (or texts) per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    warmup_steps: int = 5
    """linear warm-up from 0 to lr, then constant"""
    max_steps: int = 40
    """optimizer steps"""
    clip: float = 10.0
    """gradient-norm clipping (0: off)"""
    beta: float = 0.1
    """DPO temperature"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """autocast precision of forward passes"""
    max_prompt_tokens: int = 32
    """prompts keep their last tokens"""
    max_completion_tokens: int = 32
    """completions keep their first tokens"""
    eval_every: int = 10
    """validation every N steps (0: only at the end)"""
    val_fraction: float = 0.1
    """share of the data held out for validation"""
    patience: int = 0
    """stop after this many evaluations without a better validation loss (0: never)"""
    checkpoint_every: int = 10
    """save a resumable checkpoint every N steps"""
    seed: int = 0
    probe_lambda: float = 1.0
    """weight of the probe term in sft-probe"""
    compile: bool = False
    """torch.compile the model (CUDA)"""
    backend: Literal["auto", "hf", "hooked"] = "auto"
    """where the step runs: ``hf`` (the transformers model with the same weights, SDPA attention,
    hooks at TransformerLens names), ``hooked`` (the HookedTransformer) or ``auto`` (hf when the
    architecture converts and every hook the objective needs is mapped)"""
    lora_r: int = 0
    """LoRA rank (0: full fine-tuning); LoRA runs on the hf backend, through peft"""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is ``alpha / r * B A``)"""
    lora_dropout: float = 0.0
    lora_targets: str = "q,v"
    """modules that get adapters: q, k, v, o, gate, up, down (GPT-2: q/k/v = c_attn, o, up, down)"""
    fsdp: bool = False
    """under torchrun: shard the training copy's weights, gradients and optimizer state over the
    ranks (FSDP, each block a unit) instead of replicating them (hf backend, full fine-tuning)"""
    sap_layers: str = "auto"
    """SAP: blocks whose output (``hook_resid_post``) gets the safety-aware vector; 'auto' = at 10%
    and 28% of the depth (layers 3 and 9 of Llama-2-7B's 32, as in Wu et al.)"""
    sap_rho: float = 1e-3
    """SAP: size of the harmful weight perturbation relative to the norm of the weights"""
    sap_eps: float = 0.25
    """SAP: size of each coordinate of the vector relative to the median |activation| at its layer"""
    sap_temperature: float = 1.0
    """SAP: temperature T of the safety loss ``-log sigmoid((log p(safe) - log p(harmful)) / T)``"""

    def __post_init__(self) -> None:
        check_types(self)  # types and the Literal fields' values; lr="1e-5" failed with "'>' not supported..."
        for least, names in ((1, ("batch_size", "grad_accum", "max_steps", "max_prompt_tokens", "max_completion_tokens",
                                  "checkpoint_every")),
                             (0, ("warmup_steps", "eval_every", "patience"))):
            for name in names:
                if getattr(self, name) < least:
                    raise MechtoxError(f"{name} must be at least {least}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MechtoxError("lr must be a positive number")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise MechtoxError(f"beta (the DPO temperature) must be a positive number, not {self.beta!r}")
        for name in ("clip", "weight_decay", "probe_lambda"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise MechtoxError(f"{name} must be a finite number >= 0, not {getattr(self, name)!r}")
        if not 0 <= self.val_fraction < 1:
            raise MechtoxError(f"val_fraction must be in [0, 1), not {self.val_fraction!r}")
        if self.patience and not self.eval_every:
            raise MechtoxError(f"patience {self.patience} stops on the validation loss, which eval_every 0 computes only "
                               "at the last step; give eval_every >= 1, or patience 0")
        known = sorted({name for table in LORA_NAMES.values() for name in table})
        targets = lora_target_list(self.lora_targets)
        if self.lora_r and (not targets or set(targets) - set(known)):
            raise MechtoxError(f"lora_targets {self.lora_targets!r}: use comma-separated names from {', '.join(known)}")
        if self.lora_r < 0 or not 0 <= self.lora_dropout < 1 or not 0 < self.lora_alpha < math.inf:
            raise MechtoxError(f"lora_r must be >= 0, lora_alpha a finite number > 0 and lora_dropout in [0, 1), not "
                               f"{self.lora_r!r}, {self.lora_alpha!r} and {self.lora_dropout!r}")
        if not (0 <= self.sap_rho < math.inf and 0 <= self.sap_eps < math.inf and 0 < self.sap_temperature < math.inf):
            raise MechtoxError(f"sap_rho and sap_eps must be finite numbers >= 0 and sap_temperature a finite number > 0, "
                               f"not {self.sap_rho!r}, {self.sap_eps!r} and {self.sap_temperature!r}")
        if self.fsdp and self.objective == "sap":
            raise MechtoxError("--fsdp cannot train sap: its harmful-weight gradient (torch.autograd.grad of the weights) "
                               "does not reach FSDP's sharded weights; use plain torchrun")
        if self.fsdp and (self.backend == "hooked" or self.lora_r or self.compile):
            raise MechtoxError("--fsdp shards the hf backend's full fine-tuning: drop --backend hooked, --lora-r and "
                               "--compile (LoRA's adapters are small enough to replicate: use plain torchrun)")


def lee_et_al_config(**overrides: Any) -> TrainConfig:
    """Lee et al. 2024's DPO settings: beta 0.1, lr 1e-6, RMSprop, batch 4, 150 warm-up steps."""
    base: dict[str, Any] = dict(objective="dpo", lr=1e-6, optimizer="rmsprop", batch_size=4, warmup_steps=150, beta=0.1,
                max_steps=6700 // 4)
    base.update(overrides)
    return TrainConfig(**base)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
