"""Prompt evaluation: tokenize with mtmd, then decode the chunks, with or without FastV.

FastV (strategy 'fastv'/'random', at least one image token):
    llama_fastv_begin(ctx, 0, K, R)            -> SHALLOW: graphs stop after layer K-1
    text chunks: llama_decode, no logits       (SHALLOW produces none)
    image chunks: mtmd_encode_chunk + mtmd_helper_decode_image_chunk
    llama_fastv_finish(ctx)                     -> rank, keep, run layers >= K on the kept
      (absolute keep / random: read get_scores() after the last chunk, pick in Python,
       then llama_fastv_finish_with_keep)
    logits of the last prompt token are then in llama_get_logits_ith(ctx, -1).
Stock (strategy 'none', or no image): the same loop with logits on the last token.
On any exception the FastV state is aborted and this prefill's KV cells are removed.
"""

from __future__ import annotations

import ctypes
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

from . import _native
from .config import PruneConfig
from .errors import ContextOverflowError, NativeError, Status, UnsupportedModelError
from .images import RGBImage
from .pruning import make_pruner, n_keep

Progress = Callable[[str], AbstractContextManager]
_no_progress: Progress = lambda _msg: nullcontext()  # noqa: E731
_NO_CALLBACK = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer


@dataclass
class Piece:
    """One prompt chunk: text tokens, or an mtmd image chunk (owned by its Prompt)."""

    tokens: list[int] | None = None  # text
    chunk: int | None = None  # mtmd_input_chunk_p of an image
    n_tokens: int = 0
    n_pos: int = 0  # positions it advances (differs from n_tokens with M-RoPE)


@dataclass
class PrefillStats:
    """What one prefill did and how long it took."""

    n_prompt_tokens: int = 0  # text + image tokens decoded (KV cells used)
    n_image_tokens: int = 0  # N
    n_kept: int = 0  # image tokens seen by layers >= K (N when not pruned)
    encode_ms: float = 0.0  # vision encoder, all images
    shallow_ms: float = 0.0  # phase 1: decode of all chunks (the whole prefill when stock)
    deep_ms: float = 0.0  # phase 2: llama_fastv_finish
    pruned: bool = False
    kept: list[int] = field(default_factory=list)  # kept image-token indices (prompt order)
    n_unranked: int = 0  # image tokens with exactly zero layer K-1 attention (outside a sliding window)

    @property
    def prefill_ms(self) -> float:
        """LLM prefill time, both phases (the vision encoder excluded)."""
        return self.shallow_ms + self.deep_ms


class Prompt:
    """A tokenized prompt: text and image pieces. Owns the mtmd chunks; close() frees them."""

    def __init__(self, pieces: list[Piece], chunks=None):
        self.pieces = pieces
        self._chunks = chunks

    @property
    def n_tokens(self) -> int:
        """KV cells the prompt needs."""
        return sum(p.n_tokens for p in self.pieces)

    @property
    def n_image_tokens(self) -> int:
        """N: tokens coming from images."""
        return sum(p.n_tokens for p in self.pieces if p.chunk is not None)

    @property
    def text_tokens(self) -> list[int]:
        """All text tokens in order (images left out)."""
        return [t for p in self.pieces if p.tokens for t in p.tokens]

    def close(self) -> None:
        """Free the mtmd chunks."""
        if self._chunks:
            mtmd.mtmd_input_chunks_free(self._chunks)
            self._chunks = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tokenize(llm, mtmd_ctx, text: str, images: list[RGBImage], *, add_special: bool = True) -> Prompt:
    """Split `text` at mtmd's media markers and tokenize text and images.

    Args:
        llm: the llama_cpp.Llama (text-only tokenization when mtmd_ctx is None).
        mtmd_ctx: mtmd context, or None for a text-only model.
        text: prompt text with one media marker per image.
        images: decoded images, in marker order.
        add_special: add BOS (True for the start of a conversation only).

    Returns:
        A Prompt (close it, or use `with`).
    """
    marker = mtmd.mtmd_default_marker().decode("utf-8")
    if text.count(marker) != len(images):
        raise ValueError(f"prompt has {text.count(marker)} image markers {marker!r} but {len(images)} images")
    if mtmd_ctx is None:
        if images:
            raise ValueError("this model was loaded without an mmproj; it cannot read images (pass --mmproj)")
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)
        return Prompt([Piece(tokens=list(tokens), n_tokens=len(tokens), n_pos=len(tokens))])
    chunks = mtmd.mtmd_input_chunks_init()
    if not chunks:
        raise MemoryError("mtmd_input_chunks_init failed")
    prompt = Prompt([], chunks)
    try:
        _tokenize_into(mtmd_ctx, chunks, text, images, add_special)
        prompt.pieces = _pieces(chunks)
    except BaseException:
        prompt.close()
        raise
    return prompt


