"""The one prompt evaluation every entry point calls: stock, FastV, or rows selected first.

    for each piece of the prompt, in order:
        text    llama_decode of its tokens
        image   rows = encoder.encode(piece)             (mtmd's vision encoder, or given rows)
                keep = pre-LLM selection of rows         (every row when nothing selects)
                every row kept -> mtmd_helper_decode_image_chunk(rows), exactly mtmd's decode
                a subset       -> decode.decode_rows(rows[keep], positions[:, keep])
    FastV (strategy 'fastv'/'random' at layer K >= 1, and images in the prompt):
        llama_fastv_begin before the first piece (graphs stop after layer K-1), then
        llama_fastv_finish(n_keep) ranks the decoded image rows by layer K-1 attention and runs
        layers >= K on the kept ones ('random' picks the kept set with a seeded draw).
    The last prompt token's logits are then in the context, as after any decode.

On any error the FastV state is aborted and the cells this prefill wrote are removed, so the
context is exactly as before the call (earlier turns of a chat stay valid).
Callers: generate.stream_generate (API, CLI, ChatSession), handler.FastVChatHandler, bench.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from . import _native
from .config import PruneConfig
from .decode import TokenBatch, decode_rows
from .encoder import Encoded, ImageEncoder
from .errors import ContextOverflowError, NativeError, Status, UnsupportedModelError
from .prompt import ImagePiece, Prompt, TextPiece
from .pruning import n_keep, select_random

Progress = Callable[[str], AbstractContextManager]


def no_progress(_message: str) -> AbstractContextManager:
    """The default progress hook: does nothing."""
    return nullcontext()


_NO_CALLBACK = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer


@dataclass
class Target:
    """Where a prefill decodes: a llama context, its batch sizes, and the image encoder."""

    ctx: object  # llama_context pointer
    encoder: ImageEncoder | None
    n_batch: int
    n_ubatch: int
    seq_id: int = 0

    @property
    def mtmd_ctx(self):
        return self.encoder.mtmd_ctx if self.encoder is not None else None


@dataclass
class ImageStats:
    """One image of a prefill."""

    name: str
    n_tokens: int  # rows the encoder produced
    grid: tuple[int, int] | None  # (nx, ny) patch grid of an M-RoPE image
    n_decoded: int  # rows decoded into the LLM (after any pre-LLM selection)
    encode_ms: float


@dataclass
class PrefillStats:
    """What one prefill did and how long it took."""

    strategy: str = "none (stock)"  # PruneConfig.describe()
    n_prompt_tokens: int = 0  # text + image tokens before any pruning
    n_image_tokens: int = 0  # N
    n_cells: int = 0  # KV cells the prompt occupies (text + decoded image rows)
    n_kept: int = 0  # image tokens the deep layers see (N when nothing is pruned)
    layer: int = 0  # K of in-LLM pruning (0: none ran)
    encode_ms: float = 0.0  # vision encoder, all images
    select_ms: float = 0.0  # pre-LLM selection and the in-LLM keep choice, outside llama.cpp
    shallow_ms: float = 0.0  # LLM decode of every piece (layers [0, K) when FastV runs, else all)
    deep_ms: float = 0.0  # FastV phase 2: layers [K, L) on the kept tokens
    pruned: bool = False  # in-LLM pruning (llama_fastv_*) ran
    kept: list[int] = field(default_factory=list)  # kept image-token indices into all N, ascending
    n_unranked: int = 0  # image tokens a sliding-window layer K-1 could not see (ranked last)
    images: list[ImageStats] = field(default_factory=list)

    @property
    def prefill_ms(self) -> float:
        """LLM prefill time, both phases (the vision encoder excluded)."""
        return self.shallow_ms + self.deep_ms


def check_fits(prompt: Prompt, n_used: int, n_ctx: int) -> None:
    """Raise ContextOverflowError unless the prompt fits in the free KV cells (before any pruning)."""
    if n_used + prompt.n_tokens > n_ctx:
        n_img = prompt.n_image_tokens
        raise ContextOverflowError(
            f"prompt needs {prompt.n_tokens} tokens ({prompt.n_tokens - n_img} text + {n_img} image) but only "
            f"{n_ctx - n_used} of the context's {n_ctx} are free; raise n_ctx (-c) or shorten the prompt"
        )


def _check_decodable(prompt: Prompt, n_ubatch: int) -> None:
    if not prompt.pieces or not isinstance(prompt.pieces[-1], TextPiece):
        raise ValueError("the prompt must end with text after its last image (the answer starts from a text token)")
    for piece in prompt.images:
        # a non-causal image block (Gemma 3) must fit one ubatch, else llama.cpp aborts
        if piece.non_causal and piece.n_tokens > n_ubatch:
            raise ValueError(f"image has {piece.n_tokens} tokens but n_ubatch is {n_ubatch}; raise n_ubatch")


@dataclass
class _Plan:
    """What one prefill will do with its N image tokens."""

    in_llm: bool  # llama_fastv_* at layer K
    n_keep: int  # image tokens the deep layers keep

    @classmethod
    def make(cls, prune: PruneConfig, n_image: int) -> _Plan:
        in_llm = prune.enabled and n_image > 0
        return cls(in_llm, n_keep(prune, n_image) if in_llm else n_image)  # keep > N fails here, before C


def prefill(
    target: Target,
    prompt: Prompt,
    *,
    n_past: int,
    prune: PruneConfig,
    progress: Progress = no_progress,
) -> tuple[int, PrefillStats]:
    """Decode a tokenized prompt into the target's sequence, pruning image tokens as `prune` says.

    Args:
        target: the llama context (its memory already holds positions [0, n_past)).
        prompt: the tokenized prompt; it must end with text.
        n_past: first position of this prompt.
        prune: strategy, layer K and budget; 'none' or an image-less prompt takes the stock path.
        progress: progress(message) -> context manager wrapped around slow steps.

    Returns:
        (next position, PrefillStats). The last prompt token's logits are in the context.
    """
    _check_decodable(prompt, target.n_ubatch)
    n_image = prompt.n_image_tokens
    plan = _Plan.make(prune, n_image)
    stats = PrefillStats(
        strategy=prune.describe() if n_image else "none (no image)",
        n_prompt_tokens=prompt.n_tokens,
        n_image_tokens=n_image,
        n_kept=n_image,
        pruned=plan.in_llm,
        layer=prune.layer if plan.in_llm else 0,
    )
    memory = llama_cpp.llama_get_memory(target.ctx)
    start = n_past
    if plan.in_llm:
        _begin(target, prune.layer)
    try:
        n_past = _decode_pieces(target, prompt, n_past, not plan.in_llm, stats, progress)
        if plan.in_llm:
            with progress(f"prefill: layers >= {prune.layer} on {plan.n_keep} of {n_image} image tokens"):
                _finish(target, prune, plan.n_keep, stats)
    except BaseException:
        if plan.in_llm:
            _native.abort(target.ctx)
        llama_cpp.llama_memory_seq_rm(memory, target.seq_id, start, -1)  # this prompt's cells, nothing else
        raise
    stats.n_cells = sum(p.n_tokens for p in prompt.pieces if isinstance(p, TextPiece)) + sum(
        i.n_decoded for i in stats.images
    )
    return n_past, stats


def _decode_pieces(target: Target, prompt: Prompt, n_past: int, logits_last: bool, stats, progress) -> int:
    images = prompt.images
    with TokenBatch(target.n_batch, target.seq_id) as batch:
        for i, piece in enumerate(prompt.pieces):
            if isinstance(piece, TextPiece):
                t0 = time.perf_counter()
                last = i == len(prompt.pieces) - 1
                n_past = batch.decode(target.ctx, piece.tokens, n_past, logits_last and last)
                stats.shallow_ms += (time.perf_counter() - t0) * 1e3
                continue
            k = images.index(piece) + 1
            with progress(f"image {k}/{len(images)}: encoding and decoding {piece.n_tokens} tokens"):
                n_past = _decode_image(target, piece, n_past, stats)
    return n_past


def _decode_image(target: Target, piece: ImagePiece, n_past: int, stats: PrefillStats) -> int:
    if piece.embd is not None:  # a pseudo image: its rows are given
        encoded = Encoded(piece.embd, 0.0)
    elif target.encoder is None:
        raise ValueError("this model was loaded without an mmproj; it cannot read images (pass --mmproj)")
    else:
        encoded = target.encoder.encode(piece)
    stats.encode_ms += encoded.encode_ms
    keep = None  # every row: pre-LLM selection plugs in here
    t0 = time.perf_counter()
    if keep is None and piece.chunk is not None:
        _mtmd_decode(target, piece, encoded.embd, n_past)
    else:
        rows = encoded.embd if keep is None else encoded.embd[keep]  # (n_decoded, n_embd_inp)
        positions = piece.positions(n_past)
        positions = positions if keep is None else positions[:, keep]  # (n_pos_per_embd, n_decoded)
        decode_rows(
            target.ctx, rows, positions, non_causal=piece.non_causal, n_batch=target.n_batch, seq_id=target.seq_id
        )
    stats.shallow_ms += (time.perf_counter() - t0) * 1e3
    n_decoded = piece.n_tokens if keep is None else len(keep)
    stats.images.append(ImageStats(piece.name, piece.n_tokens, piece.grid, n_decoded, encoded.encode_ms))
    return n_past + piece.n_pos


def _mtmd_decode(target: Target, piece: ImagePiece, embd: np.ndarray, n_past: int) -> None:
    new_n_past = llama_cpp.llama_pos(n_past)
    ptr = embd.ctypes.data_as(llama_cpp.ctypes.POINTER(llama_cpp.ctypes.c_float))  # (n_tokens, n_embd_inp)
    rc = mtmd.mtmd_helper_decode_image_chunk(
        target.mtmd_ctx,
        target.ctx,
        piece.chunk,
        ptr,
        n_past,
        target.seq_id,
        target.n_batch,
        llama_cpp.ctypes.byref(new_n_past),
        _NO_CALLBACK,
        None,
    )
    if rc != 0:
        raise NativeError("mtmd_helper_decode_image_chunk", rc, f"{piece.name}: decoding the image rows failed")


def _begin(target: Target, layer: int) -> None:
    try:
        _native.begin(target.ctx, target.seq_id, layer)
    except NativeError as e:
        if e.code == Status.UNSUPPORTED:
            raise UnsupportedModelError(
                f"{e}: this model or context setting has no FastV support; use strategy 'none' (--strategy none)"
            ) from e
        raise


def _finish(target: Target, prune: PruneConfig, budget: int, stats: PrefillStats) -> None:
    t0 = time.perf_counter()
    if prune.strategy == "random":
        stats.kept = select_random(stats.n_image_tokens, budget, prune.seed).tolist()
        stats.select_ms += (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        _native.finish_with_keep(target.ctx, stats.kept)
    else:
        _native.finish(target.ctx, budget)  # the top `budget` of layer K-1's attention
    stats.deep_ms = (time.perf_counter() - t0) * 1e3
    stats.kept = _native.get_kept(target.ctx)
    stats.n_kept = len(stats.kept)
    if prune.strategy == "fastv":
        stats.n_unranked = _warn_unranked(_native.get_scores(target.ctx), prune.layer)


def _warn_unranked(scores: list[float], layer: int) -> int:
    """Warn when image tokens got exactly zero attention at layer K-1, and count them.

    Softmax weights are never exactly 0 for a visible key; 0 means the key was masked: on a
    sliding-window layer (Gemma 3's local layers), image tokens further back than the window
    from the last prompt token. FastV cannot rank those; they go last, ties in index order.
    """
    n_zero = sum(1 for s in scores if s == 0.0)
    if n_zero:
        warnings.warn(
            f"{n_zero} of {len(scores)} image tokens got no attention at layer {layer - 1} because they lie outside "
            f"its sliding window; FastV ranks them last in index order. Pick a K whose layer K-1 attends globally "
            f"(Gemma 3: K = 6, 12, ...; --layer) or shorten the text after the image",
            RuntimeWarning,
            stacklevel=5,
        )
    return n_zero
