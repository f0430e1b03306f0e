"""NumPy float64 reference forward passes of llama.cpp's `qwen2vl` and `gemma3` archs, with FastV.

Same API as tests/reference.py's Ref (prefill(segments, K, keep, append) -> {"logits",
"scores", "image_idx"}, decode(token), per-layer cache_k / cache_v / cache_pos, n_past),
with a third, optional element per segment:

    ("tokens", ids)
    ("embd", rows)                          causal, 1-D positions (qwen2vl: (p, p, p, p) per row)
    ("embd", rows, {"grid": (nx, ny)})      qwen2vl image: M-RoPE grid positions, n_past += max(nx, ny)
    ("embd", rows, {"causal": False})       decoded with llama_set_causal_attn(false) (gemma3 images)

Each segment is one llama_decode call: a non-causal segment's tokens see every cell that
exists while it is decoded (the earlier prompt and the whole segment), never later ones.

What llama.cpp computes, with pointers into the pinned tree (/work/dev/llama.cpp):
- mask (src/llama-kv-cache.cpp set_input_kq_mask_impl:1593-1740): a causal query at p1
  sees cells with p0 <= p1; for M-RoPE, a cell with p0 == p1 is hidden when its (y, x) is
  after the query's (llama_kv_cell_ext::is_2d_gt, src/llama-kv-cells.h:22-25, y first);
  non-causal queries skip both tests. SWA (any causal mode, LLAMA_NON_CAUSAL_TYPE_ALL for
  gemma3) hides cells with p1 - p0 >= n_swa (llama_hparams::is_masked_swa), so a
  non-causal image token also sees every later cell of its own block.
- qwen2vl (src/models/qwen2vl.cpp): llama block + q/k/v biases; ggml_rope_multi MROPE
  (ggml/src/ggml-cpu/ops.cpp ggml_mrope_cache_init:6220-6289): pair k uses the position
  of section s where k % sum(sections) falls, four running float32 thetas multiplied by
  base^(-2/n_rot) per pair, NEOX pairs (k, k + n_rot/2). Text ubatches get positions
  (p, p, p, 0) in the graph (src/llama-graph.cpp:127-147) but (p, p, p, p) in the cell.
  The pinned loader never reads qwen2vl.attention.layer_norm_rms_epsilon
  (llama_model_qwen2vl::load_arch_hparams), so RMSNorm runs with eps = 0.
- gemma3 (src/models/gemma3.cpp): token rows * sqrtf(n_embd), embedding rows unscaled
  (:91); per-head RMS q/k norms; NEOX rope with base freq_base_swa on local layers
  (llama_model::get_rope_freq_base); Q * 1/sqrt(head_dim), kq_scale 1; post-attention
  and post-FFN RMS norms; GeGLU whose GELU goes through ggml's fp16 table
  (ggml/src/ggml-cpu/vec.h GGML_GELU_FP16, ggml_vec_geglu_f32); optional final softcap.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from reference import _dequantize, _field, _rms_norm, entering_rows

META_KEYS = ("p", "y", "x", "rope", "step", "causal")  # per token / per cache cell


def _load_arch(path: Path, arch: str) -> tuple[gguf.GGUFReader, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))  # parses the vocabulary in Python: ~3 s
    found = _field(reader, "general.architecture")
    if found != arch:
        raise ValueError(f"{path}: architecture {found!r}, this reference handles {arch!r}")
    return reader, {t.name: _dequantize(t) for t in reader.tensors}


_CACHE: dict = {}


def _cached_load(path, arch):
    path = Path(path).resolve()
    key = (str(path), path.stat().st_mtime_ns, arch)
    if key not in _CACHE:
        _CACHE[key] = _load_arch(path, arch)
    return _CACHE[key]


def rope_thetas(pos: np.ndarray, base: float, n_rot: int) -> np.ndarray:
    """(n, n_rot/2) float32 angles pos * base^(-2k/n_rot), by ggml's repeated float32 product."""
    theta_scale = np.float32(base) ** np.float32(-2.0 / n_rot)
    theta = np.empty((len(pos), n_rot // 2), dtype=np.float32)
    theta[:, 0] = pos.astype(np.float32)
    for k in range(1, n_rot // 2):
        theta[:, k] = theta[:, k - 1] * theta_scale
    return theta


def rope_neox(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Rotate pairs (k, k + n_rot/2) of each head. x: (n, heads, head_dim); theta: (n, n_rot/2)."""
    half = theta.shape[1]
    cos = np.cos(theta.astype(np.float64))[:, None, :]  # (n, 1, n_rot/2)
    sin = np.sin(theta.astype(np.float64))[:, None, :]
    out = x.copy()
    x0, x1 = x[..., :half], x[..., half : 2 * half]
    out[..., :half] = x0 * cos - x1 * sin
    out[..., half : 2 * half] = x0 * sin + x1 * cos
    return out


def gelu_ggml(x: np.ndarray) -> np.ndarray:
    """ggml-cpu's GELU: tanh formula looked up in an fp16 table (input and output rounded)."""
    x16 = x.astype(np.float32).astype(np.float16).astype(np.float64)
    table = 0.5 * x16 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * x16 * (1.0 + 0.044715 * x16 * x16)))
    out = table.astype(np.float16).astype(np.float64)
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, out))


