"""NumPy float64 reference of llama.cpp's `gemma4` text model, both layouts (E2B/E4B and 26B/31B).

Same API and segment format as tests/reference_archs.py, built on its _ArchRef; images are
("embd", rows) or ("embd", rows, {"causal": False}). The GGUFs come from
fastv_edge/testing/gemma4_gguf.py, whose docstring lists what llama.cpp reads. What this
computes, with line numbers of the pinned src/models/gemma4.cpp:

- input (:162-166): token rows are token_embd * sqrtf(n_embd), embedding rows unscaled.
- per-layer inputs (:176-183, :469-529), computed once per row from that input before layer 0:
  pli = (rms_norm(reshape(per_layer_model_proj @ x / sqrt(n_embd), (n_layer, P))) * per_layer_proj_norm
         + per_layer_token_embd[token or 0] * sqrt(P)) / sqrt(2)
  (embedding rows take the padding token 0's row, :485-498). A row carries its pli through
  the layers as extra columns, so keeping a row under FastV keeps its recorded per-layer
  inputs (the replay must feed them, not recompute them from hidden states).
- block (:185-403): RMS attn_norm; q = rms_norm_w(Wq h) per head, rope; k = rms_norm_w(Wk h),
  v = rms_norm(Wv h or the raw Wk h when attn_v is absent), unweighted (:257); rope NEOX with
  (sliding) freq_base_swa and n_rot_swa, or (global) freq_base, n_rot and theta / rope_freqs;
  attention scale 1 (:12); x += rms_norm_w(Wo attn, post_attention_norm); x +=
  rms_norm_w(GeGLU(ffn_norm x), post_ffw_norm) with ggml's fp16-table GELU; then with P > 0
  x += rms_norm_w(proj(gelu(inp_gate x) * pli[il]), post_norm) (:369-390); x *= layer_output_scale.
- KV sharing: a layer without K/V attends to the cache of its source layer (n_kv - 2 sliding,
  n_kv - 1 global; llama-model.cpp create_memory `reuse`); here its cache entries alias the
  source's, so cache_pos and FastV scores read the same cells llama.cpp reads.
- masks: sliding layers hide cells with p_q - p_k >= sliding_window; a non-causal segment is
  LLAMA_NON_CAUSAL_TYPE_SWA_ONLY (:26, llama-kv-cache.cpp set_input_kq_mask): only sliding
  layers see the whole decode call both ways, global layers stay causal.
- output: final RMS norm, tied head, optional tanh softcap (:427-431).
"""

from __future__ import annotations

import numpy as np
from reference import _rms_norm
from reference_archs import META_KEYS, _ArchRef, gelu_ggml, rope_neox, rope_thetas


