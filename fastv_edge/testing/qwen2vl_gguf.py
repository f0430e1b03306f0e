"""Write a qwen2vl-architecture GGUF (Qwen2-VL / Qwen2.5-VL text model) from numpy weights.

What llama.cpp reads (src/models/qwen2vl.cpp, src/llama-model.cpp):
- the llama block layout plus q/k/v biases (create_tensor_qkv: attn_{q,k,v}.bias, optional
  there, always written here because Qwen2 has them);
- qwen2vl.rope.dimension_sections, 4 ints (required): pair k of a head (k < head_dim/2)
  rotates with position section s where s is the section k % sum(sections) falls into;
  the rope type is MROPE (llama_model_rope_type), i.e. NEOX pairs (k, k + head_dim/2);
- no output.weight means the LM head reuses token_embd.weight (Qwen2-VL-2B ties them).
Weights are numpy (n_out, n_in), applied as x @ W.T, like fastv_edge/testing/llama_gguf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.llama_gguf import LlamaHParams, Tokenizer, add_transformer_keys, write_model_gguf
from fastv_edge.testing.llama_gguf import tensor_shapes as llama_shapes


@dataclass(frozen=True)
class Qwen2VLHParams(LlamaHParams):
    """Shape of a qwen2vl text model (GGUF keys qwen2vl.*).

    rope_sections: pairs per M-RoPE section (t, y, x, z), as Qwen2-VL's mrope_section
    plus a 4th (unused, 0) section; mtmd stores image positions in this order.
    """

    rope_sections: tuple[int, int, int, int] = (2, 3, 3, 0)

    def __post_init__(self):
        super().__post_init__()
        sections = tuple(self.rope_sections)
        if len(sections) != 4 or any(s < 0 for s in sections):
            raise ValueError(f"rope_sections must be 4 non-negative ints, got {self.rope_sections}")
        if not any(sections[:3]):
            raise ValueError(f"rope_sections {sections}: one of the first three must be > 0 (ggml_rope_multi)")
        if 2 * sum(sections) > self.head_dim:
            raise ValueError(
                f"rope_sections {sections} cover {sum(sections)} pairs, head_dim={self.head_dim} has "
                f"{self.head_dim // 2}"
            )


def tensor_shapes(hp: Qwen2VLHParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor write_qwen2vl_gguf expects, keyed by GGUF name."""
    shapes = llama_shapes(hp)
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        shapes[b + "attn_q.bias"] = (hp.n_embd,)
        shapes[b + "attn_k.bias"] = (hp.n_embd_kv,)
        shapes[b + "attn_v.bias"] = (hp.n_embd_kv,)
    return shapes


def write_qwen2vl_gguf(
    path: str | Path,
    hp: Qwen2VLHParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    tokenizer: Tokenizer | None = None,
    name: str = "tiny-qwen2vl",
) -> Path:
    """Write a qwen2vl-arch GGUF that llama.cpp loads.

    Args:
        path: output file.
        hp: model shape; hp.n_vocab must equal the tokenizer's vocabulary size.
        weights: numpy arrays keyed by GGUF tensor name, shapes as tensor_shapes(hp).
        weight_type: 'f32', 'f16' or 'q8_0' for the 2-D matrices (norms, biases stay F32).
        tokenizer: tokenizer keys to copy; None copies SmolLM2-135M's (vocab 49152).
        name: general.name.

    Returns:
        The path written.
    """

    return write_model_gguf(
        path,
        "qwen2vl",
        partial(add_qwen2vl_keys, hp=hp),
        tensor_shapes(hp),
        weights,
        hp.n_vocab,
        weight_type,
        tokenizer,
        name,
    )


def add_qwen2vl_keys(writer: gguf.GGUFWriter, hp: Qwen2VLHParams) -> None:
    """The qwen2vl.* hyperparameter keys of hp."""
    add_transformer_keys(writer, hp)
    writer.add_rope_dimension_count(hp.head_dim)  # qwen2vl.cpp asserts n_rot == head_dim
    writer.add_rope_dimension_sections([int(s) for s in hp.rope_sections])
    writer.add_rope_freq_base(hp.rope_freq_base)
    # the pinned qwen2vl loader does not read this key (see tests/reference_archs.py)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
