"""Rows of a GGUF's token embedding matrix, dequantized, without loading the whole vocabulary."""

from __future__ import annotations

import numpy as np


def token_rows(model_path: str, ids) -> np.ndarray:
    """Rows `ids` of token_embd.weight, dequantized.

    Args:
        model_path: a text GGUF.
        ids: token ids.

    Returns:
        (len(ids), n_embd) float32: the model's input embeddings of those tokens, before any
        architecture-specific scaling (Gemma multiplies token input by sqrt(n_embd)).
    """
    import gguf

    ids = np.asarray(ids, dtype=np.int64)
    reader = gguf.GGUFReader(model_path)
    tensor = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if tensor is None:
        raise ValueError(f"{model_path} has no token_embd.weight to read token rows from")
    rows = np.asarray(tensor.data)[ids]  # (n, bytes per row) quantized, or (n, n_embd)
    return gguf.quants.dequantize(rows, tensor.tensor_type).astype(np.float32).reshape(len(ids), -1)