class _ArchRef:
    """Shared prefill / decode / mask / FastV logic; subclasses supply the block and positions."""

    ARCH = ""
    MROPE = False  # 4 positions per token and the 2-D mask rule

    def __init__(self, gguf_path):
        self.path = Path(gguf_path)
        reader, self.w = _cached_load(self.path, self.ARCH)
        self._read_hparams(reader)
        self.lm_head = self.w.get("output.weight", self.w["token_embd.weight"])  # (n_vocab, n_embd)
        self.n_vocab, self.n_embd = self.lm_head.shape
        self._reset()

    def _key(self, reader, name, default=None):
        return _field(reader, f"{self.ARCH}.{name}", default)

    def _reset(self):
        hd = self.head_dim
        self.cache_k = [np.zeros((0, self.n_head_kv, hd)) for _ in range(self.n_layer)]
        self.cache_v = [np.zeros((0, self.n_head_kv, hd)) for _ in range(self.n_layer)]
        self.cache_meta = [self._meta_empty() for _ in range(self.n_layer)]
        self.n_past = 0
        self.n_calls = 0  # llama_decode calls so far: a non-causal query sees no later call's cells

    @property
    def cache_pos(self) -> list[np.ndarray]:
        """Per layer: sequential position p of every cached token (the cell's pos)."""
        return [m["p"] for m in self.cache_meta]

    @staticmethod
    def _meta_empty() -> dict[str, np.ndarray]:
        meta = {key: np.zeros(0, dtype=np.int64) for key in META_KEYS}
        meta["rope"] = np.zeros((0, 4), dtype=np.int64)
        meta["causal"] = np.zeros(0, dtype=bool)
        return meta

    def _segment_meta(self, n: int, kind: str, opts: dict) -> dict[str, np.ndarray]:
        """Positions of one decode call of n rows starting at self.n_past; advances n_past."""
        grid = opts.get("grid")
        p = self.n_past + np.arange(n)
        y = x = p
        rope = np.stack([p, p, p, np.zeros(n, dtype=np.int64) if kind == "tokens" else p], axis=1)
        advance = n
        if grid is not None:
            if not self.MROPE or kind != "embd":
                raise ValueError(f"a grid needs M-RoPE embedding rows ({self.ARCH} {kind!r} segment)")
            nx, ny = (int(v) for v in grid)
            if nx <= 0 or ny <= 0 or nx * ny != n:
                raise ValueError(f"grid {grid} does not hold {n} rows")
            i = np.arange(n)
            p = np.full(n, self.n_past)  # every image token shares t = pos_0 (mtmd.cpp:2478)
            y, x = self.n_past + i // nx, self.n_past + i % nx
            rope = np.stack([p, y, x, np.zeros(n, dtype=np.int64)], axis=1)  # section-major (t, y, x, z)
            advance = max(nx, ny)  # mtmd_image_tokens_get_n_pos
        self.n_past += advance
        self.n_calls += 1
        causal = np.full(n, bool(opts.get("causal", True)))
        return {"p": p, "y": y, "x": x, "rope": rope, "step": np.full(n, self.n_calls), "causal": causal}

    def _embed(self, segments):
        rows, metas, is_image = [], [], []
        for seg in segments:
            if len(seg) not in (2, 3):
                raise ValueError(f"a segment is (kind, data[, options]), got {len(seg)} items")
            kind, data = seg[0], seg[1]
            opts = seg[2] if len(seg) == 3 else {}
            if isinstance(opts, tuple):
                opts = {"grid": opts}
            unknown = set(opts) - {"grid", "causal"}
            if unknown:
                raise ValueError(f"unknown segment option(s) {sorted(unknown)}; known: 'grid', 'causal'")
            if kind == "tokens":
                ids = np.asarray(data, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
                    raise ValueError(f"token id out of range [0, {self.n_vocab})")
                rows.append(self._token_rows(ids))
            elif kind == "embd":
                embd = np.asarray(data, dtype=np.float64)
                if embd.ndim != 2 or embd.shape[1] != self.n_embd_inp:
                    raise ValueError(f"embd rows must be (n, {self.n_embd_inp}), got {embd.shape}")
                rows.append(self._embd_rows(embd))  # embedding input is never rescaled
            else:
                raise ValueError(f"segment kind must be 'tokens' or 'embd', got {kind!r}")
            metas.append(self._segment_meta(len(rows[-1]), kind, opts))
            is_image.append(np.full(len(rows[-1]), kind == "embd"))
        meta = {key: np.concatenate([m[key] for m in metas]) for key in META_KEYS}
        return np.concatenate(rows), meta, np.concatenate(is_image)  # (n, n_embd), meta, (n,)

    def _token_rows(self, ids: np.ndarray) -> np.ndarray:
        return self.w["token_embd.weight"][ids]

    @property
    def n_embd_inp(self) -> int:
        """Width of an embedding row the model takes (llama_model_n_embd_inp)."""
        return self.n_embd

    def _embd_rows(self, embd: np.ndarray) -> np.ndarray:
        """The rows the layers carry for embedding input (subclasses may append per-row data)."""
        return embd

    def _visible(self, il: int, q: dict, k: dict) -> np.ndarray:
        """(n_q, n_cache) bool: which cached cells each query row attends to."""
        pq, pk = q["p"][:, None], k["p"][None, :]
        later_2d = np.zeros_like(pq == pk)
        if self.MROPE:
            yq, xq, yk, xk = q["y"][:, None], q["x"][:, None], k["y"][None, :], k["x"][None, :]
            later_2d = (pq == pk) & ((yk > yq) | ((yk == yq) & (xk > xq)))
        causal_ok = (pk <= pq) & ~later_2d
        visible = (k["step"][None, :] <= q["step"][:, None]) & (causal_ok | ~q["causal"][:, None])
        if self._is_swa(il):
            visible &= ~(pq - pk >= self.n_swa)
        return visible

    def _is_swa(self, il: int) -> bool:
        return False

    def _attend(self, il: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, meta: dict, scale: float):
        """Append k, v to layer il's cache; softmax attention of q over it.

        q: (n, n_head, hd), k/v: (n, n_head_kv, hd). Returns ((n, n_head*hd), probs (n_head, n, n_cache))."""
        self.cache_k[il] = np.concatenate([self.cache_k[il], k])  # (n_cache, n_head_kv, hd)
        self.cache_v[il] = np.concatenate([self.cache_v[il], v])
        cached = self.cache_meta[il]
        self.cache_meta[il] = {key: np.concatenate([cached[key], meta[key]]) for key in META_KEYS}
        group = self.n_head // self.n_head_kv
        kk = np.repeat(self.cache_k[il], group, axis=1)  # (n_cache, n_head, hd): head h -> h // group
        vv = np.repeat(self.cache_v[il], group, axis=1)
        logits = np.einsum("qhd,khd->hqk", q, kk) * scale  # (n_head, n, n_cache)
        logits = np.where(self._visible(il, meta, self.cache_meta[il])[None], logits, -np.inf)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, vv).reshape(q.shape[0], -1)
        return out, probs

    def _logits(self, x_last: np.ndarray) -> np.ndarray:
        return _rms_norm(x_last, self.w["output_norm.weight"], self.eps) @ self.lm_head.T

    def prefill(self, segments, K=None, keep=None, append=False, pre_keep=None) -> dict:
        """Evaluate a prompt; optionally score and prune image tokens FastV-style.

        Args:
            segments: see the module docstring; one llama_decode call each, in prompt order.
            K: layers [0, K) see every token; scores come from layer K-1. None: no FastV.
            keep: indices into this prompt's image (embd) tokens kept from layer K on;
                None keeps all (scores are still computed when K is given). With
                pre_keep, indices into the pre-kept image tokens.
            append: continue after the current cache instead of starting afresh.
            pre_keep: indices into this prompt's image tokens that enter the model at all
                (selected before the LLM; they keep their positions, n_past still advances
                past the whole image); None: all.

        Returns:
            {"logits": (n_vocab,) for the last prompt token, "scores": (N,) last token's
            head-mean attention at layer K-1 over the image tokens (None without K),
            "image_idx": (N,) prompt indices of the image tokens}.
        """
        if not append:
            self._reset()
        if K is not None and not 1 <= K <= self.n_layer:
            raise ValueError(f"K must be in [1, {self.n_layer}], got {K}")
        if keep is not None and K is None:
            raise ValueError("keep needs K")
        x, meta, is_image = self._embed(segments)  # (n, n_embd); n_past advanced past every row
        enter = entering_rows(is_image, pre_keep)
        x, is_image, meta = x[enter], is_image[enter], {key: val[enter] for key, val in meta.items()}
        n = x.shape[0]
        if n == 0:
            raise ValueError("empty prompt")
        image_idx = np.flatnonzero(is_image)  # (N,)
        active = np.ones(n, dtype=bool)
        if keep is not None:
            keep = np.asarray(keep, dtype=np.int64)
            if keep.size and (keep.min() < 0 or keep.max() >= len(image_idx)):
                raise ValueError(f"keep indices must be in [0, {len(image_idx)})")
            active[image_idx] = False
            active[image_idx[keep]] = True
            if not active[-1]:
                raise ValueError("the last prompt token is a pruned image token: no logits")
        rows = np.arange(n)  # prompt indices of the rows of x
        scores = None
        for il in range(self.n_layer):
            if K is not None and il == K:
                sel = active[rows]
                x, rows = x[sel], rows[sel]
            x, probs = self._layer(il, x, {key: val[rows] for key, val in meta.items()})
            if K is not None and il == K - 1:
                cols = self.cache_meta[il]["p"].shape[0] - n + image_idx  # this prompt's image cells
                scores = probs[:, -1, cols].mean(axis=0)  # (N,) head mean of the last row
        return {"logits": self._logits(x[-1]), "scores": scores, "image_idx": image_idx}

    def decode(self, token: int) -> np.ndarray:
        """One generated token at the next position (its own decode call); returns (n_vocab,) logits."""
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token {token} out of range [0, {self.n_vocab})")
        x, meta, _ = self._embed([("tokens", [token])])
        for il in range(self.n_layer):
            x, _ = self._layer(il, x, meta)
        return self._logits(x[0])


