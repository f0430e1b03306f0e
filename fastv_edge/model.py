"""load(): validate a text GGUF and its mmproj, then open them with llama-cpp-python + mtmd.

Everything fastv_edge decides on is checked in Python before llama.cpp sees the files:
existence, the GGUF magic, the text model's architecture and sizes, an mmproj that really is
a CLIP projector (read whole, tensor table bounds-checked) with every tensor and key its
projector type needs (mmproj_check: a missing one crashes mtmd's loader), made for the text
model's family and projecting to its n_embd, and (for pruning strategies) an architecture
the FastV patch supports.
The text model's header is read up to its vocabulary's tokens, for the values llama.cpp
would abort on instead of refusing (model_check: layer count, M-RoPE sections, two tokens
with one text); the merges and the tensor table are left to llama.cpp, which parses the
whole header once, with its own bounds checks, and the rest of ModelInfo comes from its
metadata. When llama.cpp refuses a file, read_model_info (the full Python read) names what
is damaged. Reading the tokens costs tens of milliseconds for a 50k vocabulary; gguf-py's
reader of the whole header cost more than llama.cpp's whole load of a small model.

Unsupported architecture policy: load() REFUSES with UnsupportedModelError when a pruning
strategy ('fastv', 'random') is asked for on an architecture the patch does not hook; pass
PruneConfig(strategy='none') to run such a model on the stock path. A silent fallback would
report savings that never happened.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .config import PruneConfig, RuntimeConfig, check_image_tokens
from .errors import ModelLoadError, UnsupportedModelError
from .gguf_header import FILE_TYPES, GGUFFormatError, GGUFHeader, read_header
from .gguf_header import MAGIC as GGUF_MAGIC
from .image_grid import ImageLimit
from .image_tokens import caps_honoured, ignored_caps_message
from .mmproj_check import check_mmproj, check_projector_pairing
from .mmproj_keys import ARRAY_KEYS, check_key_types
from .model_check import TOKENS, check_text_model, wants_array
from .response import ThreadCounts

# Architectures whose layer loop the FastV patch hooks (llama_fastv_arch_supported in
# src/llama-fastv.cpp, see patches/); llama_fastv_begin returns -2 for the others.
FASTV_ARCHITECTURES = ("llama", "qwen2vl", "gemma3", "qwen2", "qwen3", "mistral3", "qwen3vl", "gemma4")

# Recurrent and hybrid architectures (llm_arch_is_recurrent / llm_arch_is_hybrid in llama-arch.cpp):
# their conv / SSM state has absorbed every image token by layer K and has no cells to hide,
# so FastV cannot drop tokens there; selecting rows before the LLM works like a shorter prompt.
RECURRENT_ARCHITECTURES = frozenset(
    {
        *("mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "jamba", "falcon-h1", "plamo2"),
        *("granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe", "qwen3next", "kimi-linear"),
        *("bailingmoe3", "kimi-k3", "glm5-next", "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "minimax-01"),
    }
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
    n_embd_out: int | None  # None: projector type not in mmproj_check's table, mtmd checks it
    image_size: int | None
    has_vision: bool
    image_limit: ImageLimit | None = None  # images whose patch grid would overflow its position table


def _open_gguf(path: str | os.PathLike, what: str, **read) -> GGUFHeader:
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{what} {path} is a directory, not a GGUF file")
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
    """True once the keys load() checks before llama.cpp sees the file are in: the hyperparameters
    and the vocabulary's tokens (reading stops before the merges and the tensor table)."""
    arch = values.get("general.architecture")
    hparams = f"{arch}.block_count" in values and f"{arch}.embedding_length" in values
    return arch == "clip" or (hparams and TOKENS in values)


def _model_info(path: str | os.PathLike, values: Mapping[str, object], check: bool = True) -> ModelInfo:
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
    if check:  # the header's typed values (llama.cpp's metadata are strings, of a file it has loaded)
        check_text_model(path, values, str(arch))
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
    return wants_array(key)  # per-layer feed-forward lengths, M-RoPE sections, the vocabulary


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


def _wants_clip_array(key: str) -> bool:
    return key in ARRAY_KEYS  # the clip.vision arrays mtmd reads (feature layers, mean, std, ...)


