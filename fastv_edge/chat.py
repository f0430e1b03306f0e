"""Multi-turn chat that reuses the KV cache: each turn decodes only its new tokens.

The KV cache of sequence 0 always holds: the rendered prompt text of every turn so far,
plus the generated tokens of each answer that were decoded. A new turn renders the whole
conversation with the chat template and decodes only the text after what is cached
(append-only) through stream_generate's public `cache` path. An image in a turn is pruned
once, by that turn's own prefill; later turns attend to the pruned cache (layers >= K never see
the dropped image tokens again; tokens selected away before the LLM were never decoded).

Several sessions (and generate() calls) may share one Model, whose context holds one
conversation at a time. A session keeps its messages and its decoded images, so when another
request has taken the context, its next turn prefills the whole conversation again (BOS,
every turn, every image) instead of losing it: nothing is lost, one prefill is paid. Its
images are then encoded and pruned again, and pruning depends on the prompt around them
(FastV ranks by the attention of the last prompt token, CDPruner by the instruction), so the
kept tokens can differ from the first time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import llama_cpp

from .config import PruneConfig, SamplingConfig
from .generate import (
    GenerationResponse,
    ImageInput,
    PromptCache,
    check_text,
    owns_context,
    render_chat,
    stream_generate,
    token_piece,
)
from .images import RGBImage, load_images
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
        ttft_budget: seconds to the first token of each turn with images (see stream_generate);
            `prune` then names the strategy the planner may use. Without a stored calibration the
            session measures it here, before the first turn.
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
        ttft_budget: float | None = None,
    ):
        check_text(system, "the system message")
        self.model = model
        self._family = prune  # what a TTFT budget may use (None: any strategy)
        self.prune = prune or model.prune
        self.ttft_budget = ttft_budget
        if ttft_budget is not None:
            from .budget import ensure_calibration

            ensure_calibration(model, progress)
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
        self._images: list[RGBImage] = []  # every image of the conversation, for a prefill from scratch
        self._forget_context()

    def _forget_context(self) -> None:
        self._cache = PromptCache()  # empty: the next turn clears the context, adds BOS, prefills everything
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
        ttft_budget: float | None = None,
    ) -> Iterator[GenerationResponse]:
        """Add a user turn and stream the answer.

        Args:
            text: the user's message.
            images: images of this turn (paths, URLs, data: URIs, bytes or RGBImage).
            max_tokens: answer budget (default: the session's).
            ttft_budget: this turn's TTFT budget in seconds (default: the session's; applies to turns with images).

        Yields:
            GenerationResponse per token; the last one has finish_reason set.

        Raises:
            ContextOverflowError: the turn does not fit; nothing was decoded, history unchanged.
        """
        check_text(text, "the message")
        decoded = load_images(images)  # one pixel budget for the turn
        message = user_message(text, [img.name for img in decoded])
        rendered = render_chat(self.model, [*self.messages, message], add_generation_prompt=True)
        if not self._cache.empty and not owns_context(self.model, self._cache):
            self._forget_context()  # another request took the context: prefill the conversation again
        suffix = rendered if self._cache.empty else self._suffix(rendered)
        budget = ttft_budget if ttft_budget is not None else self.ttft_budget
        budget = budget if decoded else None  # a text-only turn has no image tokens to plan
        stream = stream_generate(
            self.model,
            suffix,
            [*self._images, *decoded] if self._cache.empty else decoded,
            prune=self._family if budget is not None else self.prune,
            ttft_budget=budget,
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
            self._commit(message, decoded, answer)

    def _commit(self, message: dict, images: list[RGBImage], answer: list[str]) -> None:
        if not answer:  # prefill failed or was interrupted: the cache is back where it was
            self._cache.decoded = []
            return
        if owns_context(self.model, self._cache):
            # an interrupted decode may have written a cell the cache does not count
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.model.ctx), 0, self._cache.n_past, -1)
        self.messages += [message, {"role": "assistant", "content": "".join(answer)}]
        self._images += images

    def ask(self, text: str, images: Sequence[ImageInput] = (), **kwargs) -> str:
        """Add a user turn and return the whole answer (see send())."""
        return "".join(r.text for r in self.send(text, images, **kwargs))
