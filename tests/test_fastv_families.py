"""FastV on the families edge users run now, against their float64 references.

qwen2, qwen3, mistral3 (plain decoders), qwen3vl (deepstack: rows of n_embd * (1 + n_deepstack)
floats, M-RoPE grids) and gemma4 in both layouts (E2B/E4B: per-layer inputs, causal images as
mtmd decodes them; 26B/31B: images non-causal on the sliding layers; both reuse KV in their
last layers) on tiny F32 models with F32 KV, the same bar as tests/test_fastv_exact.py for llama:
R = 0 equals stock, FastV equals tests/reference_families.py / tests/reference_gemma4.py for
K in {1, 2, L-1} x R in {.25, .5, .75, 1} (K = 2, R = .5 in the quick set), chunking does not
change the result, decoding and a second pruned turn go on from the pruned history. lfm2
(hybrid recurrent) is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastv_helpers import budget, cut_gap

from fastv_edge.errors import Status

pytestmark = pytest.mark.native

N_IMG = 40
GRIDS = {40: (8, 5), 24: (6, 4)}  # qwen3vl: n_img -> (nx, ny)
HEAD = "<|im_start|>user\nLook at this picture:"
TAIL = "\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
# kind -> reference class name, image options, image std, extra K (a K whose layer K-1 attends globally)
FAMILIES = {
    "qwen2": ("RefQwen2", {}, 0.5, ()),
    "qwen3": ("RefQwen3", {}, 0.5, ()),
    "mistral3": ("RefMistral3", {}, 0.5, ()),
    "qwen3vl": ("RefQwen3VL", {"grid": None}, 0.5, (3,)),  # grid from GRIDS; K = n_deepstack = 3
    "gemma4-e2b": ("RefGemma4", {"causal": True}, 2.5, (4,)),  # layer 3 is global
    "gemma4-31b": ("RefGemma4", {"causal": False}, 2.5, (3,)),  # layer 2 is global
}
QUICK = {(2, 0.5)}
# ggml-cpu's GELU goes through an fp16 table: a float32 input on the other side of a rounding boundary than the
# float64 one moves a Gemma logit by up to ~5e-4 (the reference's own table and exact GELU differ by 2e-4 on such a
# step); a wrong replay moves them by whole units (the negative controls below)
ATOL = {"gemma4-e2b": 1e-3, "gemma4-31b": 1e-3}


@pytest.fixture(scope="module")
def models(tiny_dir):
    """kind -> (TinyArchModel, reference), written and loaded once per module."""
    import reference_families
    import reference_gemma4

    from fastv_edge.testing.make_tiny_archs import make_tiny_arch

    cache = {}

    def get(kind):
        if kind not in cache:
            model = make_tiny_arch(tiny_dir, kind)
            name = FAMILIES[kind][0]
            ref_cls = getattr(reference_gemma4 if name == "RefGemma4" else reference_families, name)
            cache[kind] = (model, ref_cls(model.path))
        return cache[kind]

    return get


@pytest.fixture
def driver():
    """Factory: driver(model_path, **LlamaDriver kwargs) -> FamilyDriver on one thread, closed afterwards."""
    from family_driver import FamilyDriver

    opened = []

    def factory(path, **kwargs):
        opened.append(FamilyDriver(path, n_threads=1, **kwargs))
        return opened[-1]

    yield factory
    for drv in opened:
        drv.close()


def make_prompt(drv, kind: str, seed: int, n_img: int = N_IMG):
    _, opts, std, _ = FAMILIES[kind]
    opts = {**opts, "grid": GRIDS[n_img]} if "grid" in opts else opts
    rows = np.random.default_rng(seed).standard_normal((n_img, drv.n_embd_inp)) * std  # (n_img, n_embd_inp)
    return [("tokens", drv.tokenize(HEAD)), ("embd", rows.astype(np.float32), opts), ("tokens", drv.tokenize(TAIL))]


def forced(drv) -> list[int]:
    return drv.tokenize(" The picture shows a small cat sitting on a mat")[:6]


def continue_decoding(drv, tokens) -> np.ndarray:
    out = [drv.logits()]
    for t in tokens:
        drv.decode_tokens([t])
        out.append(drv.logits())
    return np.array(out)  # (1 + len(tokens), n_vocab)


def run_stock(drv, segments, tokens) -> np.ndarray:
    drv.clear()
    drv.decode_segments_inp(segments)
    return continue_decoding(drv, tokens)


def run_fastv(native, drv, segments, tokens, k: int, drop_ratio: float, append: bool = False):
    """The raw C calls: begin, decode, finish with the budget of R; then (logits, scores, kept)."""
    if not append:
        drv.clear()
    assert native.llama_fastv_begin(drv.ctx, 0, k) == Status.OK
    drv.decode_segments_inp(segments)
    n_image = native.llama_fastv_get_scores(drv.ctx, None, 0)
    assert native.llama_fastv_finish(drv.ctx, budget(n_image, drop_ratio)) == Status.OK
    scores, kept = np.array(native.get_scores(drv.ctx)), native.get_kept(drv.ctx)
    return continue_decoding(drv, tokens), scores, kept


def run_ref(ref, segments, tokens, k, keep, append: bool = False):
    out = ref.prefill(segments, K=k, keep=keep, append=append)
    return np.array([out["logits"]] + [ref.decode(t) for t in tokens]), out["scores"]


def _k(drv, k: int) -> int:
    return k if k > 0 else drv.n_layer - 1


@pytest.mark.parametrize("k", [2, -1])
@pytest.mark.parametrize("kind", FAMILIES)
def test_drop_ratio_zero_is_stock(models, native, driver, kind, k):
    model, _ = models(kind)
    drv = driver(model.path)
    k = _k(drv, k)
    segments, tokens = make_prompt(drv, kind, seed=1), forced(drv)
    stock = run_stock(drv, segments, tokens)
    same, scores, kept = run_fastv(native, drv, segments, tokens, k, 0.0)
    assert kept == list(range(N_IMG)) and len(scores) == N_IMG and native.n_hidden(drv.ctx) == 0
    assert np.abs(same - stock).max() <= 1e-6
    if k == 2:  # negative control: pruning at K = 2 does change the logits, so the comparison can fail
        half, _, _ = run_fastv(native, drv, segments, tokens, k, 0.5)
        assert np.abs(half - stock).max() > 0.1


def _grid():
    for kind, (_, _, _, extra) in FAMILIES.items():
        for k in (1, 2, -1, *extra):
            for r in (0.25, 0.5, 0.75, 1.0):
                yield pytest.param(kind, k, r, marks=() if (k, r) in QUICK else pytest.mark.slow)


@pytest.mark.parametrize("kind, k, drop_ratio", list(_grid()))
def test_fastv_matches_reference(models, native, driver, kind, k, drop_ratio):
    from reference import topk_keep

    model, ref = models(kind)
    drv = driver(model.path)
    k = _k(drv, k)
    tokens = forced(drv)
    for seed in range(10, 20):
        segments = make_prompt(drv, kind, seed)
        got, scores, kept = run_fastv(native, drv, segments, tokens, k, drop_ratio)
        n_hidden = native.n_hidden(drv.ctx)
        want, ref_scores = run_ref(ref, segments, tokens, k, kept)
        if cut_gap(ref_scores, len(kept)) >= 1e-4:
            break
    else:
        pytest.fail("every seed put two scores within 1e-4 of the cut")

    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-9)
    assert kept == topk_keep(scores, drop_ratio).tolist()
    assert kept == topk_keep(ref_scores, drop_ratio).tolist()
    assert n_hidden == N_IMG - len(kept)
    assert np.abs(got - want).max() < ATOL.get(kind, 1e-4)


@pytest.mark.parametrize("k", [1, 2])  # both below the tiny model's 3 deepstack layers
def test_qwen3vl_replay_carries_the_deepstack_slices(models, native, driver, k):
    """K < n_deepstack: the layers [K, 3) add their slices of the kept rows in the deep stage. A replay
    without them (the reference with those columns zeroed from layer K on) is far off."""
    from reference_families import RefQwen3VL

    class NoSlicesFromK(RefQwen3VL):
        def _layer(self, il, x, meta):
            if il == k:
                x = x.copy()
                x[:, self.n_embd :] = 0.0  # (n, n_embd_inp): the slices of layers >= k are gone
            return super()._layer(il, x, meta)

    model, ref = models("qwen3vl")
    drv = driver(model.path)
    segments, tokens = make_prompt(drv, "qwen3vl", seed=3), forced(drv)
    got, _, kept = run_fastv(native, drv, segments, tokens, k, 0.5)
    want, _ = run_ref(ref, segments, tokens, k, kept)
    wrong, _ = run_ref(NoSlicesFromK(model.path), segments, tokens, k, kept)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - wrong).max() > 0.1


def test_gemma4_replay_feeds_the_recorded_per_layer_inputs(models, native, driver):
    """E2B/E4B: the deep stage takes each kept token's recorded per-layer inputs. Computing them from the
    replayed hidden states as if they were image rows (padding token 0) is far off."""
    from reference_gemma4 import RefGemma4

    k = 2

    class RecomputedFromK(RefGemma4):
        def _layer(self, il, rows, meta):
            if il == k:
                x = rows[:, : self.n_embd]  # (n, n_embd)
                pad = self.w["per_layer_token_embd.weight"][[0]]
                rows = np.concatenate([x, self._per_layer_inputs(x, pad)], axis=1)
            return super()._layer(il, rows, meta)

    model, ref = models("gemma4-e2b")
    drv = driver(model.path)
    segments, tokens = make_prompt(drv, "gemma4-e2b", seed=3), forced(drv)
    got, _, kept = run_fastv(native, drv, segments, tokens, k, 0.5)
    want, _ = run_ref(ref, segments, tokens, k, kept)
    wrong, _ = run_ref(RecomputedFromK(model.path), segments, tokens, k, kept)
    assert np.abs(got - want).max() < ATOL["gemma4-e2b"]
    assert np.abs(got - wrong).max() > 0.1


@pytest.mark.parametrize("kind", ["gemma4-e2b", "gemma4-31b"])
def test_gemma4_shared_kv_layers_from_k_keep_every_token(models, native, driver, kind):
    """K >= n_kv: every layer from K on reads the KV a layer below K wrote for all tokens, so pruning
    changes no logit (it only skips the pruned rows' work there); K = n_kv - 1 still prunes."""
    model, _ = models(kind)
    drv = driver(model.path)
    n_kv = model.hparams.n_layer - model.hparams.n_kv_shared
    segments, tokens = make_prompt(drv, kind, seed=5), forced(drv)
    stock = run_stock(drv, segments, tokens)
    pruned, _, kept = run_fastv(native, drv, segments, tokens, n_kv, 0.75)
    assert len(kept) == N_IMG // 4 and native.n_hidden(drv.ctx) == N_IMG - len(kept)
    assert np.abs(pruned - stock).max() <= 1e-5
    below, _, _ = run_fastv(native, drv, segments, tokens, n_kv - 1, 0.75)
    assert np.abs(below - stock).max() > 0.1


CAUSAL = [kind for kind, (_, opts, _, _) in FAMILIES.items() if opts.get("causal", True)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", CAUSAL)
def test_chunking_invariance(models, native, driver, kind):
    model, _ = models(kind)
    results = []
    for n_ubatch, n_batch in [(512, 512), (17, 512), (8, 512), (8, 16)]:  # (8, 16): the image spans 3 calls
        drv = driver(model.path, n_ubatch=n_ubatch, n_batch=n_batch)
        results.append(run_fastv(native, drv, make_prompt(drv, kind, seed=4), forced(drv), 2, 0.5))
    logits0, scores0, kept0 = results[0]
    for logits, scores, kept in results[1:]:
        assert kept == kept0
        np.testing.assert_allclose(scores, scores0, rtol=1e-5, atol=1e-9)
        assert np.abs(logits - logits0).max() < 1e-5


@pytest.mark.slow
def test_gemma4_non_causal_image_in_ubatches_and_calls(models, native, driver):
    """26B/31B: the non-causal block fits any n_ubatch >= its size with the same result; split over three
    decode calls, each call is its own block (as in stock), which the replay keeps apart."""
    from reference import topk_keep

    model, ref = models("gemma4-31b")
    results = []
    for n_ubatch in (512, 48):
        drv = driver(model.path, n_ubatch=n_ubatch)
        results.append(run_fastv(native, drv, make_prompt(drv, "gemma4-31b", seed=4), forced(drv), 3, 0.5))
    assert results[0][2] == results[1][2] and np.abs(results[0][0] - results[1][0]).max() < 1e-5

    drv = driver(model.path, n_ubatch=16, n_batch=16)
    head, (kind, rows, opts), tail = make_prompt(drv, "gemma4-31b", seed=4)
    segments = [head, *((kind, rows[i : i + 16], opts) for i in range(0, N_IMG, 16)), tail]
    tokens = forced(drv)
    got, scores, kept = run_fastv(native, drv, segments, tokens, 3, 0.5)
    want, ref_scores = run_ref(ref, segments, tokens, 3, kept)
    assert cut_gap(ref_scores, len(kept)) >= 1e-4
    assert kept == topk_keep(ref_scores, 0.5).tolist()
    assert np.abs(got - want).max() < ATOL["gemma4-31b"]
    assert np.abs(got - results[0][0]).max() > 0.1  # three blocks are not one block


@pytest.mark.parametrize(
    "kind", [k if k in ("qwen3vl", "gemma4-e2b") else pytest.param(k, marks=pytest.mark.slow) for k in FAMILIES]
)
def test_second_turn_after_pruned_prefill(models, native, driver, kind):
    """Decode after a pruned prefill, then a second pruned prompt with another image on top of the history."""
    model, ref = models(kind)
    drv = driver(model.path)
    first, second = make_prompt(drv, kind, seed=7), make_prompt(drv, kind, seed=8, n_img=24)
    tokens = forced(drv)
    got1, _, kept1 = run_fastv(native, drv, first, tokens[:2], 2, 0.5)
    got2, _, kept2 = run_fastv(native, drv, second, tokens[2:], 2, 0.75, append=True)
    assert native.n_hidden(drv.ctx) == (N_IMG - len(kept1)) + (24 - len(kept2))
    want1, _ = run_ref(ref, first, tokens[:2], 2, kept1)
    want2, _ = run_ref(ref, second, tokens[2:], 2, kept2, append=True)
    assert len(kept2) == 6
    assert np.abs(np.concatenate([got1, got2]) - np.concatenate([want1, want2])).max() < ATOL.get(kind, 1e-4)


def test_hybrid_lfm2_is_refused(tiny_dir, native, driver):
    """C: begin returns UNSUPPORTED and the context keeps working; Python: the error names pre-LLM selection."""
    import fastv_edge as fe
    from fastv_edge.model import check_supported
    from fastv_edge.testing.make_tiny_archs import make_tiny_lfm2

    model = make_tiny_lfm2(tiny_dir)
    drv = driver(model.path)
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == Status.UNSUPPORTED
    drv.decode_tokens(drv.tokenize(HEAD))
    assert np.isfinite(drv.logits()).all()
    for arch in ("lfm2", "qwen35"):
        with pytest.raises(fe.UnsupportedModelError, match=r"--strategy divprune -k 0"):
            check_supported(arch, 6, fe.PruneConfig(layer=2, drop_ratio=0.5))
    check_supported("lfm2", 6, fe.PruneConfig(strategy="divprune", layer=0, keep=8))  # pre-LLM is allowed
    with pytest.raises(fe.UnsupportedModelError, match=r"'lfm2'.*divprune -k 0"):
        fe.load(model.path, runtime=fe.RuntimeConfig(n_threads=1), prune=fe.PruneConfig(layer=2, drop_ratio=0.5))
