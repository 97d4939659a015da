"""The hf training backend: the step runs on the ``transformers`` model with the same weights
(SDPA attention), and the objectives' hooks are registered at TransformerLens hook names.

:class:`HFBackend` looks like a HookedTransformer to the objectives in :mod:`mechtox.training`:
``backend(tokens, attention_mask=mask)`` returns logits, ``backend.hooks(fwd_hooks=[(name, fn)])``
attaches ``fn(activation, hook)`` at a TransformerLens hook name (``hook.name`` is that name;
returning a tensor replaces the activation, returning ``None`` keeps it), and ``backend.cfg`` is
the HookedTransformer's config. The objectives have no backend-specific code.

The adapter (:data:`HOOK_SITES`) maps each supported name to where the same activation is in the
HuggingFace module tree, for Llama-family models (SmolLM2, Llama 2 / 3; Mistral, Qwen 2 / 3, Gemma
1-3 and OLMo 2 / 3 name their modules as Llama does), GPT-2 and Pythia (GPT-NeoX: ``attention.dense``,
``mlp.dense_4h_to_h``; no ``hook_resid_mid``, which TransformerLens does not have for its parallel
attention and MLP) and OPT (``self_attn.out_proj``, ``fc2``; its blocks flatten batch and position
around the MLP, so ``mlp.hook_post`` and ``hook_mlp_out`` are handed to hook functions as
``(batch, position, d)`` and flattened again); other architectures train on the hooked backend.
Gemma 2 / 3 and OLMo 2 / 3 add each attention and MLP output through a norm: their ``hook_attn_out`` and
``hook_mlp_out`` are the outputs of ``post_attention_layernorm`` and ``post_feedforward_layernorm``
(TransformerLens' ``ln1_post`` / ``ln2_post``; OLMo's ``ln1`` / ``ln2``), and Gemma's final norm
scales by ``1 + w``:

========================== ======================================= =================================
TransformerLens name        Llama                                   GPT-2
========================== ======================================= =================================
blocks.L.hook_resid_pre     input of ``model.layers.L``             input of ``transformer.h.L``
blocks.L.attn.hook_z        input of ``self_attn.o_proj``, per head input of ``attn.c_proj``, per head
blocks.L.hook_attn_out      output of ``self_attn.o_proj``          output of ``attn.c_proj``
blocks.L.hook_resid_mid     resid_pre + attn_out                    resid_pre + attn_out
blocks.L.mlp.hook_post      input of ``mlp.down_proj``              input of ``mlp.c_proj``
blocks.L.hook_mlp_out       output of ``mlp.down_proj``             output of ``mlp.c_proj``
blocks.L.hook_resid_post    output of ``model.layers.L``            output of ``transformer.h.L``
ln_final.hook_normalized    ``model.norm``'s input, normalised      ``transformer.ln_f``'s, normalised
========================== ======================================= =================================

``hook_resid_mid`` has no module of its own in HuggingFace's blocks (the residual is a local
variable): it is read as resid_pre + attn_out at the attention output, and a replacement ``new``
is written as the attention output ``new - resid_pre``. ``ln_final.hook_normalized`` is the
normalised vector before the norm's weight (as in TransformerLens' unprocessed models); a
replacement is multiplied by the weight (and for GPT-2 shifted by the bias).

The PyTorch hooks are registered once, when the backend is built, and read the functions to call
from mutable slots; ``hooks()`` only fills and empties the slots, so a compiled model keeps its
graphs across steps. Dropout is off (as in HookedTransformer).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedTransformer

from mechtox.errors import MechtoxError
from mechtox.model_files import (
    GEMMA_ARCHITECTURES,
    HF_BACKEND_ARCHITECTURES,
    LLAMA_MODULE_ARCHITECTURES,
    POST_NORM_LLAMA_LIKE,
)
from mechtox.train_config import LORA_NAMES, lora_target_list

ARCHITECTURES = HF_BACKEND_ARCHITECTURES

_LAYER_NAMES = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",
                "hook_resid_post")
_NAME = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(n) for n in _LAYER_NAMES) + r")$")

# per architecture: the modules (relative to the block) whose input carries attn.hook_z ("z") and
# mlp.hook_post ("post"), and whose output carries hook_attn_out and hook_mlp_out
_LLAMA_MODULES = {"blocks": "model.layers", "z": "self_attn.o_proj", "attn_out": "self_attn.o_proj",
                  "post": "mlp.down_proj", "mlp_out": "mlp.down_proj", "final_norm": "model.norm"}
_MODULES = {  # Mistral, Qwen 2 / 3, Gemma 1-3 and OLMo 2 / 3 name their modules as Llama does
    **dict.fromkeys(LLAMA_MODULE_ARCHITECTURES, _LLAMA_MODULES),
    # Gemma 2 / 3 and OLMo 2 / 3 add each block's outputs to the stream through a norm: TransformerLens'
    # attn_out and mlp_out are the norms' outputs (Gemma's ln1_post / ln2_post, OLMo's ln1 / ln2)
    **dict.fromkeys(POST_NORM_LLAMA_LIKE,
                    {**_LLAMA_MODULES, "attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}),
    "GPT2LMHeadModel": {"blocks": "transformer.h", "z": "attn.c_proj", "attn_out": "attn.c_proj",
                        "post": "mlp.c_proj", "mlp_out": "mlp.c_proj", "final_norm": "transformer.ln_f"},
    "GPTNeoXForCausalLM": {"blocks": "gpt_neox.layers", "z": "attention.dense", "attn_out": "attention.dense",
                           "post": "mlp.dense_4h_to_h", "mlp_out": "mlp.dense_4h_to_h",
                           "final_norm": "gpt_neox.final_layer_norm"},
    "OPTForCausalLM": {"blocks": "model.decoder.layers", "z": "self_attn.out_proj", "attn_out": "self_attn.out_proj",
                       "post": "fc2", "mlp_out": "fc2", "final_norm": "model.decoder.final_layer_norm"},
}
_FLAT_MLP = {"OPTForCausalLM"}
"""Architectures whose blocks flatten batch and position into one axis around the MLP."""


def supported_hook(name: str, cfg) -> bool:
    """Whether the hf backend can read and write TransformerLens hook ``name`` for ``cfg``'s model."""
    if cfg.original_architecture not in ARCHITECTURES:
        return False
    if name == "ln_final.hook_normalized":
        return True
    m = _NAME.match(name)
    if m and m.group(2) == "hook_resid_mid" and cfg.parallel_attn_mlp:
        return False  # Pythia's attention and MLP both read resid_pre: TransformerLens has no resid_mid
    return bool(m) and int(m.group(1)) < cfg.n_layers


