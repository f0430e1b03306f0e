"""load(): validate a text GGUF and its mmproj, then open them with llama-cpp-python + mtmd.

Everything fastv_edge decides on is checked in Python before llama.cpp sees the files:
existence, the GGUF magic, the text model's architecture and sizes, an mmproj that really is
a CLIP projector (read whole, tensor table bounds-checked) whose output size equals the text
model's n_embd, and (for pruning strategies) an architecture the FastV patch supports.
The text model's header is read only up to those keys, which precede its vocabulary:
llama.cpp then parses the whole header once, with its own bounds checks, and the rest of
ModelInfo comes from its metadata. When llama.cpp refuses a file, read_model_info (the full
Python read) names what is damaged. Reading the vocabulary in Python as well cost more than
llama.cpp's whole load of a small model.

Unsupported architecture policy: load() REFUSES with UnsupportedModelError when a pruning
strategy ('fastv', 'random') is asked for on an architecture the patch does not hook; pass
PruneConfig(strategy='none') to run such a model on the stock path. A silent fallback would
report savings that never happened.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .config import PruneConfig, RuntimeConfig
from .errors import ModelLoadError, UnsupportedModelError
from .gguf_header import FILE_TYPES, GGUFFormatError, GGUFHeader, read_header
from .gguf_header import MAGIC as GGUF_MAGIC

# Architectures whose layer loop the FastV patch hooks (llama_context::fastv_arch_supported,
# see patches/); llama_fastv_begin returns -2 for the others.
FASTV_ARCHITECTURES = ("llama", "qwen2vl", "gemma3")  # the graphs patches/ hooks

# mmproj output size: (tensor name, axis of the shape that is n_embd), first match wins.
# Mirrors clip_n_mmproj_embd() for the projectors of the presets.
_MMPROJ_OUT = (
    ("mm.2.weight", 1),  # llava 'mlp' and qwen2vl_merger (mm.0 -> GELU -> mm.2)
    ("mm.model.fc.weight", 1),  # idefics3 (SmolVLM)
    ("mm.input_projection.weight", 0),  # gemma3
)


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a text GGUF."""

    path: str
    name: str
    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_ctx_train: int
    quantization: str
    chat_template: str | None
    size_bytes: int


@dataclass(frozen=True)
class MmprojInfo:
    """Metadata of an mmproj (CLIP projector) GGUF."""

    path: str
    projector_type: str
    n_embd_out: int | None  # None: projector type not in the table, mtmd checks it
    image_size: int | None
    has_vision: bool


def _open_gguf(path: str | os.PathLike, what: str, **read) -> GGUFHeader:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{what} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}): {path}")
    try:
        return read_header(path, **read)
    except GGUFFormatError as e:
        raise ModelLoadError(f"{what} is corrupt or truncated ({type(e).__name__}: {e}): {path}") from e


def _hparams_read(values: dict) -> bool:
    """True once the keys load() checks before llama.cpp sees the file are in (they precede
    the vocabulary in converted files, so reading stops before it)."""
    arch = values.get("general.architecture")
    return arch == "clip" or (f"{arch}.block_count" in values and f"{arch}.embedding_length" in values)


def _model_info(path: str | os.PathLike, values: Mapping[str, object]) -> ModelInfo:
    """ModelInfo from GGUF values: typed ones from read_header, or llama.cpp's metadata strings."""
    arch = values.get("general.architecture")
    if not arch:
        raise ModelLoadError(f"model has no general.architecture key: {path}")
    if arch == "clip":
        raise ModelLoadError(f"{path} is an mmproj (CLIP) file; pass it as --mmproj, not as the model")
    n_layer = values.get(f"{arch}.block_count")
    n_embd = values.get(f"{arch}.embedding_length")
    if not n_layer or not n_embd:
        raise ModelLoadError(f"model lacks {arch}.block_count / {arch}.embedding_length: {path}")
    ftype = values.get("general.file_type")
    quant = "unknown" if ftype is None else FILE_TYPES.get(int(ftype), f"file_type {ftype}")
    n_ff = values.get(f"{arch}.feed_forward_length", 0)
    return ModelInfo(
        path=str(path),
        name=str(values.get("general.name", Path(path).stem)),
        architecture=str(arch),
        n_layer=int(n_layer),
        n_embd=int(n_embd),
        n_ff=int(n_ff[0] if isinstance(n_ff, list) else n_ff),  # per-layer lists: use layer 0
        n_head=int(values.get(f"{arch}.attention.head_count", 0) or 0),
        n_ctx_train=int(values.get(f"{arch}.context_length", 0) or 0),
        quantization=quant,
        chat_template=values.get("tokenizer.chat_template"),
        size_bytes=Path(path).stat().st_size,
    )


