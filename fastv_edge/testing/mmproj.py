"""Write an mmproj GGUF (CLIP ViT + LLaVA 'mlp' projector) that llama.cpp's mtmd loads.

Keys and tensor names are the ones tools/mtmd/clip.cpp reads for projector type "mlp"
(clip-impl.h KEY_* / TN_*), as the LLaVA-1.5 converter writes them. What llama.cpp
computes with such a file (tools/mtmd/models/llava.cpp), and what an exporter must match:

    x = conv2d(image, v.patch_embd.weight, stride=patch)          # (n_patches, n_embd), row-major grid
    [x = concat(x, v.class_embd)]                                 # class token goes LAST
    x = x + v.position_embd.weight[0:n_pos]
    x = layernorm(x) * v.pre_ln.weight + v.pre_ln.bias
    for blocks 0..n_run-1 (pre-norm ViT, non-causal attention, quick-GELU unless use_gelu):
        x = x + attn_out(attn(ln1(x)));  x = x + ffn_down(act(ffn_up(ln2(x))))
    x = x[patch rows]                                             # see n_image_tokens
    y = mm.2(gelu(mm.0(x)))                                       # (n_patches, projection_dim)

Two llama.cpp quirks decide our defaults (both upstream llama.cpp issue #25814):
- with v.class_embd, the graph appends the class token after the patches but still picks
  rows 1..n_patches, so patch 0 is dropped and the CLS output becomes the last image token;
  class_token=False (the default here) avoids that and gives exactly one token per patch.
- without clip.vision.feature_layer the graph runs only block_count-1 blocks (the
  LLaVA "penultimate layer" rule applied on top of a converter that already dropped one);
  we always write feature_layer explicitly, so the number of blocks run is what we say.

Either way the image becomes n_patches = (image_size // patch_size)**2 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.llama_gguf import WEIGHT_TYPES

# clip-impl.h PROJECTOR_TYPE_MLP; gguf-py has no VisionProjectorType member for it
PROJECTOR_TYPE = "mlp"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing, as LLaVA-1.5
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipHParams:
    """Shape of a CLIP ViT vision tower + LLaVA 2-layer MLP projector."""

    image_size: int = 64
    patch_size: int = 8
    n_embd: int = 64  # ViT width
    n_ff: int = 128  # must differ from n_embd: clip.cpp guesses legacy up/down order from it
    n_head: int = 4
    n_layer: int = 2  # block_count
    projection_dim: int = 64  # output width = the text model's n_embd
    mm_hidden: int = 0  # width of mm.0's output; 0 means projection_dim (LLaVA-1.5)
    eps: float = 1e-5
    use_gelu: bool = False  # False = quick-GELU, like OpenAI CLIP
    class_token: bool = False
    feature_layer: int = 0  # blocks run before the projector; 0 means all n_layer
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        for name in ("image_size", "patch_size", "n_embd", "n_ff", "n_head", "n_layer"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_ff == self.n_embd:
            raise ValueError(f"n_ff must differ from n_embd={self.n_embd} (clip.cpp swaps up/down)")
        if not 0 <= self.feature_layer <= self.n_layer:
            raise ValueError(f"feature_layer must be in [0, {self.n_layer}], got {self.feature_layer}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_image_tokens(self) -> int:
        """Rows the projector emits for one image (llava picks n_patches rows, CLS or not)."""
        return self.n_patches

    @property
    def n_pos(self) -> int:
        return self.n_patches + (1 if self.class_token else 0)

    @property
    def n_blocks_run(self) -> int:
        return self.feature_layer or self.n_layer

    @property
    def hidden(self) -> int:
        return self.mm_hidden or self.projection_dim


def tensor_shapes(hp: ClipHParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor write_mmproj_gguf expects, keyed by GGUF name.

    A linear map n_in -> n_out is (n_out, n_in), applied as y = x @ W.T + b.
    """
    d, p = hp.n_embd, hp.patch_size
    shapes = {"v.patch_embd.weight": (d, 3, p, p)}  # torch Conv2d layout (out, in, kh, kw)
    if hp.class_token:
        shapes["v.class_embd"] = (d,)
    shapes["v.position_embd.weight"] = (hp.n_pos, d)
    shapes["v.pre_ln.weight"] = (d,)
    shapes["v.pre_ln.bias"] = (d,)
    for il in range(hp.n_layer):
        b = f"v.blk.{il}."
        for norm in ("ln1", "ln2"):
            shapes[f"{b}{norm}.weight"] = (d,)
            shapes[f"{b}{norm}.bias"] = (d,)
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            shapes[f"{b}{proj}.weight"] = (d, d)
            shapes[f"{b}{proj}.bias"] = (d,)
        shapes[b + "ffn_up.weight"] = (hp.n_ff, d)  # fc1
        shapes[b + "ffn_up.bias"] = (hp.n_ff,)
        shapes[b + "ffn_down.weight"] = (d, hp.n_ff)  # fc2
        shapes[b + "ffn_down.bias"] = (d,)
    shapes["mm.0.weight"] = (hp.hidden, d)
    shapes["mm.0.bias"] = (hp.hidden,)
    shapes["mm.2.weight"] = (hp.projection_dim, hp.hidden)
    shapes["mm.2.bias"] = (hp.projection_dim,)
    return shapes


