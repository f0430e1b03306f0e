"""What mtmd's vision loader needs from an mmproj, checked in Python before mtmd sees the file.

The pinned tools/mtmd/clip.cpp reads clip.* keys with typed getters that abort on a value of
another type, marks many tensors optional in load_tensors, and then builds the encoder graph
at load time (the warm-up) with some of those "optional" tensors used unconditionally: a
missing mm.0.bias or v.patch_embd.weight is a NULL dereference, a tensor of the wrong shape a
GGML_ASSERT. So before mtmd_init_from_file this module checks, for every projector type:

- the clip.* keys clip.cpp reads have the GGUF value type its getter expects;
- the vision hyperparameters are usable (sizes > 0, heads dividing the width, the
  patch grid small enough to warm up);
- every ViT block has its attention and FFN matrices, all of them the shapes the graph
  multiplies them at (legacy files with ffn_up and ffn_down swapped included, as clip.cpp
  swaps them), every block the same set of tensors (a damaged name shows up as a block
  that lacks one);
- for the projector types of the presets and families (PROJECTORS: mlp, idefics3,
  qwen2vl_merger, qwen2.5vl_merger, qwen3vl_merger, gemma3, gemma4v) the tensors its graph
  uses unconditionally, with their shapes, and the ones it asserts absent;
- other projector types get the generic part (key types, usable sizes); mtmd decides the rest.

It also gives the projector's output width and deepstack count (what the text model must
take) and the text architectures a projector type is made for (check_projector_pairing).
Every failure is a ModelLoadError naming the file, the tensor or key, and what was expected.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError
from .gguf_header import GGUFHeader, TensorInfo
from .image_grid import ImageLimit
from .mmproj_keys import Vision, check_key_types, read_vision

F32, F16, BF16 = 0, 1, 30  # ggml types


@dataclass(frozen=True)
class MmprojFacts:
    """What the checks established about an mmproj."""

    projector: str
    n_embd_out: int | None  # width of one output row (before deepstack), None for unchecked types
    n_deepstack: int  # qwen3vl: deepstack mergers, each adding n_embd_out to a row
    image_size: int | None
    image_limit: ImageLimit | None = None  # gemma4v: the patches per side its position table holds


class _File:
    """The tensor table of one mmproj with checks that name the file and the tensor."""

    def __init__(self, header: GGUFHeader, projector: str):
        self.path = Path(header.path).name
        self.projector = projector
        self.tensors = {t.name: t for t in header.tensors}
        self.image_limit: ImageLimit | None = None

    def fail(self, message: str):
        raise ModelLoadError(f"mmproj {self.path} ({self.projector}): {message}")

    def get(self, name: str) -> TensorInfo | None:
        return self.tensors.get(name)

    def need(self, name: str, why: str = "") -> TensorInfo:
        t = self.tensors.get(name)
        if t is None:
            near = difflib.get_close_matches(name, self.tensors, n=1, cutoff=0.8)
            hint = f"; it has {near[0]!r} instead: a damaged tensor name?" if near else ""
            self.fail(f"tensor {name!r} is missing{why}{hint}")
        return t

    def absent(self, name: str, why: str) -> None:
        if name in self.tensors:
            self.fail(f"tensor {name!r} must not be present: {why}")

    def shape(self, t: TensorInfo, expected: tuple, what: str) -> TensorInfo:
        """expected: GGUF-order dims, None for any; raises with `what` (the rule) otherwise."""
        ok = len(t.shape) == len(expected) and all(e is None or e == n for e, n in zip(expected, t.shape, strict=True))
        if not ok:
            want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
            self.fail(f"tensor {t.name!r} has shape {list(t.shape)}, expected {want} ({what})")
        return t

    def types(self, t: TensorInfo, allowed: tuple[int, ...], what: str) -> None:
        if t.ggml_type not in allowed:
            self.fail(f"tensor {t.name!r} has ggml type {t.ggml_type}, expected one of {allowed} ({what})")

    def vector(self, name: str, n: int, what: str, required: bool = False) -> TensorInfo | None:
        t = self.need(name) if required else self.get(name)
        if t is not None:
            self.shape(t, (n,), what)
            self.types(t, (F32,), "1-D tensors are F32")
        return t

    def matrix(self, name: str, n_in: int | None, n_out: int | None, what: str, required=True) -> TensorInfo | None:
        """A linear map: GGUF shape [n_in, n_out] (ggml_mul_mat(w, x) needs w.ne0 == x.ne0)."""
        t = self.need(name) if required else self.get(name)
        return None if t is None else self.shape(t, (n_in, n_out), what)

    def bias(self, weight: TensorInfo | None, name: str, required: bool = False) -> None:
        if weight is not None:
            self.vector(name, weight.shape[1], f"one per output of {weight.name}", required)


# ---- the ViT blocks --------------------------------------------------------------------------

_BLOCK = re.compile(r"v\.blk\.(\d+)\.(.+)")
# what load_tensors reads in a block (clip-impl.h TN_* names without the "v.blk.N." prefix)
BLOCK_NAMES = frozenset(
    [f"{n}.{wb}" for n in ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_out") for wb in ("weight", "bias")]
    + [f"{n}.{wb}" for n in ("ln1", "ln2", "ffn_up", "ffn_gate", "ffn_down") for wb in ("weight", "bias")]
    + [f"{n}.weight" for n in ("attn_q_norm", "attn_k_norm", "ls1", "ls2", "out_scale", "attn_post_norm")]
    + [f"{n}.weight" for n in ("ffn_post_norm", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")]
    + ["exp_probs_b.weight", "attn_sinks"]
)
TOP_NAMES = frozenset(
    ["v.class_embd", "v.patch_embd.weight", "v.patch_embd.weight.1", "v.position_embd.weight", "v.image_newline"]
    + [f"v.{n}.{wb}" for n in ("pre_ln", "post_ln", "norm_embd", "patch_embd") for wb in ("weight", "bias")]
    + [f"mm.{i}.{wb}" for i in range(5) for wb in ("weight", "bias")]
    + ["mm.model.fc.weight", "mm.input_projection.weight", "mm.soft_emb_norm.weight", "v.std_bias", "v.std_scale"]
)
_CLAMP = re.compile(r".+\.(input|output)_(min|max)")  # gemma4v's clipped-linear scalars
_DEEPSTACK = re.compile(r"v\.deepstack\.(\d+)\.(norm|fc1|fc2)\.(weight|bias)")
# clip.cpp swaps ffn_up/ffn_down of these when ffn_down's first dim is n_embd (old conversions)
_FFN_SWAP = ("mlp", "qwen2vl_merger", "qwen2.5vl_merger", "gemma3", "idefics3")


@dataclass(frozen=True)
class BlockRules:
    """How a projector type's graph uses the ViT blocks."""

    attention: str = "either"  # "separate" (q, k, v), "fused" (qkv) or "either"
    qkv_bias: bool = False  # biases of q/k/v (or qkv) used without a NULL check


