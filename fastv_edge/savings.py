"""Measure what FastV saves in LLM prefill on this machine, next to the paper's FLOPs ratio.

A prompt of text + a pseudo image (random embedding rows fed through the embedding path,
like mtmd feeds projector output) + text is prefilled by stock llama.cpp and by FastV at
K and several drop ratios, alternating in one process so that machine noise hits every
configuration alike. Prints a table of medians and writes JSON.

    python -m fastv_edge.savings --model SmolLM2.gguf --n-image 576 --reps 5 --out savings.json

The vision encoder is not involved: these are LLM-prefill numbers only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import _native
from .flops import flops_ratio
from .model import read_model_info
from .pruning import n_keep_for_ratio


@dataclass
class Row:
    drop_ratio: float
    n_image: int
    n_kept: int
    stock_ms: float
    shallow_ms: float
    deep_ms: float
    ratio: float  # (shallow + deep) / stock, medians of wall time
    cpu_ratio: float  # the same with process CPU time: robust to other load when n_threads=1
    theory: float  # paper eq. 5


class Runner:
    """One model and context; decodes the pseudo-image prompt stock or pruned."""

    def __init__(self, model_path: str, n_image: int, n_threads: int, seed: int = 0):
        import llama_cpp

        self.lc = llama_cpp
        self.info = read_model_info(model_path)  # checked metadata; a clear error before llama.cpp sees it
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {model_path}")
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_layer = llama_cpp.llama_model_n_layer(self.model)
        # M-RoPE (qwen2vl) embedding batches carry 4 position sections per row, as mtmd writes them
        mrope = (llama_cpp.LLAMA_ROPE_TYPE_MROPE, llama_cpp.LLAMA_ROPE_TYPE_IMROPE)
        self.n_pos = 4 if llama_cpp.llama_model_rope_type(self.model) in mrope else 1
        # Gemma 3's image block is decoded non-causally, as mtmd does (mtmd_decode_use_non_causal)
        self.non_causal_image = self.info.architecture == "gemma3"
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        n_prompt = n_image + 64
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = max(512, n_prompt + 16)
        params.n_threads = params.n_threads_batch = n_threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ValueError(f"llama.cpp could not create a context for {model_path}")
        rng = np.random.default_rng(seed)
        self.image = (rng.standard_normal((n_image, self.n_embd)) * 0.05).astype(np.float32)  # (N, n_embd)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.pre = rng.integers(100, n_vocab, 24).tolist()  # arbitrary text ids: speed ignores meaning
        self.post = rng.integers(100, n_vocab, 40).tolist()
        self.n_tokens = len(self.pre) + n_image + len(self.post)

    def close(self) -> None:
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)

    def _decode(self, n: int, p0: int, fill, embd: int, logits_last: bool) -> None:
        lc = self.lc
        batch = lc.llama_batch_init(n, embd, 1)
        own_pos = ctypes.cast(batch.pos, ctypes.c_void_p).value  # llama_batch_free frees this one
        try:
            batch.n_tokens = n
            fill(batch)
            if embd and self.n_pos > 1:
                # a square-ish image grid at p0: (t, y, x, z) section-major, like mtmd for Qwen2-VL
                nx = int(np.ceil(np.sqrt(n)))
                i = np.arange(n)
                pos = np.stack([np.full(n, p0), p0 + i // nx, p0 + i % nx, np.zeros(n, int)]).astype(np.int32)
                pos_buf = (self.lc.llama_pos * pos.size).from_buffer_copy(pos.tobytes())  # (4, n)
                batch.pos = ctypes.cast(pos_buf, ctypes.POINTER(self.lc.llama_pos))
            for i in range(n):
                if not (embd and self.n_pos > 1):
                    batch.pos[i] = p0 + i
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
                batch.logits[i] = logits_last and i == n - 1
            rc = lc.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        finally:
            batch.pos = ctypes.cast(own_pos, ctypes.POINTER(self.lc.llama_pos))
            lc.llama_batch_free(batch)

    def _tokens(self, ids, p0, logits_last):
        def fill(batch):
            for i, t in enumerate(ids):
                batch.token[i] = t

        self._decode(len(ids), p0, fill, 0, logits_last)

    def _prompt(self) -> None:
        self._tokens(self.pre, 0, False)
        if self.non_causal_image:
            self.lc.llama_set_causal_attn(self.ctx, False)
        try:
            self._decode(
                len(self.image),
                len(self.pre),
                lambda b: ctypes.memmove(b.embd, self.image.ctypes.data, self.image.nbytes),
                self.n_embd,
                False,
            )
        finally:
            if self.non_causal_image:
                self.lc.llama_set_causal_attn(self.ctx, True)
        n_img = len(self.image)
        nx = int(np.ceil(np.sqrt(n_img)))
        # an M-RoPE image advances positions by its grid's longer side, 1-D positions by its length
        advance = max(nx, -(-n_img // nx)) if self.n_pos > 1 else n_img
        self._tokens(self.post, len(self.pre) + advance, True)

    def stock(self) -> tuple[float, float]:
        """(wall ms, process CPU ms) of a stock prefill."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        t0, c0 = time.perf_counter(), time.process_time()
        self._prompt()
        self.lc.llama_synchronize(self.ctx)
        return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3

    def fastv(self, k: int, drop_ratio: float) -> tuple[float, float, float, int]:
        """(phase-1 wall ms, phase-2 wall ms, total process CPU ms, n_kept) of a FastV prefill."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        t0, c0 = time.perf_counter(), time.process_time()
        _native.begin(self.ctx, 0, k)
        try:
            self._prompt()
            self.lc.llama_synchronize(self.ctx)
            t1 = time.perf_counter()
            _native.finish(self.ctx, n_keep_for_ratio(len(self.image), drop_ratio))
        except BaseException:
            _native.abort(self.ctx)
            raise
        self.lc.llama_synchronize(self.ctx)
        t2, c2 = time.perf_counter(), time.process_time()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (c2 - c0) * 1e3, len(_native.get_kept(self.ctx))


def measure(
    model_path: str,
    *,
    k: int = 2,
    drop_ratios=(0.5, 0.75, 0.9),
    n_image: int = 576,
    reps: int = 5,
    n_threads: int = 2,
    n_ff: int | None = None,
) -> dict:
    """Median stock and FastV prefill times, alternating configurations each repetition.

    Args:
        model_path: a llama-architecture GGUF.
        k: K, the layers that see every token.
        drop_ratios: the R values to measure.
        n_image: rows of the pseudo image.
        reps: repetitions after one warm-up round.
        n_threads: CPU threads, fixed for every configuration.
        n_ff: FFN size for the FLOPs formula (read from the GGUF when None).

    Returns:
        {"model", "n_layer", "n_embd", "n_ff", "n_tokens", "k", "n_threads", "reps", "rows": [Row...]}
    """
    runner = Runner(model_path, n_image, n_threads)
    try:
        n_ff = n_ff or runner.info.n_ff
        if not n_ff:
            raise ValueError(f"{model_path} has no feed_forward_length key: pass n_ff for the FLOPs formula")
        samples = {"stock": [], **{r: [] for r in drop_ratios}}
        kept = {}
        for rep in range(reps + 1):  # round 0 warms caches and allocators up
            for cfg in ["stock", *drop_ratios]:
                value = runner.stock() if cfg == "stock" else runner.fastv(k, cfg)
                if cfg != "stock":
                    kept[cfg] = value[3]
                if rep > 0:
                    samples[cfg].append(value)
        stock_ms = statistics.median(s[0] for s in samples["stock"])
        stock_cpu = statistics.median(s[1] for s in samples["stock"])
        rows = []
        for r in drop_ratios:
            shallow = statistics.median(s[0] for s in samples[r])
            deep = statistics.median(s[1] for s in samples[r])
            cpu = statistics.median(s[2] for s in samples[r])
            theory = flops_ratio(
                runner.n_tokens, n_image, kept[r], n_layer=runner.n_layer, layer=k, n_embd=runner.n_embd, n_ff=n_ff
            )
            rows.append(
                Row(r, n_image, kept[r], stock_ms, shallow, deep, (shallow + deep) / stock_ms, cpu / stock_cpu, theory)
            )
        return {
            "model": Path(model_path).name,
            "n_layer": runner.n_layer,
            "n_embd": runner.n_embd,
            "n_ff": n_ff,
            "n_tokens": runner.n_tokens,
            "k": k,
            "n_threads": n_threads,
            "reps": reps,
            "rows": [asdict(row) for row in rows],
        }
    finally:
        runner.close()


def format_table(result: dict) -> str:
    head = (
        f"{result['model']}: L={result['n_layer']} d={result['n_embd']} m={result['n_ff']} "
        f"n={result['n_tokens']} K={result['k']} threads={result['n_threads']} reps={result['reps']} (medians)"
    )
    cols = (
        f"{'R':>5} {'kept':>9} {'stock ms':>9} {'phase1 ms':>9} {'phase2 ms':>9} {'wall':>6} {'cpu':>6} {'theory':>7}"
    )
    lines = [head, cols]
    for r in result["rows"]:
        lines.append(
            f"{r['drop_ratio']:>5.2f} {r['n_kept']:>4}/{r['n_image']:<4} {r['stock_ms']:>9.1f} "
            f"{r['shallow_ms']:>9.1f} {r['deep_ms']:>9.1f} {r['ratio']:>6.3f} {r['cpu_ratio']:>6.3f} "
            f"{r['theory']:>7.3f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="GGUF path (repeatable)")
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("--drop-ratio", type=float, action="append", help="R values (default .5 .75 .9)")
    parser.add_argument("--n-image", type=int, default=576)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    results = []
    for model in args.model:
        result = measure(
            model,
            k=args.k,
            drop_ratios=tuple(args.drop_ratio or (0.5, 0.75, 0.9)),
            n_image=args.n_image,
            reps=args.reps,
            n_threads=args.threads,
        )
        print(format_table(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
