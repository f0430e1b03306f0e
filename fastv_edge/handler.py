"""FastVChatHandler: a drop-in llama-cpp-python multimodal chat handler with FastV pruning.

    llm = Llama(model_path="model.gguf", n_ctx=4096,
                chat_handler=FastVChatHandler(clip_model_path="mmproj.gguf", prune=PruneConfig(drop_ratio=0.5)))
    llm.create_chat_completion(messages=[...], stream=False)

It builds on MTMDChatHandler's public pieces (image URL collection, chat template lookup)
and replaces the mtmd set-up (the handler's own `verbose` decides what mtmd prints) and the
prompt evaluation: the chunk loop runs through fastv_edge.prefill, the one orchestrator, so the
image tokens are pruned. Afterwards the Llama object is left exactly as its own evaluation
would leave it (input_ids, n_tokens, last logits row), and Llama.create_completion samples from
the prefill's logits through its "prompt fully cached" path without evaluating anything again.
The pruning statistics are in the response's usage (`fastv` key) and in `last_stats`.

Unsupported architectures are refused (UnsupportedModelError) unless strategy='none'.
"""

from __future__ import annotations

import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import llama_chat_format as lcf
from llama_cpp import llama_grammar

from .config import PruneConfig, max_threads
from .encoder import ImageEncoder
from .generate import chat_text, check_text
from .image_grid import check_images
from .image_tokens import caps_honoured
from .images import load_images
from .model import check_mmproj_pair, check_supported, open_mtmd, read_mmproj_info
from .prefill import PrefillStats, Target, check_fits, prefill
from .prompt import ImagePiece, Prompt, tokenize
from .templates import resolve_template, template_label

# create_completion arguments the handler passes through unchanged
_COMPLETION_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "stream",
    "stop",
    "seed",
    "max_tokens",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "tfs_z",
    "mirostat_mode",
    "mirostat_tau",
    "mirostat_eta",
    "model",
    "logits_processor",
    "logit_bias",
)


