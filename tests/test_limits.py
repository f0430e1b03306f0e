"""Objects that cannot reach C inconsistent, and settings that cannot wrap or explode in C.

Before: an RGBImage whose buffer was shorter than nx*ny*3 was an mtmd heap over-read, a
closed Model segfaulted, 100000 threads segfaulted, seeds >= 2**32 wrapped silently (and
2**32 - 1 meant "random"), --temp nan|inf sampled garbage, and -c 2**32 + 256 wrapped to 256.
"""

from __future__ import annotations

import math

import pytest
from api_helpers import run_cli
from isolated import run_isolated

import fastv_edge as fe
from fastv_edge.config import MAX_SEED, max_threads
from fastv_edge.images import RGBImage

# ---- RGBImage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ((2, 2, b"x" * 11), "has 11 bytes, but 2x2 RGB needs 12"),
        ((2, 2, b"x" * 13), "has 13 bytes"),
        ((0, 2, b""), "nx must be an integer in"),
        ((2, -3, b""), "ny must be an integer in"),
        ((True, 2, b"x" * 6), "nx must be an integer"),
        ((2.0, 2, b"x" * 12), "nx must be an integer"),
        ((2, 2, "x" * 12), "data must be bytes, got str"),
        ((2, 2, [0] * 12), "data must be bytes, got list"),
        ((1 << 17, 1, b""), "nx must be an integer in"),
    ],
)
def test_rgbimage_cannot_be_inconsistent(args, message):
    with pytest.raises(ValueError, match=message):
        RGBImage(*args)


def test_rgbimage_takes_bytes_likes_and_numpy_sizes():
    import numpy as np

    img = RGBImage(np.int64(2), 1, bytearray(6), name="x")
    assert (img.nx, type(img.nx), type(img.data)) == (2, int, bytes)


# ---- a closed Model -----------------------------------------------------------------------------


def closed_model_scenario(model_path: str, mmproj_path: str) -> dict:
    """Every public path of a closed Model, in a subprocess (before, the first one segfaulted)."""
    import numpy as np

    model = fe.load(model_path, mmproj_path, runtime=fe.RuntimeConfig(n_ctx=512, n_threads=1))
    model.close()
    model.close()  # a second close is harmless
    img = RGBImage(8, 8, bytes(192))
    paths = {
        "generate": lambda: fe.generate(model, "hi", [img], max_tokens=1),
        "stream_generate": lambda: next(fe.stream_generate(model, "hi", max_tokens=1)),
        "chat": lambda: fe.ChatSession(model).ask("hi"),
        "target": lambda: model.target,
        "ctx": lambda: model.ctx,
        "n_ctx": lambda: model.n_ctx,
        "llm": lambda: model.llm,
        "mtmd_ctx": lambda: model.mtmd_ctx,
        "encoder": lambda: model.encoder,
        "text_rows": lambda: model.text_rows(np.arange(3)),
    }
    out = {}
    for name, call in paths.items():
        try:
            call()
            out[name] = "no error"
        except Exception as e:  # noqa: BLE001 - the scenario reports whatever happens
            out[name] = f"{type(e).__name__}: {e}"
    out["info"] = model.info.name  # plain data stays readable
    out["closed"] = model.closed
    return out


@pytest.mark.native
def test_a_closed_model_raises_on_every_path(tiny):
    out = run_isolated("test_limits", "closed_model_scenario", str(tiny.llama_path), str(tiny.mmproj_path))
    assert out.pop("closed") is True and out.pop("info")
    for name, result in out.items():
        assert result.startswith("ValueError: this Model") and "was closed" in result, (name, result)


# ---- threads, seeds, temperatures, context sizes ------------------------------------------------


def test_thread_counts_are_bounded_with_the_reason():
    assert fe.RuntimeConfig(n_threads=max_threads()).n_threads == max_threads()
    with pytest.raises(ValueError, match=r"n_threads=100000 is more than .*spin at barriers.*-t"):
        fe.RuntimeConfig(n_threads=100000)


@pytest.mark.parametrize("seed", [MAX_SEED + 1, 2**32, 2**40, -1])
def test_seeds_outside_32_bits_are_refused(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967294\]"):
        fe.SamplingConfig(seed=seed)
    assert fe.SamplingConfig(seed=MAX_SEED).seed == MAX_SEED


@pytest.mark.parametrize("name", ["temp", "top_p", "min_p", "repeat_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_sampling_values_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        fe.SamplingConfig(**{name: value})


@pytest.mark.parametrize("value", [2**31, 2**32 + 256, 0])
def test_context_sizes_that_would_wrap_are_refused(value):
    for name in ("n_ctx", "n_batch", "n_ubatch"):
        with pytest.raises(ValueError, match=rf"{name} must be an integer in \[1, 2147483392\]"):
            fe.RuntimeConfig(**{name: value})


@pytest.mark.parametrize(
    "flags, message",
    [
        (("-t", "100000"), "n_threads=100000 is more than"),
        (("--temp", "nan"), "temp must be a finite number"),
        (("--temp", "inf"), "temp must be a finite number"),
        (("--seed", str(2**32)), "seed must be an integer in"),
        (("-c", str(2**32 + 256)), "n_ctx must be an integer in"),
    ],
)
def test_the_cli_refuses_them_in_one_line(cli, tiny, flags, message):
    code, out, err = cli("run", "-m", tiny.llama_path, "-p", "hi", *flags)
    assert code == 1 and err.count("\n") == 1 and message in err, err


@pytest.mark.native
def test_threads_refused_before_llama_cpp_sees_them(cli_env, tiny):
    out = run_cli(cli_env, "run", "-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "-p", "hi", "-t", "100000")
    assert out.returncode == 1 and "n_threads=100000" in out.stderr, out.stderr[-500:]  # before: -11


@pytest.mark.native
def test_context_rounding_and_training_length_are_reported(tiny, cli_env):
    runtime = fe.RuntimeConfig(n_ctx=300, n_threads=1)
    with fe.load(tiny.llama_path, runtime=runtime, prune=fe.PruneConfig(strategy="none")) as model:
        assert model.n_ctx == 512  # llama.cpp pads to a multiple of 256: Model.n_ctx says so
    with pytest.warns(RuntimeWarning, match="more than the 4096 tokens .* was trained on"):
        fe.load(tiny.llama_path, runtime=fe.RuntimeConfig(n_ctx=5000, n_threads=1)).close()
    out = run_cli(cli_env, "run", "-m", tiny.llama_path, "-p", "hi", "-n", "1", "-t", "1", "-c", "5000", "--raw")
    warnings = [line for line in out.stderr.splitlines() if line.startswith("fastv-edge: warning:")]
    assert out.returncode == 0, out.stderr[-500:]
    assert any("trained on" in w for w in warnings) and any("rounded the context size -c 5000" in w for w in warnings)


@pytest.mark.native
def test_bench_refuses_a_pseudo_image_larger_than_the_context_before_making_it(cli_env, tiny, tmp_path):
    """Before: N x n_embd rows were made first (10**9 rows: 256 GB), the context checked after."""
    out = run_cli(
        cli_env, "bench", "-m", tiny.llama_path, "--pseudo-image-tokens", "1000000000", "-t", "1", "--reps", "1",
        "--no-plots", "--out", tmp_path, "--quiet", timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and "pseudo prompt needs 10000000" in out.stderr and "raise -c" in out.stderr, out.stderr
