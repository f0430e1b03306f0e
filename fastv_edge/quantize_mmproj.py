"""`fastv-edge quantize-mmproj IN OUT --type T`: a smaller vision projector, and what it costs.

The quantizer is llama.cpp's own: llama_model_quantize opens an mmproj as the quant-only 'clip'
architecture and quantizes its 2-D weights, keeping what its rules keep (norms, biases, patch
and position embeddings, the patch merger). No patch and no copy of its rules is needed here.
(The CLIP-specific clip_model_quantize of older llama.cpp is gone from the pinned sources.)

The measurement encodes one photo with the source and the quantized projector through mtmd,
alternating them, and reports the median encode times and the per-token cosine of the
quantized rows to the source's. mtmd needs a text model only for its width and vocabulary;
a header-only stand-in (no weights, loaded vocab-only) is written for that, so no LLM is read.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ModelLoadError

# llama_ftype values (llama.h); the names follow llama-quantize
MMPROJ_TYPES = {
    "f16": 1,
    "bf16": 32,
    "q8_0": 7,
    "q6_k": 18,
    "q5_k_m": 17,
    "q5_0": 8,
    "q5_1": 9,
    "q4_k_m": 15,
    "q4_0": 2,
    "q4_1": 3,
}


# Weights mtmd multiplies transposed (ggml_cont(ggml_transpose(w)), tools/mtmd/models/siglip.cpp): ggml
# cannot transpose a quantized tensor element-wise, so llama.cpp's quantizer, which does not know, gives a
# Gemma 3 projector whose rows are noise (cosine ~0.2 to the source). These keep the source's type.
KEEP_SOURCE_TYPE = {"gemma3": ("mm.input_projection.weight",)}


@dataclass
class QuantizeReport:
    """What quantizing a projector gave: sizes, and on one photo encode times and cosines."""

    input: str
    output: str
    type: str
    bytes_in: int
    bytes_out: int
    image: str | None = None
    n_tokens: int | None = None
    n_threads: int | None = None
    encode_ms_in: float | None = None  # median
    encode_ms_out: float | None = None  # median
    encode_cpu_ms_in: float | None = None  # median process CPU time
    encode_cpu_ms_out: float | None = None
    cosine_mean: float | None = None  # per image token, quantized vs source rows
    cosine_min: float | None = None

    def lines(self) -> list[str]:
        """The human-readable report."""
        mib = 2**20
        out = [
            f"wrote {self.output} ({self.type}): {self.bytes_out / mib:.1f} MiB, "
            f"was {self.bytes_in / mib:.1f} MiB ({self.bytes_out / self.bytes_in:.2f}x)"
        ]
        if self.encode_ms_in is not None:
            out.append(
                f"encode of {self.image} ({self.n_tokens} tokens, {self.n_threads} thread(s), median): "
                f"{self.encode_ms_in:.0f} ms -> {self.encode_ms_out:.0f} ms "
                f"({self.encode_ms_out / self.encode_ms_in:.2f}x); "
                f"CPU {self.encode_cpu_ms_in:.0f} ms -> {self.encode_cpu_ms_out:.0f} ms "
                f"({self.encode_cpu_ms_out / self.encode_cpu_ms_in:.2f}x)"
            )
            out.append(f"embedding cosine to the source: mean {self.cosine_mean:.5f}, min {self.cosine_min:.5f}")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def quantize_mmproj(
    src: str | os.PathLike, dst: str | os.PathLike, qtype: str, *, n_threads: int = 1, verbose: bool = False
) -> Path:
    """Quantize an mmproj with llama_model_quantize; the output appears atomically.

    Args:
        src: the mmproj GGUF (F32/F16 preferred; an already quantized one is requantized).
        dst: the output path (not src).
        qtype: a key of MMPROJ_TYPES.
        n_threads: quantizer threads.
        verbose: show llama.cpp's log (one line per tensor).

    Returns:
        dst.

    Raises:
        ValueError: an unknown type, dst equal to src, or n_threads < 1.
        ModelLoadError: src is not an mmproj, or llama.cpp failed.
    """
    import llama_cpp
    from llama_cpp import _logger

    from .model import read_mmproj_info

    _logger.set_verbose(verbose)  # as Llama(verbose=...) sets it: llama.cpp's and mtmd's logs
    if qtype not in MMPROJ_TYPES:
        raise ValueError(f"--type must be one of {', '.join(MMPROJ_TYPES)}, got {qtype!r}")
    if n_threads < 1:
        raise ValueError(f"threads must be >= 1, got {n_threads}")
    info = read_mmproj_info(src)  # a clear error for a missing, damaged or non-mmproj file
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"the output {dst} is the input; give another path")
    if not dst.parent.is_dir():
        raise ValueError(f"output folder does not exist: {dst.parent}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = MMPROJ_TYPES[qtype]
    params.nthread = n_threads
    params.allow_requantize = True
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"llama_model_quantize failed on {src} (code {rc}); run with --verbose for its log")
    keep = KEEP_SOURCE_TYPE.get(info.projector_type, ())
    try:
        if keep:
            _restore_tensors(src, tmp, keep)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _restore_tensors(src: Path, path: Path, names: tuple[str, ...]) -> None:
    """Rewrite the quantized file at `path` with the tensors `names` copied from `src` as they are there."""
    import gguf

    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    reader = gguf.GGUFReader(path)
    out = path.with_name(path.name + ".restored")
    writer = gguf.GGUFWriter(str(out), arch=str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    tensors = [source[t.name] if t.name in names else t for t in reader.tensors]
    for t in tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        for t in tensors:
            writer.write_tensor_data(t.data)
        writer.close()
        del reader, source  # their memory maps, before the rename
        os.replace(out, path)
    finally:
        out.unlink(missing_ok=True)


def measure(
    src, dsts, image, *, n_threads: int = 1, reps: int = 3, image_max_tokens: int | None = None, verbose: bool = False
) -> list[dict]:
    """Encode `image` with the source and each quantized projector, rotating their order every round.

    Args:
        src: the source mmproj.
        dsts: quantized mmprojs of it.
        image: an RGBImage.
        n_threads: encoder threads.
        reps: timed rounds, after one untimed warm-up round.
        image_max_tokens: mtmd's cap on the image's tokens (dynamic-resolution projectors).
        verbose: show llama.cpp's and mtmd's logs.

    Returns:
        Per dst: n_tokens, encode_ms_in, encode_ms_out, encode_cpu_ms_in, encode_cpu_ms_out (medians
        of wall and process CPU time), cosine_mean, cosine_min.
    """
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(verbose)
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    n_embd = _n_embd_out(src)
    with tempfile.TemporaryDirectory(prefix="fastv-edge-stand-in-") as tmp:
        stand_in = write_stand_in_text_model(Path(tmp) / "text.gguf", n_embd)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        text_model = llama_cpp.llama_model_load_from_file(str(stand_in).encode(), params)
        if not text_model:
            raise ModelLoadError("llama.cpp could not load the stand-in text model")
        try:
            times, rows, n_tokens = _measure(text_model, n_embd, [src, *dsts], image, n_threads, reps, image_max_tokens)
        finally:
            llama_cpp.llama_model_free(text_model)
    out = []
    for i in range(1, len(rows)):
        cos = _row_cosines(rows[0], rows[i])
        out.append(
            {
                "n_tokens": n_tokens,
                "encode_ms_in": statistics.median(t for t, _ in times[0]),
                "encode_ms_out": statistics.median(t for t, _ in times[i]),
                # CPU time: what the encode costs, less bent than wall time by other processes on the cores
                "encode_cpu_ms_in": statistics.median(c for _, c in times[0]),
                "encode_cpu_ms_out": statistics.median(c for _, c in times[i]),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
            }
        )
    return out


def _measure(text_model, n_embd: int, paths, image, n_threads: int, reps: int, max_tokens: int | None):
    from .model import _mtmd_free, open_mtmd
    from .prompt import tokenize

    ctxs, prompts = [], []
    options = dict(n_threads=n_threads, use_gpu=False, flash_attn=False, verbose=False, image_max_tokens=max_tokens)
    try:
        for path in paths:
            ctxs.append(open_mtmd(text_model, str(path), **options))
            prompts.append(tokenize(None, ctxs[-1], _marker(), [image], add_special=False))
        pieces = [p.images[0] for p in prompts]
        if len({p.n_tokens for p in pieces}) != 1:
            raise ModelLoadError(f"the projectors give {[p.n_tokens for p in pieces]} tokens for one image")
        n = len(paths)
        times: list[list[tuple[float, float]]] = [[] for _ in range(n)]  # (wall, CPU) ms
        rows: list[np.ndarray | None] = [None] * n
        for rnd in range(reps + 1):
            for i in [(rnd + j) % n for j in range(n)]:  # each configuration goes first in turn
                t0, c0 = time.perf_counter(), time.process_time()
                rows[i] = _encode(ctxs[i], pieces[i], n_embd)  # (n_tokens, n_embd)
                if rnd:
                    times[i].append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
        return times, rows, pieces[0].n_tokens
    finally:
        for prompt in prompts:
            prompt.close()
        for ctx in ctxs:
            _mtmd_free(ctx)


def _encode(ctx, piece, n_embd: int) -> np.ndarray:
    # the vocab-only stand-in has no hyperparameters (n_embd_inp 0), so the width is the projector's
    import llama_cpp.mtmd_cpp as mtmd

    from .errors import NativeError

    rc = mtmd.mtmd_encode_chunk(ctx, piece.chunk)
    if rc != 0:
        raise NativeError("mtmd_encode_chunk", rc, "the vision encoder failed")
    out = mtmd.mtmd_get_output_embd(ctx)
    return np.ctypeslib.as_array(out, shape=(piece.n_tokens, n_embd)).copy()  # (n_tokens, n_embd)


def _marker() -> str:
    import llama_cpp.mtmd_cpp as mtmd

    return mtmd.mtmd_default_marker().decode("utf-8")


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)  # (n_tokens, n_embd)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.einsum("ij,ij->i", a64, b64) / np.maximum(denom, 1e-30)  # (n_tokens,)


def _n_embd_out(path) -> int:
    """The width of the projector's rows as mtmd checks it (qwen3vl: one slice per deepstack merger)."""
    from .gguf_header import read_header
    from .model import read_mmproj_info

    info = read_mmproj_info(path)
    if info.n_embd_out is None:
        raise ModelLoadError(
            f"cannot tell the output width of projector type {info.projector_type!r}; quantize with --no-measure"
        )
    n_deepstack = sum(
        1 for t in read_header(path).tensors if t.name.startswith("v.deepstack.") and "fc2.weight" in t.name
    )
    return info.n_embd_out * (1 + n_deepstack)


