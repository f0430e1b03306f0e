"""NumPy float64 reference of llama.cpp's `lfm2` text model (hybrid: short convolutions + attention).

Same prefill / decode API and segment format as tests/reference_archs.py, without FastV: the
conv layers carry a recurrent state, which pruning rows from the middle of a prompt cannot
keep consistent (FastV refuses hybrid models; pre-LLM selection decodes only the kept rows,
which a recurrent layer handles like any shorter prompt). What it computes (src/models/lfm2.cpp):

- layer il is a conv layer when its head_count_kv entry is 0, else attention;
  x += mixer(rms_norm(x) * attn_norm); x += SwiGLU(rms_norm(x) * ffn_norm).
- conv (build_shortconv_block): b, c, h = split(in_proj @ x, 3); bx = b * h; with the state s
  (the previous L-1 rows of bx, zero at the start, kept across decode calls):
  y_t = sum_k conv[:, k] * [s; bx]_{t + k} (ggml_ssm_conv), out = out_proj(c * y).
- attention: weighted per-head RMS q/k norms, NEOX rope, scale 1/sqrt(head_dim), KV cache;
  embedding rows are decoded like token rows (no scaling); causal by position.
- output: RMS norm with `token_embd_norm`, tied LM head.
"""

from __future__ import annotations

import numpy as np
from reference import _rms_norm
from reference_archs import _ArchRef, rope_neox, rope_thetas


class RefLfm2(_ArchRef):
    """Reference lfm2 text model; see the module docstring."""

    ARCH = "lfm2"

    def _read_hparams(self, reader):
        self.n_layer = int(self._key(reader, "block_count"))
        self.n_head = int(self._key(reader, "attention.head_count"))
        kv = [int(v) for v in self._key(reader, "attention.head_count_kv")]
        self.attn_layers = [il for il in range(self.n_layer) if kv[il] > 0]
        self.n_head_kv = kv[self.attn_layers[0]] if self.attn_layers else self.n_head
        self.head_dim = int(self._key(reader, "embedding_length")) // self.n_head
        self.freq_base = float(self._key(reader, "rope.freq_base", 10000.0))
        self.eps = float(self._key(reader, "attention.layer_norm_rms_epsilon"))
        self.l_cache = int(self._key(reader, "shortconv.l_cache"))
        self.w["output_norm.weight"] = self.w["token_embd_norm.weight"]  # lfm2's final norm name

    def _reset(self):
        super()._reset()
        n_embd = self.w["token_embd.weight"].shape[1]
        self.conv_state = {il: np.zeros((self.l_cache - 1, n_embd)) for il in range(self.n_layer)}

    def _conv(self, il: int, h: np.ndarray) -> np.ndarray:
        w, p = self.w, f"blk.{il}."
        b, c, x = np.split(h @ w[p + "shortconv.in_proj.weight"].T, 3, axis=1)  # 3 x (n, n_embd)
        padded = np.concatenate([self.conv_state[il], b * x])  # (L - 1 + n, n_embd)
        self.conv_state[il] = padded[len(padded) - (self.l_cache - 1) :]
        kernel = w[p + "shortconv.conv.weight"]  # (n_embd, L)
        y = sum(padded[k : k + len(h)] * kernel[:, k] for k in range(self.l_cache))  # (n, n_embd)
        return (c * y) @ w[p + "shortconv.out_proj.weight"].T

    def _attention(self, il: int, h: np.ndarray, meta: dict):
        w, p = self.w, f"blk.{il}."
        n, hd = h.shape[0], self.head_dim
        q = _rms_norm((h @ w[p + "attn_q.weight"].T).reshape(n, self.n_head, hd), w[p + "attn_q_norm.weight"], self.eps)
        k = _rms_norm((h @ w[p + "attn_k.weight"].T).reshape(n, -1, hd), w[p + "attn_k_norm.weight"], self.eps)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, -1, hd)
        theta = rope_thetas(meta["p"], self.freq_base, hd)
        attn, probs = self._attend(il, rope_neox(q, theta), rope_neox(k, theta), v, meta, 1.0 / np.sqrt(hd))
        return attn @ w[p + "attn_output.weight"].T, probs

    def _layer(self, il: int, x: np.ndarray, meta: dict):
        w, p = self.w, f"blk.{il}."
        h = _rms_norm(x, w[p + "attn_norm.weight"], self.eps)
        probs = None
        if il in self.attn_layers:
            out, probs = self._attention(il, h, meta)
        else:
            out = self._conv(il, h)
        x = x + out
        h = _rms_norm(x, w[p + "ffn_norm.weight"], self.eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        return x + (gate / (1.0 + np.exp(-gate)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T, probs

    def prefill(self, segments, K=None, keep=None, append=False, pre_keep=None) -> dict:
        """_ArchRef.prefill without FastV (K and keep must be None): a recurrent layer cannot skip rows
        in the middle of the prompt; rows selected before the LLM (pre_keep) are a shorter prompt to it."""
        if K is not None or keep is not None:
            raise ValueError("lfm2 is a hybrid recurrent model: FastV does not apply (K and keep must be None)")
        return super().prefill(segments, append=append, pre_keep=pre_keep)
