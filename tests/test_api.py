"""The Python API end to end on the real library: load -> generate / stream_generate.

Stock reference: llama-cpp-python's own MTMDChatHandler evaluating the same conversation
(a subclass joins content parts into a string, since SmolLM2's template prints strings).
"""

import numpy as np
import pytest
from api_helpers import needs_fastv

import fastv_edge as fe
from fastv_edge.flops import flops_ratio
from fastv_edge.pruning import n_keep_for_ratio, select_random, select_top_k

pytestmark = pytest.mark.native
QUESTION = "What is in the image?"


def stock_answer(tiny, image_path, max_tokens=8) -> str:
    """Greedy answer of stock llama-cpp-python (no FastV call anywhere)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    class JoinedContent(MTMDChatHandler):
        def _get_template_messages(self, messages, marker):
            out = super()._get_template_messages(messages, marker)
            return [dict(m, content="".join(p["text"] for p in m["content"])) for m in out]

    handler = JoinedContent(clip_model_path=str(tiny.mmproj_path), verbose=False)
    llm = Llama(str(tiny.llama_path), n_ctx=1024, n_threads=1, n_threads_batch=1, chat_handler=handler, verbose=False)
    try:
        msg = {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_path.as_uri()}},
                {"type": "text", "text": QUESTION},
            ],
        }
        out = llm.create_chat_completion(messages=[msg], max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0)
        return out["choices"][0]["message"]["content"]
    finally:
        llm.close()


def answer(model, image, **kwargs):
    responses = list(fe.stream_generate(model, QUESTION, [image], max_tokens=8, **kwargs))
    return "".join(r.text for r in responses), responses


def test_strategy_none_matches_stock_llama_cpp_python(tiny, tiny_model, photos):
    text, responses = answer(tiny_model, photos["astronaut"], prune=fe.PruneConfig(strategy="none"))
    assert text == stock_answer(tiny, photos["astronaut"])
    last = responses[-1]
    assert (last.n_image_tokens, last.n_kept, last.flops_ratio, last.deep_ms) == (
        tiny.n_image_tokens,
        tiny.n_image_tokens,
        1.0,
        0.0,
    )


@needs_fastv
def test_drop_ratio_zero_gives_the_stock_tokens(tiny_model, photos):
    stock = [r.token for r in answer(tiny_model, photos["astronaut"], prune=fe.PruneConfig(strategy="none"))[1]]
    fastv = answer(tiny_model, photos["astronaut"], prune=fe.PruneConfig(drop_ratio=0.0))[1]
    assert [r.token for r in fastv] == stock
    assert fastv[-1].n_kept == fastv[-1].n_image_tokens  # R=0 keeps every image token


@needs_fastv
@pytest.mark.parametrize(
    "prune",
    [
        fe.PruneConfig(drop_ratio=0.5),  # C selects floor(N*(1-R)) itself
        fe.PruneConfig(drop_ratio=0.75),  # a smaller budget
        fe.PruneConfig(keep=5),  # absolute budget: Python selects, finish_with_keep
        fe.PruneConfig(layer=3, drop_ratio=0.5),  # K = n_layer - 1
    ],
    ids=["R0.5", "R0.75", "keep5", "K3"],
)
def test_fastv_keeps_the_top_scored_image_tokens(tiny_model, photos, prune):
    from fastv_edge import _native

    _, responses = answer(tiny_model, photos["astronaut"], prune=prune)
    last = responses[-1]
    n = last.n_image_tokens
    budget = prune.keep if prune.keep is not None else n_keep_for_ratio(n, prune.drop_ratio)
    scores = np.array(_native.get_scores(tiny_model.ctx))  # (N,) C's own layer K-1 attention
    kept = _native.get_kept(tiny_model.ctx)
    assert scores.shape == (n,) and np.all(scores >= 0)
    assert last.n_kept == len(kept) == budget
    assert kept == select_top_k(scores, budget).tolist()
    expected = flops_ratio(last.prompt_tokens, n, budget, n_layer=4, layer=prune.layer, n_embd=64, n_ff=128)
    assert last.flops_ratio == pytest.approx(expected) and last.flops_ratio < 1.0


@needs_fastv
def test_random_strategy_is_seeded(tiny_model, photos):
    from fastv_edge import _native

    prune = fe.PruneConfig(strategy="random", keep=10, seed=7)
    first = answer(tiny_model, photos["astronaut"], prune=prune)[1]
    kept = _native.get_kept(tiny_model.ctx)
    assert kept == select_random(first[-1].n_image_tokens, 10, seed=7).tolist()
    again = answer(tiny_model, photos["astronaut"], prune=prune)[1]
    assert [r.token for r in again] == [r.token for r in first]


@needs_fastv
def test_two_images_are_pruned_jointly(tiny_model, photos):
    responses = list(
        fe.stream_generate(
            tiny_model,
            "Compare them.",
            [photos["astronaut"], photos["chelsea"]],
            max_tokens=2,
            prune=fe.PruneConfig(drop_ratio=0.5),
        )
    )
    assert responses[-1].n_image_tokens == 128 and responses[-1].n_kept == 64


@needs_fastv
def test_quantized_weights(tiny_q8, photos):
    """Q8_0 matrices: R=0 still equals stock and the kept set still follows C's scores."""
    from fastv_edge import _native

    with fe.load(tiny_q8.llama_path, tiny_q8.mmproj_path, runtime=fe.RuntimeConfig(n_ctx=512, n_threads=1)) as model:
        stock = [r.token for r in answer(model, photos["chelsea"], prune=fe.PruneConfig(strategy="none"))[1]]
        assert [r.token for r in answer(model, photos["chelsea"], prune=fe.PruneConfig(drop_ratio=0.0))[1]] == stock
        answer(model, photos["chelsea"], prune=fe.PruneConfig(drop_ratio=0.5))
        assert _native.get_kept(model.ctx) == select_top_k(_native.get_scores(model.ctx), 32).tolist()