def _wants_array(key: str) -> bool:
    return key.endswith(".feed_forward_length")  # per-layer in a few architectures


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read and check a text model's GGUF metadata and tensor table.

    Args:
        path: the text GGUF.

    Returns:
        Its ModelInfo.

    Raises:
        ModelLoadError: missing, not GGUF, corrupt or truncated, or lacking the basic hyperparameters.
    """
    return _model_info(path, _open_gguf(path, "model", arrays=_wants_array).values)


def read_mmproj_info(path: str | os.PathLike) -> MmprojInfo:
    """Read and check an mmproj GGUF.

    Args:
        path: the mmproj GGUF.

    Returns:
        Its MmprojInfo.

    Raises:
        ModelLoadError: missing, not GGUF, corrupt, not a CLIP projector or without vision.
    """
    header = _open_gguf(path, "mmproj")
    arch = header.get("general.architecture")
    if arch != "clip":
        raise ModelLoadError(f"{path} is not an mmproj file (general.architecture={arch!r}, expected 'clip')")
    if not header.get("clip.has_vision_encoder", False):
        raise ModelLoadError(f"mmproj has no vision encoder (clip.has_vision_encoder is false): {path}")
    shapes = {t.name: t.shape for t in header.tensors}  # GGUF order: ne0, ne1, ...
    n_out = next((shapes[n][axis] for n, axis in _MMPROJ_OUT if n in shapes), None)
    proj = header.get("clip.vision.projector_type") or header.get("clip.projector_type") or "unknown"
    size = header.get("clip.vision.image_size")
    return MmprojInfo(str(path), str(proj), n_out, int(size) if size else None, True)


def check_pair(info: ModelInfo, mmproj: MmprojInfo) -> None:
    """Raise ModelLoadError when the projector's output size is not the model's n_embd."""
    if mmproj.n_embd_out is not None and mmproj.n_embd_out != info.n_embd:
        raise ModelLoadError(
            f"mmproj {Path(mmproj.path).name} projects to n_embd={mmproj.n_embd_out} but model "
            f"{Path(info.path).name} has n_embd={info.n_embd}; use the mmproj made for this model"
        )


def check_supported(architecture: str, n_layer: int, prune: PruneConfig) -> None:
    """Refuse a pruning strategy on an architecture the FastV patch does not hook.

    Args:
        architecture: general.architecture of the text model.
        n_layer: its number of layers.
        prune: the pruning asked for.

    Raises:
        UnsupportedModelError: naming the stock-path alternative.
        ValueError: K outside [1, n_layer).
    """
    if prune.in_llm and architecture not in FASTV_ARCHITECTURES:
        raise UnsupportedModelError(
            f"FastV (in-LLM pruning at layer K >= 1) does not support architecture {architecture!r} "
            f"(supported: {', '.join(FASTV_ARCHITECTURES)}); select tokens before the LLM instead "
            "(--strategy divprune|dart|cdpruner|random with -k 0), or run it unpruned (--strategy none)"
        )
    prune.check_layer(n_layer)


class Model:
    """A loaded text model + optional mmproj, the default pruning, and the chat template.

    Use load() to build one; close() (or a with-block) frees the native handles.
    """

    def __init__(
        self,
        llm,
        mtmd_ctx,
        info: ModelInfo,
        mmproj: MmprojInfo | None,
        runtime: RuntimeConfig,
        prune: PruneConfig,
        template: str | None,
        template_origin: str,
        stack: ExitStack,
    ):
        from .encoder import ImageEncoder

        self.llm = llm  # llama_cpp.Llama: tokenizer, context, sampler pieces
        self.mtmd_ctx = mtmd_ctx  # mtmd_context_p or None (text only)
        self.info = info
        self.mmproj = mmproj
        self.runtime = runtime
        self.prune = prune
        self.template = template
        self.template_origin = template_origin
        self.encoder = ImageEncoder(mtmd_ctx, llm.model) if mtmd_ctx is not None else None
        self._token_embeddings = None  # opened on the first CDPruner request
        self._stack = stack

    @property
    def ctx(self):
        """The raw llama_context pointer."""
        return self.llm._ctx.ctx

    @property
    def target(self):
        """Where prefill.prefill decodes for this model (its context, batch sizes and encoder)."""
        import llama_cpp

        from .prefill import Target

        return Target(
            self.ctx, self.encoder, self.llm.n_batch, llama_cpp.llama_n_ubatch(self.ctx), text_rows=self.text_rows
        )

    def text_rows(self, ids) -> np.ndarray:  # noqa: F821 (numpy is imported lazily)
        """The model's input embeddings of token ids, (len(ids), n_embd) (CDPruner's text features)."""
        if self._token_embeddings is None:
            from .text_features import TokenEmbeddings

            self._token_embeddings = TokenEmbeddings(self.info.path)
            self._stack.callback(self._token_embeddings.close)
        return self._token_embeddings.rows(ids)

    @property
    def n_ctx(self) -> int:
        """Context size in tokens (KV cells)."""
        return self.llm.n_ctx()

    @property
    def marker(self) -> str:
        """mtmd's media marker, the placeholder of an image in prompt text."""
        import llama_cpp.mtmd_cpp as mtmd

        return mtmd.mtmd_default_marker().decode("utf-8")

    def close(self) -> None:
        """Free the mtmd context, then the llama context and model."""
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _resolve_paths(model: str | os.PathLike, mmproj: str | os.PathLike | None):
    """A preset name becomes its cached files; a path stays a path."""
    text = os.fspath(model)
    if not Path(text).exists() and "/" not in text and not text.endswith(".gguf"):
        from . import hub

        return hub.cached_files(text, mmproj)
    return text, (os.fspath(mmproj) if mmproj is not None else None)