def _tokenize_into(mtmd_ctx, chunks, text: str, images: list[RGBImage], add_special: bool) -> None:
    bitmaps = []
    try:
        for img in images:
            buf = (ctypes.c_uint8 * len(img.data)).from_buffer_copy(img.data)  # (ny, nx, 3) RGB
            bitmap = mtmd.mtmd_bitmap_init(img.nx, img.ny, buf)
            if not bitmap:
                raise ValueError(f"{img.name}: mtmd could not take a {img.nx}x{img.ny} image")
            bitmaps.append(bitmap)
        raw = text.encode("utf-8")
        inp = mtmd.mtmd_input_text(text=raw, text_len=len(raw), add_special=add_special, parse_special=True)
        arr = (mtmd.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
        rc = mtmd.mtmd_tokenize(mtmd_ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
        if rc != 0:
            raise ValueError(
                f"mtmd_tokenize failed with code {rc} (1: marker/image count mismatch, 2: image preprocessing)"
            )
    finally:
        for bitmap in bitmaps:  # the chunks hold preprocessed copies
            mtmd.mtmd_bitmap_free(bitmap)


def _pieces(chunks) -> list[Piece]:
    pieces = []
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        kind = mtmd.mtmd_input_chunk_get_type(chunk)
        if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            tokens = [ptr[j] for j in range(n.value)]
            if tokens:
                pieces.append(Piece(tokens=tokens, n_tokens=len(tokens), n_pos=len(tokens)))
        elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            n_tok = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            pieces.append(Piece(chunk=chunk, n_tokens=n_tok, n_pos=mtmd.mtmd_input_chunk_get_n_pos(chunk)))
        else:
            raise ValueError("audio input is not supported")
    return pieces


def check_fits(prompt: Prompt, n_used: int, n_ctx: int) -> None:
    """Raise ContextOverflowError unless the prompt fits in the free KV cells."""
    if n_used + prompt.n_tokens > n_ctx:
        n_img = prompt.n_image_tokens
        raise ContextOverflowError(
            f"prompt needs {prompt.n_tokens} tokens ({prompt.n_tokens - n_img} text + {n_img} image) but only "
            f"{n_ctx - n_used} of the context's {n_ctx} are free; raise n_ctx (-c) or shorten the prompt"
        )


def _decode_tokens(ctx, batch, tokens: list[int], n_past: int, n_batch: int, logits_last: bool) -> int:
    for start in range(0, len(tokens), n_batch):
        part = tokens[start : start + n_batch]
        batch.n_tokens = len(part)
        for i, tok in enumerate(part):
            batch.token[i] = tok
            batch.pos[i] = n_past + start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = False
        if logits_last and start + n_batch >= len(tokens):
            batch.logits[len(part) - 1] = True
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            hint = "no free KV slot: the context is full" if rc == 1 else "see llama.cpp's log (verbose)"
            raise NativeError("llama_decode", rc, hint)
    return n_past + len(tokens)


class TokenBatch:
    """A llama_batch for up to n_batch text tokens of sequence 0 (freed on close)."""

    def __init__(self, n_batch: int):
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def decode(self, ctx, tokens: list[int], n_past: int, logits_last: bool) -> int:
        """Decode tokens from position n_past; returns the next position."""
        return _decode_tokens(ctx, self.batch, tokens, n_past, self.n_batch, logits_last)

    def close(self) -> None:
        """Free the native batch."""
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _decode_image(ctx, mtmd_ctx, piece: Piece, n_past: int, n_batch: int, stats: PrefillStats) -> int:
    t0 = time.perf_counter()
    rc = mtmd.mtmd_encode_chunk(mtmd_ctx, piece.chunk)
    if rc != 0:
        raise NativeError("mtmd_encode_chunk", rc, "the vision encoder failed")
    embd = mtmd.mtmd_get_output_embd(mtmd_ctx)  # (n_tokens, n_embd) floats
    t1 = time.perf_counter()
    new_n_past = llama_cpp.llama_pos(n_past)
    rc = mtmd.mtmd_helper_decode_image_chunk(
        mtmd_ctx, ctx, piece.chunk, embd, n_past, 0, n_batch, ctypes.byref(new_n_past), _NO_CALLBACK, None
    )
    if rc != 0:
        raise NativeError("mtmd_helper_decode_image_chunk", rc, "decoding the image embeddings failed")
    stats.encode_ms += (t1 - t0) * 1e3
    stats.shallow_ms += (time.perf_counter() - t1) * 1e3
    return new_n_past.value


def _check_decodable(prompt: Prompt, mtmd_ctx, n_ubatch: int) -> None:
    if not prompt.pieces or prompt.pieces[-1].tokens is None:
        raise ValueError("the prompt must end with text after its last image (the answer starts from a text token)")
    for piece in prompt.pieces:
        # a non-causal image block (Gemma 3) must fit one ubatch, else llama.cpp aborts
        non_causal = piece.chunk is not None and mtmd.mtmd_decode_use_non_causal(mtmd_ctx, piece.chunk)
        if non_causal and piece.n_tokens > n_ubatch:
            raise ValueError(f"image has {piece.n_tokens} tokens but n_ubatch is {n_ubatch}; raise n_ubatch")


def prefill(
    ctx,
    mtmd_ctx,
    prompt: Prompt,
    batch: TokenBatch,
    *,
    n_past: int,
    n_ubatch: int,
    prune: PruneConfig,
    progress: Progress = _no_progress,
) -> tuple[int, PrefillStats]:
    """Decode a tokenized prompt into sequence 0 of `ctx`, pruning image tokens with FastV.

    Args:
        ctx: llama_context pointer; its memory already holds positions [0, n_past).
        mtmd_ctx: mtmd context (None for text-only prompts).
        prompt: the tokenized prompt.
        batch: a TokenBatch sized n_batch.
        n_past: first position of this prompt.
        n_ubatch: the context's n_ubatch (non-causal images must fit in one).
        prune: strategy, K and budget; 'none' or an image-less prompt takes the stock path.
        progress: progress(message) -> context manager wrapped around slow steps.

    Returns:
        (next position, PrefillStats). The last prompt token's logits are in the context.
    """
    _check_decodable(prompt, mtmd_ctx, n_ubatch)
    n_image = prompt.n_image_tokens
    use_fastv = prune.enabled and n_image > 0
    budget = n_keep(prune, n_image) if use_fastv else n_image  # keep > N fails here, before C
    stats = PrefillStats(n_prompt_tokens=prompt.n_tokens, n_image_tokens=n_image, n_kept=n_image, pruned=use_fastv)
    start = n_past
    if use_fastv:
        _begin(ctx, prune.layer)
    try:
        n_past = _decode_pieces(ctx, mtmd_ctx, prompt, batch, n_past, not use_fastv, stats, progress)
        if use_fastv:
            with progress(f"prefill: layers >= {prune.layer} on {budget} of {n_image} image tokens"):
                t0 = time.perf_counter()
                _finish(ctx, prune, budget)
                stats.deep_ms = (time.perf_counter() - t0) * 1e3
            stats.kept = _native.get_kept(ctx)
            stats.n_kept = len(stats.kept)
            if prune.strategy == "fastv":
                stats.n_unranked = _warn_unranked(_native.get_scores(ctx), prune.layer)
    except BaseException:
        if use_fastv:
            _native.abort(ctx)
        # drop this prompt's cells; earlier turns stay valid
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, start, -1)
        raise
    return n_past, stats


def _decode_pieces(ctx, mtmd_ctx, prompt, batch, n_past, logits_last, stats, progress) -> int:
    n_images = sum(1 for p in prompt.pieces if p.chunk is not None)
    i_image = 0
    for i, piece in enumerate(prompt.pieces):
        last = i == len(prompt.pieces) - 1
        if piece.tokens is not None:
            t0 = time.perf_counter()
            n_past = batch.decode(ctx, piece.tokens, n_past, logits_last and last)
            stats.shallow_ms += (time.perf_counter() - t0) * 1e3
        else:
            i_image += 1
            with progress(f"image {i_image}/{n_images}: encoding and decoding {piece.n_tokens} tokens"):
                n_past = _decode_image(ctx, mtmd_ctx, piece, n_past, batch.n_batch, stats)
    return n_past


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
            stacklevel=4,
        )
    return n_zero


def _begin(ctx, layer: int) -> None:
    try:
        _native.begin(ctx, 0, layer)
    except NativeError as e:
        if e.code == Status.UNSUPPORTED:
            raise UnsupportedModelError(
                f"{e}: this model or context setting has no FastV support; use strategy 'none' (--strategy none)"
            ) from e
        raise


def _finish(ctx, prune: PruneConfig, budget: int) -> None:
    if prune.strategy == "fastv":
        _native.finish(ctx, budget)  # the top `budget` of layer K-1's attention
        return
    # random: scores exist only once every chunk is decoded
    scores = _native.get_scores(ctx)  # (N,)
    _native.finish_with_keep(ctx, make_pruner(prune)(scores).tolist())
