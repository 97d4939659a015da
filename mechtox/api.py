"""Top-level conveniences for notebooks."""

from __future__ import annotations

import os

from transformer_lens import HookedTransformer


def load_model(spec: str = "smollm2-135m-instruct", device: str | None = None, dtype: str = "float32",
               workspace: str | os.PathLike[str] | None = None) -> HookedTransformer:
    """Load a model by spec: a workspace alias (``base``, ``dpo``...), a TransformerLens name
    (``gpt2-medium``), ``smollm2-135m-instruct`` (offline default), ``tiny``, or a path to a
    mechtox checkpoint or a ``.gguf`` file."""
    from mechtox.workspace import Workspace

    return Workspace(workspace).load_model(spec, device=device, dtype=dtype)