def open_mtmd(llama_model, path: str, *, n_threads: int, use_gpu: bool, flash_attn: bool, verbose: bool):
    """mtmd context for an mmproj, its logs routed through llama-cpp-python's logger.

    Args:
        llama_model: the llama_model pointer of the text model.
        path: the mmproj GGUF (already checked by read_mmproj_info).
        n_threads: vision-encoder threads (the same as the LLM's: more than the cores spin).
        use_gpu: run the encoder on the GPU when there is one.
        flash_attn: flash attention in the encoder.
        verbose: print mtmd's timings.

    Returns:
        The mtmd context pointer (the caller frees it with mtmd_free).

    Raises:
        ModelLoadError: mtmd could not load it, or it has no vision support.
    """
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp import _logger

    # llama-cpp-python's logger prints only when its verbose flag is set, so mtmd's own
    # "decoding image batch" lines follow it instead of going to stderr unconditionally
    mtmd.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = use_gpu
    params.print_timings = verbose
    params.n_threads = n_threads
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    ctx = mtmd.mtmd_init_from_file(path.encode(), llama_model, params)
    if not ctx:
        raise ModelLoadError(f"mtmd could not load the mmproj {path} (run with --debug/verbose for llama.cpp's log)")
    if not mtmd.mtmd_support_vision(ctx):
        mtmd.mtmd_free(ctx)
        raise ModelLoadError(f"mmproj {path} has no vision support")
    return ctx