def _check_weights(hp: ClipHParams, weights: dict[str, np.ndarray]) -> None:
    expected = tensor_shapes(hp)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match hparams: missing {missing[:5]}, extra {extra[:5]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{name} has shape {weights[name].shape}, expected {shape}")


def encode_tensor(name: str, array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if name == "v.patch_embd.weight":
        # ggml_conv_2d's im2col runs in the kernel's type; converters keep it F16 or F32
        return array if qtype == gguf.GGMLQuantizationType.F32 else array.astype(np.float16)
    is_matrix = array.ndim == 2 and name.endswith(".weight") and name != "v.position_embd.weight"
    if not is_matrix or qtype == gguf.GGMLQuantizationType.F32:
        return array
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block != 0:
        raise ValueError(
            f"{name}: row length {array.shape[-1]} is not a multiple of {block}, "
            f"required by {qtype.name}; use weight_type='f32' or 'f16'"
        )
    return gguf.quants.quantize(array, qtype)


def write_mmproj_gguf(
    path: str | Path,
    hp: ClipHParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    name: str = "tiny-mmproj",
) -> Path:
    """Write an mmproj GGUF for llama.cpp's mtmd (projector type 'mlp').

    Args:
        path: output file.
        hp: vision tower and projector shape; hp.projection_dim must equal the text
            model's n_embd (mtmd refuses the pair otherwise).
        weights: numpy arrays keyed by GGUF tensor name, shapes as tensor_shapes(hp).
        weight_type: 'f32', 'f16' or 'q8_0' for the linear weights; norms, biases and
            embeddings stay F32, the patch kernel is F32 or F16.
        name: general.name.

    Returns:
        The path written.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {sorted(WEIGHT_TYPES)}, got {weight_type!r}")
    _check_weights(hp, weights)
    qtype, ftype = WEIGHT_TYPES[weight_type]

    def add_keys(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        writer.add_description("image encoder for LLaVA")
        writer.add_file_type(ftype)
        writer.add_clip_has_vision_encoder(True)
        writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
        writer.add_clip_projector_type(PROJECTOR_TYPE)
        add_vision_keys(writer, hp, hp.use_gelu, hp.image_mean, hp.image_std)
        i32 = gguf.GGUFValueType.INT32
        writer.add_key_value("clip.vision.feature_layer", [hp.n_blocks_run], gguf.GGUFValueType.ARRAY, i32)

    return write_clip_gguf(path, add_keys, {n: weights[n] for n in tensor_shapes(hp)}, qtype)


def add_vision_keys(writer: gguf.GGUFWriter, hp, use_gelu: bool, mean, std) -> None:
    """The clip.vision.* shape keys every projector type shares (hp: ClipHParams or alike)."""
    f32 = gguf.GGUFValueType.FLOAT32
    writer.add_vision_image_size(hp.image_size)
    writer.add_vision_patch_size(hp.patch_size)
    writer.add_vision_embedding_length(hp.n_embd)
    writer.add_vision_feed_forward_length(hp.n_ff)
    writer.add_vision_block_count(hp.n_layer)
    writer.add_vision_head_count(hp.n_head)
    writer.add_vision_attention_layernorm_eps(hp.eps)
    writer.add_vision_projection_dim(hp.projection_dim)
    writer.add_vision_use_gelu(use_gelu)
    writer.add_key_value(gguf.Keys.ClipVision.IMAGE_MEAN, list(mean), gguf.GGUFValueType.ARRAY, f32)
    writer.add_key_value(gguf.Keys.ClipVision.IMAGE_STD, list(std), gguf.GGUFValueType.ARRAY, f32)


def write_clip_gguf(path: str | Path, add_keys, tensors: dict[str, np.ndarray], qtype) -> Path:
    """Write an mmproj file: add_keys(writer) adds the metadata, tensors go in dict order via encode_tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    add_keys(writer)
    for tname, array in tensors.items():
        data = encode_tensor(tname, array, qtype)
        writer.add_tensor(tname, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
