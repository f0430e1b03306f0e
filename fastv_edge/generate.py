"""Generation, layered like mlx-lm: generate_step -> stream_generate -> generate.

generate_step   samples from the context's current logits, yields the token id, and decodes
                it into the KV cache when resumed.
stream_generate prefill (prefill.prefill: stock, FastV or pre-LLM selection) + generate_step +
                incremental detokenization; yields GenerationResponse objects carrying the
                request's PrefillStats. With a PromptCache it continues a conversation already
                in the context (mlx-lm's prompt_cache); ChatSession is built on that.
generate        joins the stream into a str.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
from llama_cpp._internals import LlamaSampler

from .config import PruneConfig, SamplingConfig
from .decode import TokenBatch
from .flops import flops_ratio
from .image_grid import check_images
from .images import RGBImage, load_images
from .model import Model, check_supported
from .prefill import Progress, check_fits, no_progress, prefill
from .prompt import Prompt, tokenize
from .response import GenerationResponse, PrefillStats
from .templates import render, template_label, user_message

ImageInput = str | os.PathLike | bytes | RGBImage


@dataclass
class PromptCache:
    """A conversation's state in a model's context: what stream_generate continues from.

    make_prompt_cache(model) gives an empty one; each stream_generate(..., cache=c) appends its
    prompt and answer. A model's context holds one conversation at a time: a request with
    another cache (or none) takes the context over, and continuing this one then raises
    (ChatSession handles that by prefilling its conversation again), as does resuming an
    answer's stream after another request ran in between.
    """

    n_past: int = 0  # next position
    n_used: int = 0  # KV cells in use
    decoded: list[int] = field(default_factory=list)  # answer tokens of the last request written to the cache

    @property
    def empty(self) -> bool:
        return self.n_used == 0


def make_prompt_cache(model: Model) -> PromptCache:
    """An empty PromptCache for `model` (see stream_generate)."""
    return PromptCache()


def owns_context(model: Model, cache: PromptCache) -> bool:
    """True when `cache` is the conversation in the model's context (the last request's)."""
    return getattr(model, "_cache_owner", None) is cache


def check_cache(model: Model, cache: PromptCache) -> None:
    """Raise ValueError when `cache` holds a conversation whose cells another request replaced."""
    if not cache.empty and not owns_context(model, cache):
        raise ValueError(
            "this conversation's KV cache was replaced by another request on the same model; "
            "start it over (ChatSession.reset()) or give each conversation its own model"
        )


def _claim(model: Model, cache: PromptCache) -> None:
    """Make `cache` the conversation in the model's context (an empty one clears the context)."""
    check_cache(model, cache)
    if cache.empty:
        model.llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
    model._cache_owner = cache


def check_text(text: str | None, what: str) -> None:
    """Raise ValueError when `text` cannot be encoded as UTF-8, naming what it is and where.

    Python keeps undecodable input bytes as lone surrogates (a command-line argument in another
    encoding, JSON's "\\ud800"); the tokenizer's encode then failed with 'surrogates not allowed'.
    """
    if text is None:
        return
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        char = ord(text[e.start])
        byte = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"a lone surrogate U+{char:04X}"
        raise ValueError(
            f"{what} is not valid UTF-8 text: {byte} at character {e.start} (is the input in another encoding?)"
        ) from None


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


def generate_step(model: Model, cache: PromptCache, sampler: LlamaSampler, batch: TokenBatch) -> Iterator[int]:
    """Yield tokens sampled from the context's logits; each is decoded when the caller resumes.

    Stops when the context is full. The caller decides about end-of-generation tokens and
    max_tokens by not resuming.

    Args:
        model: the loaded model.
        cache: the conversation's state, advanced as tokens are decoded.
        sampler: from make_sampler().
        batch: a TokenBatch.

    Yields:
        Token ids.
    """
    while True:
        token = llama_cpp.llama_sampler_sample(sampler.sampler, model.ctx, -1)
        yield token
        if cache.n_used >= model.n_ctx:
            return
        if not owns_context(model, cache):  # while the caller held the token: its cells are another's now
            raise ValueError(
                "another request on the same model ran while this answer was streaming and took its context; "
                "finish one stream before starting the next (a ChatSession then prefills its conversation again)"
            )
        cache.n_past = batch.decode(model.ctx, [token], cache.n_past, logits_last=True)
        cache.n_used += 1
        cache.decoded.append(token)