def _mtmd_free(ctx) -> None:
    import llama_cpp.mtmd_cpp as mtmd

    mtmd.mtmd_free(ctx)


def load(
    model: str | os.PathLike,
    mmproj: str | os.PathLike | None = None,
    *,
    runtime: RuntimeConfig | None = None,
    prune: PruneConfig | None = None,
    template: str | None = None,
) -> Model:
    """Load a vision-language model for FastV generation.

    Args:
        model: text GGUF path, or a preset name (see `fastv-edge presets`; files come from
            the Hugging Face cache filled by `fastv-edge pull NAME`).
        mmproj: mmproj GGUF path (None with a preset: the preset's; None with a path: text only).
        runtime: context settings (n_ctx, threads, batch sizes, flash attention).
        prune: default pruning for requests that do not pass one; checked against the model.
        template: chat template name or .jinja path, overriding the GGUF's.

    Returns:
        A Model. Close it (or use `with`) to free native memory.

    Raises:
        ModelLoadError: a file is missing, corrupt, or the pair does not match.
        UnsupportedModelError: a pruning strategy on an architecture FastV does not support.
        ValueError: K outside [1, n_layer).
    """
    runtime = runtime or RuntimeConfig()
    prune = prune or PruneConfig()
    model_path, mmproj_path = _resolve_paths(model, mmproj)
    # only the keys checked here are read (they precede the vocabulary); llama.cpp then parses
    # the whole header once, bounds-checking it, and the rest of ModelInfo comes from its metadata
    head = _open_gguf(model_path, "model", arrays=_wants_array, until=_hparams_read).values
    checked = _model_info(model_path, head)
    mm_info = read_mmproj_info(mmproj_path) if mmproj_path else None
    if mm_info is not None:
        check_pair(checked, mm_info)
    check_supported(checked.architecture, checked.n_layer, prune)
    from .templates import load_template, resolve_template

    override = load_template(template) if template else None  # a bad name fails before the load
    stack = ExitStack()
    try:
        llm = _load_llama(stack, model_path, runtime)
        info = _model_info(model_path, {**llm.metadata, **head})
        mtmd_ctx = None
        if mmproj_path:
            mtmd_ctx = open_mtmd(
                llm.model,
                mmproj_path,
                n_threads=runtime.threads,
                use_gpu=runtime.n_gpu_layers != 0,
                flash_attn=runtime.flash_attn,
                verbose=runtime.verbose,
            )
            stack.callback(_mtmd_free, mtmd_ctx)
    except BaseException:
        stack.close()
        raise
    if override is not None:
        tpl, origin = override, "override"
    else:
        try:
            tpl, origin = resolve_template(info.chat_template, model_path)
        except ValueError:
            tpl, origin = None, "none"  # raw prompts still work; applying a template raises then
    return Model(llm, mtmd_ctx, info, mm_info, runtime, prune, tpl, origin, stack)


def _load_llama(stack: ExitStack, model_path: str, runtime: RuntimeConfig):
    from llama_cpp import Llama

    try:
        llm = Llama(
            model_path=model_path,
            n_ctx=runtime.n_ctx,
            n_batch=runtime.n_batch,
            n_ubatch=runtime.n_ubatch,
            n_threads=runtime.threads,
            # the prompt too: llama-cpp-python would take every core for it, and ggml's threads
            # spin at barriers when fewer cores are free (llama.cpp's own -t sets both)
            n_threads_batch=runtime.threads,
            flash_attn=runtime.flash_attn,
            n_gpu_layers=runtime.n_gpu_layers,
            verbose=runtime.verbose,
        )
    except ValueError as e:
        read_model_info(model_path)  # a truncated or damaged file: the reader names what is wrong
        raise ModelLoadError(f"llama.cpp could not load {model_path}: {e} (--verbose shows its log)") from e
    stack.callback(llm.close)
    return llm