def read_mmproj_info(path: str | os.PathLike) -> MmprojInfo:
    """Read and check an mmproj GGUF: its keys and tensors against what mtmd's loader and graph use.

    Args:
        path: the mmproj GGUF.

    Returns:
        Its MmprojInfo.

    Raises:
        ModelLoadError: missing, not GGUF, corrupt, not a CLIP projector, without vision, or
            lacking a tensor or key its projector type needs (mmproj_check), naming it.
    """
    header = _open_gguf(path, "mmproj", arrays=_wants_clip_array)
    arch = header.get("general.architecture")
    if arch != "clip":
        raise ModelLoadError(f"{path} is not an mmproj file (general.architecture={arch!r}, expected 'clip')")
    check_key_types(header)  # before reading any: mtmd aborts on a key of another type
    if header.get("clip.has_vision_encoder") is not True:
        raise ModelLoadError(f"mmproj has no vision encoder (clip.has_vision_encoder is not true): {path}")
    facts = check_mmproj(header)
    return MmprojInfo(str(path), facts.projector, facts.n_embd_out, facts.image_size, True, facts.image_limit)


def check_pair(info: ModelInfo, mmproj: MmprojInfo) -> None:
    """Raise ModelLoadError when the projector is made for another family of text model, or
    its output size is not the model's n_embd."""
    check_mmproj_pair(info.architecture, info.n_embd, info.path, mmproj)