def _flops_ratio(model: Model, stats: PrefillStats) -> float:
    if stats.n_kept == stats.n_image_tokens:
        return 1.0
    return flops_ratio(
        stats.n_prompt_tokens,
        stats.n_image_tokens,
        stats.n_kept,
        n_layer=model.info.n_layer,
        layer=stats.layer,  # 0 when only a pre-LLM selection ran
        n_embd=model.info.n_embd,
        n_ff=model.info.n_ff or 4 * model.info.n_embd,  # GGUFs without the key: the usual 4d
        n_entered=stats.n_cells,  # text + the image rows that entered the LLM
    )


def _respond(
    model: Model,
    prompt: Prompt,
    cache: PromptCache,
    *,
    prune: PruneConfig,
    max_tokens: int,
    sampling: SamplingConfig,
    progress: Progress,
    t_start: float,
    plan=None,
) -> Iterator[GenerationResponse]:
    check_fits(prompt, prune, cache.n_used, model.n_ctx)
    vocab = llama_cpp.llama_model_get_vocab(model.llm.model)
    cache.n_past, stats = prefill(model.target, prompt, n_past=cache.n_past, prune=prune, progress=progress)
    cache.n_used += stats.n_cells
    cache.decoded = []
    # invalid UTF-8 from a byte token is dropped, as llama-cpp-python does
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    sampler = make_sampler(model.llm, sampling)
    try:
        with TokenBatch(model.llm.n_batch) as batch:  # Llama clamps n_batch to n_ctx
            steps = generate_step(model, cache, sampler, batch)
            yield from _stream(model, cache, steps, vocab, decoder, stats, max_tokens, t_start, plan)
    finally:
        sampler.close()


