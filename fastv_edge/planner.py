"""The TTFT-budget planner: the image-token cap and the pruning that keep the most image tokens in time.

Pure Python over a fitted cost model (cost_model.CostModel): no llama.cpp. Given a request (its
text tokens, and per candidate cap the images' token counts and whether each is cached) and a
budget, every plan family is tried at every cap:

    none          every image token (the cap alone is the only reduction)        0 pruning stages
    pre-LLM       cdpruner | divprune | dart | random keeps B of N before the LLM  1 stage
    fastv         FastV at layer K keeps B of N from layer K on                    1 stage
    two-stage     pre-LLM to B1, then FastV at K to B2                             2 stages

and for each the largest keep count whose predicted TTFT fits the budget (binary search: the
prediction grows with every budget). The plans are then ranked, best first, by:

 1. the RUNGS step of the image tokens the deepest layers see (B, or B2): more is better.
    Counts are compared in steps of about 1.5x (RUNGS) so that a few tokens gained by a cheaper
    selection do not outweigh the order below;
 2. fewer pruning stages (a cap is not one: plain downsampling is the baseline selection has to
    beat, VTC-Bench arXiv 2510.07143);
 3. the more accurate strategy, by PREFERENCE (the one table of it);
 4. more image tokens before pruning (a larger cap: more of the picture's detail to choose from),
    then more tokens entering the LLM (B1), then more kept tokens, then the faster prediction.

In this ordering a pre-LLM cut to B is never slower than FastV or two stages ending at B (they
run layers < K on more tokens), so those win only when asked for (`families`) or on a tie of
rung, stages and preference. A budget no plan meets raises BudgetTooSmallError, naming the
smallest predicted TTFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .config import PreSelect, PruneConfig
from .cost_model import CostModel
from .pruning import split_budget

# Most accurate first; the reason per row. Sources: docs/easyvqa.md (this project's model) and the
# papers summarised in the design notes on token selection (LLaVA-1.5-7B, share of the unpruned score).
PREFERENCE = (
    ("none", "keeps every token of the (capped) image"),
    ("cdpruner", "~99% / 97% of the unpruned score at 128 / 64 of 576 tokens (arXiv 2506.10967)"),
    ("divprune", "~98% / 97% / 95% at 192 / 128 / 64 of 576 tokens (arXiv 2503.02175)"),
    ("dart", "~lossless at 25% removed, 1-2 points lost at 50% (embedding-level variant, arXiv 2502.11494)"),
    ("random", "a strong baseline (UniPruneBench, arXiv 2511.02650) but blind to content"),
    ("fastv", "below DivPrune at equal budgets in the papers; never above random selection on easy-vqa"),
)
PRE_FAMILIES = ("cdpruner", "divprune", "dart", "random")
DEFAULT_FAMILIES = ("none", "cdpruner", "divprune", "dart", "fastv", *(f"{s}+fastv" for s in ("divprune", "dart")))
RUNGS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
MIN_KEEP = 16  # fewer image tokens are not worth a plan; a budget that needs fewer is refused
DEFAULT_CAPS = (16, 24, 36, 64, 100, 144, 196, 256, 324, 400, 576, 784, 1024, 1296, 1600, 2048, 2500, 3136, 4096)


class BudgetTooSmallError(ValueError):
    """No plan's predicted TTFT fits the budget; `minimum_s` is the smallest prediction."""

    def __init__(self, message: str, minimum_s: float):
        super().__init__(message)
        self.minimum_s = minimum_s


@dataclass(frozen=True)
class CapOption:
    """The images of a request under one cap.

    cap: image_max_tokens to open mtmd with (None: the projector's default).
    tokens: each image's token count under it. cached: each image's embeddings are in the cache.
    reopen: taking this cap re-opens mtmd (it differs from the cap mtmd is open with).
    """

    cap: int | None
    tokens: tuple[int, ...]
    cached: tuple[bool, ...] = ()
    reopen: bool = False

    def __post_init__(self):
        if not self.cached:
            object.__setattr__(self, "cached", (False,) * len(self.tokens))
        if len(self.cached) != len(self.tokens) or any(n < 1 for n in self.tokens):
            raise ValueError(f"cap option needs one token count >= 1 and one cached flag per image: {self}")

    @property
    def n_image(self) -> int:
        return sum(self.tokens)


@dataclass(frozen=True)
class Request:
    """What the planner needs of a request: text tokens, cells already used, the cap options."""

    n_text: int
    options: tuple[CapOption, ...]
    n_past: int = 0
    n_ctx: int | None = None  # refuse plans whose cells do not fit (None: no limit)
    n_pixels: int = 0  # pixels of the input images (mtmd resizes them: part of the fixed cost)


