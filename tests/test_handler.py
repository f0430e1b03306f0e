"""FastVChatHandler through llama-cpp-python's create_chat_completion (stream and not)."""

import base64

import numpy as np
import pytest
from api_helpers import needs_fastv

import fastv_edge as fe

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def llm(tiny):
    from llama_cpp import Llama

    llm = Llama(str(tiny.llama_path), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    yield llm
    llm.close()


def handler(tiny, **prune):
    return fe.FastVChatHandler(clip_model_path=str(tiny.mmproj_path), prune=fe.PruneConfig(**prune), verbose=False)


def ask(llm, chat_handler, url, stream=False, max_tokens=6):
    llm.chat_handler = chat_handler
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is in the image?"},
            ],
        }
    ]
    return llm.create_chat_completion(
        messages=messages, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0, stream=stream
    )


def stock_handler(tiny):
    from llama_cpp.llama_chat_format import MTMDChatHandler

    class JoinedContent(MTMDChatHandler):  # SmolLM2's template prints string content
        def _get_template_messages(self, messages, marker):
            out = super()._get_template_messages(messages, marker)
            return [dict(m, content="".join(p["text"] for p in m["content"])) for m in out]

    return JoinedContent(clip_model_path=str(tiny.mmproj_path), verbose=False)


def content(response) -> str:
    return response["choices"][0]["message"]["content"]


def test_non_stream_response_is_openai_shaped(llm, tiny, photos):
    out = ask(llm, handler(tiny, strategy="none"), photos["astronaut"].as_uri())
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    assert out["usage"]["prompt_tokens"] > 64 and out["usage"]["completion_tokens"] >= 1


def test_stream_gives_the_same_text(llm, tiny, photos):
    h = handler(tiny, strategy="none")
    chunks = list(ask(llm, h, photos["astronaut"].as_uri(), stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == content(ask(llm, h, photos["astronaut"].as_uri()))


def test_strategy_none_matches_the_stock_handler(llm, tiny, photos):
    url = photos["chelsea"].as_uri()
    assert content(ask(llm, handler(tiny, strategy="none"), url)) == content(ask(llm, stock_handler(tiny), url))


@needs_fastv
def test_drop_ratio_zero_matches_the_stock_handler(llm, tiny, photos):
    url = photos["chelsea"].as_uri()
    assert content(ask(llm, handler(tiny, drop_ratio=0.0), url)) == content(ask(llm, stock_handler(tiny), url))


@needs_fastv
def test_pruned_answer_equals_the_python_api(llm, tiny, photos):
    from fastv_edge import _native
    from fastv_edge.pruning import select_top_k

    h = handler(tiny, drop_ratio=0.5)
    text = content(ask(llm, h, photos["coffee"].as_uri()))
    assert h.last_stats.n_kept == 32 and h.last_stats.n_image_tokens == 64
    assert h.last_stats.kept == select_top_k(_native.get_scores(llm._ctx.ctx), 32).tolist()
    with fe.load(tiny.llama_path, tiny.mmproj_path, runtime=fe.RuntimeConfig(n_ctx=1024, n_threads=1)) as model:
        api = fe.generate(
            model, "What is in the image?", [photos["coffee"]], max_tokens=6, prune=fe.PruneConfig(drop_ratio=0.5)
        )
    assert text == api


@pytest.mark.slow
def test_image_sources_agree(llm, tiny, photos):
    h = handler(tiny, strategy="none")
    path = photos["astronaut"]
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    answers = {content(ask(llm, h, url)) for url in (path.as_uri(), uri, str(path))}
    assert len(answers) == 1


def test_llama_is_left_ready_to_sample(llm, tiny, photos):
    """After the prefill, Llama's bookkeeping is what its own eval() leaves."""
    from fastv_edge.images import load_image

    h = handler(tiny, strategy="none")
    h._init_mtmd_context(llm)
    text = h._render(
        llm,
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "Hi"}],
            }
        ],
    )
    prompt = h._evaluate(llm, text, [load_image(photos["coffee"])])
    assert len(prompt) == llm.n_tokens and not llm._requires_eval
    first = next(iter(llm.generate(prompt, temp=0.0)))  # takes the "prompt fully cached" path
    assert first == int(np.argmax(llm._scores[-1]))


def test_logits_all_is_refused(tiny, photos):
    from llama_cpp import Llama

    llm = Llama(str(tiny.llama_path), n_ctx=256, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
    try:
        with pytest.raises(ValueError, match="logits_all"):
            ask(llm, handler(tiny), photos["coffee"].as_uri())
    finally:
        llm.close()
