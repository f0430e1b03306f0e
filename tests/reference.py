"""NumPy float64 reference forward pass of llama.cpp's `llama` architecture, with FastV.

Reads weights from the GGUF with gguf.GGUFReader (dequantizing Q8_0/F16) and follows
what llama.cpp computes (src/models/llama.cpp, ggml-cpu ops):
- RMSNorm: x / sqrt(mean(x^2) + eps) * w;
- RoPE type NORM: rotates ADJACENT pairs (x[2i], x[2i+1]) of each head by
  pos * base^(-2i/head_dim); the angle is built the way ggml does it, in float32, by
  repeated multiplication with theta_scale = base^(-2/n_dims);
- attention scale 1/sqrt(head_dim), causal by position; GQA: query head h reads KV head
  h // (n_head / n_head_kv) (ggml_mul_mat broadcasting);
- SwiGLU FFN: down(silu(gate(x)) * up(x)); final RMSNorm; LM head output.weight or, when
  absent, the tied token_embd.weight.
A weight of numpy shape (n_out, n_in) is applied as x @ W.T (ggml ne = [n_in, n_out]).

FastV (K, keep): layers [0, K) run over every prompt token; layers [K, L) only over text
tokens and kept image tokens, at their original positions. The KV cache of layer il holds
exactly the tokens that layer processed, so later tokens see everything in layers < K and
only text + kept image tokens in layers >= K.

Pre-LLM selection (pre_keep): the image tokens not in pre_keep never enter any layer, and the
kept ones keep the positions they would have had; the next token still comes after the whole
image. With K as well, FastV then ranks and prunes the pre-kept tokens (two stages).
"""

from __future__ import annotations

import functools
from pathlib import Path

import gguf
import numpy as np


def topk_keep(scores, drop_ratio: float) -> np.ndarray:
    """Indices (ascending) of the top floor(N*(1-R)) scores; ties go to the lower index.

    R goes through float32 first, like the C API's `float drop_ratio`.
    """
    scores = np.asarray(scores, dtype=np.float64)  # (N,)
    n_keep = int(len(scores) * (1.0 - float(np.float32(drop_ratio))))
    order = np.argsort(-scores, kind="stable")  # (N,) best first, ties in prompt order
    return np.sort(order[:n_keep])


def entering_rows(is_image: np.ndarray, pre_keep) -> np.ndarray:
    """(n,) bool: the prompt rows that enter the model when only the image rows pre_keep do.

    Args:
        is_image: (n,) bool, which prompt rows are image (embd) rows.
        pre_keep: indices into the prompt's image rows, or None for every row.
    """
    enter = np.ones(len(is_image), dtype=bool)
    if pre_keep is None:
        return enter
    image_idx = np.flatnonzero(is_image)  # (N,)
    pre_keep = np.asarray(pre_keep, dtype=np.int64)
    if pre_keep.size and (pre_keep.min() < 0 or pre_keep.max() >= len(image_idx)):
        raise ValueError(f"pre_keep indices must be in [0, {len(image_idx)})")
    enter[image_idx] = False
    enter[image_idx[pre_keep]] = True
    return enter


