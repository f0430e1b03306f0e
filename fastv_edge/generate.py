"""Generation, layered like mlx-lm: generate_step -> stream_generate -> generate.

generate_step   samples from the context's current logits, yields the token id, and decodes
                it into the KV cache when resumed.
stream_generate prefill (FastV or stock) + generate_step + incremental detokenization;
                yields GenerationResponse objects carrying the request's statistics.
generate        joins the stream into a str.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
from llama_cpp._internals import LlamaSampler

from .config import PruneConfig, SamplingConfig
from .flops import flops_ratio
from .images import RGBImage, load_image
from .model import Model
from .prefill import PrefillStats, Progress, Prompt, TokenBatch, _no_progress, check_fits, prefill, tokenize
from .templates import render, user_message

ImageInput = str | os.PathLike | bytes | RGBImage


@dataclass
class GenerationResponse:
    """One streamed step. Statistics are per request and repeated in every step.

    text: the new text of this step ('' while a UTF-8 character is incomplete).
    token: the token id of this step.
    finish_reason: None while generating; 'stop' (end-of-generation token) or 'length'
        (max_tokens or a full context) on the last response.
    """

    text: str
    token: int
    prompt_tokens: int = 0  # text + image tokens of this prefill
    generation_tokens: int = 0
    n_image_tokens: int = 0  # N
    n_kept: int = 0  # image tokens seen by layers >= K (== N when not pruned)
    n_unranked: int = 0  # image tokens layer K-1 could not see (sliding window): ranked last
    encode_ms: float = 0.0  # vision encoder
    prefill_ms: float = 0.0  # LLM prefill, phases 1 + 2
    shallow_ms: float = 0.0  # phase 1: layers [0, K) over the whole prompt (whole prefill if stock)
    deep_ms: float = 0.0  # phase 2: layers [K, L) over the kept tokens
    ttft_ms: float = 0.0  # request start -> first token sampled (encode + prefill + sampling)
    decode_tps: float = 0.0  # generated tokens per second after the first
    flops_ratio: float = 1.0  # paper eq. 5, this prefill vs. stock (1.0 = no saving)
    finish_reason: str | None = None


@dataclass
class Cursor:
    """Where sequence 0 of the context stands: next position and KV cells in use."""

    n_past: int = 0
    n_used: int = 0
    decoded: list[int] = field(default_factory=list)  # generated tokens written to the KV cache


def token_piece(vocab, token: int, special: bool = False) -> bytes:
    """The bytes of one token (llama_token_to_piece, grown until the piece fits)."""
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n  # a negative result is the size it needs


def make_sampler(llm, sampling: SamplingConfig) -> LlamaSampler:
    """llama.cpp's sampler chain: greedy at temp 0, else top-k/top-p/min-p/temp + seeded dist.

    Args:
        llm: the llama_cpp.Llama (for n_vocab).
        sampling: the sampling settings.

    Returns:
        A LlamaSampler (llama-cpp-python's wrapper of a llama_sampler chain).
    """
    sampler = LlamaSampler()
    if sampling.repeat_penalty != 1.0:
        sampler.add_penalties(llm.n_vocab(), 64, sampling.repeat_penalty, 0.0, 0.0)
    if sampling.temp == 0.0:
        sampler.add_greedy()
        return sampler
    sampler.add_top_k(sampling.top_k)
    sampler.add_top_p(sampling.top_p, 1)
    sampler.add_min_p(sampling.min_p, 1)
    sampler.add_temp(sampling.temp)
    sampler.add_dist(sampling.seed)
    return sampler


def generate_step(model: Model, cursor: Cursor, sampler: LlamaSampler, batch: TokenBatch) -> Iterator[int]:
    """Yield tokens sampled from the context's logits; each is decoded when the caller resumes.

    Stops when the context is full. The caller decides about end-of-generation tokens and
    max_tokens by not resuming.

    Args:
        model: the loaded model.
        cursor: position state of sequence 0, advanced as tokens are decoded.
        sampler: from make_sampler().
        batch: a TokenBatch.

    Yields:
        Token ids.
    """
    while True:
        token = llama_cpp.llama_sampler_sample(sampler.sampler, model.ctx, -1)
        yield token
        if cursor.n_used >= model.n_ctx:
            return
        cursor.n_past = batch.decode(model.ctx, [token], cursor.n_past, logits_last=True)
        cursor.n_used += 1
        cursor.decoded.append(token)


def _stats_fields(model: Model, stats: PrefillStats, prune: PruneConfig) -> dict:
    ratio = 1.0
    if stats.pruned:
        ratio = flops_ratio(
            stats.n_prompt_tokens,
            stats.n_image_tokens,
            stats.n_kept,
            n_layer=model.info.n_layer,
            layer=prune.layer,
            n_embd=model.info.n_embd,
            n_ff=model.info.n_ff or 4 * model.info.n_embd,  # GGUFs without the key: the usual 4d
        )
    return dict(
        prompt_tokens=stats.n_prompt_tokens,
        n_image_tokens=stats.n_image_tokens,
        n_kept=stats.n_kept,
        n_unranked=stats.n_unranked,
        encode_ms=stats.encode_ms,
        prefill_ms=stats.prefill_ms,
        shallow_ms=stats.shallow_ms,
        deep_ms=stats.deep_ms,
        flops_ratio=ratio,
    )


def respond(
    model: Model,
    prompt: Prompt,
    cursor: Cursor,
    *,
    prune: PruneConfig,
    max_tokens: int,
    sampling: SamplingConfig,
    progress: Progress = _no_progress,
    t_start: float | None = None,
) -> Iterator[GenerationResponse]:
    """Prefill `prompt` at the cursor, then stream the answer (shared by generate and chat).

    Args:
        model: the loaded model.
        prompt: the tokenized prompt (the caller closes it).
        cursor: where the prompt starts; advanced as tokens are decoded.
        prune: pruning for this prefill.
        max_tokens: generation budget (>= 1).
        sampling: sampling settings.
        progress: progress hook for slow steps.
        t_start: request start for time-to-first-token (default: now).

    Yields:
        GenerationResponse per token; the last one has finish_reason set.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    t_start = time.perf_counter() if t_start is None else t_start
    check_fits(prompt, cursor.n_used, model.n_ctx)
    vocab = llama_cpp.llama_model_get_vocab(model.llm.model)
    with TokenBatch(model.llm.n_batch) as batch:  # Llama clamps n_batch to n_ctx
        cursor.n_past, stats = prefill(
            model.ctx,
            model.mtmd_ctx,
            prompt,
            batch,
            n_past=cursor.n_past,
            n_ubatch=llama_cpp.llama_n_ubatch(model.ctx),
            prune=prune,
            progress=progress,
        )
        cursor.n_used += prompt.n_tokens
        fields = _stats_fields(model, stats, prune)
        # invalid UTF-8 from a byte token is dropped, as llama-cpp-python does
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        sampler = make_sampler(model.llm, sampling)
        try:
            yield from _stream(model, cursor, sampler, batch, vocab, decoder, fields, max_tokens, t_start)
        finally:
            sampler.close()


def _stream(model, cursor, sampler, batch, vocab, decoder, fields, max_tokens, t_start):
    n, t_first = 0, 0.0
    steps = generate_step(model, cursor, sampler, batch)
    for token in steps:
        now = time.perf_counter()
        if n == 0:
            t_first = now
            fields["ttft_ms"] = (now - t_start) * 1e3
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            yield GenerationResponse(
                text=decoder.decode(b"", final=True), token=token, generation_tokens=n, finish_reason="stop", **fields
            )
            return
        n += 1
        fields["decode_tps"] = (n - 1) / (now - t_first) if n > 1 and now > t_first else 0.0
        text = decoder.decode(token_piece(vocab, token))
        full = n >= max_tokens or cursor.n_used >= model.n_ctx
        if full:
            text += decoder.decode(b"", final=True)
        yield GenerationResponse(
            text=text, token=token, generation_tokens=n, finish_reason="length" if full else None, **fields
        )
        if full:
            return


def build_prompt(
    model: Model, prompt: str, n_images: int, *, apply_template: bool = True, system: str | None = None
) -> str:
    """Prompt text for one user turn: images first (as media markers), then the text.

    Args:
        model: the loaded model (its chat template and media marker).
        prompt: the user's text; markers already in it are kept where they are.
        n_images: number of images of the turn.
        apply_template: wrap in the chat template (False: raw text, like a base model).
        system: optional system message.

    Returns:
        The prompt text with one marker per image.
    """
    marker = model.marker
    missing = n_images - prompt.count(marker)
    if missing < 0:
        raise ValueError(f"prompt has {prompt.count(marker)} image markers but only {n_images} images")
    if not apply_template:
        return marker * missing + ("\n" if missing else "") + prompt
    # images the prompt does not place itself go first, as their own content parts
    messages = ([{"role": "system", "content": system}] if system else []) + [
        user_message(prompt, [f"image {i + 1}" for i in range(missing)])
    ]
    return render_chat(model, messages, add_generation_prompt=True)


def render_chat(model: Model, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render messages with the model's chat template (image parts become media markers)."""
    if model.template is None:
        raise ValueError(
            f"{Path(model.info.path).name} has no chat template in its metadata and matches no preset; "
            "pass one (--chat-template NAME|FILE.jinja, template= in load()) or use a raw prompt"
        )
    llm = model.llm
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    piece = lambda tok: token_piece(vocab, tok, special=True).decode("utf-8", "replace")  # noqa: E731
    bos = piece(llm.token_bos()) if llm.token_bos() >= 0 else ""
    eos = piece(llm.token_eos()) if llm.token_eos() >= 0 else ""
    # mtmd adds BOS when the vocabulary asks for it; a second one from the template would double it
    strip = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    return render(
        model.template,
        messages,
        marker=model.marker,
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=add_generation_prompt,
        strip_bos=strip,
    )


def stream_generate(
    model: Model,
    prompt: str,
    images: Sequence[ImageInput] = (),
    *,
    prune: PruneConfig | None = None,
    max_tokens: int = 256,
    sampling: SamplingConfig | None = None,
    apply_template: bool = True,
    system: str | None = None,
    progress: Progress = _no_progress,
) -> Iterator[GenerationResponse]:
    """Answer one prompt about zero or more images, streaming.

    The context is cleared first: each call is an independent request (see ChatSession
    for multi-turn use).

    Args:
        model: from load().
        prompt: the user's text.
        images: paths, file:// URLs, data: URIs, bytes or decoded RGBImage objects.
        prune: pruning for this request (default: the model's).
        max_tokens: maximum number of generated tokens.
        sampling: sampling settings (default: greedy).
        apply_template: wrap the prompt in the chat template.
        system: optional system message.
        progress: progress hook for slow steps (the CLI prints them).

    Yields:
        GenerationResponse per generated token; the last one has finish_reason set.
    """
    prune = prune or model.prune
    prune.check_layer(model.info.n_layer)
    sampling = sampling or SamplingConfig()
    decoded = [img if isinstance(img, RGBImage) else load_image(img) for img in images]
    text = build_prompt(model, prompt, len(decoded), apply_template=apply_template, system=system)
    t_start = time.perf_counter()
    model.llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
    with tokenize(model.llm, model.mtmd_ctx, text, decoded, add_special=True) as tokens:
        yield from respond(
            model,
            tokens,
            Cursor(),
            prune=prune,
            max_tokens=max_tokens,
            sampling=sampling,
            progress=progress,
            t_start=t_start,
        )


def generate(model: Model, prompt: str, images: Sequence[ImageInput] = (), **kwargs) -> str:
    """Answer one prompt about zero or more images.

    Args:
        model: from load().
        prompt: the user's text.
        images: see stream_generate().
        **kwargs: prune, max_tokens, sampling, apply_template, system, progress.

    Returns:
        The generated text.
    """
    return "".join(r.text for r in stream_generate(model, prompt, images, **kwargs))