class RefQwen2VL(_ArchRef):
    """Reference qwen2vl text model (M-RoPE, q/k/v biases, 2-D causal mask for image grids)."""

    ARCH = "qwen2vl"
    MROPE = True

    def _read_hparams(self, reader):
        self.n_layer = int(self._key(reader, "block_count"))
        self.n_head = int(self._key(reader, "attention.head_count"))
        self.n_head_kv = int(self._key(reader, "attention.head_count_kv", self.n_head))
        self.head_dim = int(self._key(reader, "embedding_length")) // self.n_head
        self.n_rot = int(self._key(reader, "rope.dimension_count", self.head_dim))
        self.freq_base = float(self._key(reader, "rope.freq_base", 10000.0))
        self.sections = [int(s) for s in self._key(reader, "rope.dimension_sections")]
        self.eps = 0.0  # the pinned loader ignores the GGUF's rms epsilon (module docstring)

    def _mrope(self, x: np.ndarray, rope_pos: np.ndarray) -> np.ndarray:
        # one running theta per section, each started at its own position (ops.cpp:6220-6289)
        thetas = [rope_thetas(rope_pos[:, s], self.freq_base, self.n_rot) for s in range(4)]  # 4 x (n, n_rot/2)
        bounds = np.cumsum(self.sections)  # end pair of sections t, y, x, z
        sector = np.arange(self.n_rot // 2) % bounds[-1]
        section = np.searchsorted(bounds, sector, side="right")  # (n_rot/2,) in 0..3
        theta = np.choose(section[None, :], thetas)  # (n, n_rot/2)
        return rope_neox(x, theta)

    def _layer(self, il: int, x: np.ndarray, meta: dict):
        w, p = self.w, f"blk.{il}."
        n, hd = x.shape[0], self.head_dim
        h = _rms_norm(x, w[p + "attn_norm.weight"], self.eps)
        q = (h @ w[p + "attn_q.weight"].T + w[p + "attn_q.bias"]).reshape(n, self.n_head, hd)
        k = (h @ w[p + "attn_k.weight"].T + w[p + "attn_k.bias"]).reshape(n, self.n_head_kv, hd)
        v = (h @ w[p + "attn_v.weight"].T + w[p + "attn_v.bias"]).reshape(n, self.n_head_kv, hd)
        q, k = self._mrope(q, meta["rope"]), self._mrope(k, meta["rope"])
        attn, probs = self._attend(il, q, k, v, meta, 1.0 / np.sqrt(hd))
        x = x + attn @ w[p + "attn_output.weight"].T
        h = _rms_norm(x, w[p + "ffn_norm.weight"], self.eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        up = h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        return x, probs


class RefGemma3(_ArchRef):
    """Reference gemma3 text model (iSWA with two rope bases, q/k norms, post norms, GeGLU)."""

    ARCH = "gemma3"

    def _read_hparams(self, reader):
        self.n_layer = int(self._key(reader, "block_count"))
        self.n_head = int(self._key(reader, "attention.head_count"))
        self.n_head_kv = int(self._key(reader, "attention.head_count_kv", self.n_head))
        n_embd = int(self._key(reader, "embedding_length"))
        self.head_dim = int(self._key(reader, "attention.key_length", n_embd // self.n_head))
        self.n_rot = self.head_dim
        self.eps = float(self._key(reader, "attention.layer_norm_rms_epsilon"))
        self.freq_base = float(self._key(reader, "rope.freq_base", 10000.0))
        self.freq_base_swa = float(self._key(reader, "rope.freq_base_swa", 10000.0))  # llama-hparams.h default
        self.n_swa = int(self._key(reader, "attention.sliding_window", 0))
        pattern = self._key(reader, "attention.sliding_window_pattern", 6)  # load_swa_pattern(ml, 6)
        if isinstance(pattern, list):
            self.swa_layers = [bool(v) for v in pattern]
        else:
            self.swa_layers = [self.n_swa > 0 and il % int(pattern) < int(pattern) - 1 for il in range(self.n_layer)]
        self.softcap = float(self._key(reader, "final_logit_softcapping", 0.0))
        # gemma3.cpp: 1/sqrt(n_embd/n_head) only for the 62-layer 27B, else 1/sqrt(head_dim)
        per_head = n_embd // self.n_head if self.n_layer == 62 else self.head_dim
        self.attn_scale = float(np.float32(1.0) / np.sqrt(np.float32(per_head)))
        self.embd_scale = float(np.sqrt(np.float32(n_embd)))

    def _is_swa(self, il: int) -> bool:
        return self.swa_layers[il]

    def _token_rows(self, ids: np.ndarray) -> np.ndarray:
        return self.w["token_embd.weight"][ids] * self.embd_scale  # gemma3.cpp:91, tokens only

    def _layer(self, il: int, x: np.ndarray, meta: dict):
        w, p = self.w, f"blk.{il}."
        n, hd = x.shape[0], self.head_dim
        h = _rms_norm(x, w[p + "attn_norm.weight"], self.eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(n, self.n_head, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(n, self.n_head_kv, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.n_head_kv, hd)
        q = _rms_norm(q, w[p + "attn_q_norm.weight"], self.eps)
        k = _rms_norm(k, w[p + "attn_k_norm.weight"], self.eps)
        base = self.freq_base_swa if self._is_swa(il) else self.freq_base
        theta = rope_thetas(meta["p"], base, self.n_rot)
        q, k = rope_neox(q, theta) * self.attn_scale, rope_neox(k, theta)
        attn, probs = self._attend(il, q, k, v, meta, 1.0)
        x = x + _rms_norm(attn @ w[p + "attn_output.weight"].T, w[p + "post_attention_norm.weight"], self.eps)
        h = _rms_norm(x, w[p + "ffn_norm.weight"], self.eps)
        ffn = (gelu_ggml(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + _rms_norm(ffn, w[p + "post_ffw_norm.weight"], self.eps)
        return x, probs

    def _logits(self, x_last: np.ndarray) -> np.ndarray:
        logits = super()._logits(x_last)
        if self.softcap:
            logits = self.softcap * np.tanh(logits / self.softcap)
        return logits