def check_names(f: _File, v: Vision) -> None:
    """Refuse a tensor mtmd does not read whose name is one byte or two from one it does: a
    damaged name, whose tensor mtmd would silently go without."""
    for name in f.tensors:
        m = _BLOCK.fullmatch(name)
        if (m and m.group(2) in BLOCK_NAMES) or name in TOP_NAMES or _DEEPSTACK.fullmatch(name) or _CLAMP.match(name):
            continue
        known = [f"v.blk.{m.group(1)}.{n}" for n in BLOCK_NAMES] if m else TOP_NAMES
        near = difflib.get_close_matches(name, [n for n in known if n not in f.tensors], n=1, cutoff=0.85)
        if near:
            f.fail(f"tensor {name!r} is not one mtmd reads; it looks like a damaged {near[0]!r}")


def check_blocks(f: _File, v: Vision, rules: BlockRules) -> None:
    """Every block has the same tensors, and each is the shape the graph multiplies it at."""
    names_per_block: dict[int, set[str]] = {}
    for name in f.tensors:
        m = _BLOCK.fullmatch(name)
        if m and m.group(2) in BLOCK_NAMES:
            names_per_block.setdefault(int(m.group(1)), set()).add(m.group(2))
    extra = sorted(il for il in names_per_block if il >= v.n_layer)
    if extra:
        f.fail(f"has tensors of block {extra[0]} but block_count is {v.n_layer}")
    union = set().union(*names_per_block.values()) if names_per_block else set()
    for il in range(v.n_layer):
        missing = sorted(union - names_per_block.get(il, set()))
        if missing:
            f.need(f"v.blk.{il}.{missing[0]}", " (other blocks have it)")
        _check_block(f, v, il, rules)