def _stream(model, cache, steps, vocab, decoder, stats, max_tokens, t_start, plan=None):
    n, t_first = 0, 0.0
    step = dict(stats=stats, flops_ratio=_flops_ratio(model, stats), plan=plan)
    for token in steps:
        now = time.perf_counter()
        if n == 0:
            t_first = now
            step["ttft_ms"] = (now - t_start) * 1e3
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            yield GenerationResponse(
                text=decoder.decode(b"", final=True), token=token, generation_tokens=n, finish_reason="stop", **step
            )
            return
        n += 1
        step["decode_tps"] = (n - 1) / (now - t_first) if n > 1 and now > t_first else 0.0
        text = decoder.decode(token_piece(vocab, token))
        full = n >= max_tokens or cache.n_used >= model.n_ctx
        if full:
            text += decoder.decode(b"", final=True)
        yield GenerationResponse(
            text=text, token=token, generation_tokens=n, finish_reason="length" if full else None, **step
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
    name = template_label(model.template_origin, model.info.path)
    return chat_text(model.llm, model.template, messages, add_generation_prompt=add_generation_prompt, name=name)


def chat_text(
    llm,
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    name: str = "the chat template",
    **template_vars,
) -> str:
    """Render messages with `template` for the llama_cpp.Llama `llm` (its BOS/EOS texts, mtmd's marker).

    Args:
        llm: the llama_cpp.Llama whose vocabulary gives BOS and EOS.
        template: Jinja source.
        messages: OpenAI-style messages.
        add_generation_prompt: end with the assistant header.
        name: what errors call the template (templates.template_label).
        **template_vars: further template variables (tools, functions, ...).

    Returns:
        The prompt text.
    """
    import llama_cpp.mtmd_cpp as mtmd

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    piece = lambda tok: token_piece(vocab, tok, special=True).decode("utf-8", "replace")  # noqa: E731
    bos = piece(llm.token_bos()) if llm.token_bos() >= 0 else ""
    eos = piece(llm.token_eos()) if llm.token_eos() >= 0 else ""
    # mtmd adds BOS when the vocabulary asks for it; a second one from the template would double it
    strip = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    return render(
        template,
        messages,
        marker=mtmd.mtmd_default_marker().decode("utf-8"),
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=add_generation_prompt,
        strip_bos=strip,
        name=name,
        **template_vars,
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
    cache: PromptCache | None = None,
    instruction: str | None = None,
    progress: Progress = no_progress,
    ttft_budget: float | None = None,
) -> Iterator[GenerationResponse]:
    """Answer one prompt about zero or more images, streaming.

    Args:
        model: from load().
        prompt: the user's text (with apply_template=False: the raw text to decode).
        images: paths, file:// URLs, data: URIs, bytes or decoded RGBImage objects.
        prune: pruning for this request (default: the model's).
        max_tokens: maximum number of generated tokens (>= 1).
        sampling: sampling settings (default: greedy).
        apply_template: wrap the prompt in the chat template.
        system: optional system message.
        cache: continue this conversation (its prompt and answers stay in the context, the new
            prompt is appended, BOS only when it is empty); None: an independent request on a
            cleared context.
        instruction: the text CDPruner ranks image tokens against (default: `prompt` without
            its image markers).
        progress: progress hook for slow steps (the CLI prints them).
        ttft_budget: seconds to the first token: the planner (fastv_edge.planner) picks the image-token
            cap and the pruning that keep the most image tokens within it, from this machine's
            calibration (measured and stored first when there is none). `prune` then only names the
            strategy it may use (None: any); each response's `plan` holds the plan and its prediction.

    Yields:
        GenerationResponse per generated token; the last one has finish_reason set.

    Raises:
        planner.BudgetTooSmallError: (a ValueError) no plan fits the budget; it names the smallest time.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    for text, what in ((prompt, "the prompt"), (system, "the system message"), (instruction, "the instruction")):
        check_text(text, what)
    family, prune = prune, prune or model.prune
    check_supported(model.info.architecture, model.info.n_layer, prune)
    sampling = sampling or SamplingConfig()
    decoded = load_images(images)  # one pixel budget for the request
    check_images(model.mmproj.image_limit if model.mmproj else None, decoded)
    text = build_prompt(model, prompt, len(decoded), apply_template=apply_template, system=system)
    cache = cache if cache is not None else PromptCache()
    plan, cap = None, nullcontext()
    if ttft_budget is not None:
        from . import budget

        cost = budget.calibration_for(model, cache.empty, progress)  # before the clock: it may take a minute
        t_start = time.perf_counter()  # the planning is part of the wait
        plan, prune = budget.plan_request(
            model, decoded, text, ttft_budget, cost, family, n_past=cache.n_used, add_bos=cache.empty
        )
        cap = budget.image_cap(model, plan.cap)
    else:
        t_start = time.perf_counter()
    _claim(model, cache)
    with cap, tokenize(model.llm, model.mtmd_ctx, text, decoded, add_special=cache.empty) as tokens:
        words = (instruction if instruction is not None else prompt).replace(model.marker, " ").strip()
        tokens.instruction = list(model.llm.tokenize(words.encode("utf-8"), add_bos=False, special=False))
        responses = _respond(
            model,
            tokens,
            cache,
            prune=prune,
            max_tokens=max_tokens,
            sampling=sampling,
            progress=progress,
            t_start=t_start,
            plan=plan,
        )
        for i, response in enumerate(responses):
            if i == 0 and plan is not None:
                budget.observe(model, plan, response.ttft_ms)  # the next plan learns how fast the machine runs now
            yield response


def generate(model: Model, prompt: str, images: Sequence[ImageInput] = (), **kwargs) -> str:
    """Answer one prompt about zero or more images.

    Args:
        model: from load().
        prompt: the user's text.
        images: see stream_generate().
        **kwargs: prune, max_tokens, sampling, apply_template, system, cache, instruction, progress,
            ttft_budget.

    Returns:
        The generated text.
    """
    return "".join(r.text for r in stream_generate(model, prompt, images, **kwargs))
