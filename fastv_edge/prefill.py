"""The one prompt evaluation every entry point calls: stock, FastV, rows selected first, or both.

    1. encode  every image: rows = encoder.encode(piece)      (mtmd's vision encoder, or given rows)
    2. select  pre-LLM stage (divprune / dart / cdpruner / random at K=0, or a two-stage `pre`):
               which rows enter the LLM, B1 of N, shared across images by token count
    3. decode  the pieces in order; text with llama_decode; an image
                   every row kept -> mtmd_helper_decode_image_chunk(rows), exactly mtmd's decode
                   a subset       -> decode.decode_rows(rows[keep], positions[:, keep]): kept rows keep
                                     their positions, the text after continues where the whole image ends
    4. FastV   in-LLM stage (fastv / random at layer K >= 1): llama_fastv_begin before step 3 (graphs
               stop after layer K-1), then llama_fastv_finish(B2) ranks the decoded image rows by
               layer K-1 attention and runs layers >= K on the kept ones ('random' draws them).
    The last prompt token's logits are then in the context, as after any decode.

On any error the FastV state is aborted and the cells this prefill wrote are removed, so the
context is exactly as before the call (earlier turns of a chat stay valid). A recurrent or hybrid
model (lfm2, qwen35, ...) cannot take part of a prompt out of its recurrent state, so its state
before the prompt is saved (llama_state_seq_*_ext, partial: the recurrent part only) and put back.
Callers: generate.stream_generate (API, CLI, ChatSession), handler.FastVChatHandler, bench.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from . import _native
from .config import PruneConfig
from .decode import TokenBatch, decode_rows
from .encoder import Encoded, ImageEncoder
from .errors import ContextOverflowError, NativeError, Status, UnsupportedModelError
from .prompt import ImagePiece, Prompt, TextPiece
from .pruning import select_random, stage_budgets
from .response import ImageStats, PrefillStats

Progress = Callable[[str], AbstractContextManager]

# Architectures whose graph takes token ids only: llama.cpp aborts on embedding rows
# (src/models/granite-switch.cpp GGML_ASSERT(ubatch.token)), so images are refused before C sees them.
NO_EMBEDDING_INPUT = ("graniteswitch",)


def no_progress(_message: str) -> AbstractContextManager:
    """The default progress hook: does nothing."""
    return nullcontext()


_NO_CALLBACK = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer


@dataclass
class Target:
    """Where a prefill decodes: a llama context, its batch sizes, the image encoder, and the
    text-feature reader pre-LLM selection needs (CDPruner: token ids -> input embedding rows)."""

    ctx: object  # llama_context pointer
    encoder: ImageEncoder | None
    n_batch: int
    n_ubatch: int
    seq_id: int = 0
    text_rows: Callable[[list[int]], np.ndarray] | None = None

    @property
    def mtmd_ctx(self):
        return self.encoder.mtmd_ctx if self.encoder is not None else None


def prompt_cells(prompt: Prompt, prune: PruneConfig) -> int:
    """KV cells the prompt will occupy: its text plus the image rows that enter the LLM (B1).

    Raises:
        ValueError: a budget larger than the prompt's image tokens.
    """
    n_image = prompt.n_image_tokens
    return prompt.n_tokens - n_image + stage_budgets(prune, n_image)[0]


def check_fits(prompt: Prompt, prune: PruneConfig, n_used: int, n_ctx: int) -> None:
    """Raise ContextOverflowError unless the prompt's cells fit in the context's free ones."""
    n_cells = prompt_cells(prompt, prune)
    if n_used + n_cells > n_ctx:
        n_img = prompt.n_image_tokens
        n_text = prompt.n_tokens - n_img
        raise ContextOverflowError(
            f"prompt needs {n_cells} KV cells ({n_text} text + {n_cells - n_text} image) but only "
            f"{n_ctx - n_used} of the context's {n_ctx} are free; raise n_ctx (-c), prune before the LLM "
            "(--strategy divprune -k 0 --keep N) or shorten the prompt"
        )


def _check_decodable(prompt: Prompt) -> None:
    if not prompt.pieces or not isinstance(prompt.pieces[-1], TextPiece):
        raise ValueError("the prompt must end with text after its last image (the answer starts from a text token)")


def _check_embedding_input(target: Target) -> None:
    model = llama_cpp.llama_get_model(target.ctx)
    buf = llama_cpp.ctypes.create_string_buffer(64)
    llama_cpp.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf))
    arch = buf.value.decode("utf-8", "replace")
    if arch in NO_EMBEDDING_INPUT:
        raise UnsupportedModelError(
            f"llama.cpp cannot decode image embeddings on architecture {arch!r} (its graph takes token ids only); "
            "use a vision model, or send text only"
        )


@dataclass
class _Image:
    """One image through the stages: its rows and which of them enter the LLM."""

    piece: ImagePiece
    offset: int  # index of its first token among all N image tokens of the prompt
    encoded: Encoded | None = None
    keep: np.ndarray | None = None  # (B1_i,) ascending row indices; None: every row


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
        prune: strategy, layer K and budgets; 'none' or an image-less prompt takes the stock path.
        progress: progress(message) -> context manager wrapped around slow steps.

    Returns:
        (next position, PrefillStats). The last prompt token's logits are in the context.

    Raises:
        ValueError: bad budgets for this prompt, a prompt not ending with text, an image block
            that cannot be decoded; nothing was decoded then.
    """
    _check_decodable(prompt)
    n_image = prompt.n_image_tokens
    if n_image:
        _check_embedding_input(target)
    b1, b2 = stage_budgets(prune, n_image)  # budgets larger than N fail here, before C
    in_llm = prune.in_llm and n_image > 0
    stats = PrefillStats(
        strategy=prune.describe() if n_image else "none (no image)",
        n_prompt_tokens=prompt.n_tokens,
        n_image_tokens=n_image,
        n_kept=n_image,
        pruned=in_llm,
        layer=prune.layer if in_llm else 0,
    )
    images, offset = [], 0
    for piece in prompt.images:
        images.append(_Image(piece, offset))
        offset += piece.n_tokens
    _encode(target, images, stats, progress)
    if prune.pre_stage is not None and n_image:
        _select(target, prompt, prune, images, stats)
    _check_blocks(images, target.n_ubatch)
    start = n_past
    checkpoint = _recurrent_checkpoint(target, start)
    if in_llm:
        _begin(target, prune.layer)
    try:
        n_past = _decode_pieces(target, prompt, images, n_past, not in_llm, stats)
        if in_llm:
            with progress(f"prefill: layers >= {prune.layer} on {b2} of {b1} image tokens"):
                _finish(target, prune, b2, images, stats)
    except BaseException:
        if in_llm:
            _native.abort(target.ctx)
        _remove_prompt(target, start, checkpoint)
        raise
    n_text = prompt.n_tokens - n_image
    stats.n_cells = n_text + sum(img.n_decoded for img in stats.images)
    return n_past, stats