def _check_block(f: _File, v: Vision, il: int, rules: BlockRules) -> None:
    b, d = f"v.blk.{il}.", v.n_embd
    q_out, kv_out = v.n_head * v.d_head, v.n_head_kv * v.d_head
    what = f"vision n_embd {d}, {v.n_head} heads of {v.d_head}"
    qkv = f.get(b + "attn_qkv.weight")
    if qkv is not None and rules.attention != "separate":
        f.matrix(b + "attn_qkv.weight", d, q_out + 2 * kv_out, what)
        f.bias(qkv, b + "attn_qkv.bias", rules.qkv_bias)
    elif rules.attention == "fused":
        f.need(b + "attn_qkv.weight", " (this projector's graph uses the fused projection)")
    else:
        for part, n_out in (("attn_q", q_out), ("attn_k", kv_out), ("attn_v", kv_out)):
            w = f.matrix(f"{b}{part}.weight", d, n_out, what)
            f.bias(w, f"{b}{part}.bias", rules.qkv_bias)
    out = f.matrix(b + "attn_out.weight", q_out, d, what)
    f.bias(out, b + "attn_out.bias")
    for norm in ("attn_q_norm.weight", "attn_k_norm.weight"):
        t = f.get(b + norm)
        if t is not None:
            f.shape(t, (None,), "a per-head or per-row norm")
            if t.shape[0] not in (v.d_head, q_out, kv_out):
                f.fail(f"tensor {t.name!r} has {t.shape[0]} values, expected {v.d_head} (head size) or the row")
    for norm in ("ln1", "ln2", "attn_post_norm", "ffn_post_norm", "ls1", "ls2"):
        f.vector(f"{b}{norm}.weight", d, f"vision n_embd {d}")
        f.vector(f"{b}{norm}.bias", d, f"vision n_embd {d}")
    scale = f.get(b + "out_scale.weight")
    if scale is not None and scale.shape not in ((1,), (d,)):
        f.fail(f"tensor {scale.name!r} has shape {list(scale.shape)}, expected [1] or [{d}]")
    if f.get(b + "ffn_gate_exps.weight") is None:  # a MoE block (dots3note) is mtmd's business
        _check_ffn(f, v, b)


def _check_ffn(f: _File, v: Vision, b: str) -> None:
    d = v.n_embd
    up, down = f.need(b + "ffn_up.weight"), f.need(b + "ffn_down.weight")
    up_b, down_b = b + "ffn_up.bias", b + "ffn_down.bias"
    if f.projector in _FFN_SWAP and len(down.shape) == 2 and down.shape[0] == d:
        up, down, up_b, down_b = down, up, down_b, up_b  # clip.cpp's legacy swap
    f.shape(up, (d, None), f"FFN input, vision n_embd {d}")
    n_ff = up.shape[1]
    f.shape(down, (n_ff, d), f"FFN output: {n_ff} hidden to vision n_embd {d}")
    f.vector(up_b, n_ff, "one per FFN hidden unit")
    f.vector(down_b, d, f"vision n_embd {d}")
    gate = f.matrix(b + "ffn_gate.weight", d, n_ff, "gate of the same width as ffn_up", required=False)
    f.bias(gate, b + "ffn_gate.bias")


# ---- the inputs ------------------------------------------------------------------------------


def check_patch_embedding(f: _File, v: Vision, kernels: int = 1, bias: bool | None = None) -> None:
    """v.patch_embd.weight (and .weight.1 for Qwen's temporal pair): conv kernels [p, p, 3, n_embd].

    bias: True required, False refused (the graph asserts it absent), None optional.
    """
    names = ["v.patch_embd.weight", "v.patch_embd.weight.1"][:kernels]
    for name in names:
        t = f.shape(f.need(name), (v.patch_size, v.patch_size, 3, v.n_embd), "patch_size^2 x RGB -> vision n_embd")
        f.types(t, (F32, F16), "the patch convolution takes F32 or F16 kernels")
    if bias is False:
        f.absent("v.patch_embd.bias", "this projector's graph asserts it has no patch bias")
    else:
        f.vector("v.patch_embd.bias", v.n_embd, "vision n_embd", required=bool(bias))


def check_positions(f: _File, v: Vision, n_pos: int | None, required: bool = True) -> None:
    """v.position_embd.weight: [n_embd, n_pos] (n_pos None: any square count, resized by mtmd)."""
    t = f.need("v.position_embd.weight") if required else f.get("v.position_embd.weight")
    if t is None:
        return
    f.types(t, (F32, F16), "position tables are F32 or F16")
    f.shape(t, (v.n_embd, n_pos), f"one row per patch position ({v.side} x {v.side} patches)")
    if n_pos is None and math.isqrt(t.shape[1]) ** 2 != t.shape[1]:
        f.fail(f"tensor {t.name!r} has {t.shape[1]} positions, not a square grid (mtmd resizes it as one)")


# ---- projector types -------------------------------------------------------------------------