class FastVChatHandler(lcf.MTMDChatHandler):
    """Multimodal chat handler whose prompt evaluation prunes image tokens with FastV.

    Args:
        clip_model_path: the mmproj GGUF (checked before anything is loaded).
        prune: pruning configuration (default PruneConfig(): K=2, R=0.5, strategy 'fastv').
        template: chat template name or .jinja path for GGUFs without one (default: the
            GGUF's template, else the matching preset's).
        verbose: print the rendered prompt and llama.cpp's log, like the stock handlers.
        use_gpu: run the vision encoder on the GPU when there is one.
        embedding_cache: reuse the embeddings of an image seen before (a chat re-sends its images
            with every request): in memory for this handler and on disk (fastv_edge.embedding_cache).
    """

    def __init__(
        self,
        clip_model_path: str,
        *,
        prune: PruneConfig | None = None,
        template: str | None = None,
        verbose: bool = True,
        use_gpu: bool = True,
        embedding_cache: bool = True,
    ):
        self._mmproj = read_mmproj_info(clip_model_path)  # ModelLoadError now, not a crash in mtmd later
        super().__init__(clip_model_path, verbose=verbose, use_gpu=use_gpu)
        self.prune = prune or PruneConfig()
        self.template = template
        self.last_stats: PrefillStats | None = None  # statistics of the last prefill
        self._encoder: ImageEncoder | None = None
        self._embedding_cache = embedding_cache
        self._token_embeddings = None  # opened on the first CDPruner request

    def _init_mtmd_context(self, llama_model) -> None:
        # MTMDChatHandler's own set-up takes verbose from the Llama and lets mtmd print to
        # stderr; ours keeps this handler's verbose and routes mtmd's log like llama.cpp's
        if self.mtmd_ctx is not None:
            return
        arch = llama_model.metadata.get("general.architecture", "?")
        n_embd = llama_cpp.llama_model_n_embd(llama_model.model)
        check_mmproj_pair(arch, n_embd, llama_model.model_path, self._mmproj)  # a projector of another family
        if llama_model.n_threads > max_threads():  # the encoder gets the Llama's threads
            raise ValueError(f"the Llama has n_threads={llama_model.n_threads}; use at most {max_threads()}")
        flash_attn = llama_model.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.mtmd_ctx = open_mtmd(
            llama_model.model,
            self.clip_model_path,
            n_threads=llama_model.n_threads,
            use_gpu=self.use_gpu,
            flash_attn=flash_attn,
            verbose=self.verbose,
        )
        self._encoder = self._image_encoder(llama_model, flash_attn)

        def free() -> None:
            if self.mtmd_ctx is not None:
                self._mtmd_cpp.mtmd_free(self.mtmd_ctx)
                self.mtmd_ctx = None

        llama_model._stack.callback(free)

    def _image_encoder(self, llama_model, flash_attn: bool) -> ImageEncoder:
        fixed = not caps_honoured(self._mmproj.projector_type)
        if not self._embedding_cache:
            return ImageEncoder(self.mtmd_ctx, llama_model.model, fixed_resolution=fixed)
        from .config import RuntimeConfig
        from .embedding_cache import EmbeddingCache, EncoderKeys, preprocessing

        cache = EmbeddingCache()
        runtime = RuntimeConfig(flash_attn=flash_attn, n_gpu_layers=1 if self.use_gpu else 0)
        keys = EncoderKeys(self.clip_model_path, preprocessing(runtime, not fixed), cache.memo_dir)
        return ImageEncoder(self.mtmd_ctx, llama_model.model, cache=cache, keys=keys, fixed_resolution=fixed)

    def load_image(self, image_url: str) -> bytes:
        """Accepts file:// URLs, data: URIs, local paths and http(s) URLs (bounded in time and size)."""
        from .images import read_source

        return read_source(image_url)[0]

    def _get_chat_template(self, llama_model) -> str:
        return self._chat_template(llama_model)[0]

    def _chat_template(self, llama_model) -> tuple[str, str]:
        """(source, name for errors) of the template this handler renders with."""
        template = llama_model.metadata.get("tokenizer.chat_template") or None
        source, origin = resolve_template(template, llama_model.model_path, self.template)
        origin = f"override:{self.template}" if origin == "override" else origin
        return source, template_label(origin, llama_model.model_path)

    def _check_model(self, llama) -> None:
        if llama._logits_all:
            raise ValueError(
                "FastV yields logits for the last prompt token only; create the Llama with logits_all=False"
            )
        arch = llama.metadata.get("general.architecture", "?")
        check_supported(arch, llama_cpp.llama_model_n_layer(llama.model), self.prune)

    def _render(self, llama, messages, **template_vars) -> str:
        source, name = self._chat_template(llama)
        text = chat_text(llama, source, messages, name=name, **template_vars)
        check_text(text, "the conversation")  # a lone surrogate from the request's JSON
        if self.verbose:
            print(text, file=sys.stderr)
        return text

    def _text_features(self, llama):
        if self._token_embeddings is None:
            from .text_features import TokenEmbeddings

            self._token_embeddings = TokenEmbeddings(llama.model_path)
            llama._stack.callback(self._token_embeddings.close)
        return self._token_embeddings

    def _evaluate(self, llama, text: str, images, instruction: list[int] | None = None) -> list[int]:
        """The pruned prefill; leaves `llama` as if it had evaluated the prompt itself."""
        llama.reset()
        llama._ctx.kv_cache_clear()
        target = Target(
            llama._ctx.ctx,
            self._encoder,
            llama.n_batch,
            llama_cpp.llama_n_ubatch(llama._ctx.ctx),
            text_rows=lambda ids: self._text_features(llama).rows(ids),
        )
        with tokenize(llama, self.mtmd_ctx, text, images, add_special=True) as prompt:
            prompt.instruction = instruction
            check_fits(prompt, self.prune, 0, llama.n_ctx())
            n_past, self.last_stats = prefill(target, prompt, n_past=0, prune=self.prune)
            _sync_llama(llama, prompt, n_past)
        return llama.input_ids[: llama.n_tokens].tolist()

    def __call__(
        self,
        *,
        llama,
        messages,
        functions=None,
        function_call=None,
        tools=None,
        tool_choice=None,
        response_format=None,
        grammar=None,
        logprobs=None,
        top_logprobs=None,
        **kwargs,
    ):
        """Evaluate the conversation with FastV and complete it (the chat handler protocol).

        Args:
            llama: the Llama calling create_chat_completion.
            messages: OpenAI-style messages; image_url parts may be file:// URLs, data: URIs
                or local paths.
            **kwargs: the sampling arguments create_chat_completion passes.

        Returns:
            A chat completion dict, or an iterator of chunks when stream=True.
        """
        self._init_mtmd_context(llama)
        self._check_model(llama)
        images = load_images(self.get_image_urls(messages))  # named by URL or path, in one pixel budget
        check_images(self._mmproj.image_limit, images)
        text = self._render(
            llama, messages, functions=functions, function_call=function_call, tools=tools, tool_choice=tool_choice
        )
        words = _last_user_text(messages)
        instruction = list(llama.tokenize(words.encode("utf-8"), add_bos=False, special=False)) if words else None
        prompt = self._evaluate(llama, text, images, instruction)
        if response_format is not None and response_format.get("type") == "json_object":
            grammar = lcf._grammar_for_response_format(response_format)
        tool = _forced_tool(functions, function_call, tools, tool_choice)
        if tool is not None:
            grammar = llama_grammar.LlamaGrammar.from_json_schema(
                json.dumps(tool["function"]["parameters"]), verbose=llama.verbose
            )
        stream = kwargs.get("stream", False)
        completion = llama.create_completion(
            prompt=prompt,
            grammar=grammar,
            logprobs=top_logprobs if logprobs else None,
            **{k: kwargs[k] for k in _COMPLETION_KEYS if k in kwargs},
        )
        if tool is not None:
            result = lcf._convert_completion_to_chat_function(tool["function"]["name"], completion, stream)
        else:
            result = lcf._convert_completion_to_chat(completion, stream=stream)
        return _with_usage(result, self.last_stats) if not stream else result