def test_statistics_and_finish_reason(tiny_model, photos):
    responses = list(
        fe.stream_generate(
            tiny_model, QUESTION, [photos["coffee"]], max_tokens=4, prune=fe.PruneConfig(strategy="none")
        )
    )
    assert [r.finish_reason for r in responses] == [None, None, None, "length"]
    assert [r.generation_tokens for r in responses] == [1, 2, 3, 4]
    last = responses[-1]
    assert last.encode_ms > 0 and last.prefill_ms > 0 and last.decode_tps > 0
    assert last.ttft_ms >= last.encode_ms + last.prefill_ms
    assert last.prompt_tokens > last.n_image_tokens == 64


def test_generate_joins_the_stream(tiny_model, photos):
    kwargs = dict(max_tokens=5, prune=fe.PruneConfig(strategy="none"))
    text = fe.generate(tiny_model, QUESTION, [photos["chelsea"]], **kwargs)
    assert isinstance(text, str)
    assert text == "".join(r.text for r in fe.stream_generate(tiny_model, QUESTION, [photos["chelsea"]], **kwargs))


def test_threads_bind_decode_and_prompt(tiny_model):
    import llama_cpp

    assert tiny_model.runtime.n_threads == 1
    assert (llama_cpp.llama_n_threads(tiny_model.ctx), llama_cpp.llama_n_threads_batch(tiny_model.ctx)) == (1, 1)


def test_seeded_sampling_is_reproducible(tiny_model, photos):
    def run(seed):
        responses = fe.stream_generate(
            tiny_model,
            QUESTION,
            [photos["coffee"]],
            max_tokens=6,
            sampling=fe.SamplingConfig(temp=1.0, seed=seed),
            prune=fe.PruneConfig(strategy="none"),
        )
        return [r.token for r in responses]

    first = run(5)
    assert run(5) == first
    assert run(6) != first  # the seed is used: temp=1 really samples


def test_images_from_bytes_and_data_uri(tiny_model, photos):
    import base64

    raw = photos["astronaut"].read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    kwargs = dict(max_tokens=3, prune=fe.PruneConfig(strategy="none"))
    by_path = fe.generate(tiny_model, QUESTION, [photos["astronaut"]], **kwargs)
    assert fe.generate(tiny_model, QUESTION, [raw], **kwargs) == by_path
    assert fe.generate(tiny_model, QUESTION, [uri], **kwargs) == by_path


@needs_fastv
@pytest.mark.slow
def test_smollm2_with_a_projector(smollm2_path, smollm2_mmproj, photos):
    """Real 30-layer Q4_1 weights: R=0 equals stock, R=0.5 keeps C's top half, chat reuses it."""
    from fastv_edge import _native
    from fastv_edge.chat import ChatSession

    runtime = fe.RuntimeConfig(n_ctx=512, n_threads=1)
    with fe.load(smollm2_path, smollm2_mmproj, runtime=runtime, prune=fe.PruneConfig(layer=8)) as model:
        stock = [r.token for r in answer(model, photos["astronaut"], prune=fe.PruneConfig(strategy="none"))[1]]
        r0 = answer(model, photos["astronaut"], prune=fe.PruneConfig(layer=8, drop_ratio=0.0))[1]
        assert [r.token for r in r0] == stock
        pruned = answer(model, photos["astronaut"], prune=fe.PruneConfig(layer=8, drop_ratio=0.5))[1][-1]
        assert pruned.n_kept == 32
        assert _native.get_kept(model.ctx) == select_top_k(_native.get_scores(model.ctx), 32).tolist()
        session = ChatSession(model, max_tokens=3)
        first = list(session.send("Describe it.", [photos["astronaut"]]))[-1]
        second = list(session.send("Shorter?"))[-1]
        assert (first.n_image_tokens, first.n_kept) == (64, 32)
        assert second.n_image_tokens == 0 and second.prompt_tokens < first.prompt_tokens - 64  # only the new turn
        assert _native.n_hidden(model.ctx) == 32  # the first image's dropped cells stay hidden


@pytest.mark.slow
def test_smollm2_text_only_matches_llama_cpp_python(smollm2_path):
    from llama_cpp import Llama

    prompt = "The capital of France is"
    with fe.load(smollm2_path, runtime=fe.RuntimeConfig(n_ctx=256, n_threads=1)) as model:
        # default PruneConfig: with no image in the prompt the stock path runs
        ours = fe.generate(model, prompt, max_tokens=6, apply_template=False)
    llm = Llama(str(smollm2_path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        ref = llm.create_completion(prompt, max_tokens=6, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    finally:
        llm.close()
    assert ours == ref
    assert "Paris" in ours


@pytest.mark.parametrize("arch", ["llama", "qwen2vl", "gemma3"])
def test_load_reads_the_same_metadata_as_the_full_reader(tiny, tiny_dir, arch):
    """load() checks only the leading keys itself and takes the rest from llama.cpp's metadata."""
    from fastv_edge.model import read_model_info
    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3, make_tiny_qwen2vl

    path = {"llama": lambda: tiny.llama_path, "qwen2vl": lambda: make_tiny_qwen2vl(tiny_dir).path}
    path["gemma3"] = lambda: make_tiny_gemma3(tiny_dir).path
    model_path = path[arch]()
    none = fe.PruneConfig(strategy="none")
    with fe.load(model_path, runtime=fe.RuntimeConfig(n_ctx=256, n_threads=1), prune=none) as model:
        assert model.info == read_model_info(model_path)
        assert model.info.architecture == arch and model.info.chat_template
