"""What llama.cpp's model loader and graphs abort on, checked in Python before it reads a text GGUF.

llama.cpp validates most of a model file and throws, which llama-cpp-python turns into a
ValueError; but some values reach a GGML_ASSERT (an abort) or a division instead, and
llama-cpp-python sizes a buffer by the training context on every tokenize call. Found by
the fuzz test (tests/fuzz_campaign.py), each is refused here with a ModelLoadError naming
the key:

- {arch}.block_count outside [1, LLAMA_MAX_LAYERS];
- {arch}.context_length above MAX_CONTEXT_TRAIN (llama-cpp-python allocates that many
  tokens per tokenize call: 2**31 of them took the machine's memory);
- M-RoPE sections ({arch}.rope.dimension_sections) that are negative, all zero (a modulo by
  zero in ggml's rope) or wider than the rotated dimensions (GGML_ASSERT(sect_dims <= ne0));
- a vocabulary that is not an array of strings, or has two tokens with one text (llama.cpp
  maps text -> id and asserts both tables have the same size).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .errors import ModelLoadError

MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS
MAX_CONTEXT_TRAIN = 1 << 24  # 16.7M tokens: above any released model (10M), 64 MB per tokenize call
TOKENS = "tokenizer.ggml.tokens"
# integer keys load() reads itself (llama.cpp refuses other types, our conversions must not fail first)
NUMBERS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count", "context_length")


def wants_array(key: str) -> bool:
    """The array keys the checks read in full (others are skipped by the header reader)."""
    return key.endswith((".feed_forward_length", ".rope.dimension_sections")) or key == TOKENS


def check_text_model(path, values: Mapping[str, object], arch: str) -> None:
    """Raise ModelLoadError for the values llama.cpp would abort on (see the module docstring).

    Args:
        path: the file, for messages.
        values: its header values (read_header, with wants_array's arrays).
        arch: general.architecture.
    """
    name = Path(path).name
    for key in (*(f"{arch}.{k}" for k in NUMBERS), "general.file_type"):
        value = values.get(key, 0)
        items = value if isinstance(value, list) and key.endswith("feed_forward_length") else [value]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ModelLoadError(f"model {name}: {key} is {value!r}, not an integer: the file is damaged")
    n_layer = values.get(f"{arch}.block_count")
    if not isinstance(n_layer, int) or not 1 <= n_layer <= MAX_LAYERS:
        raise ModelLoadError(f"model {name}: {arch}.block_count = {n_layer!r}, outside llama.cpp's [1, {MAX_LAYERS}]")
    n_ctx_train = values.get(f"{arch}.context_length", 0)
    if not isinstance(n_ctx_train, int) or not 0 <= n_ctx_train <= MAX_CONTEXT_TRAIN:
        raise ModelLoadError(
            f"model {name}: {arch}.context_length = {n_ctx_train!r} is more than {MAX_CONTEXT_TRAIN} tokens "
            "(llama-cpp-python allocates that many per tokenize call): the file is damaged"
        )
    _check_rope_sections(name, values, arch)
    _check_vocabulary(name, values)


def _check_rope_sections(name: str, values: Mapping[str, object], arch: str) -> None:
    sections = values.get(f"{arch}.rope.dimension_sections")
    if not isinstance(sections, list):
        return  # absent, or not an array: llama.cpp refuses the type itself
    n_embd, n_head = values.get(f"{arch}.embedding_length"), values.get(f"{arch}.attention.head_count")
    head_dim = _int(values, f"{arch}.attention.key_length") or (n_embd // n_head if n_head else 0)
    n_rot = _int(values, f"{arch}.rope.dimension_count") or head_dim
    total = sum(s for s in sections[:4] if isinstance(s, int))
    if any(not isinstance(s, int) or s < 0 for s in sections[:4]) or not 1 <= total <= n_rot:
        raise ModelLoadError(
            f"model {name}: {arch}.rope.dimension_sections = {list(sections)} must be >= 0 and sum to between 1 and "
            f"the {n_rot} rotated dimensions"
        )


def _int(values: Mapping[str, object], key: str) -> int:
    value = values.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _check_vocabulary(name: str, values: Mapping[str, object]) -> None:
    tokens = values.get(TOKENS)
    if tokens is None:
        return  # not read (or absent): llama.cpp refuses a missing vocabulary itself
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ModelLoadError(f"model {name}: {TOKENS} is not an array of strings")
    seen: dict[str, int] = {}
    for i, text in enumerate(tokens):
        text = text or f"[EMPTY_{i}]"  # what llama.cpp calls an empty token
        if text in seen:
            raise ModelLoadError(
                f"model {name}: the vocabulary is damaged: token {text[:40]!r} is both id {seen[text]} and id {i}"
            )
        seen[text] = i