def write_stand_in_text_model(path: Path, n_embd: int) -> Path:
    """A weightless llama GGUF of width n_embd with a byte-level vocabulary, for a vocab-only load.

    mtmd reads from the text model its input width (to check the projector's; a vocab-only load
    has none, so the check is skipped), its rope type (from the architecture) and its vocabulary
    (to tokenize the image's begin/end markers). A vocab-only load reads no tensors.
    """
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("fastv-edge stand-in text model (no weights)")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(4 * n_embd)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]  # SentencePiece byte fallback
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [6] * 256)  # unknown, control x2, byte
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def default_photo():
    """scikit-image's astronaut (512 x 512) as an RGBImage.

    Raises:
        ImportError: scikit-image is not installed (pass --image then).
    """
    from skimage import data

    from .images import RGBImage

    pixels = np.ascontiguousarray(data.astronaut()[:, :, :3], dtype=np.uint8)  # (512, 512, 3)
    return RGBImage(pixels.shape[1], pixels.shape[0], pixels.tobytes(), "astronaut (scikit-image)")


def run(src, dst, qtype: str, *, image=None, n_threads: int = 1, reps: int = 3, measure_it: bool = True, verbose=False):
    """Quantize, then (measure_it) measure on `image` (an RGBImage; default: the astronaut photo).

    Returns:
        A QuantizeReport.
    """
    quantize_mmproj(src, dst, qtype, n_threads=n_threads, verbose=verbose)
    report = QuantizeReport(str(src), str(dst), qtype, Path(src).stat().st_size, Path(dst).stat().st_size)
    if measure_it:
        image = image if image is not None else default_photo()
        (result,) = measure(src, [dst], image, n_threads=n_threads, reps=reps, verbose=verbose)
        report.image, report.n_threads = image.name, n_threads
        for key, value in result.items():
            setattr(report, key, value)
    return report