def _mlp(f: _File, v: Vision) -> tuple[int, int]:
    check_patch_embedding(f, v)
    has_class = f.vector("v.class_embd", v.n_embd, "vision n_embd") is not None
    check_positions(f, v, v.side**2 + has_class)
    if f.get("mm.3.weight") is not None:  # Yi-type LLaVA (mlp_norm): mtmd's business
        return f.need("mm.3.bias").shape[0], 0
    n_stack = len(set(v.feature_layers)) or 1  # the feature layers' outputs, concatenated
    mm0 = f.matrix("mm.0.weight", v.n_embd * n_stack, None, f"{n_stack} feature layer(s) of vision n_embd {v.n_embd}")
    f.bias(mm0, "mm.0.bias", required=True)
    mm2 = f.matrix("mm.2.weight", mm0.shape[1], None, "mm.0's output -> GELU -> mm.2")
    f.bias(mm2, "mm.2.bias", required=True)
    return mm2.shape[1], 0


def _siglip_merge(f: _File, v: Vision, default: int | None) -> int:
    merge = v.merge if v.merge is not None else default
    if merge is None or merge < 2 or v.side % merge:
        f.fail(
            f"projector.scale_factor {merge} must be >= 2 and divide the {v.side} patches per side "
            "(the graph merges merge x merge patches)"
        )
    return merge


def _idefics3(f: _File, v: Vision) -> tuple[int, int]:
    check_patch_embedding(f, v)
    check_positions(f, v, v.side**2)
    merge = _siglip_merge(f, v, None)  # clip.cpp asserts scale_factor > 1 and has no default
    fc = f.matrix("mm.model.fc.weight", v.n_embd * merge * merge, None, f"{merge}x{merge} merged patches")
    return fc.shape[1], 0


def _gemma3(f: _File, v: Vision) -> tuple[int, int]:
    check_patch_embedding(f, v)
    check_positions(f, v, v.side**2)
    _siglip_merge(f, v, 4)  # clip.cpp's default pooling kernel
    f.vector("mm.soft_emb_norm.weight", v.n_embd, "vision n_embd", required=True)
    proj = f.need("mm.input_projection.weight")
    f.shape(proj, (None, v.n_embd), "stored (text, vision); the graph multiplies by its transpose")
    f.types(proj, (F32, F16, BF16), "the graph transposes it, which quantized types cannot")
    return proj.shape[0], 0


def _gemma4v(f: _File, v: Vision) -> tuple[int, int]:
    check_patch_embedding(f, v, bias=False)
    pos = f.need("v.position_embd.weight")
    f.shape(pos, (v.n_embd, None, 2), "an x table and a y table of vision n_embd rows")
    merge = v.merge if v.merge is not None else 3
    if merge < 1 or v.side % merge:
        f.fail(f"projector.scale_factor {merge} must divide the {v.side} patches per side")
    if pos.shape[1] < v.side:
        f.fail(f"v.position_embd.weight has {pos.shape[1]} positions per axis, fewer than {v.side} patches")
    f.image_limit = ImageLimit(v.patch_size, merge, pos.shape[1])  # long thin images can need more
    proj = f.matrix("mm.input_projection.weight", v.n_embd, None, "vision n_embd -> text n_embd")
    return proj.shape[1], 0


def _qwen_merger(f: _File, v: Vision, deepstack: bool) -> tuple[int, int]:
    if v.d_head % 4:
        f.fail(f"head size {v.d_head} is not a multiple of 4 (the vision M-RoPE has 4 sections)")
    merge = v.merge if v.merge is not None else 2
    if merge != 2:
        f.fail(f"spatial_merge_size {merge}: the graph merges 2x2 patches")
    f.absent("v.class_embd", "the Qwen graph asserts it has no class token")
    check_patch_embedding(f, v, kernels=2, bias=True if deepstack else False)
    if deepstack:
        check_positions(f, v, None)
    d4 = 4 * v.n_embd
    mm0 = f.matrix("mm.0.weight", d4, None, f"2x2 merged patches of vision n_embd {v.n_embd}")
    f.bias(mm0, "mm.0.bias", required=True)
    mm2 = f.matrix("mm.2.weight", mm0.shape[1], None, "mm.0's output -> GELU -> mm.2")
    f.bias(mm2, "mm.2.bias", required=True)
    n_deepstack = _deepstack(f, v, d4, mm2.shape[1]) if deepstack else 0
    return mm2.shape[1], n_deepstack


