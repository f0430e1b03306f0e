"""ChatSession on the real library: KV reuse across turns, images pruned once, reset, overflow."""

import pytest
from api_helpers import needs_fastv

import fastv_edge as fe
from fastv_edge.chat import ChatSession

pytestmark = pytest.mark.native


def turn(session, text, images=(), max_tokens=4):
    responses = list(session.send(text, images, max_tokens=max_tokens))
    return [r.token for r in responses], responses[-1]


@needs_fastv
def test_three_turns_two_images_reuse_the_pruned_cache(tiny_model, photos):
    from fastv_edge import _native

    session = ChatSession(tiny_model, prune=fe.PruneConfig(drop_ratio=0.5))
    _, first = turn(session, "Describe this.", [photos["astronaut"]])
    assert (first.n_image_tokens, first.n_kept) == (64, 32)
    used = session.n_used
    assert used == first.prompt_tokens + first.generation_tokens - (first.finish_reason == "length")

    _, second = turn(session, "And the colours?")
    # only the new turn is decoded: no image, far fewer tokens than the first prefill
    assert second.n_image_tokens == 0 and second.prompt_tokens < first.prompt_tokens - 64
    assert session.n_used > used

    _, third = turn(session, "Compare with this one.", [photos["chelsea"]])
    assert (third.n_image_tokens, third.n_kept) == (64, 32)  # only this turn's image is pruned now
    assert _native.n_hidden(tiny_model.ctx) == 64  # 32 dropped per image, each hidden once
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 3


def test_append_only_turns_equal_one_prefill_of_the_whole_conversation(tiny_model, photos):
    """Stock path: turn-by-turn decoding must give the tokens of one prefill of the same text."""
    none = fe.PruneConfig(strategy="none")
    session = ChatSession(tiny_model, prune=none)
    turn(session, "Describe this.", [photos["astronaut"]])
    turn(session, "And the colours?")
    tokens, _ = turn(session, "Compare with this one.", [photos["chelsea"]])
    whole = session._prompt_text  # the rendered conversation up to the last answer
    ref = [
        r.token
        for r in fe.stream_generate(
            tiny_model, whole, [photos["astronaut"], photos["chelsea"]], prune=none, max_tokens=4, apply_template=False
        )
    ]
    assert tokens == ref


def test_reset_starts_over(tiny_model, photos):
    session = ChatSession(tiny_model, prune=fe.PruneConfig(strategy="none"))
    first, _ = turn(session, "Describe this.", [photos["coffee"]])
    turn(session, "More?")
    session.reset()
    assert session.n_used == 0 and session.messages == []
    again, _ = turn(session, "Describe this.", [photos["coffee"]])
    assert again == first


@pytest.mark.slow
def test_overflow_is_refused_before_decoding(tiny, photos):
    with fe.load(tiny.llama_path, tiny.mmproj_path, runtime=fe.RuntimeConfig(n_ctx=160, n_threads=1)) as model:
        session = ChatSession(model, prune=fe.PruneConfig(strategy="none"))
        turn(session, "Describe this.", [photos["astronaut"]])
        used, history = session.n_used, list(session.messages)
        n_images = (model.n_ctx - used) // 64 + 1  # llama.cpp may round n_ctx up: overflow it for sure
        with pytest.raises(fe.ContextOverflowError, match="free"):
            turn(session, "And these?", [photos["chelsea"]] * n_images)
        assert session.n_used == used and session.messages == history
        tokens, last = turn(session, "Ok.", max_tokens=2)  # the session is still usable
        assert last.generation_tokens >= 1


def test_an_interrupted_answer_keeps_the_session_consistent(tiny_model, photos):
    session = ChatSession(tiny_model, prune=fe.PruneConfig(strategy="none"))
    stream = session.send("Describe this.", [photos["astronaut"]], max_tokens=8)
    next(stream), next(stream)
    stream.close()  # what Ctrl-C in the CLI does
    assert len(session.messages) == 2
    tokens, last = turn(session, "Go on.", max_tokens=2)
    assert last.n_image_tokens == 0 and len(tokens) >= 1
