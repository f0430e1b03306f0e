"""Selection before the LLM through the public surfaces: ChatSession, FastVChatHandler, load() on
families FastV does not hook, and the orchestrator's clean-up after an error on a hybrid model."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from preselect_helpers import (
    clear,
    continue_decoding,
    f32_kv,
    family_case,
    forced_tokens,
    load,
    logits,
    photo,
    pos_range,
    segments,
)

import fastv_edge as fe
from fastv_edge.errors import NativeError
from fastv_edge.prefill import prefill
from fastv_edge.prompt import Prompt, TextPiece, pseudo_image

pytestmark = pytest.mark.native
STOCK = fe.PruneConfig(strategy="none")
RAW = "<|im_start|>user\n{marker}\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def prefills(monkeypatch):
    """Every prefill stream_generate runs: (n_past, the prompt as reference segments, PrefillStats)."""
    import importlib

    gen = importlib.import_module("fastv_edge.generate")  # the package's `generate` attribute is the function
    calls, real = [], gen.prefill

    def record(target, prompt, *, n_past, prune, progress):
        segs = segments(
            prompt, [p.embd if p.embd is not None else target.encoder.encode(p).embd for p in prompt.images]
        )
        out = real(target, prompt, n_past=n_past, prune=prune, progress=progress)
        calls.append((n_past, segs, out[1]))
        return out

    monkeypatch.setattr(gen, "prefill", record)
    return calls


def test_a_later_chat_turn_continues_after_a_pruned_image(tiny_dir, photos, prefills):
    """Turn 1 keeps 16 of 64 image tokens (divprune); turn 2 (text) and its decoding attend to exactly
    those: every logits row of turn 2 equals the float64 reference of the whole conversation (<= 1e-4)."""
    from fastv_edge.chat import ChatSession

    case = family_case(tiny_dir, "llama")
    with load(case) as model:
        session = ChatSession(model, prune=fe.PruneConfig(strategy="divprune", keep=16))
        first = list(session.send("Describe this.", [photos["astronaut"]], max_tokens=3))
        n_vocab, got, second = model.llm.n_vocab(), [], []
        for r in session.send("And the colours?", max_tokens=4):
            got.append(logits(model.ctx, n_vocab))  # what this token was sampled from
            second.append(r)
        n_used = session.n_used
    assert first[-1].n_kept == 16 and first[-1].stats.n_cells == first[-1].prompt_tokens - 64 + 16
    assert second[-1].stats.strategy == "none (no image)" and second[-1].n_image_tokens == 0
    (n0, segs1, st1), (n1, segs2, st2) = prefills
    ref = case.reference()
    ref.prefill(segs1, pre_keep=st1.kept)
    answer = [r.token for r in first[:-1]]  # the last sampled token is never decoded into the cache
    for token in answer[: n1 - ref.n_past]:  # (all of them, unless the template re-rendered the answer)
        ref.decode(token)
    assert (n0, ref.n_past) == (0, n1)
    want = [ref.prefill(segs2, append=True)["logits"]] + [ref.decode(r.token) for r in second[:-1]]
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-4)
    assert n_used == len(ref.cache_pos[0])  # the session's cells: exactly the rows the reference computed


def _ask(llm, handler, url, max_tokens=6):
    llm.chat_handler = handler
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in the image?"}]
    return llm.create_chat_completion(
        messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0
    )


@pytest.mark.parametrize("strategy", ["divprune", "cdpruner"])
def test_handler_selects_before_the_llm_like_the_python_api(tiny, photos, strategy):
    from llama_cpp import Llama

    prune = fe.PruneConfig(strategy=strategy, keep=16)
    handler = fe.FastVChatHandler(clip_model_path=str(tiny.mmproj_path), prune=prune, verbose=False)
    llm = Llama(str(tiny.llama_path), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        out = _ask(llm, handler, photos["coffee"].as_uri())
    finally:
        llm.close()
    usage = out["usage"]["fastv"]
    assert usage["strategy"] == prune.describe() == f"{strategy} K=0 keep=16" + (
        " theta=0.50" if strategy == "cdpruner" else ""
    ) and (usage["n_image_tokens"], usage["n_kept"]) == (64, 16)
    assert usage["n_cells"] == out["usage"]["prompt_tokens"] - 64 + 16 and usage["select_ms"] > 0
    runtime = fe.RuntimeConfig(n_ctx=1024, n_threads=1)
    with fe.load(tiny.llama_path, tiny.mmproj_path, runtime=runtime) as model:
        api = list(fe.stream_generate(model, "What is in the image?", [photos["coffee"]], max_tokens=6, prune=prune))
    assert out["choices"][0]["message"]["content"] == "".join(r.text for r in api)
    assert handler.last_stats.kept == api[-1].stats.kept  # cdpruner: the same instruction, the same selection


@pytest.mark.parametrize(("name", "layer"), [("qwen3vl", 2), pytest.param("gemma4", 4, marks=pytest.mark.slow)])
def test_new_families_select_before_the_llm_and_inside_it(tiny_dir, name, layer):
    """qwen3vl (deepstack rows) and gemma4 run selection before the LLM through mtmd, and a request
    asking for two stages (DivPrune, then FastV at a K whose layer K-1 ranks every token) on the same
    model leaves the pre-LLM answers unchanged."""
    case = family_case(tiny_dir, name)
    runtime = fe.RuntimeConfig(n_ctx=512, n_threads=1)
    with fe.load(case.lm, case.mmproj, runtime=runtime, prune=fe.PruneConfig(strategy="dart", keep=8)) as model:
        ask = dict(max_tokens=3, apply_template=False)
        out = list(fe.stream_generate(model, RAW.format(marker=model.marker), [photo()], **ask))
        two = fe.PruneConfig(strategy="fastv", layer=layer, keep=4, pre="divprune:8")
        both = list(fe.stream_generate(model, RAW.format(marker=model.marker), [photo()], prune=two, **ask))
        again = list(fe.stream_generate(model, RAW.format(marker=model.marker), [photo()], **ask))
    stats = out[-1].stats
    assert stats.strategy == "dart K=0 keep=8" and stats.n_kept == 8 and len(stats.kept) == 8
    assert stats.n_cells == out[-1].prompt_tokens - stats.n_image_tokens + 8
    assert both[-1].stats.n_kept == 4 and both[-1].stats.n_unranked == 0
    assert [r.token for r in again] == [r.token for r in out]


def test_a_hybrid_model_loads_for_selection_only(tiny_dir):
    """lfm2 (conv + attention): FastV is refused at load, selection before the LLM is accepted."""
    case = family_case(tiny_dir, "lfm2")
    runtime = fe.RuntimeConfig(n_ctx=256, n_threads=1)
    with pytest.raises(fe.UnsupportedModelError, match="does not apply to 'lfm2'.*--strategy divprune -k 0"):
        fe.load(case.lm, runtime=runtime, prune=fe.PruneConfig(strategy="random", layer=1))
    with fe.load(case.lm, runtime=runtime, prune=fe.PruneConfig(strategy="random", layer=0, keep=4)) as model:
        assert model.prune.pre_llm and fe.generate(model, "Hello", max_tokens=2)  # a text-only turn prunes nothing


def test_handler_selects_before_the_llm_on_qwen3vl(tiny_dir):
    from llama_cpp import Llama

    case = family_case(tiny_dir, "qwen3vl")
    llm = Llama(str(case.lm), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        prune = fe.PruneConfig(strategy="cdpruner", drop_ratio=0.75)
        handler = fe.FastVChatHandler(clip_model_path=str(case.mmproj), prune=prune, verbose=False)
        out = _ask(llm, handler, _photo_uri(), max_tokens=2)
    finally:
        llm.close()
    usage = out["usage"]["fastv"]
    assert (usage["n_image_tokens"], usage["n_kept"]) == (40, 10) and usage["strategy"].startswith("cdpruner K=0")


def _photo_uri() -> str:
    import base64
    import io

    from PIL import Image

    img = photo()
    buf = io.BytesIO()
    Image.frombytes("RGB", (img.nx, img.ny), img.data).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_a_failed_prompt_leaves_a_hybrid_model_as_it_was(tiny_dir):
    """lfm2's conv state absorbs every decoded row and llama_memory_seq_rm cannot take part of a prompt
    back out of it: prefill saves that state before a later prompt and restores it when the prompt fails,
    so the conversation continues exactly as if the failed prompt had never been sent."""
    from fastv_edge.testing.make_tiny_archs import make_tiny_lfm2

    path = make_tiny_lfm2(tiny_dir).path
    prune = fe.PruneConfig(strategy="divprune", keep=12)
    with f32_kv(), fe.load(path, runtime=fe.RuntimeConfig(n_ctx=512, n_threads=1), prune=STOCK) as model:
        ids = lambda text: list(model.llm.tokenize(text.encode(), add_bos=False, special=True))  # noqa: E731
        first = Prompt(
            [TextPiece([model.llm.token_bos(), *ids("Look:")]), pseudo_image(model, 40, 1), TextPiece(ids("\nOk"))]
        )
        bad = Prompt([TextPiece(ids(" And this:")), pseudo_image(model, 40, 2), TextPiece([model.llm.n_vocab() + 7])])
        then = Prompt([TextPiece(ids(" What is in the first one?"))])
        tokens = forced_tokens(model)
        clear(model)
        n1, _ = prefill(model.target, first, n_past=0, prune=prune)
        n2, _ = prefill(model.target, then, n_past=n1, prune=prune)
        want = continue_decoding(model, n2, tokens)
        clear(model)
        n1, _ = prefill(model.target, first, n_past=0, prune=prune)
        with pytest.raises(NativeError, match="llama_decode"):  # the invalid token fails after the image's rows
            prefill(model.target, bad, n_past=n1, prune=prune)
        assert pos_range(model.ctx)[1] == n1 - 1
        n2, _ = prefill(model.target, then, n_past=n1, prune=prune)
        got = continue_decoding(model, n2, tokens)
        # what the clean-up must undo: the rows decoded, seq_rm refuses to cut them out of the conv state
        clear(model)
        prefill(model.target, first, n_past=0, prune=prune)
        prefill(model.target, Prompt([TextPiece(ids(" more"))]), n_past=n1, prune=prune)
        assert not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(model.ctx), 0, n1, -1)
    assert np.abs(got - want).max() == 0.0


def test_an_architecture_without_embedding_input_is_refused_before_decoding(tiny_model, photos, monkeypatch):
    """graniteswitch's graph asserts token input (a process abort): images are refused with its name.
    Checked on the tiny llama by listing 'llama' among those architectures."""
    import fastv_edge.prefill as pf

    assert "graniteswitch" in pf.NO_EMBEDDING_INPUT
    monkeypatch.setattr(pf, "NO_EMBEDDING_INPUT", ("llama",))
    with pytest.raises(fe.UnsupportedModelError, match="cannot decode image embeddings on architecture 'llama'"):
        fe.generate(tiny_model, "What is it?", [photos["coffee"]], max_tokens=2, prune=STOCK)
    assert fe.generate(tiny_model, "Hello", max_tokens=2, prune=STOCK)  # text only still runs
