"""Every ggml op the patches add to a graph is supported by ggml's Metal backend.

A Metal build runs an op Metal's ggml_metal_device_supports_op() refuses on the CPU instead,
with copies to and from the GPU, and says nothing. The op list comes from the patches' text
(tools/metal_ops.py), so a patch that starts using an op Metal lacks fails here. Calls the
patches make to llama.cpp's own graph helpers (build_attn_inp_kq_mask for the deep-layer mask,
build_attn_mha, ...) add the ops the stock graphs already run on Metal.
"""

from __future__ import annotations

import pytest

from tools import metal_ops


@pytest.fixture(scope="module")
def sources():
    return metal_ops.read_pinned()


@pytest.fixture(scope="module")
def uses(sources):
    return metal_ops.check(metal_ops.read_patches(), sources)


def test_every_op_the_patches_add_is_supported_by_metal(uses):
    unsupported = [f"{u.call} -> {u.op} {u.sub_op or ''} ({', '.join(u.patches)})" for u in uses if u.metal is None]
    assert not unsupported, f"ops Metal's supports_op refuses: {unsupported}"


def test_the_attention_row_ops_are_found(uses):
    """The parser sees the patch's own graph code: the layer K-1 attention row (patch 0002)."""
    ops = {u.op for u in uses}
    assert {"GGML_OP_MUL_MAT", "GGML_OP_SOFT_MAX"} <= ops
    assert ("GGML_OP_UNARY", "GGML_UNARY_OP_TANH") in {(u.op, u.sub_op) for u in uses}  # soft-capping
    assert all(u.patches for u in uses)


def _patch(code: str) -> dict[str, str]:
    return {"9999-test.patch": f"--- a/src/llama-graph.cpp\n+++ b/src/llama-graph.cpp\n@@ -1 +1 @@\n{code}\n"}


def test_an_op_metal_lacks_fails(sources):
    uses = metal_ops.check(_patch("+    cur = ggml_out_prod(ctx0, a, b);"), sources)
    assert [(u.op, u.metal) for u in uses] == [("GGML_OP_OUT_PROD", None)]


def test_a_sub_op_is_checked_in_metals_nested_switch(sources):
    uses = metal_ops.check(_patch("+    cur = ggml_relu(ctx0, cur);"), sources)
    assert [(u.op, u.sub_op) for u in uses] == [("GGML_OP_UNARY", "GGML_UNARY_OP_RELU")]
    assert uses[0].metal and "contiguous" in uses[0].metal
    # a sub-op that has no case of its own in Metal's unary switch is refused
    metal = sources[metal_ops.METAL_DEVICE].replace("case GGML_UNARY_OP_RELU:", "")
    assert metal_ops.metal_condition(metal, "GGML_OP_UNARY", "GGML_UNARY_OP_RELU") is None


def test_removed_lines_comments_and_non_graph_calls_are_ignored(sources):
    code = "\n".join(
        [
            "-    cur = ggml_out_prod(ctx0, a, b);",  # removed by the patch
            "+    // ggml_out_prod(ctx0, a, b) would be slower",  # a comment
            "+    ggml_set_output(cur);",  # marks a tensor, adds no node
            "+    ggml_backend_tensor_get(t, dst, 0, ggml_nbytes(t));",  # runtime API
            "+    ggml_tensor * x = ggml_new_tensor_1d(ctx0, GGML_TYPE_F32, 4);",  # an input leaf
        ]
    )
    uses = metal_ops.check(_patch(code), sources)
    assert [(u.call, u.op) for u in uses] == [("ggml_new_tensor_1d", "GGML_OP_NONE")]
    assert uses[0].metal == "return true;"
