"""`fastv-edge calibrate`: measure this machine's cost model (cost_model.CostModel) for one model pair.

    cost = calibrate(model, progress)          # about a minute on a 2-7B model, seconds on a tiny one

What is measured, each on the loaded model with its thread count:
1. the vision encoder: synthetic pictures sized to a ladder of token counts for a dynamic-resolution
   projector whose resize rule is known (until the time target is spent, at least three sizes; the
   curve over patches is fitted, monotone); one picture for a fixed-resolution one (one number);
   mtmd_encode_chunk is timed directly, so no embedding cache can answer instead;
2. the LLM: stock prefills of two prompt lengths (text + pseudo-image rows), lengths chosen from
   the first one's speed to fit the time target, and FastV at K=2 (shallow and deep stage) on the
   longer one and on a long prompt (the largest image to plan for: cheap, since the shallow stage
   runs K layers); one joint fit gives the per-layer costs and each stage's fixed cost
   (cost_model.fit_prefill);
3. pre-LLM selection, each strategy on random rows of the model's width at three N and two k;
4. a whole request (tokenize, encode, prefill, first token) and mtmd's resize of a large picture:
   what the parts above leave out.
Where the machine is shared, the numbers include its neighbours: calibrate on a quiet machine.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

from .cap_tokens import rule_for
from .config import PruneConfig
from .cost_model import CostModel, PrefillSample, fit_encode, fit_prefill, fit_select
from .prefill import Progress, no_progress

ENCODE_TARGET_S = 25.0  # vision-encoder measurements stop adding sizes after this
PREFILL_TARGET_S = 30.0  # LLM measurements: lengths are chosen to take about this in total
# g x g token grids, x4 apart: three sizes spanning 16x constrain the curve's growth (its quadratic
# term extrapolates to photos of 1000-2000 tokens) better than three close ones
ENCODE_LADDER = (16, 64, 256, 1024, 4096)
MIN_ENCODE_SIZES = 3
CALIBRATION_LAYER = 2  # FastV's K in the measurement (the planner's default)
LONG_PROMPT = 2048  # image rows of the long prompt of a dynamic-resolution model (bounded by the context)
SELECT_STRATEGIES = ("divprune", "dart", "cdpruner", "random")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _clear(model) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
    model._cache_owner = None  # the next request starts a fresh conversation


def _image_prompt(model, image):
    from .prompt import tokenize

    return tokenize(model.llm, model.mtmd_ctx, model.marker, [image], add_special=False)


def _encode_once(model, image) -> tuple[int, float]:
    """(tokens, ms) of one mtmd_encode_chunk of `image` (preprocessing not timed)."""
    import llama_cpp.mtmd_cpp as mtmd

    from .errors import NativeError

    with _image_prompt(model, image) as prompt:
        piece = prompt.images[0]
        t0 = time.perf_counter()
        rc = mtmd.mtmd_encode_chunk(model.mtmd_ctx, piece.chunk)
        ms = (time.perf_counter() - t0) * 1e3
        if rc != 0:
            raise NativeError("mtmd_encode_chunk", rc, "calibration picture: the vision encoder failed")
        return piece.n_tokens, ms


def measure_encode(model, progress: Progress) -> tuple[list[int], list[float], object]:
    """Encode times over a ladder of sizes (dynamic resolution) or of one picture (fixed).

    Returns:
        (token counts, ms, the resize rule or None).
    """
    from .bench.workload import synthetic_picture
    from .gguf_header import read_header

    header = read_header(model.mmproj.path)
    rule = rule_for(
        model.mmproj.projector_type,
        header.get("clip.vision.patch_size"),
        header.get("clip.vision.spatial_merge_size"),
    )
    if rule is None:
        img = synthetic_picture(0, 640, 480)
        with progress("calibrate: vision encoder, one picture"):
            n, first = _encode_once(model, img)
            times = [first] + ([_encode_once(model, img)[1]] if first < 3000 else [])
        return [n], [statistics.median(times)], None
    # an image larger than the context is of no use to plan for (its tokens do not fit)
    limit = min(model.runtime.image_max_tokens or rule.default_max_tokens, model.n_ctx)
    tokens, times, spent = [], [], 0.0
    for i, target in enumerate(t for t in ENCODE_LADDER if t <= limit):
        g = math.isqrt(target)
        # the next size's time, guessed as quadratic in tokens (attention): stop before the target is spent
        if i >= MIN_ENCODE_SIZES and spent + times[-1] * (target / tokens[-1]) ** 2 > ENCODE_TARGET_S * 1e3:
            break
        img = synthetic_picture(i, g * rule.align, g * rule.align)
        with progress(f"calibrate: vision encoder, {target} tokens"):
            n, ms = _encode_once(model, img)
        tokens.append(n)
        times.append(ms)
        spent += ms
    return tokens, times, rule


def _text_tokens(model, n: int) -> list[int]:
    sentence = b" The quick brown fox jumps over the lazy dog near the river bank at dawn."
    ids = list(model.llm.tokenize(sentence, add_bos=False, special=False))
    return (ids * (n // max(len(ids), 1) + 1))[:n]


class _Prompts:
    """Calibration prompts: a few text tokens, N pseudo-image rows, a few text tokens."""

    N_TEXT = 16

    def __init__(self, model):
        from .prompt import pseudo_image

        self.model = model
        self.pre = _text_tokens(model, self.N_TEXT // 2)
        self.post = _text_tokens(model, self.N_TEXT - self.N_TEXT // 2)
        self.max_image = model.n_ctx - self.N_TEXT
        if model.info.architecture == "gemma3":  # one non-causal block must fit one ubatch
            import llama_cpp

            self.max_image = min(self.max_image, llama_cpp.llama_n_ubatch(model.ctx))
        self.rows = pseudo_image(model, self.max_image, seed=0)

    def run(self, n_image: int, prune: PruneConfig):
        """Prefill N image rows with the text around them; returns PrefillStats."""
        from .prefill import prefill
        from .prompt import ImagePiece, Prompt, TextPiece

        src = self.rows
        grid = (
            None if src.grid is None else (math.ceil(math.sqrt(n_image)), -(-n_image // math.ceil(math.sqrt(n_image))))
        )
        n_pos = n_image if grid is None else max(grid)
        piece = ImagePiece(n_image, n_pos, src.non_causal, "calibration", embd=src.embd[:n_image], grid=grid)
        prompt = Prompt([TextPiece(self.pre), piece, TextPiece(self.post)])
        _clear(self.model)
        try:
            return prefill(self.model.target, prompt, n_past=0, prune=prune)[1]
        finally:
            _clear(self.model)


def measure_prefill(model, progress: Progress, fastv: bool, n_long: int) -> list[PrefillSample]:
    """Stock prefills at two lengths and FastV (shallow + deep) at the longer one and at a long prompt.

    The lengths follow the first prefill's speed so that the stock ones take about PREFILL_TARGET_S
    together. The long prompt (n_long image rows: the largest image the planner will meet) costs
    little through FastV, whose shallow stage runs only K layers: it gives the per-layer cost of
    large batches without a whole long prefill. Without FastV a third stock length stands in.
    """
    prompts = _Prompts(model)
    t = prompts.N_TEXT
    stock = PruneConfig(strategy="none")
    prompts.run(min(16, prompts.max_image), stock)  # warm-up: first-use allocations
    samples = []

    def stock_sample(n_image: int) -> float:
        with progress(f"calibrate: prefill of {t + n_image} tokens"):
            ms = prompts.run(n_image, stock).prefill_ms
        samples.append(PrefillSample("stock", t + n_image, t + n_image, 0, ms))
        return ms

    def fastv_sample(n_image: int, keep: int) -> None:
        prune = PruneConfig(strategy="fastv", layer=CALIBRATION_LAYER, keep=keep)
        with progress(f"calibrate: FastV K={CALIBRATION_LAYER} on {t + n_image} tokens, keeping {keep} image tokens"):
            st = prompts.run(n_image, prune)
        samples.append(PrefillSample("shallow", t + n_image, t + n_image, CALIBRATION_LAYER, st.shallow_ms))
        samples.append(PrefillSample("deep", t + n_image, t + keep, CALIBRATION_LAYER, st.deep_ms))

    n1 = min(32, prompts.max_image)
    per_token = stock_sample(n1) / (t + n1)
    budget_tokens = int(0.35 * PREFILL_TARGET_S * 1e3 / per_token)  # the longer stock prefill: ~35% of the target
    n3 = max(min(budget_tokens, 1024, prompts.max_image), min(128, prompts.max_image))
    if not fastv or model.info.n_layer <= CALIBRATION_LAYER:
        for n in sorted({max(n3 // 3, n1 + 1), n3} - {n1}):
            stock_sample(n)
        return samples
    if n3 != n1:
        stock_sample(n3)
    fastv_sample(n3, n3 // 2)
    n_long = min(prompts.max_image, max(n_long, n3))
    fastv_sample(n_long, min(16, n_long // 4))
    return samples


def measure_select(model, n_values, progress: Progress) -> dict[str, list[tuple[int, int, float]]]:
    """Selection times per strategy on random rows of the model's input width."""
    import llama_cpp

    from .selection import select

    d = llama_cpp.llama_model_n_embd_inp(model.llm.model)
    rng = np.random.default_rng(0)
    out = {s: [] for s in SELECT_STRATEGIES}
    text_ids = _text_tokens(model, 16)
    for n in n_values:
        embd = rng.standard_normal((n, d), dtype=np.float32)  # (N, n_embd_inp)
        for k in sorted({max(1, n // 8), max(1, n // 2)}):
            with progress(f"calibrate: selection of {k} of {n} tokens"):
                for s in SELECT_STRATEGIES:

                    def run(s=s, k=k, embd=embd):
                        text = model.text_rows(text_ids) if s == "cdpruner" else None  # (T, n_embd)
                        select(s, embd, k, text_embd=text)

                    out[s].append((n, k, _timed(run)))
    return out


def measure_request(model, rule) -> tuple[float, float]:
    """(ms of a whole small request not spent in encode, selection or prefill; mtmd's resize ms per megapixel)."""
    from .bench.workload import synthetic_picture
    from .generate import stream_generate

    small = synthetic_picture(7, 64, 48) if rule is None else synthetic_picture(7, 4 * rule.align, 4 * rule.align)
    # a few image tokens enter the LLM (a fixed-resolution image has hundreds): the parts are
    # measured inside the request, so what is left is the request's own overhead
    few = PruneConfig(strategy="random", layer=0, keep=8)
    stream = stream_generate(
        model, f"{model.marker}Describe it.", [small], prune=few, max_tokens=1, apply_template=False
    )
    last = list(stream)[-1]
    _clear(model)
    parts = last.encode_ms + last.stats.select_ms + last.prefill_ms
    fixed = max(last.ttft_ms - parts, 0.0)
    sizes = [(640, 480), (1600, 1200)]
    cost = []
    for nx, ny in sizes:
        img = synthetic_picture(8, nx, ny)

        def tok(img=img):
            _image_prompt(model, img).close()

        cost.append(min(_timed(tok) for _ in range(2)))
    mpx = [nx * ny / 1e6 for nx, ny in sizes]
    per_mpx = max((cost[1] - cost[0]) / (mpx[1] - mpx[0]), 0.0)
    return fixed, per_mpx


def measure_reopen(model) -> float:
    """ms to re-open mtmd with a smaller image-token cap, as a plan does before its request (0 when
    the projector ignores caps). Restoring the cap afterwards is not timed: it follows the answer."""
    if not model.image_tokens_honoured:
        return 0.0
    before = (model.runtime.image_min_tokens, model.runtime.image_max_tokens)
    other = 256 if before[1] != 256 else 64
    times = []
    for _ in range(2):
        times.append(_timed(lambda: model.set_image_tokens(before[0], other)))
        model.set_image_tokens(*before)
    return min(times)


def measure_cached_read(n_tokens: int, n_embd: int) -> float:
    """ms to read an image's rows back from the embedding cache's disk store (a cached image's encode)."""
    import tempfile

    from .embedding_store import DiskStore

    rows = np.random.default_rng(0).standard_normal((n_tokens, n_embd), dtype=np.float32)  # (N, n_embd_inp)
    with tempfile.TemporaryDirectory(prefix="fastv-edge-calibrate-") as tmp:
        store = DiskStore(tmp, 1 << 40)
        store.write("calibration", rows, {})
        return min(_timed(lambda: store.read("calibration", rows.shape)) for _ in range(3))


def calibrate(model, progress: Progress = no_progress, *, log=None) -> CostModel:
    """Measure and fit this machine's cost model for a loaded model pair.

    Args:
        model: a Model loaded with its mmproj (the thread count it was loaded with is measured).
        progress: progress(message) -> context manager around each measurement.
        log: optional callable(str) for one summary line per part.

    Returns:
        The fitted CostModel (meta: what was measured and the fit's relative errors).

    Raises:
        ValueError: a model without an mmproj (there is no image to plan for).
    """
    from .model import FASTV_ARCHITECTURES

    if model.mtmd_ctx is None:
        raise ValueError("calibration needs the model's mmproj (--mmproj): the planner plans image tokens")
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    _clear(model)
    tokens, enc_ms, rule = measure_encode(model, progress)
    merge = rule.merge**2 if rule is not None else 1
    encode = fit_encode([n * merge for n in tokens], enc_ms, merge)
    if rule is None:
        encode = type(encode)(encode.coef, 1, tokens[0])
    say(f"vision encoder: {', '.join(f'{n} tokens {ms / 1e3:.2f} s' for n, ms in zip(tokens, enc_ms, strict=True))}")
    fastv = model.info.architecture in FASTV_ARCHITECTURES
    n_long = tokens[0] + 64 if rule is None else LONG_PROMPT  # the largest prompt to plan for
    samples = measure_prefill(model, progress, fastv, n_long)
    fit = fit_prefill(samples, model.info.n_layer)
    say("prefill: " + ", ".join(f"{s.stage} {s.n}->{s.kept} {s.ms / 1e3:.2f} s" for s in samples))
    n_sel = sorted({64, 256, max(tokens)})
    sel_samples = measure_select(model, n_sel, progress)
    select = {s: fit_select(v) for s, v in sel_samples.items()}
    with progress("calibrate: a whole request, re-opening mtmd, reading a cached image"):
        fixed, per_mpx = measure_request(model, rule)
        reopen = measure_reopen(model)
        cached = measure_cached_read(max(tokens), model.encoder.n_embd_inp)
    cost = CostModel(
        n_layer=model.info.n_layer,
        encode=encode,
        select=select,
        request_fixed_ms=fixed,
        preprocess_ms_per_mpixel=per_mpx,
        cached_image_ms=cached,
        mtmd_reopen_ms=reopen,
        **fit,
    )
    meta = _meta(model, cost, tokens, enc_ms, samples, sel_samples, time.perf_counter() - t0, fastv)
    return CostModel(**{**cost.__dict__, "meta": meta})


def _meta(model, cost, tokens, enc_ms, samples, sel_samples, seconds, fastv) -> dict:
    def err(pred, meas):
        return round((pred - meas) / meas, 4)

    prefill_err = []
    for s in samples:
        if s.stage == "stock":
            pred = cost.prefill_ms(s.n)
        else:
            sh, dp = cost.fastv_ms(s.n, s.kept, s.layer)
            pred = sh if s.stage == "shallow" else dp
        prefill_err.append(err(pred, s.ms))
    return {
        "seconds": round(seconds, 1),
        "threads": model.runtime.threads,
        "fastv": fastv,
        "encode": {"tokens": tokens, "ms": [round(x, 2) for x in enc_ms]},
        "encode_fit_rel_err": [err(cost.encode.ms(n), ms) for n, ms in zip(tokens, enc_ms, strict=True)],
        "prefill": [vars(s) for s in samples],
        "prefill_fit_rel_err": prefill_err,
        "select": {k: [list(x) for x in v] for k, v in sel_samples.items()},
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def summary_lines(cost: CostModel) -> list[str]:
    """What a calibration found, a few human lines (`fastv-edge calibrate`)."""
    meta, enc = cost.meta, cost.encode
    sizes = meta.get("encode", {})
    pairs = zip(sizes.get("tokens", []), sizes.get("ms", []), strict=True)
    measured = ", ".join(f"{n} tokens {ms / 1e3:.2f} s" for n, ms in pairs)
    kind = f"fixed resolution, {enc.fixed_tokens} tokens per image" if enc.fixed_tokens else "dynamic resolution"
    n_ref = enc.fixed_tokens or 576
    lines = [
        f"vision encoder ({kind}): {measured}",
        f"LLM prefill: {cost.layer_token_ms * 1e3:.1f} us per token per layer + {cost.layer_pair_ms * 1e6:.2f} ns per "
        f"token pair per layer, {cost.n_layer} layers: {n_ref + 64} tokens predicted "
        f"{cost.prefill_ms(n_ref + 64) / 1e3:.2f} s",
    ]
    if meta.get("fastv"):
        sh, dp = cost.fastv_ms(n_ref + 64, 64 + n_ref // 4, CALIBRATION_LAYER)
        lines.append(
            f"FastV K={CALIBRATION_LAYER} keeping a quarter of {n_ref} image tokens: shallow {sh / 1e3:.2f} s + "
            f"deep {dp / 1e3:.2f} s"
        )
    sel = ", ".join(f"{s} {cost.select_ms(s, n_ref, n_ref // 4):.0f} ms" for s in cost.select)
    lines.append(f"selection of {n_ref // 4} of {n_ref} tokens: {sel}")
    lines.append(
        f"per request: {cost.request_fixed_ms:.0f} ms fixed, {cost.preprocess_ms_per_mpixel:.0f} ms per input "
        f"megapixel, {cost.mtmd_reopen_ms:.0f} ms to change the cap, {cost.cached_image_ms:.1f} ms per cached image"
    )
    errs = [abs(e) for e in meta.get("encode_fit_rel_err", []) + meta.get("prefill_fit_rel_err", [])]
    if errs:
        lines.append(
            f"fit: median |error| {statistics.median(errs):.0%} over {len(errs)} measurements, measured in "
            f"{meta.get('seconds')} s with {meta.get('threads')} thread(s), load average {meta.get('loadavg')}"
        )
    return lines