class RefGemma4(_ArchRef):
    """Reference gemma4 text model; see the module docstring."""

    ARCH = "gemma4"

    def _read_hparams(self, reader):
        self.n_layer = int(self._key(reader, "block_count"))
        self.n_head = int(self._key(reader, "attention.head_count"))
        kv = self._key(reader, "attention.head_count_kv", self.n_head)
        self.n_head_kv_layers = [int(v) for v in kv] if isinstance(kv, list) else [int(kv)] * self.n_layer
        self.swa_layers = [bool(v) for v in self._key(reader, "attention.sliding_window_pattern")]
        self.head_dim_full = int(self._key(reader, "attention.key_length"))
        self.head_dim_swa = int(self._key(reader, "attention.key_length_swa"))
        self.n_rot_full = int(self._key(reader, "rope.dimension_count", self.head_dim_full))
        self.n_rot_swa = int(self._key(reader, "rope.dimension_count_swa", self.n_rot_full))
        self.freq_base = float(self._key(reader, "rope.freq_base", 10000.0))
        self.freq_base_swa = float(self._key(reader, "rope.freq_base_swa", 10000.0))
        self.n_swa = int(self._key(reader, "attention.sliding_window"))
        self.n_kv = self.n_layer - int(self._key(reader, "attention.shared_kv_layers", 0))
        self.n_pl = int(self._key(reader, "embedding_length_per_layer_input"))
        self.eps = float(self._key(reader, "attention.layer_norm_rms_epsilon"))
        self.softcap = float(self._key(reader, "final_logit_softcapping", 0.0))
        n_embd = int(self._key(reader, "embedding_length"))
        self.embd_scale = float(np.sqrt(np.float32(n_embd)))
        # _ArchRef._reset's uniform cache shape; _reset below replaces it with per-layer shapes
        self.head_dim, self.n_head_kv = self.head_dim_full, self.n_head_kv_layers[0]

    def _is_swa(self, il: int) -> bool:
        return self.swa_layers[il]

    def kv_source(self, il: int) -> int:
        """The layer whose KV cache layer il reads (itself unless KV-shared)."""
        if il < self.n_kv:
            return il
        return self.n_kv - 2 if self._is_swa(il) else self.n_kv - 1

    def _layer_dims(self, il: int) -> tuple[int, int]:
        """(head_dim, n_head_kv) of layer il."""
        return (self.head_dim_swa if self._is_swa(il) else self.head_dim_full), self.n_head_kv_layers[il]

    def _reset(self):
        super()._reset()
        for il in range(self.n_layer):
            hd, n_kv = self._layer_dims(il)
            self.cache_k[il] = np.zeros((0, n_kv, hd))
            self.cache_v[il] = np.zeros((0, n_kv, hd))

    # ---- input rows: [x (n_embd) | per-layer inputs (n_layer * P)] ----

    def _per_layer_inputs(self, x: np.ndarray, tok_part: np.ndarray) -> np.ndarray:
        """(n, n_layer * P) per-layer inputs of rows x (n, n_embd); tok_part (n or 1, n_layer * P)."""
        if not self.n_pl:
            return np.zeros((len(x), 0))
        proj = (x @ self.w["per_layer_model_proj.weight"].T) / np.sqrt(np.float32(self.n_embd))
        proj = _rms_norm(proj.reshape(len(x), self.n_layer, self.n_pl), self.w["per_layer_proj_norm.weight"], self.eps)
        tok = (tok_part * np.sqrt(np.float32(self.n_pl))).reshape(-1, self.n_layer, self.n_pl)
        return ((proj + tok) / np.sqrt(np.float32(2.0))).reshape(len(x), -1)

    def _token_rows(self, ids: np.ndarray) -> np.ndarray:
        x = self.w["token_embd.weight"][ids] * self.embd_scale  # (n, n_embd), tokens only (:165)
        tok = self.w["per_layer_token_embd.weight"][ids] if self.n_pl else None
        return np.concatenate([x, self._per_layer_inputs(x, tok)], axis=1)

    def _embd_rows(self, embd: np.ndarray) -> np.ndarray:
        tok = self.w["per_layer_token_embd.weight"][[0]] if self.n_pl else None  # the padding token's row
        return np.concatenate([embd, self._per_layer_inputs(embd, tok)], axis=1)

    # ---- attention ----

    def _visible(self, il: int, q: dict, k: dict) -> np.ndarray:
        if not self._is_swa(il):  # SWA_ONLY: global layers stay causal in a non-causal decode call
            q = {**q, "causal": np.ones_like(q["causal"])}
        return super()._visible(il, q, k)

    def _attend_layer(self, il: int, q: np.ndarray, k, v, meta: dict):
        """Append k, v (or alias the source layer's cache when k is None) and attend with scale 1."""
        if k is None:
            src = self.kv_source(il)
            self.cache_k[il], self.cache_v[il], self.cache_meta[il] = (
                self.cache_k[src],
                self.cache_v[src],
                self.cache_meta[src],
            )
        else:
            self.cache_k[il] = np.concatenate([self.cache_k[il], k])  # (n_cache, n_head_kv, hd)
            self.cache_v[il] = np.concatenate([self.cache_v[il], v])
            cached = self.cache_meta[il]
            self.cache_meta[il] = {key: np.concatenate([cached[key], meta[key]]) for key in META_KEYS}
        group = self.n_head // self.cache_k[il].shape[1]
        kk = np.repeat(self.cache_k[il], group, axis=1)  # (n_cache, n_head, hd)
        vv = np.repeat(self.cache_v[il], group, axis=1)
        logits = np.einsum("qhd,khd->hqk", q, kk)  # (n_head, n, n_cache), scale 1
        logits = np.where(self._visible(il, meta, self.cache_meta[il])[None], logits, -np.inf)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        return np.einsum("hqk,khd->qhd", probs, vv).reshape(q.shape[0], -1), probs

    def _rope(self, il: int, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        if self._is_swa(il):
            return rope_neox(x, rope_thetas(pos, self.freq_base_swa, self.n_rot_swa))
        theta = rope_thetas(pos, self.freq_base, self.n_rot_full) / self.w["rope_freqs.weight"].astype(np.float32)
        return rope_neox(x, theta.astype(np.float32))

    def _qkv(self, il: int, h: np.ndarray, pos: np.ndarray):
        w, p = self.w, f"blk.{il}."
        n, (hd, n_kv) = h.shape[0], self._layer_dims(il)
        q = _rms_norm((h @ w[p + "attn_q.weight"].T).reshape(n, self.n_head, hd), w[p + "attn_q_norm.weight"], self.eps)
        if il >= self.n_kv:
            return self._rope(il, q, pos), None, None
        k_raw = (h @ w[p + "attn_k.weight"].T).reshape(n, n_kv, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, n_kv, hd) if p + "attn_v.weight" in w else k_raw
        k = _rms_norm(k_raw, w[p + "attn_k_norm.weight"], self.eps)
        v = _rms_norm(v, 1.0, self.eps)  # unweighted (:257)
        return self._rope(il, q, pos), self._rope(il, k, pos), v

    def _layer(self, il: int, rows: np.ndarray, meta: dict):
        w, p, d = self.w, f"blk.{il}.", self.n_embd
        x, pli = rows[:, :d], rows[:, d:]  # (n, n_embd), (n, n_layer * P)
        q, k, v = self._qkv(il, _rms_norm(x, w[p + "attn_norm.weight"], self.eps), meta["p"])
        attn, probs = self._attend_layer(il, q, k, v, meta)
        x = x + _rms_norm(attn @ w[p + "attn_output.weight"].T, w[p + "post_attention_norm.weight"], self.eps)
        h = _rms_norm(x, w[p + "ffn_norm.weight"], self.eps)
        ffn = (gelu_ggml(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + _rms_norm(ffn, w[p + "post_ffw_norm.weight"], self.eps)
        if self.n_pl:
            gate = gelu_ggml(x @ w[p + "inp_gate.weight"].T) * pli[:, il * self.n_pl : (il + 1) * self.n_pl]
            x = x + _rms_norm(gate @ w[p + "proj.weight"].T, w[p + "post_norm.weight"], self.eps)
        if p + "layer_output_scale.weight" in w:
            x = x * w[p + "layer_output_scale.weight"][0]
        return np.concatenate([x, pli], axis=1), probs

    def _logits(self, x_last: np.ndarray) -> np.ndarray:
        logits = super()._logits(x_last[: self.n_embd])
        if self.softcap:
            logits = self.softcap * np.tanh(logits / self.softcap)
        return logits