def _forced_tool(functions, function_call, tools, tool_choice):
    """The tool a request forces (tool_choice or legacy function_call naming one), if any."""
    if functions is not None:
        tools = [{"type": "function", "function": f} for f in functions]
    if isinstance(function_call, dict) and "name" in function_call:
        tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
    if not isinstance(tool_choice, dict) or tools is None:
        return None
    name = tool_choice["function"]["name"]
    tool = next((t for t in tools if t["function"]["name"] == name), None)
    if tool is None:
        raise ValueError(f"Tool choice '{name}' not found in tools.")
    return tool


def _last_user_text(messages) -> str:
    """The text parts of the last user message (what CDPruner ranks image tokens against)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        parts = content or []
        return " ".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
    return ""


def usage_stats(stats: PrefillStats) -> dict:
    """The pruning statistics a chat completion carries under usage["fastv"]."""
    return {
        "strategy": stats.strategy,
        "n_image_tokens": stats.n_image_tokens,
        "n_kept": stats.n_kept,
        "n_cells": stats.n_cells,
        "encode_ms": round(stats.encode_ms, 3),
        "select_ms": round(stats.select_ms, 3),
        "prefill_ms": round(stats.prefill_ms, 3),
    }


def _with_usage(completion: dict, stats: PrefillStats | None) -> dict:
    if stats is not None:
        completion.setdefault("usage", {})["fastv"] = usage_stats(stats)
    return completion


def _sync_llama(llama, prompt: Prompt, n_past: int) -> None:
    """Set Llama's bookkeeping as its own eval() would: ids, count, last logits row."""
    pos = 0
    for piece in prompt.pieces:
        if isinstance(piece, ImagePiece):
            llama.input_ids[pos : pos + piece.n_pos] = 0  # image positions have no token id
        else:
            llama.input_ids[pos : pos + piece.n_pos] = piece.tokens
        pos += piece.n_pos
    llama.n_tokens = n_past
    llama._requires_eval = False  # the context's logits are live: generate() samples them directly
    logits = llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1)
    if not logits:
        raise RuntimeError("no logits for the last prompt token after the prefill")
    row = min(llama.n_tokens, llama.scores.shape[0]) - 1  # the last row of llama._scores
    llama.scores[row, :] = np.ctypeslib.as_array(logits, shape=(llama.n_vocab(),))