def unsupported_reason(cfg, hook_names: Sequence[str]) -> str | None:
    """Why the hf backend cannot run a step that needs ``hook_names`` (``None``: it can)."""
    if cfg.original_architecture not in ARCHITECTURES:
        return (f"the hf backend converts {', '.join(ARCHITECTURES)} models; this one is "
                f"{cfg.original_architecture or 'not from transformers'}")
    missing = [h for h in hook_names if not supported_hook(h, cfg)]
    if missing:
        return f"the objective needs hook {missing[0]}, which the hf backend does not map"
    return None


@dataclass(frozen=True)
class _HookRef:
    """What a hook function gets as its ``hook`` argument (TransformerLens passes the HookPoint)."""

    name: str


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new, *x[1:]) if isinstance(x, tuple) else new


def _input(args, kwargs, key: str):
    """A module's first input, passed positionally or as ``key``."""
    return args[0] if args else kwargs[key]


def _with_input(args, kwargs, key: str, new):
    """What a forward pre-hook (``with_kwargs=True``) returns to replace that input with ``new``."""
    return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, key: new})


class HFBackend(nn.Module):
    """A ``transformers`` model with a HookedTransformer's call and ``hooks()`` interface."""

    def __init__(self, model: HookedTransformer, lora: LoraSpec | None = None):
        super().__init__()
        from mechtox.models import to_hf_model

        arch = model.cfg.original_architecture
        if arch not in ARCHITECTURES:
            raise MechtoxError(unsupported_reason(model.cfg, ()))
        self.cfg = model.cfg
        self.tokenizer = model.tokenizer
        # Gemma 2's soft cap on attention scores is not in SDPA's kernels; transformers refuses it there
        self.hf = to_hf_model(model, attn_implementation="eager" if arch == "Gemma2ForCausalLM" else "sdpa")
        self._norm_offset = 1.0 if arch in GEMMA_ARCHITECTURES else 0.0  # Gemma's RMS norms scale by 1 + w
        self.lora = lora
        if lora is not None:
            self._inject_lora(lora)  # before the hooks: they must sit on the LoRA-wrapped modules
        object.__setattr__(self, "_run", self.hf)  # not a submodule: the same weights, once
        self._slots: dict[str, list[Callable]] = {}
        self._resid_pre: dict[int, Tensor] = {}
        self._handles: list[Any] = []
        self._register(_MODULES[arch])

    # ------------------------------------------------------------------ the call and the hooks

    keeps_logits = True
    """the call takes ``logits_to_keep`` (``training.completion_logits`` reads this)"""

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None, logits_to_keep: int = 0) -> Tensor:
        """Logits of the last ``logits_to_keep`` positions (0: all); the LM head runs on those only."""
        self._batch_shape = tuple(tokens.shape[:2])  # OPT's MLP sees (batch * position, d): hooks get them apart
        return self._run(input_ids=tokens, attention_mask=attention_mask, use_cache=False,
                         logits_to_keep=logits_to_keep).logits

    def compile_forward(self) -> None:
        """``torch.compile`` the HuggingFace model's forward (the hooks stay registered inside)."""
        object.__setattr__(self, "_run", torch.compile(self.hf))

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Iterator[HFBackend]:
        """Attach ``(name, fn)`` pairs for the duration of the block (TransformerLens' signature)."""
        added = []
        try:
            for name, fn in fwd_hooks:
                if not supported_hook(name, self.cfg):
                    raise MechtoxError(f"the hf backend has no hook {name!r}; train with --backend hooked")
                self._slots.setdefault(name, []).append(fn)
                added.append((name, fn))
            yield self
        finally:
            for name, fn in added:
                self._slots[name].remove(fn)
                if not self._slots[name]:
                    del self._slots[name]
            self._resid_pre.clear()

    def _call(self, name: str, act: Tensor) -> Tensor | None:
        """Run the functions in slot ``name`` on ``act``; ``None`` when none changed it."""
        fns = self._slots.get(name)
        if not fns:
            return None
        out, hook = act, _HookRef(name)
        for fn in fns:
            res = fn(out, hook)
            if res is not None:
                out = res
        return None if out is act else out

    def _module(self, path: str) -> nn.Module:
        return self.hf.get_submodule(path)

    def _register(self, mods: dict[str, str]) -> None:
        """One PyTorch hook per site, for the whole life of the backend."""
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        flat = self.cfg.original_architecture in _FLAT_MLP
        for layer in range(self.cfg.n_layers):
            block = f"{mods['blocks']}.{layer}"
            p = f"blocks.{layer}."
            self._handles += [
                self._module(block).register_forward_pre_hook(self._pre_block(layer, p), with_kwargs=True),
                self._module(block).register_forward_hook(self._post_simple(p + "hook_resid_post")),
                self._module(f"{block}.{mods['z']}").register_forward_pre_hook(
                    self._pre_heads(p + "attn.hook_z", n_heads, d_head), with_kwargs=True),
                self._module(f"{block}.{mods['attn_out']}").register_forward_hook(self._post_attn(layer, p)),
                self._module(f"{block}.{mods['post']}").register_forward_pre_hook(
                    self._pre_simple(p + "mlp.hook_post", flat), with_kwargs=True),
                self._module(f"{block}.{mods['mlp_out']}").register_forward_hook(
                    self._post_simple(p + "hook_mlp_out", flat)),
            ]
        self._handles.append(self._module(mods["final_norm"]).register_forward_hook(self._final_norm))

    def _call_flat(self, name: str, act: Tensor, flat: bool) -> Tensor | None:
        """:meth:`_call` on ``act``; where the block flattened batch and position (``flat``), the
        functions see ``(batch, position, d)`` as in TransformerLens, and the result is flattened back."""
        if not flat:
            return self._call(name, act)
        new = self._call(name, act.view(*self._batch_shape, act.shape[-1]))
        return None if new is None else new.reshape(act.shape)

    def _pre_simple(self, name: str, flat: bool = False):
        def hook(module, args, kwargs):
            if name not in self._slots:
                return None
            new = self._call_flat(name, _input(args, kwargs, "hidden_states"), flat)
            return None if new is None else _with_input(args, kwargs, "hidden_states", new)
        return hook

    def _pre_block(self, layer: int, p: str):
        name, mid = p + "hook_resid_pre", p + "hook_resid_mid"

        def hook(module, args, kwargs):
            if name not in self._slots and mid not in self._slots:
                return None
            x = _input(args, kwargs, "hidden_states")
            new = self._call(name, x)
            if mid in self._slots:
                self._resid_pre[layer] = x if new is None else new
            return None if new is None else _with_input(args, kwargs, "hidden_states", new)
        return hook

    def _pre_heads(self, name: str, n_heads: int, d_head: int):
        def hook(module, args, kwargs):
            if name not in self._slots:
                return None
            new = self._call(name, _input(args, kwargs, "input").unflatten(-1, (n_heads, d_head)))
            return None if new is None else _with_input(args, kwargs, "input", new.flatten(-2))
        return hook

    def _post_simple(self, name: str, flat: bool = False):
        def hook(module, args, output):
            if name not in self._slots:
                return None
            new = self._call_flat(name, _first(output), flat)
            return None if new is None else _replace_first(output, new)
        return hook

    def _post_attn(self, layer: int, p: str):
        name, mid = p + "hook_attn_out", p + "hook_resid_mid"

        def hook(module, args, output):
            if name not in self._slots and mid not in self._slots:
                return None
            out = _first(output)
            new = self._call(name, out)
            attn = out if new is None else new
            if mid in self._slots:
                pre = self._resid_pre.pop(layer)
                resid_mid = pre + attn
                new_mid = self._call(mid, resid_mid)
                if new_mid is not None:
                    attn = new_mid - pre
            return None if attn is out else _replace_first(output, attn)
        return hook

    def _final_norm(self, module, args, output):
        name = "ln_final.hook_normalized"
        if name not in self._slots:
            return None
        x = args[0]
        if isinstance(module, nn.LayerNorm):
            normed = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
            new = self._call(name, normed)
            return None if new is None else new * module.weight + module.bias
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        new = self._call(name, normed)
        return None if new is None else (module.weight + self._norm_offset) * new

    # ------------------------------------------------------------------ FSDP

    def shard(self) -> None:
        """Shard the weights over the ranks with FSDP (``torch.distributed.fsdp.fully_shard``): each
        block is its own unit, the embeddings, final norm and unembedding the root's. Every rank then
        holds 1/N of the weights, gradients and optimizer state of the training copy; a block's
        weights are gathered for its forward and backward and freed after. Gradients are averaged
        over the ranks by FSDP's reduce-scatter. Call after the process group is set up and before
        the optimizer is built; every rank must then run the same number of forward passes."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if not dist.is_initialized():
            raise MechtoxError("FSDP shards over processes: launch with torchrun --nproc_per_node N (N >= 2)")
        mesh = init_device_mesh(torch.device(str(self.cfg.device)).type, (dist.get_world_size(),))
        self._hf_class = type(self.hf)  # fully_shard swaps in a subclass
        blocks = self._module(_MODULES[str(self.cfg.original_architecture)]["blocks"])
        assert isinstance(blocks, nn.ModuleList)
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.hf, mesh=mesh)
        self.sharded = True

    def _full_weights(self) -> nn.Module:
        """The model whose weights the TransformerLens conversion reads: the HuggingFace model itself,
        or, when sharded, an unsharded copy on the CPU built from the gathered weights (every rank
        gathers, in the same order)."""
        if not getattr(self, "sharded", False):
            return self.hf
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
                for k, v in self.hf.state_dict().items()}
        with torch.device("meta"):
            shadow = self._hf_class(self.hf.config)
        shadow.load_state_dict(full, strict=False, assign=True)
        if getattr(self.hf.config, "tie_word_embeddings", False):
            shadow.tie_weights()
        return shadow

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict:
        """The optimizer's state to save: when sharded, gathered from every rank into one full state
        keyed by parameter names (a collective; rank 0 receives it, on the CPU)."""
        if not getattr(self, "sharded", False):
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(self.hf, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        """Restore :meth:`optimizer_state`'s result (when sharded, each rank takes its shard of it)."""
        if not getattr(self, "sharded", False):
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(self.hf, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))

    # ------------------------------------------------------------------ LoRA

    def _inject_lora(self, spec: LoraSpec) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        gpt2 = self.cfg.original_architecture == "GPT2LMHeadModel"
        conf = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                          target_modules=lora_target_modules(self.cfg.original_architecture, spec.targets),
                          fan_in_fan_out=gpt2, init_lora_weights=True)
        torch.manual_seed(spec.seed)  # LoRA's A matrices are random: seeded, so a run is repeatable
        inject_adapter_in_model(conf, self.hf)
        self.hf.to(self.cfg.device)
        for name, p in self.hf.named_parameters():
            p.requires_grad_("lora_" in name)  # only the adapters train (and have optimizer state)

    def _lora_layers(self) -> list[nn.Module]:
        return [m for m in self.hf.modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")]

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The LoRA weights (what a resumed run needs besides the base model)."""
        return {n: p.detach() for n, p in self.hf.named_parameters() if "lora_" in n}

    @torch.no_grad()
    def load_adapters(self, state: dict[str, Tensor]) -> None:
        params = dict(self.hf.named_parameters())
        missing = set(k for k in params if "lora_" in k) - set(state)
        if missing:
            raise MechtoxError(f"the saved adapters do not fit this LoRA setting (missing {sorted(missing)[:2]})")
        for k, v in state.items():
            params[k].copy_(v)

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def tl_state_dict(self) -> dict[str, Tensor]:
        """The current weights with TransformerLens names (TransformerLens' own conversion); with
        LoRA, the adapters merged in (computed beside the base weights, which are left exactly as
        they were)."""
        from mechtox.models import hf_to_tl_state_dict

        layers = self._lora_layers()
        saved = [m.base_layer.weight.detach().clone() for m in layers]
        try:
            for m in layers:
                m.base_layer.weight.add_(m.get_delta_weight("default").to(m.base_layer.weight.dtype))
            return {k: v.detach().clone() for k, v in hf_to_tl_state_dict(self._full_weights(), self.cfg).items()}
        finally:
            for m, w in zip(layers, saved, strict=True):
                m.base_layer.weight.copy_(w)

    @torch.no_grad()
    def write_back(self, model: HookedTransformer) -> None:
        """Copy the trained weights into ``model`` (in place: its tensors keep their layout)."""
        sd = self.tl_state_dict()
        own = model.state_dict()
        for k, v in sd.items():
            if k in own:
                own[k].copy_(v.to(own[k].dtype))


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (through ``peft``) on the hf backend."""

    r: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "q,v"
    seed: int = 0


# accepted --lora-targets names -> the transformers modules they adapt
def lora_target_modules(arch: str, spec: str) -> list[str]:
    """The module names ``peft`` adapts for a ``--lora-targets`` list such as ``q,v``."""
    table = LORA_NAMES.get(arch)
    if table is None:
        raise MechtoxError(f"LoRA runs on the hf backend, which converts {', '.join(ARCHITECTURES)} models")
    names = lora_target_list(spec)
    bad = [x for x in names if x not in table]
    if not names or bad:
        raise MechtoxError(f"--lora-targets {spec!r}: use comma-separated names from {', '.join(table)}")
    return sorted(dict.fromkeys(table[x] for x in names))


def choose_backend(requested: str, cfg, hook_names: Sequence[str], lora: bool = False) -> tuple[str, str]:
    """``(backend, why)``: ``requested`` is ``auto``, ``hf`` or ``hooked``. ``auto`` takes hf when
    the architecture converts and every hook the objective needs is mapped. LoRA needs hf."""
    reason = unsupported_reason(cfg, hook_names)
    if lora and (requested == "hooked" or reason):
        raise MechtoxError(f"LoRA runs on the hf backend only: {reason or 'drop --backend hooked'}")
    if requested == "hooked":
        return "hooked", "asked for (--backend hooked)"
    if requested == "hf":
        if reason:
            raise MechtoxError(f"--backend hf: {reason}; use --backend hooked")
        return "hf", "asked for (--backend hf)"
    if reason:
        return "hooked", reason
    needs = f"the hooks it needs ({', '.join(hook_names)}) are mapped" if hook_names else "it needs no hooks"
    return "hf", f"{cfg.original_architecture} converts to transformers and {needs}"