def _recurrent_checkpoint(target: Target, n_past: int):
    """The sequence's recurrent state before this prompt, on models whose memory cannot cut its tail.

    llama_memory_seq_rm(seq, n_past, -1) on a recurrent state that absorbed tokens >= n_past fails
    without changing anything (no per-token snapshots), and a hybrid model then keeps the prompt's
    attention cells too. Saved only when there is something before the prompt to keep.
    """
    model = llama_cpp.llama_get_model(target.ctx)
    if n_past == 0 or not (llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model)):
        return None
    flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY  # the recurrent state, not the attention cells
    size = llama_cpp.llama_state_seq_get_size_ext(target.ctx, target.seq_id, flags)
    buf = (llama_cpp.ctypes.c_uint8 * max(size, 1))()
    if size == 0 or llama_cpp.llama_state_seq_get_data_ext(target.ctx, buf, size, target.seq_id, flags) != size:
        raise NativeError("llama_state_seq_get_data_ext", 0, "could not save the recurrent state before the prompt")
    return buf


def _remove_prompt(target: Target, start: int, checkpoint) -> None:
    """Take this prompt's cells (positions >= start) out of the sequence, recurrent state included."""
    memory = llama_cpp.llama_get_memory(target.ctx)
    if checkpoint is not None:
        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        llama_cpp.llama_state_seq_set_data_ext(target.ctx, checkpoint, len(checkpoint), target.seq_id, flags)
    if not llama_cpp.llama_memory_seq_rm(memory, target.seq_id, start, -1):  # this prompt's cells, nothing else
        llama_cpp.llama_memory_seq_rm(memory, target.seq_id, -1, -1)  # never leave a half-decoded prompt
        raise NativeError(
            "llama_memory_seq_rm",
            0,
            "the failed prompt could not be taken out of the memory; the sequence was "
            "cleared: start the conversation over (ChatSession.reset())",
        )


def _encode(target: Target, images: list[_Image], stats: PrefillStats, progress: Progress) -> None:
    for k, img in enumerate(images, 1):
        piece = img.piece
        if piece.embd is not None:  # a pseudo image: its rows are given
            img.encoded = Encoded(piece.embd, 0.0)
            continue
        if target.encoder is None:
            raise ValueError("this model was loaded without an mmproj; it cannot read images (pass --mmproj)")
        with progress(f"image {k}/{len(images)}: encoding {piece.n_tokens} tokens"):
            img.encoded = target.encoder.encode(piece)
        stats.encode_ms += img.encoded.encode_ms


