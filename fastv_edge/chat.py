"""Multi-turn chat that reuses the KV cache: each turn decodes only its new tokens.

The KV cache of sequence 0 always holds: the rendered prompt text of every turn so far,
plus the generated tokens of each answer that were decoded. A new turn renders the whole
conversation with the chat template and decodes only the text after what is cached
(append-only) through stream_generate's public `cache` path. An image in a turn is pruned
once, by that turn's own prefill; later turns attend to the pruned cache (layers >= K never see
the dropped image tokens again; tokens selected away before the LLM were never decoded).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import llama_cpp

from .config import PruneConfig, SamplingConfig
from .generate import (
    GenerationResponse,
    ImageInput,
    PromptCache,
    check_cache,
    render_chat,
    stream_generate,
    token_piece,
)
from .images import RGBImage, load_image
from .model import Model
from .prefill import Progress, no_progress
from .templates import user_message


class ChatSession:
    """A conversation with one model, keeping its pruned KV cache between turns.

    Args:
        model: from load().
        prune: pruning for turns with images (default: the model's).
        sampling: sampling settings (default: greedy).
        system: optional system message.
        max_tokens: default answer budget per turn.
        progress: progress hook for slow steps.
    """

    def __init__(
        self,
        model: Model,
        *,
        prune: PruneConfig | None = None,
        sampling: SamplingConfig | None = None,
        system: str | None = None,
        max_tokens: int = 256,
        progress: Progress = no_progress,
    ):
        self.model = model
        self.prune = prune or model.prune
        self.prune.check_layer(model.info.n_layer)
        self.sampling = sampling or SamplingConfig()
        self.system = system
        self.max_tokens = max_tokens
        self.progress = progress
        self.last: GenerationResponse | None = None  # final response of the last turn (for /stats)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and clear the KV cache."""
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.last = None
        self._cache = PromptCache()  # empty: the first turn clears the context and adds BOS
        self._prompt_text = ""  # rendered text whose tokens are in the cache
        self._answer_start = 0  # position where the cached tokens of the last answer begin

    @property
    def n_used(self) -> int:
        """KV cells in use (text, image tokens kept or not, and decoded answers)."""
        return self._cache.n_used

    def _suffix(self, rendered: str) -> str:
        """The part of `rendered` not in the cache; drops the cached answer if it must."""
        vocab = llama_cpp.llama_model_get_vocab(self.model.llm.model)
        answer = b"".join(token_piece(vocab, t) for t in self._cache.decoded).decode("utf-8", "replace")
        cached = self._prompt_text + answer
        if rendered.startswith(cached):
            return rendered[len(cached) :]
        if not rendered.startswith(self._prompt_text):
            raise ValueError("the chat template rewrites earlier turns, so the cache cannot be reused; call reset()")
        # the template re-renders the answer differently (e.g. trims it): decode its text again
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.model.ctx), 0, self._answer_start, -1)
        self._cache.n_used -= len(self._cache.decoded)
        self._cache.n_past = self._answer_start
        self._cache.decoded = []
        return rendered[len(self._prompt_text) :]

    def send(
        self,
        text: str,
        images: Sequence[ImageInput] = (),
        *,
        max_tokens: int | None = None,
    ) -> Iterator[GenerationResponse]:
        """Add a user turn and stream the answer.

        Args:
            text: the user's message.
            images: images of this turn (paths, URLs, data: URIs, bytes or RGBImage).
            max_tokens: answer budget (default: the session's).

        Yields:
            GenerationResponse per token; the last one has finish_reason set.

        Raises:
            ContextOverflowError: the turn does not fit; nothing was decoded, history unchanged.
        """
        decoded = [img if isinstance(img, RGBImage) else load_image(img) for img in images]
        message = user_message(text, [img.name for img in decoded])
        rendered = render_chat(self.model, [*self.messages, message], add_generation_prompt=True)
        check_cache(self.model, self._cache)  # before _suffix touches the context
        suffix = rendered if self._cache.empty else self._suffix(rendered)
        stream = stream_generate(
            self.model,
            suffix,
            decoded,
            prune=self.prune,
            max_tokens=max_tokens or self.max_tokens,
            sampling=self.sampling,
            apply_template=False,
            cache=self._cache,
            instruction=text,
            progress=self.progress,
        )
        answer: list[str] = []
        try:
            for response in stream:
                if not answer:  # the prefill succeeded: this turn is now part of the cache
                    self._prompt_text = rendered
                    self._answer_start = self._cache.n_past - len(self._cache.decoded)
                answer.append(response.text)
                self.last = response
                yield response
        finally:
            self._commit(message, answer)

    def _commit(self, message: dict, answer: list[str]) -> None:
        if not answer:  # prefill failed or was interrupted: the cache is back where it was
            self._cache.decoded = []
            return
        # an interrupted decode may have written a cell the cache does not count
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.model.ctx), 0, self._cache.n_past, -1)
        self.messages += [message, {"role": "assistant", "content": "".join(answer)}]

    def ask(self, text: str, images: Sequence[ImageInput] = (), **kwargs) -> str:
        """Add a user turn and return the whole answer (see send())."""
        return "".join(r.text for r in self.send(text, images, **kwargs))
