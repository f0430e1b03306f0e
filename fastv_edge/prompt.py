"""A tokenized prompt: text pieces and image pieces, in order.

An image piece is what the LLM will consume for one image: N rows of n_embd_inp floats and,
for each row, the position(s) mtmd gives it. The rows come from mtmd (the vision encoder run
on the piece's chunk, see encoder.py) or are given up front (`pseudo_image`: benchmarks feed
random rows through the same path, so both are decoded by one orchestrator, prefill.py).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from .images import RGBImage

N_POS_MROPE = 4  # M-RoPE rows carry (t, y, x, z), section-major, as mtmd writes them


@dataclass
class TextPiece:
    """Text tokens, decoded one position each."""

    tokens: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)


@dataclass
class ImagePiece:
    """One image's rows for the LLM.

    chunk: the mtmd_input_chunk (owned by the Prompt), or None when `embd` is given;
        `image_tokens` is its mtmd_image_tokens (positions are asked from mtmd itself).
    embd: (n_tokens, n_embd_inp) rows given up front (pseudo images), else None.
    grid: (nx, ny) of an M-RoPE image (positions t=p0, x=p0+i%nx, y=p0+i//nx), else None.
    n_pos: positions the image advances n_past by (max(nx, ny) with M-RoPE, else n_tokens).
    non_causal: decoded as one bidirectional block (mtmd_decode_use_non_causal, e.g. Gemma 3).
    digest: the embedding cache's name for the chunk: a digest of the decoded image's pixels
        (embedding_cache.pixel_digest), plus ':k' for its k-th chunk when mtmd tiles it; None: not cacheable.
    """

    n_tokens: int
    n_pos: int
    non_causal: bool
    name: str = "image"
    chunk: int | None = None
    embd: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    image_tokens: int | None = None
    digest: str | None = None

    @property
    def mrope(self) -> bool:
        return self.grid is not None

    def positions(self, n_past: int) -> np.ndarray:
        """The decoder positions of the rows when the image starts at n_past.

        Returns:
            (n_pos_per_embd, n_tokens) int32: one row of 1-D positions, or the 4 M-RoPE
            sections (t, y, x, z) exactly as mtmd_image_tokens_get_decoder_pos gives them.
        """
        i = np.arange(self.n_tokens)
        if self.mrope and self.image_tokens is not None:
            return _mtmd_positions(self.image_tokens, n_past, self.n_tokens)
        if not self.mrope:
            return (n_past + i)[None, :].astype(np.int32)  # (1, n_tokens)
        nx = self.grid[0]
        t = np.full(self.n_tokens, n_past)
        return np.stack([t, n_past + i // nx, n_past + i % nx, np.zeros_like(i)]).astype(np.int32)  # (4, n_tokens)


def _mtmd_positions(image_tokens, n_past: int, n_tokens: int) -> np.ndarray:
    pos = np.empty((N_POS_MROPE, n_tokens), dtype=np.int32)  # (4, n_tokens): t, y, x, z
    for i in range(n_tokens):
        p = mtmd.mtmd_image_tokens_get_decoder_pos(image_tokens, n_past, i)
        pos[:, i] = (p.t, p.y, p.x, p.z)
    return pos


Piece = TextPiece | ImagePiece


class Prompt:
    """A tokenized prompt. Owns its mtmd chunks; close() frees them (or use `with`)."""

    def __init__(self, pieces: list[Piece], chunks=None, instruction: list[int] | None = None):
        self.pieces = pieces
        self._chunks = chunks
        self.instruction = instruction  # the user's own words as tokens (CDPruner's relevance), if known

    @property
    def n_tokens(self) -> int:
        """KV cells the whole prompt needs when nothing is pruned."""
        return sum(p.n_tokens for p in self.pieces)

    @property
    def images(self) -> list[ImagePiece]:
        return [p for p in self.pieces if isinstance(p, ImagePiece)]

    @property
    def n_image_tokens(self) -> int:
        """N: tokens coming from images."""
        return sum(p.n_tokens for p in self.images)

    @property
    def text_tokens(self) -> list[int]:
        """All text tokens in order (images left out)."""
        return [t for p in self.pieces if isinstance(p, TextPiece) for t in p.tokens]

    @property
    def instruction_tokens(self) -> list[int]:
        """The tokens CDPruner ranks image tokens against: the user's instruction when the caller
        gave it, else the text after the last image (the question, plus any template tail)."""
        if self.instruction:
            return self.instruction
        tail: list[int] = []
        for piece in reversed(self.pieces):
            if isinstance(piece, ImagePiece):
                break
            tail = piece.tokens + tail
        return tail or self.text_tokens

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
        return Prompt([TextPiece(list(tokens))])
    chunks = mtmd.mtmd_input_chunks_init()
    if not chunks:
        raise MemoryError("mtmd_input_chunks_init failed")
    prompt = Prompt([], chunks)
    try:
        digests = [_digest(img) for img in images]
        _tokenize_into(mtmd_ctx, chunks, text, images, digests, add_special)
        prompt.pieces = _pieces(mtmd_ctx, chunks, dict(zip(digests, (img.name for img in images), strict=True)))
    except BaseException:
        prompt.close()
        raise
    return prompt


def _tokenize_into(mtmd_ctx, chunks, text: str, images: list[RGBImage], digests: list[str], add_special: bool):
    bitmaps = []
    try:
        for img, digest in zip(images, digests, strict=True):
            buf = (ctypes.c_uint8 * len(img.data)).from_buffer_copy(img.data)  # (ny, nx, 3) RGB
            bitmap = mtmd.mtmd_bitmap_init(img.nx, img.ny, buf)
            if not bitmap:
                raise ValueError(f"{img.name}: mtmd could not take a {img.nx}x{img.ny} image")
            bitmaps.append(bitmap)
            mtmd.mtmd_bitmap_set_id(bitmap, digest.encode())  # mtmd copies it to every chunk of the image
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


def _digest(img: RGBImage) -> str:
    from .embedding_cache import pixel_digest

    return pixel_digest(img.nx, img.ny, img.data)


def _pieces(mtmd_ctx, chunks, names: dict[str, str]) -> list[Piece]:
    """Pieces of the chunks; `names` maps an image's digest (its bitmap id) to its name."""
    pieces: list[Piece] = []
    mrope = mtmd.mtmd_decode_use_mrope(mtmd_ctx)
    seen: dict[str, int] = {}  # chunks so far per image digest (tiles of one image share it)
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        kind = mtmd.mtmd_input_chunk_get_type(chunk)
        if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            tokens = [ptr[j] for j in range(n.value)]
            if any(t < 0 for t in tokens):  # mtmd looked up a token the vocabulary does not have
                raise ValueError(
                    "mtmd put an unknown token (-1) in the text around an image: the text model's vocabulary lacks "
                    "the image tokens its mmproj's projector uses; use the text model made for this mmproj"
                )
            if tokens:
                pieces.append(TextPiece(tokens))
        elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            image_tokens = mtmd.mtmd_input_chunk_get_tokens_image(chunk)
            digest = (mtmd.mtmd_input_chunk_get_id(chunk) or b"").decode()
            k = seen[digest] = seen.get(digest, -1) + 1
            grid = None
            if mrope:
                grid = (mtmd.mtmd_image_tokens_get_nx(image_tokens), mtmd.mtmd_image_tokens_get_ny(image_tokens))
            pieces.append(
                ImagePiece(
                    n_tokens=mtmd.mtmd_input_chunk_get_n_tokens(chunk),
                    n_pos=mtmd.mtmd_input_chunk_get_n_pos(chunk),
                    non_causal=bool(mtmd.mtmd_decode_use_non_causal(mtmd_ctx, chunk)),
                    name=names.get(digest, "image"),
                    chunk=chunk,
                    grid=grid,
                    image_tokens=image_tokens,
                    digest=f"{digest}:{k}" if digest in names else None,
                )
            )
        else:
            raise ValueError("audio input is not supported")
    return pieces


def pseudo_image(model, n_tokens: int, seed: int, *, name: str = "pseudo-image") -> ImagePiece:
    """N rows that stand in for a projected image when a model has no mmproj (benchmarks).

    The rows are the input embeddings of N seeded random vocabulary tokens, so their scale
    matches what the LLM sees for text (x sqrt(n_embd) for Gemma, which scales token input
    only). Positions and the causal rule follow mtmd for the architecture: a square-ish
    M-RoPE grid for qwen2vl/qwen3vl, one non-causal block for gemma3.

    Args:
        model: a loaded fastv_edge Model (its GGUF, architecture and llama model).
        n_tokens: N.
        seed: seeds the token draw.
        name: shown in statistics.

    Returns:
        An ImagePiece with `embd` set.
    """
    from .text_features import TokenEmbeddings

    if n_tokens < 1:
        raise ValueError(f"a pseudo image needs at least 1 row, got {n_tokens}")
    arch = model.info.architecture
    rng = np.random.default_rng([seed, 12])
    ids = rng.integers(0, model.llm.n_vocab(), n_tokens)
    with TokenEmbeddings(model.info.path) as table:
        rows = table.rows(ids, scaled=True)  # (N, n_embd), x sqrt(n_embd) where the model scales token input
    n_embd_inp = llama_cpp.llama_model_n_embd_inp(model.llm.model)
    if n_embd_inp != rows.shape[1]:  # deepstack inputs (qwen3vl): the extra slices are zeros
        rows = np.pad(rows, ((0, 0), (0, n_embd_inp - rows.shape[1])))
    grid = None
    n_pos = n_tokens
    if llama_cpp.llama_model_rope_type(model.llm.model) in (llama_cpp.LLAMA_ROPE_TYPE_MROPE, _ROPE_TYPE_IMROPE):
        nx = int(np.ceil(np.sqrt(n_tokens)))
        grid = (nx, -(-n_tokens // nx))
        n_pos = max(grid)
    embd = np.ascontiguousarray(rows, dtype=np.float32)  # (N, n_embd_inp)
    return ImagePiece(n_tokens, n_pos, non_causal=arch == "gemma3", name=name, embd=embd, grid=grid)


_ROPE_TYPE_IMROPE = getattr(llama_cpp, "LLAMA_ROPE_TYPE_IMROPE", -1)