def _deepstack(f: _File, v: Vision, d4: int, n_out: int) -> int:
    layers = sorted({int(m.group(1)) for n in f.tensors if (m := re.fullmatch(r"v\.deepstack\.(\d+)\..+", n))})
    for il in layers:
        if il >= v.n_layer:
            f.fail(f"has a deepstack merger after layer {il} but block_count is {v.n_layer}")
        b = f"v.deepstack.{il}."
        f.vector(b + "norm.weight", d4, "2x2 merged patches", required=True)
        f.vector(b + "norm.bias", d4, "2x2 merged patches", required=True)
        fc1 = f.matrix(b + "fc1.weight", d4, None, "2x2 merged patches")
        f.bias(fc1, b + "fc1.bias", required=True)
        fc2 = f.matrix(b + "fc2.weight", fc1.shape[1], n_out, "the main merger's output width")
        f.bias(fc2, b + "fc2.bias", required=True)
    return len(layers)


@dataclass(frozen=True)
class Projector:
    """One projector type of the table: how its blocks are used, what else it needs, its text models."""

    check: Callable[[_File, Vision], tuple[int, int]]  # -> (output width, deepstack count)
    blocks: BlockRules
    llm: tuple[str, ...]  # text architectures it is made for ('' : any without a projector of its own)


PROJECTORS = {
    # llava.cpp: separate q/k/v only
    "mlp": Projector(_mlp, BlockRules("separate"), ()),
    "idefics3": Projector(_idefics3, BlockRules(), ("llama",)),  # SmolVLM, Idefics3
    "gemma3": Projector(_gemma3, BlockRules(), ("gemma3",)),
    "gemma4v": Projector(_gemma4v, BlockRules(), ("gemma4",)),
    "qwen2vl_merger": Projector(lambda f, v: _qwen_merger(f, v, False), BlockRules("separate", True), ("qwen2vl",)),
    "qwen2.5vl_merger": Projector(lambda f, v: _qwen_merger(f, v, False), BlockRules("separate", True), ("qwen2vl",)),
    "qwen3vl_merger": Projector(
        lambda f, v: _qwen_merger(f, v, True), BlockRules("fused", True), ("qwen3vl", "qwen3vlmoe")
    ),
}
# text architectures whose image tokens only their own projector types produce correctly
LLM_PROJECTORS = {
    "qwen2vl": ("qwen2vl_merger", "qwen2.5vl_merger"),  # M-RoPE positions
    "qwen3vl": ("qwen3vl_merger",),  # M-RoPE + deepstack rows
    "qwen3vlmoe": ("qwen3vl_merger",),
    "gemma3": ("gemma3",),  # a non-causal image block, scaled rows
    "gemma4": ("gemma4v", "gemma4uv"),
}


def projector_type(header: GGUFHeader) -> str:
    """clip.projector_type, else clip.vision.projector_type (mixed-modality files), as clip.cpp reads it."""
    proj = header.values.get("clip.projector_type") or header.values.get("clip.vision.projector_type")
    if not proj:
        raise ModelLoadError(f"mmproj {Path(header.path).name} has no clip.projector_type key")
    return "qwen2.5vl_merger" if proj == "qwen2.5o" else str(proj)  # clip.cpp's legacy alias


def check_mmproj(header: GGUFHeader) -> MmprojFacts:
    """Check an mmproj's keys and tensors against what mtmd's loader and graph use.

    Args:
        header: read_header() of the file, with the clip.vision array keys read.

    Returns:
        The projector type, output width, deepstack count and image size.

    Raises:
        ModelLoadError: naming the key or tensor and what was expected.
    """
    check_key_types(header)
    proj = projector_type(header)
    vision = read_vision(header)
    spec = PROJECTORS.get(proj)
    if spec is None:  # the generic part only: key types and usable sizes; mtmd checks its tensors
        return MmprojFacts(proj, None, 0, vision.image_size)
    f = _File(header, proj)
    check_names(f, vision)
    check_blocks(f, vision, spec.blocks)
    n_out, n_deepstack = spec.check(f, vision)
    return MmprojFacts(proj, n_out, n_deepstack, vision.image_size, f.image_limit)


def check_projector_pairing(projector: str, architecture: str, mmproj_name: str, model_name: str) -> None:
    """Refuse a projector made for another family of text model (same width is not enough).

    Raises:
        ModelLoadError: naming both files, the projector type and the architecture.
    """
    spec = PROJECTORS.get(projector)
    made_for = spec.llm if spec else ()
    own = LLM_PROJECTORS.get(architecture)
    if (made_for and architecture not in made_for) or (own and projector not in own):
        wants = f"text models of architecture {' or '.join(made_for)}" if made_for else "another family"
        needs = f"; a {architecture} model takes {' or '.join(own)} projectors" if own else ""
        raise ModelLoadError(
            f"mmproj {mmproj_name} is a {projector!r} projector for {wants}, but model {model_name} is "
            f"{architecture!r}{needs}: its image rows would be garbage; use the mmproj made for this model"
        )