@dataclass(frozen=True)
class Plan:
    """A chosen (or candidate) plan and its prediction, all times in ms."""

    family: str  # 'none', 'divprune', 'fastv', 'divprune+fastv', ...
    cap: int | None
    n_image: int  # N under the cap
    n_enter: int  # B1: image tokens that enter the LLM
    n_kept: int  # B2: image tokens the layers >= K see (B1 without FastV)
    layer: int  # K of FastV (0: none)
    predicted_ms: float
    parts: dict = field(default_factory=dict)  # encode, select, prefill, fixed
    budget_ms: float | None = None
    speed_factor: float = 1.0  # the calibration's times were scaled by this (budget.speed_factor)

    @property
    def stages(self) -> int:
        return 0 if self.family == "none" else self.family.count("+") + 1

    def prune_config(self, seed: int = 0, relevance_weight: float = 0.5) -> PruneConfig:
        """The PruneConfig that runs this plan (its cap goes to mtmd separately)."""
        pre, _, main = self.family.partition("+")
        if self.family == "none":
            return PruneConfig(strategy="none")
        if self.family == "fastv":
            return PruneConfig(strategy="fastv", layer=self.layer, keep=self.n_kept)
        if main:  # two stages
            stage = PreSelect(pre, keep=self.n_enter, seed=seed, relevance_weight=relevance_weight)
            return PruneConfig(strategy=main, layer=self.layer, keep=self.n_kept, pre=stage)
        return PruneConfig(strategy=pre, layer=0, keep=self.n_kept, seed=seed, relevance_weight=relevance_weight)

    def describe(self) -> str:
        """One line, e.g. 'cap 256 -> 252 image tokens, divprune keeps 128: predicted TTFT 3.41 s'."""
        cap = "no cap" if self.cap is None else f"cap {self.cap}"
        if self.family == "none":
            what = "all kept"
        elif self.family == "fastv":
            what = f"fastv K={self.layer} keeps {self.n_kept}"
        elif "+" in self.family:
            pre = self.family.split("+")[0]
            what = f"{pre} keeps {self.n_enter}, fastv K={self.layer} keeps {self.n_kept}"
        else:
            what = f"{self.family} keeps {self.n_kept}"
        return f"{cap} -> {self.n_image} image tokens, {what}: predicted TTFT {self.predicted_ms / 1e3:.2f} s"


def rung(n: int) -> int:
    """Index of the largest RUNGS step <= n (-1 below the first)."""
    return sum(1 for r in RUNGS if r <= n) - 1


def preference(family: str) -> int:
    """Rank of a family's first-listed strategy in PREFERENCE (0 = most accurate)."""
    names = [name for name, _ in PREFERENCE]
    main = family.split("+")[0]
    return names.index(main) if main in names else len(names)


def predict(cost: CostModel, req: Request, opt: CapOption, family: str, b1: int, b2: int, layer: int) -> Plan:
    """Predicted TTFT of one plan.

    Args:
        cost: the cost model.
        req: the request.
        opt: the cap option (token counts under the cap).
        family: see the module docstring.
        b1: image tokens entering the LLM.
        b2: image tokens reaching layers >= K (= b1 without FastV).
        layer: K (used by FastV families only).

    Returns:
        The Plan with its prediction and parts.
    """
    encode = sum(
        cost.cached_image_ms if cached else cost.encode.ms(n) for n, cached in zip(opt.tokens, opt.cached, strict=True)
    )
    pre, _, main = family.partition("+")
    select = 0.0
    if pre in PRE_FAMILIES:
        shares = split_budget(list(opt.tokens), b1)
        select = sum(cost.select_ms(pre, n, k) for n, k in zip(opt.tokens, shares, strict=True))
    n_in = req.n_text + b1
    if family == "fastv" or main == "fastv":
        shallow, deep = cost.fastv_ms(n_in, req.n_text + b2, layer, req.n_past)
        prefill = shallow + deep
    else:
        prefill = cost.prefill_ms(n_in, req.n_past)
    fixed = cost.request_fixed_ms + cost.preprocess_ms_per_mpixel * req.n_pixels / 1e6
    fixed += cost.mtmd_reopen_ms if opt.reopen else 0.0
    parts = {"fixed": fixed, "encode": encode, "select": select, "prefill": prefill}
    uses_k = family == "fastv" or main == "fastv"
    return Plan(family, opt.cap, opt.n_image, b1, b2, layer if uses_k else 0, sum(parts.values()), parts)


def _largest(fits, lo: int, hi: int) -> int | None:
    """Largest b in [lo, hi] with fits(b) (fits is monotone: true up to some b), or None."""
    if hi < lo or not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _two_stage_b1(n: int, floor: int) -> list[int]:
    """The first-stage budgets a two-stage plan tries: the rungs between floor and N, and the ends."""
    return sorted(b for b in {r for r in RUNGS if floor < r < n} | {floor + 1, n - 1} if floor < b < n)