def _select(target: Target, prompt: Prompt, prune: PruneConfig, images: list[_Image], stats: PrefillStats) -> None:
    from .selection import select_stage

    stage = prune.pre_stage
    t0 = time.perf_counter()
    text_embd = None
    if stage.strategy == "cdpruner":
        if target.text_rows is None:
            raise ValueError("cdpruner needs the model's token embeddings (text features); none were given")
        text_embd = target.text_rows(prompt.instruction_tokens)  # (T, n_embd)
    keeps = select_stage(stage, [img.encoded.embd for img in images], text_embd=text_embd)
    for img, keep in zip(images, keeps, strict=True):
        img.keep = None if len(keep) == img.piece.n_tokens else keep
    stats.select_ms += (time.perf_counter() - t0) * 1e3
    stats.kept = _decoded_indices(images)
    stats.n_kept = len(stats.kept)


def _decoded_indices(images: list[_Image]) -> list[int]:
    """Indices, among all N image tokens, of the rows that enter the LLM, ascending."""
    out = []
    for img in images:
        rows = np.arange(img.piece.n_tokens) if img.keep is None else img.keep
        out.extend((img.offset + rows).tolist())
    return out


def _check_blocks(images: list[_Image], n_ubatch: int) -> None:
    for img in images:
        n = img.piece.n_tokens if img.keep is None else len(img.keep)
        # a non-causal image block (Gemma 3) must fit one ubatch, else llama.cpp aborts
        if img.piece.non_causal and n > n_ubatch:
            raise ValueError(
                f"{img.piece.name} decodes {n} tokens as one non-causal block but n_ubatch is {n_ubatch}; "
                f"raise n_ubatch (-ub) to at least {n}"
            )


def _decode_pieces(target: Target, prompt: Prompt, images: list[_Image], n_past: int, logits_last: bool, stats):
    by_piece = {id(img.piece): img for img in images}
    with TokenBatch(target.n_batch, target.seq_id) as batch:
        for i, piece in enumerate(prompt.pieces):
            t0 = time.perf_counter()
            if isinstance(piece, TextPiece):
                last = i == len(prompt.pieces) - 1
                n_past = batch.decode(target.ctx, piece.tokens, n_past, logits_last and last)
            else:
                n_past = _decode_image(target, by_piece[id(piece)], n_past, stats)
            stats.shallow_ms += (time.perf_counter() - t0) * 1e3
    return n_past


def _decode_image(target: Target, img: _Image, n_past: int, stats: PrefillStats) -> int:
    piece, embd, keep = img.piece, img.encoded.embd, img.keep
    if keep is None and piece.chunk is not None:
        _mtmd_decode(target, piece, embd, n_past)
    else:
        rows = embd if keep is None else embd[keep]  # (n_decoded, n_embd_inp)
        positions = piece.positions(n_past)
        positions = positions if keep is None else positions[:, keep]  # (n_pos_per_embd, n_decoded)
        decode_rows(
            target.ctx, rows, positions, non_causal=piece.non_causal, n_batch=target.n_batch, seq_id=target.seq_id
        )
    n_decoded = piece.n_tokens if keep is None else len(keep)
    enc = img.encoded
    stats.images.append(
        ImageStats(piece.name, piece.n_tokens, enc.grid or piece.grid, n_decoded, enc.encode_ms, enc.cached)
    )
    return n_past + piece.n_pos  # kept rows keep their positions: the text goes on after the whole image


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
                f"{e}: this model or context setting has no FastV support; select image tokens before the LLM "
                "only (--strategy divprune|dart|cdpruner|random with -k 0, no --pre) or use --strategy none"
            ) from e
        raise


def _finish(target: Target, prune: PruneConfig, budget: int, images: list[_Image], stats: PrefillStats) -> None:
    decoded = _decoded_indices(images)  # the prunable rows C recorded, in prompt order
    t0 = time.perf_counter()
    if prune.strategy == "random":
        keep = select_random(len(decoded), budget, prune.seed).tolist()
        stats.select_ms += (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        _native.finish_with_keep(target.ctx, keep)
    else:
        _native.finish(target.ctx, budget)  # the top `budget` of layer K-1's attention
    stats.deep_ms = (time.perf_counter() - t0) * 1e3
    stats.kept = [decoded[i] for i in _native.get_kept(target.ctx)]
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