def _field(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise KeyError(f"GGUF has no key {key}")
        return default
    return field.contents()


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _dequantize(tensor) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(tensor.shape))  # numpy order (.., n_out, n_in)
    data = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.asarray(data, dtype=np.float64).reshape(shape)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> tuple[dict, dict[str, np.ndarray]]:
    # GGUFReader parses the 49k-token vocabulary in Python (~3 s): load each file once
    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}, the reference handles 'llama'")
    n_embd = int(_field(reader, "llama.embedding_length"))
    n_head = int(_field(reader, "llama.attention.head_count"))
    hparams = {
        "n_layer": int(_field(reader, "llama.block_count")),
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": int(_field(reader, "llama.attention.head_count_kv", n_head)),
        "n_rot": int(_field(reader, "llama.rope.dimension_count", n_embd // n_head)),
        "eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "freq_base": float(_field(reader, "llama.rope.freq_base", 10000.0)),
    }
    return hparams, {t.name: _dequantize(t) for t in reader.tensors}


class Ref:
    """Reference model with a per-layer KV cache (see module docstring).

    Args:
        gguf_path: a llama-architecture GGUF.
    """

    def __init__(self, gguf_path):
        path = Path(gguf_path)
        hparams, self.w = _load(str(path.resolve()), path.stat().st_mtime_ns)
        for name, value in hparams.items():
            setattr(self, name, value)
        self.head_dim = self.n_embd // self.n_head
        self.lm_head = self.w.get("output.weight", self.w["token_embd.weight"])  # (n_vocab, n_embd)
        self.n_vocab = self.lm_head.shape[0]
        self._reset()

    def _reset(self):
        hd = self.head_dim
        self.cache_k = [np.zeros((0, self.n_head_kv, hd)) for _ in range(self.n_layer)]
        self.cache_v = [np.zeros((0, self.n_head_kv, hd)) for _ in range(self.n_layer)]
        self.cache_pos = [np.zeros(0, dtype=np.int64) for _ in range(self.n_layer)]
        self.n_past = 0

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        # x: (n, heads, head_dim); angles as ggml: float32 theta *= theta_scale per pair
        theta_scale = np.float32(self.freq_base) ** np.float32(-2.0 / self.n_rot)
        theta = pos.astype(np.float32)[:, None] * np.ones(self.n_rot // 2, dtype=np.float32)
        for i in range(1, self.n_rot // 2):
            theta[:, i] = theta[:, i - 1] * theta_scale
        cos = np.cos(theta.astype(np.float64))[:, None, :]  # (n, 1, n_rot/2)
        sin = np.sin(theta.astype(np.float64))[:, None, :]
        out = x.copy()
        x0, x1 = x[..., 0 : self.n_rot : 2], x[..., 1 : self.n_rot : 2]
        out[..., 0 : self.n_rot : 2] = x0 * cos - x1 * sin
        out[..., 1 : self.n_rot : 2] = x0 * sin + x1 * cos
        return out

    def _layer(self, il: int, x: np.ndarray, pos: np.ndarray):
        """One block over rows x (n, n_embd) at positions pos; appends to layer il's cache.

        Returns (x_out (n, n_embd), attention probs (n_head, n, n_cache))."""
        w, p = self.w, f"blk.{il}."
        n, hd = x.shape[0], self.head_dim
        h = _rms_norm(x, w[p + "attn_norm.weight"], self.eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(n, self.n_head, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(n, self.n_head_kv, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.n_head_kv, hd)
        q, k = self._rope(q, pos), self._rope(k, pos)
        self.cache_k[il] = np.concatenate([self.cache_k[il], k])  # (n_cache, n_head_kv, hd)
        self.cache_v[il] = np.concatenate([self.cache_v[il], v])
        self.cache_pos[il] = np.concatenate([self.cache_pos[il], pos])
        group = self.n_head // self.n_head_kv
        kk = np.repeat(self.cache_k[il], group, axis=1)  # (n_cache, n_head, hd): head h -> h // group
        vv = np.repeat(self.cache_v[il], group, axis=1)
        logits = np.einsum("qhd,khd->hqk", q, kk) / np.sqrt(hd)  # (n_head, n, n_cache)
        visible = self.cache_pos[il][None, :] <= pos[:, None]  # (n, n_cache) causal by position
        logits = np.where(visible[None], logits, -np.inf)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, vv).reshape(n, self.n_embd)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = _rms_norm(x, w[p + "ffn_norm.weight"], self.eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        up = h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        return x, probs

    def _logits(self, x_last: np.ndarray) -> np.ndarray:
        return _rms_norm(x_last, self.w["output_norm.weight"], self.eps) @ self.lm_head.T

    def _embed(self, segments) -> tuple[np.ndarray, np.ndarray]:
        rows, is_image = [], []
        for kind, data in segments:
            if kind == "tokens":
                ids = np.asarray(data, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
                    raise ValueError(f"token id out of range [0, {self.n_vocab})")
                rows.append(self.w["token_embd.weight"][ids])
                is_image.append(np.zeros(len(ids), dtype=bool))
            elif kind == "embd":
                embd = np.asarray(data, dtype=np.float64)
                if embd.ndim != 2 or embd.shape[1] != self.n_embd:
                    raise ValueError(f"embd rows must be (n, {self.n_embd}), got {embd.shape}")
                rows.append(embd)
                is_image.append(np.ones(len(embd), dtype=bool))
            else:
                raise ValueError(f"segment kind must be 'tokens' or 'embd', got {kind!r}")
        return np.concatenate(rows), np.concatenate(is_image)  # (n, n_embd), (n,)

    def prefill(self, segments, K=None, keep=None, append=False, pre_keep=None) -> dict:
        """Evaluate a prompt; optionally score and prune image tokens FastV-style.

        Args:
            segments: [("tokens", list[int]) | ("embd", (n, n_embd) array), ...] in
                prompt order; positions continue from 0 (or from the cache when append).
            K: layers [0, K) see every token; scores come from layer K-1. None: no FastV.
            keep: indices into this prompt's image (embd) tokens kept from layer K on;
                None keeps all (scores are still computed when K is given). With
                pre_keep, indices into the pre-kept image tokens.
            append: continue after the current cache instead of starting afresh.
            pre_keep: indices into this prompt's image tokens that enter the model at all
                (selected before the LLM, at their original positions); None: all.

        Returns:
            {"logits": (n_vocab,) for the last prompt token, "scores": (N,) last token's
            head-mean attention at layer K-1 over the image tokens (None without K),
            "image_idx": (N,) prompt indices of the image tokens}.
        """
        if not append:
            self._reset()
        x, is_image = self._embed(segments)  # (n, n_embd), (n,)
        n_all = x.shape[0]
        pos = self.n_past + np.arange(n_all)
        enter = entering_rows(is_image, pre_keep)
        x, is_image, pos = x[enter], is_image[enter], pos[enter]
        n = x.shape[0]
        if n == 0:
            raise ValueError("empty prompt")
        if K is not None and not 1 <= K <= self.n_layer:
            raise ValueError(f"K must be in [1, {self.n_layer}], got {K}")
        image_idx = np.flatnonzero(is_image)  # (N,)
        active = np.ones(n, dtype=bool)
        if keep is not None:
            if K is None:
                raise ValueError("keep needs K")
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
            x, probs = self._layer(il, x, pos[rows])
            if K is not None and il == K - 1:
                n_cache = self.cache_pos[il].shape[0]
                cols = n_cache - n + image_idx  # this prompt's columns in the layer cache
                scores = probs[:, -1, cols].mean(axis=0)  # (N,) head mean of the last row
        self.n_past += n_all  # dropped image rows keep their positions
        return {"logits": self._logits(x[-1]), "scores": scores, "image_idx": image_idx}

    def decode(self, token: int) -> np.ndarray:
        """One generated token at the next position; returns its (n_vocab,) logits."""
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token {token} out of range [0, {self.n_vocab})")
        x = self.w["token_embd.weight"][[token]]  # (1, n_embd)
        pos = np.array([self.n_past])
        for il in range(self.n_layer):
            x, _ = self._layer(il, x, pos)
        self.n_past += 1
        return self._logits(x[0])


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def clip_reference(mmproj_path, image: np.ndarray) -> np.ndarray:
    """Projector output rows llama.cpp's llava graph computes for an RGB image.

    The image must already be image_size x image_size (mtmd then copies it unresized).
    Mirrors tools/mtmd/models/llava.cpp, including its class-token placement.

    Args:
        mmproj_path: an mmproj GGUF with projector type 'mlp'.
        image: (image_size, image_size, 3) uint8.

    Returns:
        (n_patches, projection_dim) float64.
    """
    reader = gguf.GGUFReader(str(mmproj_path))
    w = {t.name: _dequantize(t) for t in reader.tensors}
    size = int(_field(reader, "clip.vision.image_size"))
    patch = int(_field(reader, "clip.vision.patch_size"))
    n_head = int(_field(reader, "clip.vision.attention.head_count"))
    n_layer = int(_field(reader, "clip.vision.block_count"))
    eps = float(_field(reader, "clip.vision.attention.layer_norm_epsilon"))
    mean = np.asarray(_field(reader, "clip.vision.image_mean"))
    std = np.asarray(_field(reader, "clip.vision.image_std"))
    gelu_exact = bool(_field(reader, "clip.use_gelu", False))
    feature = _field(reader, "clip.vision.feature_layer", [n_layer - 1])
    if image.shape != (size, size, 3):
        raise ValueError(f"image must be ({size}, {size}, 3), got {image.shape}")

    pixels = (image.astype(np.float64) / 255.0 - mean) / std  # (H, W, 3)
    side = size // patch
    tiles = pixels.reshape(side, patch, side, patch, 3).transpose(0, 2, 4, 1, 3)  # (gy, gx, c, ky, kx)
    kernel = w["v.patch_embd.weight"]  # (n_embd, 3, patch, patch)
    x = tiles.reshape(side * side, -1) @ kernel.reshape(kernel.shape[0], -1).T  # (n_patches, n_embd)
    if "v.class_embd" in w:
        x = np.concatenate([x, w["v.class_embd"][None]])  # llava.cpp appends CLS last
    x = x + w["v.position_embd.weight"][: x.shape[0]]
    x = _layer_norm(x, w["v.pre_ln.weight"], w["v.pre_ln.bias"], eps)
    n, d = x.shape
    hd = d // n_head
    for il in range(max(feature)):
        p = f"v.blk.{il}."
        h = _layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"], eps)
        q, k, v = ((h @ w[p + f"attn_{c}.weight"].T + w[p + f"attn_{c}.bias"]).reshape(n, n_head, hd) for c in "qkv")
        logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)  # (n_head, n, n), not causal
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, d)
        x = x + attn @ w[p + "attn_out.weight"].T + w[p + "attn_out.bias"]
        h = _layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"], eps)
        h = h @ w[p + "ffn_up.weight"].T + w[p + "ffn_up.bias"]
        h = _gelu(h) if gelu_exact else h / (1.0 + np.exp(-1.702 * h))  # quick-GELU
        x = x + h @ w[p + "ffn_down.weight"].T + w[p + "ffn_down.bias"]
    start = 1 if "v.class_embd" in w else 0  # rows 1..n_patches when a CLS row exists
    x = x[start : start + side * side]
    h = _gelu(x @ w["mm.0.weight"].T + w["mm.0.bias"])
    return h @ w["mm.2.weight"].T + w["mm.2.bias"]


def _gelu(x: np.ndarray) -> np.ndarray:
    # ggml_gelu is the tanh approximation
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