def _candidates(cost: CostModel, req: Request, opt: CapOption, family: str, layer: int, limit_ms: float):
    """The best plan of one family at one cap within limit_ms: the largest feasible keep (none if none fits)."""
    n = opt.n_image
    floor = min(MIN_KEEP, n)
    room = None if req.n_ctx is None else req.n_ctx - req.n_past - req.n_text

    def ok(plan: Plan) -> bool:
        return plan.predicted_ms <= limit_ms and (room is None or plan.n_enter <= room)

    def at(b1: int, b2: int) -> Plan:
        return predict(cost, req, opt, family, b1, b2, layer)

    if family == "none":
        plan = at(n, n)
        return [plan] if ok(plan) else []
    if "+" not in family:
        fastv = family == "fastv"
        best = _largest(lambda b: ok(at(n, b) if fastv else at(b, b)), floor, n - 1)
        return [] if best is None else [at(n, best) if fastv else at(best, best)]
    plans = []  # two stages: B1 on the rungs below N, the largest B2 < B1 for each
    for b1 in _two_stage_b1(n, floor):
        best = _largest(lambda b, b1=b1: ok(at(b1, b)), floor, b1 - 1)
        if best is not None:
            plans.append(at(b1, best))
    return plans


def rank_key(plan: Plan) -> tuple:
    """Sort key, best first (see the module docstring)."""
    return (
        -rung(plan.n_kept),
        plan.stages,
        preference(plan.family),
        -plan.n_image,
        -plan.n_enter,
        -plan.n_kept,
        plan.predicted_ms,
    )


def check_families(families, cost: CostModel) -> tuple[str, ...]:
    """Validate family names and drop pre-LLM strategies the cost model has no selection cost for."""
    out = []
    for fam in families:
        pre, plus, main = fam.partition("+")
        valid = fam in ("none", "fastv") or (pre in PRE_FAMILIES and (not plus or main == "fastv"))
        if not valid:
            raise ValueError(
                f"unknown plan family {fam!r}; known: none, fastv, {', '.join(PRE_FAMILIES)} and PRE+fastv"
            )
        if pre in PRE_FAMILIES and pre not in cost.select:
            continue
        out.append(fam)
    if not out:
        raise ValueError(f"none of the plan families {tuple(families)} can be predicted with this calibration")
    return tuple(out)


def plan(
    cost: CostModel,
    req: Request,
    budget_s: float,
    *,
    families=DEFAULT_FAMILIES,
    layer: int = 2,
) -> Plan:
    """The best plan whose predicted TTFT is within the budget.

    Args:
        cost: the machine's cost model for this model pair.
        req: the request (text tokens, cap options with per-image token counts and cache state).
        budget_s: the TTFT budget in seconds (> 0).
        families: plan families allowed (DEFAULT_FAMILIES: all but random selection).
        layer: K for the FastV families.

    Returns:
        The chosen Plan (budget_ms set).

    Raises:
        ValueError: a bad budget, family or request.
        BudgetTooSmallError: no plan fits; the message names the smallest predicted TTFT.
    """
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise ValueError(f"ttft_budget must be a number of seconds > 0, got {budget_s!r}")
    if not req.options:
        raise ValueError("the request has no cap options (no images?)")
    if not 1 <= layer < cost.n_layer:
        raise ValueError(f"layer K must be in [1, {cost.n_layer - 1}], got {layer}")
    families = check_families(families, cost)
    limit = budget_s * 1e3
    found = [p for opt in req.options for fam in families for p in _candidates(cost, req, opt, fam, layer, limit)]
    if not found:
        fastest = minimum_plan(cost, req, families, layer)
        least = math.ceil(fastest.predicted_ms / 10) / 100  # seconds, rounded up: that budget is met
        raise BudgetTooSmallError(
            f"a time to first token of {budget_s:g} s is below what this machine can do for this request: the "
            f"fastest plan ({fastest.describe()}) needs {fastest.predicted_ms / 1e3:.2f} s; "
            f"give a budget of at least {least:.2f} s (--ttft-budget, ttft_budget=)",
            fastest.predicted_ms / 1e3,
        )
    best = min(found, key=rank_key)
    return replace(best, budget_ms=limit)


def minimum_plan(cost: CostModel, req: Request, families, layer: int = 2) -> Plan:
    """The plan with the smallest predicted TTFT among the candidates `plan` tries (every family at its
    smallest keep, every cap; a pruning family needs more than MIN_KEEP tokens to prune)."""
    plans = []
    for opt in req.options:
        n, floor = opt.n_image, min(MIN_KEEP, opt.n_image)
        for fam in families:
            if fam == "none":
                plans.append(predict(cost, req, opt, fam, n, n, layer))
            elif floor >= n:
                continue  # nothing to prune
            elif "+" in fam:
                b1 = _two_stage_b1(n, floor)
                if b1:
                    plans.append(predict(cost, req, opt, fam, b1[0], floor, layer))
            else:
                plans.append(predict(cost, req, opt, fam, n if fam == "fastv" else floor, floor, layer))
    return min(plans, key=lambda p: p.predicted_ms)