def check_mmproj_pair(architecture: str, n_embd: int, model_path: str, mmproj: MmprojInfo) -> None:
    """check_pair from a text model's architecture, n_embd and path (the chat handler's Llama).

    Raises:
        ModelLoadError: naming both files.
    """
    check_projector_pairing(mmproj.projector_type, architecture, Path(mmproj.path).name, Path(model_path).name)
    if mmproj.n_embd_out is not None and mmproj.n_embd_out != n_embd:
        raise ModelLoadError(
            f"mmproj {Path(mmproj.path).name} projects to n_embd={mmproj.n_embd_out} but model "
            f"{Path(model_path).name} has n_embd={n_embd}; use the mmproj made for this model"
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
    if prune.in_llm and architecture in RECURRENT_ARCHITECTURES:
        raise UnsupportedModelError(
            f"FastV (in-LLM pruning at layer K >= 1) does not apply to {architecture!r}: its recurrent layers "
            "have absorbed every image token before layer K and keep no cells to drop; select tokens before "
            "the LLM instead: --strategy divprune -k 0 (or dart|cdpruner|random with -k 0)"
        )
    if prune.in_llm and architecture not in FASTV_ARCHITECTURES:
        raise UnsupportedModelError(
            f"FastV (in-LLM pruning at layer K >= 1) does not support architecture {architecture!r} "
            f"(supported: {', '.join(FASTV_ARCHITECTURES)}); select tokens before the LLM instead "
            "(--strategy divprune|dart|cdpruner|random with -k 0), or run it unpruned (--strategy none)"
        )
    prune.check_layer(n_layer)


class _MtmdHandle:
    """A model's mtmd context and the encoder threads it was opened with: freed once when the
    model closes, replaced by set_image_tokens."""

    def __init__(self, ptr, n_threads: int):
        self.ptr = ptr
        self.n_threads = n_threads

    def replace(self, ptr, n_threads: int) -> None:
        old, self.ptr, self.n_threads = self.ptr, ptr, n_threads
        _mtmd_free(old)

    def close(self) -> None:
        if self.ptr is not None:
            _mtmd_free(self.ptr)
            self.ptr = None


class Model:
    """A loaded text model + optional mmproj, the default pruning, and the chat template.

    Use load() to build one; close() (or a with-block) frees the native handles.
    """

    def __init__(
        self,
        llm,
        mtmd: _MtmdHandle | None,
        info: ModelInfo,
        mmproj: MmprojInfo | None,
        runtime: RuntimeConfig,
        prune: PruneConfig,
        template: str | None,
        template_origin: str,
        stack: ExitStack,
    ):
        self._llm = llm  # llama_cpp.Llama: tokenizer, context, sampler pieces
        self._mtmd = mtmd  # _MtmdHandle or None (text only)
        self._closed = False
        self.info = info
        self.mmproj = mmproj
        self.runtime = runtime
        self.prune = prune
        self.template = template
        self.template_origin = template_origin
        self.embedding_cache = None  # an EmbeddingCache when runtime.embedding_cache and an mmproj
        if mtmd is not None and runtime.embedding_cache:
            from .embedding_cache import EmbeddingCache

            self.embedding_cache = EmbeddingCache(runtime.embedding_cache_dir)
        self._encoder = self._image_encoder()
        self._token_embeddings = None  # opened on the first CDPruner request
        self._stack = stack

    def _open(self):
        if self._closed:  # its native handles are freed: using them would crash
            raise ValueError(
                f"this Model ({Path(self.info.path).name}) was closed (close() or the end of its with-block); "
                "load() it again"
            )

    @property
    def llm(self):
        """The llama_cpp.Llama: tokenizer, context, sampler pieces."""
        self._open()
        return self._llm

    @property
    def encoder(self):
        """The ImageEncoder of the mmproj, or None for a text-only model."""
        self._open()
        return self._encoder

    @property
    def closed(self) -> bool:
        """True after close(): every native-backed attribute then raises ValueError."""
        return self._closed

    @property
    def mtmd_ctx(self):
        """The mtmd_context pointer, or None (text only)."""
        self._open()
        return self._mtmd.ptr if self._mtmd is not None else None

    def _image_encoder(self):
        from .embedding_cache import EncoderKeys, preprocessing
        from .encoder import ImageEncoder

        if self._mtmd is None:
            return None
        keys = None
        if self.embedding_cache is not None:
            prep = preprocessing(self.runtime, self.image_tokens_honoured)
            keys = EncoderKeys(self.mmproj.path, prep, self.embedding_cache.memo_dir)
        cache, fixed = self.embedding_cache, not self.image_tokens_honoured
        return ImageEncoder(self.mtmd_ctx, self.llm.model, cache=cache, keys=keys, fixed_resolution=fixed)

    @property
    def threads(self) -> ThreadCounts:
        """The thread counts in use: read back from the llama context, and the encoder's as given to mtmd."""
        import llama_cpp

        encoder = self._mtmd.n_threads if self._mtmd is not None else None
        return ThreadCounts(llama_cpp.llama_n_threads(self.ctx), llama_cpp.llama_n_threads_batch(self.ctx), encoder)

    @property
    def image_tokens_honoured(self) -> bool:
        """True when image_min_tokens / image_max_tokens change this model's image token counts.

        False for fixed-resolution projectors (LLaVA-1.5's mlp, Gemma 3) and without an mmproj;
        the projector types that honour them are image_tokens.IMAGE_TOKEN_CAP_PROJECTORS.
        """
        return self.mmproj is not None and caps_honoured(self.mmproj.projector_type)

    def set_image_tokens(self, min_tokens: int | None = None, max_tokens: int | None = None) -> None:
        """Set mtmd's bounds on the tokens of one image (None: the projector's own).

        Re-opens the mtmd context when the bounds change and the projector honours them, so one
        loaded LLM can try several caps; prompts tokenized before the call must not be used after.
        On a projector that ignores them a RuntimeWarning says so and nothing is re-opened.

        Args:
            min_tokens: image_min_tokens (smaller images are upscaled to it).
            max_tokens: image_max_tokens (larger images are downscaled to it).

        Raises:
            ValueError: a bound outside [1, MAX_IMAGE_TOKENS], min > max, or no mmproj loaded.
            ModelLoadError: mtmd could not re-open the mmproj (the previous context stays in use).
        """
        check_image_tokens(min_tokens, max_tokens)
        if self._mtmd is None:
            raise ValueError("this model was loaded without an mmproj; it has no image tokens to limit (pass --mmproj)")
        if (min_tokens, max_tokens) == (self.runtime.image_min_tokens, self.runtime.image_max_tokens):
            return
        runtime = dataclasses.replace(self.runtime, image_min_tokens=min_tokens, image_max_tokens=max_tokens)
        message = ignored_caps_message(self.mmproj, min_tokens, max_tokens)
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        if self.image_tokens_honoured:
            options = mtmd_options(runtime)
            self._mtmd.replace(open_mtmd(self.llm.model, self.mmproj.path, **options), options["n_threads"])
        self.runtime = runtime
        self._encoder = self._image_encoder()

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
        self._open()
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
        """Free the mtmd context, then the llama context and model (a second call does nothing)."""
        self._closed = True
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _resolve_paths(model: str | os.PathLike, mmproj: str | os.PathLike | None):
    """A preset name becomes its cached files; a path stays a path (a missing one is not found)."""
    text = os.fspath(model)
    if not Path(text).exists() and "/" not in text and not text.endswith(".gguf"):
        from . import hub
        from .templates import list_presets

        names = [p.name for p in list_presets()]
        if text not in names:  # 'model.bin' is a missing file, not an unknown preset
            known = ", ".join(names)
            raise ModelLoadError(f"model not found: {text} (no such file, and no preset of that name: {known})")
        return hub.cached_files(text, mmproj)
    return text, (os.fspath(mmproj) if mmproj is not None else None)


def mtmd_options(runtime: RuntimeConfig) -> dict:
    """open_mtmd's keyword arguments for a RuntimeConfig (the encoder gets the LLM's thread count)."""
    return dict(
        n_threads=runtime.threads,
        use_gpu=runtime.n_gpu_layers != 0,
        flash_attn=runtime.flash_attn,
        verbose=runtime.verbose,
        image_min_tokens=runtime.image_min_tokens,
        image_max_tokens=runtime.image_max_tokens,
    )


def open_mtmd(
    llama_model,
    path: str,
    *,
    n_threads: int,
    use_gpu: bool,
    flash_attn: bool,
    verbose: bool,
    image_min_tokens: int | None = None,
    image_max_tokens: int | None = None,
):
    """mtmd context for an mmproj, its logs routed through llama-cpp-python's logger.

    Args:
        llama_model: the llama_model pointer of the text model.
        path: the mmproj GGUF (already checked by read_mmproj_info).
        n_threads: vision-encoder threads (the same as the LLM's: more than the cores spin).
        use_gpu: run the encoder on the GPU when there is one.
        flash_attn: flash attention in the encoder.
        verbose: print mtmd's timings.
        image_min_tokens: lower bound on an image's tokens (None: the projector's default).
        image_max_tokens: upper bound on an image's tokens (None: the projector's default).

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
    params.image_min_tokens = image_min_tokens or -1  # -1: read from the GGUF / the projector's default
    params.image_max_tokens = image_max_tokens or -1
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
        runtime: context settings (n_ctx, threads, batch sizes, flash attention, image-token caps,
            the embedding cache). Caps on a projector that ignores them give a RuntimeWarning.
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
    ignored = ignored_caps_message(mm_info, runtime.image_min_tokens, runtime.image_max_tokens)
    if ignored:
        warnings.warn(ignored, RuntimeWarning, stacklevel=2)
    from .templates import check_template, load_template, resolve_template, template_label

    override = load_template(template) if template else None  # a bad name fails before the load
    if override is not None:  # and a given template that does not parse
        check_template(override, template_label(f"override:{template}", model_path))
    stack = ExitStack()
    try:
        llm = _load_llama(stack, model_path, runtime)
        info = _model_info(model_path, {**llm.metadata, **{k: v for k, v in head.items() if k != TOKENS}}, False)
        mtmd = None
        if mmproj_path:
            options = mtmd_options(runtime)
            mtmd = _MtmdHandle(open_mtmd(llm.model, mmproj_path, **options), options["n_threads"])
            stack.callback(mtmd.close)
    except BaseException:
        stack.close()
        raise
    _warn_past_training(info, runtime.n_ctx)
    if override is not None:
        tpl, origin = override, f"override:{template}"
    else:
        try:
            tpl, origin = resolve_template(info.chat_template, model_path)
        except ValueError:
            tpl, origin = None, "none"  # raw prompts still work; applying a template raises then
    return Model(llm, mtmd, info, mm_info, runtime, prune, tpl, origin, stack)


def _warn_past_training(info: ModelInfo, n_ctx: int) -> None:
    if 0 < info.n_ctx_train < n_ctx:  # llama.cpp only logs this, which nobody sees without --verbose
        warnings.warn(
            f"n_ctx {n_ctx} is more than the {info.n_ctx_train} tokens {Path(info.path).name} was trained on; "
            "answers degrade past that length",
            RuntimeWarning,
            stacklevel=3,
        )


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
        if "llama_context" in str(e):  # the model loaded; the context (its KV cache, its buffers) did not
            raise ModelLoadError(
                f"llama.cpp could not create a context of {runtime.n_ctx} tokens for {model_path} ({e}): "
                "its KV cache may not fit in memory; lower n_ctx (-c), n_batch (-b) or n_ubatch (-ub)"
            ) from e
        raise ModelLoadError(f"llama.cpp could not load {model_path}: {e} (--verbose shows its log)") from e
    stack.callback(llm.close)
    return llm
