"""Sessions sharing one Model never lose each other's history.

Before: a second ChatSession (or a generate() call) on the same Model took its context, and the
first session's next turn raised "replaced by another request" (its history was lost unless
reset), and a stream resumed after another request decoded into that request's cells. Now a
session whose context was taken prefills its conversation again, and a stale stream raises.
"""

from __future__ import annotations

import pytest

import fastv_edge as fe
from fastv_edge.generate import render_chat

pytestmark = pytest.mark.native
STOCK = fe.PruneConfig(strategy="none")


def replayed(model, session, text, images=(), max_tokens=6):
    """What a session's turn must answer after losing the context: its whole conversation, prefilled fresh."""
    rendered = render_chat(model, [*session.messages, fe.templates.user_message(text, ["image"] * len(images))])
    return fe.generate(model, rendered, list(images), apply_template=False, max_tokens=max_tokens, prune=session.prune)


def test_two_sessions_and_generate_keep_their_histories(tiny_model):
    a, b = fe.ChatSession(tiny_model, prune=STOCK, max_tokens=6), fe.ChatSession(tiny_model, prune=STOCK, max_tokens=6)
    a.ask("Hello, I am A.")
    b.ask("Hello, I am B.")
    expected = replayed(tiny_model, a, "Who am I?")
    b_expected = replayed(tiny_model, b, "And me?")
    assert a.ask("Who am I?") == expected  # before: ValueError, the history was gone
    fe.generate(tiny_model, "unrelated", max_tokens=2)
    assert b.ask("And me?") == b_expected
    assert [m["role"] for m in a.messages] == ["user", "assistant"] * 2 == [m["role"] for m in b.messages]


def test_a_session_with_images_prefills_them_again(tiny, tiny_model, photos):
    prune = fe.PruneConfig(strategy="none")
    a = fe.ChatSession(tiny_model, prune=prune, max_tokens=4)
    a.ask("What is in the picture?", [photos["astronaut"]])
    fe.generate(tiny_model, "something else", max_tokens=2)
    answer = list(a.send("Describe it again."))
    assert answer[-1].n_image_tokens == tiny.n_image_tokens  # the image went through the encoder again
    assert len(a.messages) == 4 and a.n_used > tiny.n_image_tokens


def test_a_stream_resumed_after_another_request_raises_and_harms_nobody(tiny_model):
    a = fe.ChatSession(tiny_model, prune=STOCK, max_tokens=8)
    b = fe.ChatSession(tiny_model, prune=STOCK, max_tokens=4)
    control = fe.ChatSession(tiny_model, prune=STOCK, max_tokens=4)  # b's turns with nobody in between
    control_answers = [control.ask("First B turn."), control.ask("Second B turn.")]
    stream = a.send("A long answer, please.")
    next(stream)
    first = b.ask("First B turn.")
    with pytest.raises(ValueError, match="took its context"):
        next(stream)  # before: it sampled B's logits and decoded into B's cells
    assert [first, b.ask("Second B turn.")] == control_answers
    assert len(a.messages) == 2  # the part of its answer a saw is kept; its next turn prefills again
    assert a.ask("Go on.") == a.messages[-1]["content"]
