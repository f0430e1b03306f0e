"""What a request's first token costs on this machine: the fitted model the TTFT planner predicts with.

    TTFT = request_fixed                              tokenize, sampler, first token
         + preprocess_ms_per_mpixel * megapixels      mtmd's resize of the input images
         + mtmd_reopen_ms, when the plan's cap differs from the open one
         + sum over images: encode(patches_i)         vision encoder (cached image: cached_image_ms)
         + select(strategy, N_i, B1_i)                pre-LLM selection, outside llama.cpp
         + prefill                                    the LLM, one of:
             stock / pre-LLM:  L * layer(T + B1) + stock_fixed
             FastV at K:       K * layer(T + B1) + shallow_fixed + (L - K) * layer(T + B2 | T + B1) + deep_fixed

    layer(m | n) = layer_token_ms * m + layer_pair_ms * m * (past + n)

one layer's time for m new tokens that attend over past + n cells (n = m unless FastV's deep stage
replays m of the n cells decoded). T text tokens, N image tokens, B1 of them enter the LLM, B2
reach the layers >= K. encode(p) = e0 + e1 p + e2 p^2 over the patches before merging (ViT
attention makes it grow faster than linear); a fixed-resolution projector has one number.

Pure Python + NumPy: `fit_*` turn measurements into coefficients (non-negative least squares on
relative errors, so every fitted curve is monotone), `CostModel.to_dict/from_dict` store them.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np

COST_MODEL_VERSION = 2  # bump when a field or its meaning changes: stored calibrations are then redone


@dataclass(frozen=True)
class EncodeCost:
    """Vision-encoder time of one image.

    coef: (e0, e1, e2) ms with ms = e0 + e1 p + e2 p^2, p = patches before merging
    (tokens * patches_per_token). A fixed-resolution projector has e1 = e2 = 0.
    """

    coef: tuple[float, float, float]
    patches_per_token: int = 1  # the spatial merge squared (Qwen-VL: 4)
    fixed_tokens: int | None = None  # tokens of every image for a fixed-resolution projector

    def ms(self, n_tokens: int) -> float:
        """Predicted encode time of an image of n_tokens tokens."""
        p = n_tokens * self.patches_per_token
        e0, e1, e2 = self.coef
        return e0 + e1 * p + e2 * p * p


@dataclass(frozen=True)
class SelectCost:
    """Pre-LLM selection time of one image: ms = c0 + c_nn N^2 + c_nk N k + c_nkk N k^2.

    N^2: the cosine-similarity matrix (divprune, cdpruner); N k: greedy passes over the tokens;
    N k^2: cdpruner's incremental Cholesky.
    """

    coef: tuple[float, float, float, float]

    def ms(self, n: float, k: float) -> float:
        """Predicted selection time of k of n tokens."""
        c0, c_nn, c_nk, c_nkk = self.coef
        return c0 + c_nn * n * n + c_nk * n * k + c_nkk * n * k * k


@dataclass(frozen=True)
class CostModel:
    """A model pair's costs on one machine with one thread count (see the module docstring)."""

    n_layer: int
    layer_token_ms: float
    layer_pair_ms: float
    stock_fixed_ms: float
    shallow_fixed_ms: float
    deep_fixed_ms: float
    encode: EncodeCost
    select: dict[str, SelectCost]
    request_fixed_ms: float = 0.0
    preprocess_ms_per_mpixel: float = 0.0
    cached_image_ms: float = 0.0
    mtmd_reopen_ms: float = 0.0
    meta: dict = field(default_factory=dict)  # what was measured, where, and how well the fit matches

    def layer_ms(self, m: float, ctx: float) -> float:
        """One layer, m new tokens attending over ctx cells."""
        return self.layer_token_ms * m + self.layer_pair_ms * m * ctx

    def prefill_ms(self, m: float, past: int = 0) -> float:
        """Stock prefill of m tokens after `past` cells (every layer, the output head)."""
        return self.n_layer * self.layer_ms(m, past + m) + self.stock_fixed_ms

    def fastv_ms(self, n: float, kept: float, layer: int, past: int = 0) -> tuple[float, float]:
        """FastV's (shallow, deep) stages: n tokens through layers [0, K), kept of them through [K, L)."""
        shallow = layer * self.layer_ms(n, past + n) + self.shallow_fixed_ms
        deep = (self.n_layer - layer) * self.layer_ms(kept, past + n) + self.deep_fixed_ms
        return shallow, deep

    def select_ms(self, strategy: str, n: float, k: float) -> float:
        """Selection time of one image; strategies that were not calibrated raise KeyError."""
        return self.select[strategy].ms(n, k)

    def scaled(self, factor: float) -> CostModel:
        """Every time of the model multiplied by factor (the machine found faster or slower than calibrated)."""
        times = {k: getattr(self, k) * factor for k in _SCALARS if k != "n_layer"}
        enc = EncodeCost(
            tuple(c * factor for c in self.encode.coef), self.encode.patches_per_token, self.encode.fixed_tokens
        )
        select = {k: SelectCost(tuple(c * factor for c in v.coef)) for k, v in self.select.items()}
        return CostModel(n_layer=self.n_layer, encode=enc, select=select, meta=self.meta, **times)

    def to_dict(self) -> dict:
        """JSON-ready form (with COST_MODEL_VERSION)."""
        return {"version": COST_MODEL_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> CostModel:
        """Inverse of to_dict.

        Raises:
            ValueError: another version or missing fields.
        """
        if data.get("version") != COST_MODEL_VERSION:
            raise ValueError(f"cost model version {data.get('version')!r}, expected {COST_MODEL_VERSION}")
        try:
            enc = data["encode"]
            encode = EncodeCost(tuple(enc["coef"]), enc["patches_per_token"], enc["fixed_tokens"])
            select = {k: SelectCost(tuple(v["coef"])) for k, v in data["select"].items()}
            scalars = {k: data[k] for k in _SCALARS}
        except (KeyError, TypeError) as e:
            raise ValueError(f"cost model lacks {e}") from None
        return cls(encode=encode, select=select, meta=dict(data.get("meta", {})), **scalars)


_SCALARS = (
    "n_layer",
    "layer_token_ms",
    "layer_pair_ms",
    "stock_fixed_ms",
    "shallow_fixed_ms",
    "deep_fixed_ms",
    "request_fixed_ms",
    "preprocess_ms_per_mpixel",
    "cached_image_ms",
    "mtmd_reopen_ms",
)


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0, exactly, by trying every set of free variables (few unknowns only).

    Args:
        a: (n_rows, n_unknowns) with n_unknowns <= 8.
        b: (n_rows,).

    Returns:
        (n_unknowns,) the non-negative solution with the smallest residual.
    """
    a = np.asarray(a, dtype=np.float64)  # (n_rows, n_unknowns)
    b = np.asarray(b, dtype=np.float64)  # (n_rows,)
    n = a.shape[1]
    if n > 8:
        raise ValueError(f"nnls enumerates subsets: at most 8 unknowns, got {n}")
    best, best_res = np.zeros(n), float(np.sum(b * b))
    for size in range(1, n + 1):
        for cols in itertools.combinations(range(n), size):
            x_sub, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.any(x_sub < 0):
                continue
            x = np.zeros(n)
            x[list(cols)] = x_sub
            res = float(np.sum((a @ x - b) ** 2))
            if res < best_res - 1e-12 * max(best_res, 1.0):
                best, best_res = x, res
    return best


def relative_fit(rows: list[list[float]], measured: list[float]) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative error of each measurement.

    Args:
        rows: one feature row per measurement.
        measured: the measured times (ms, > 0).

    Returns:
        The coefficients (one per feature).
    """
    a = np.asarray(rows, dtype=np.float64)  # (n_meas, n_features)
    y = np.asarray(measured, dtype=np.float64)  # (n_meas,)
    if np.any(y <= 0):
        raise ValueError(f"measured times must be > 0, got {measured}")
    return nnls(a / y[:, None], np.ones_like(y))


def fit_encode(patches: list[int], ms: list[float], patches_per_token: int) -> EncodeCost:
    """Fit encode(p) = e0 + e1 p + e2 p^2 >= 0 coefficient-wise (monotone in p).

    One measurement (or one distinct size) gives a constant: a fixed-resolution projector.

    Args:
        patches: patches per measured image (tokens x patches_per_token).
        ms: the measured encode times.
        patches_per_token: the spatial merge squared.

    Returns:
        The EncodeCost.
    """
    if len(set(patches)) < 2:
        return EncodeCost((float(np.median(ms)), 0.0, 0.0), patches_per_token)
    rows = [[1.0, p, float(p) * p] for p in patches]
    e0, e1, e2 = relative_fit(rows, ms)
    return EncodeCost((float(e0), float(e1), float(e2)), patches_per_token)


@dataclass
class PrefillSample:
    """One measured LLM stage: which stage, its token counts, its time."""

    stage: str  # 'stock', 'shallow' or 'deep'
    n: int  # tokens decoded (the whole prompt)
    kept: int  # tokens the deep stage replays (= n for stock and shallow)
    layer: int  # K (0 for stock)
    ms: float
    past: int = 0


def fit_prefill(samples: list[PrefillSample], n_layer: int) -> dict[str, float]:
    """Fit the per-layer costs and the three stages' fixed costs jointly.

    Args:
        samples: stock prefills of several lengths and FastV shallow/deep stages.
        n_layer: L.

    Returns:
        {layer_token_ms, layer_pair_ms, stock_fixed_ms, shallow_fixed_ms, deep_fixed_ms}.
    """
    rows = []
    stages = ("stock", "shallow", "deep")
    for s in samples:
        layers = {"stock": n_layer, "shallow": s.layer, "deep": n_layer - s.layer}[s.stage]
        m = s.kept if s.stage == "deep" else s.n
        one_hot = [1.0 if s.stage == name else 0.0 for name in stages]
        rows.append([layers * m, layers * m * (s.past + s.n), *one_hot])
    x = relative_fit(rows, [s.ms for s in samples])
    keys = ("layer_token_ms", "layer_pair_ms", "stock_fixed_ms", "shallow_fixed_ms", "deep_fixed_ms")
    return {k: float(v) for k, v in zip(keys, x, strict=True)}


def fit_select(samples: list[tuple[int, int, float]]) -> SelectCost:
    """Fit one strategy's selection time from (N, k, ms) samples."""
    rows = [[1.0, float(n) * n, float(n) * k, float(n) * k * k] for n, k, _ in samples]
    return SelectCost(tuple(float(c) for c in relative_fit(rows, [ms for _, _, ms in samples])))
