"""NumPy float64 references of llama.cpp's `qwen3vl`, `qwen2`, `qwen3` and `mistral3` text models.

Same API and segment format as tests/reference_archs.py (prefill(segments, K, keep, append),
decode(token), per-layer caches; ("embd", rows, {"grid": (nx, ny)}) for M-RoPE images), built
on its _ArchRef. The GGUFs come from fastv_edge/testing/decoder_gguf.py, whose docstring lists
what llama.cpp reads. What each reference computes, with pointers into the pinned source:

- RefQwen3VL (src/models/qwen3vl.cpp): qwen3's block (no biases, weighted per-head RMS q/k
  norms before rope, eps from the GGUF) with interleaved M-RoPE (IMROPE, ggml-cpu ops.cpp
  ggml_mrope_cache_init): pair k of a head, sector s = k % sum(sections), rotates with y when
  s % 3 == 1 and s < 3 * sections[1], x when s % 3 == 2 and s < 3 * sections[2], t when
  s % 3 == 0 and s < 3 * sections[0], else with the 4th position (0 for text in the graph,
  llama-graph.cpp llm_graph_input_pos::set_input; 0 for images, mtmd.cpp decoder_pos);
  NEOX pairs (k, k + n_rot/2). Embedding rows are n_embd * (1 + n_deepstack) wide: the layers
  see the first n_embd columns and, after layer il < n_deepstack (after its FFN residual),
  add columns [(il + 1) * n_embd, (il + 2) * n_embd) (the `deepstack_out` view, :153-157).
  Token rows carry zeros there (build_inp_embd pads them). A row keeps its deepstack columns
  through the layers, so keeping a row under FastV keeps its deepstack slices.
- RefQwen2 (src/models/qwen2.cpp): the llama block with q/k/v biases, NEOX rope, eps read.
- RefQwen3 (src/models/qwen3.cpp): RefQwen3VL's block with 1-D NEOX rope, head_dim = key_length.
- RefMistral3 (src/models/mistral3.cpp): the llama block with NORM rope (adjacent pairs),
  head_dim = key_length, per-pair rope_freqs factors (theta / factor), YaRN
  (ggml-cpu ops.cpp rope_yarn: theta = freq_scale * theta_e blended with theta_e by the ramp
  between ggml_rope_yarn_corr_dims, cos/sin times mscale, llama-context.cpp's yarn_attn_factor
  making the product ~1 for yarn_log_multiplier 1) and the Llama-4 attention temperature
  (q *= 1 + scale * log(floor(pos / n_ctx_orig) + 1), llama-graph.cpp llm_graph_input_attn_temp).
"""

from __future__ import annotations

import numpy as np
from reference import _rms_norm
from reference_archs import _ArchRef, rope_thetas


def _rotate(x: np.ndarray, theta: np.ndarray, neox: bool, mscale: float = 1.0) -> np.ndarray:
    """Rotate the first 2 * theta.shape[1] dims of each head. x: (n, heads, hd); theta: (n, pairs) float32."""
    pairs = theta.shape[1]
    cos = np.cos(theta.astype(np.float64))[:, None, :] * mscale  # (n, 1, pairs)
    sin = np.sin(theta.astype(np.float64))[:, None, :] * mscale
    out = x.copy()
    i0, i1 = (slice(0, pairs), slice(pairs, 2 * pairs)) if neox else (slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2))
    x0, x1 = x[..., i0], x[..., i1]
    out[..., i0] = x0 * cos - x1 * sin
    out[..., i1] = x0 * sin + x1 * cos
    return out


def imrope_sections(sections, n_pairs: int) -> np.ndarray:
    """(n_pairs,) which position (0 t, 1 y, 2 x, 3 the 4th) each rope pair rotates with under IMROPE.

    ggml-cpu ops.cpp ggml_mrope_cache_init with is_imrope: sector = k % sum(sections); y when
    sector % 3 == 1 and sector < 3 * sections[1], x when sector % 3 == 2 and sector < 3 * sections[2],
    t when sector % 3 == 0 and sector < 3 * sections[0], else the 4th.
    """
    sector = np.arange(n_pairs) % sum(sections)
    section = np.full(n_pairs, 3)
    for s in range(3):  # the three rules test disjoint residues: their order does not matter
        section[(sector % 3 == s) & (sector < 3 * sections[s])] = s
    return section


class _DecoderRef(_ArchRef):
    """The llama-style block shared by the four archs; subclasses set the switches and the rope."""

    QKV_BIAS = False
    QK_NORM = False

    def _read_hparams(self, reader):
        self.n_layer = int(self._key(reader, "block_count"))
        self.n_head = int(self._key(reader, "attention.head_count"))
        self.n_head_kv = int(self._key(reader, "attention.head_count_kv", self.n_head))
        n_embd = int(self._key(reader, "embedding_length"))
        self.head_dim = int(self._key(reader, "attention.key_length", n_embd // self.n_head))
        self.n_rot = int(self._key(reader, "rope.dimension_count", self.head_dim))
        self.freq_base = float(self._key(reader, "rope.freq_base", 10000.0))
        self.eps = float(self._key(reader, "attention.layer_norm_rms_epsilon"))

    def _rope(self, x: np.ndarray, meta: dict) -> np.ndarray:
        return _rotate(x, rope_thetas(meta["p"], self.freq_base, self.n_rot), neox=True)

    def _q_scale(self, meta: dict) -> np.ndarray | float:
        return 1.0

    def _block(self, il: int, x: np.ndarray, meta: dict):
        """One layer on rows x (n, n_embd); returns (x_out, attention probs (n_head, n, n_cache))."""
        w, p = self.w, f"blk.{il}."
        n, hd = x.shape[0], self.head_dim
        h = _rms_norm(x, w[p + "attn_norm.weight"], self.eps)
        q, k, v = (h @ w[p + f"attn_{c}.weight"].T for c in "qkv")
        if self.QKV_BIAS:
            q, k, v = (t + w[p + f"attn_{c}.bias"] for t, c in zip((q, k, v), "qkv", strict=True))
        q, k, v = q.reshape(n, self.n_head, hd), k.reshape(n, self.n_head_kv, hd), v.reshape(n, self.n_head_kv, hd)
        if self.QK_NORM:
            q = _rms_norm(q, w[p + "attn_q_norm.weight"], self.eps)
            k = _rms_norm(k, w[p + "attn_k_norm.weight"], self.eps)
        q, k = self._rope(q, meta) * self._q_scale(meta), self._rope(k, meta)
        attn, probs = self._attend(il, q, k, v, meta, 1.0 / np.sqrt(hd))
        x = x + attn @ w[p + "attn_output.weight"].T
        h = _rms_norm(x, w[p + "ffn_norm.weight"], self.eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        up = h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        return x, probs

    def _layer(self, il: int, x: np.ndarray, meta: dict):
        return self._block(il, x, meta)


class RefQwen2(_DecoderRef):
    """Reference qwen2 text model (InternVL / MiniCPM-V LLMs): llama block, q/k/v biases, NEOX rope."""

    ARCH = "qwen2"
    QKV_BIAS = True


class RefQwen3(_DecoderRef):
    """Reference qwen3 text model (InternVL3.5 LLMs): per-head q/k RMS norms, head_dim = key_length."""

    ARCH = "qwen3"
    QK_NORM = True


class RefMistral3(_DecoderRef):
    """Reference mistral3 text model: NORM rope with rope_freqs and YaRN, Llama-4 attention temperature."""

    ARCH = "mistral3"

    def _read_hparams(self, reader):
        super()._read_hparams(reader)
        n_ctx_train = int(self._key(reader, "context_length"))
        self.n_ctx_orig = int(self._key(reader, "rope.scaling.original_context_length", n_ctx_train))
        yarn = self._key(reader, "rope.scaling.type", "linear") == "yarn"
        factor = float(self._key(reader, "rope.scaling.factor", 0.0)) if yarn else 0.0
        self.freq_scale = 1.0 / factor if factor else 1.0
        self.ext_factor = 1.0 if yarn else 0.0  # llama-context.cpp: YaRN turns the extrapolation mix on
        self.beta_fast = float(self._key(reader, "rope.scaling.yarn_beta_fast", 32.0))
        self.beta_slow = float(self._key(reader, "rope.scaling.yarn_beta_slow", 1.0))
        log_mul = float(self._key(reader, "rope.scaling.yarn_log_multiplier", 0.0))
        self.mscale = self._yarn_mscale(factor, log_mul) if yarn else 1.0
        self.temp_scale = float(self._key(reader, "attention.temperature_scale", 0.0))
        self.freq_factors = self.w.get("rope_freqs.weight")  # (n_rot/2,) or None

    @staticmethod
    def _yarn_mscale(factor: float, log_mul: float) -> float:
        """cos/sin gain: llama-context.cpp's yarn_attn_factor times rope_yarn's own 1 + 0.1 ln(factor)."""

        def get_mscale(scale, m):
            return 1.0 if scale <= 1.0 else 0.1 * m * np.log(scale) + 1.0

        attn = get_mscale(factor, 1.0) / get_mscale(factor, log_mul) if log_mul else get_mscale(factor, 1.0)
        return attn / (1.0 + 0.1 * np.log(factor)) * (1.0 + 0.1 * np.log(factor))

    def _corr_dims(self) -> tuple[float, float]:
        # ggml.c ggml_rope_yarn_corr_dims, in float32 like ggml
        def corr(beta):
            n = np.float32(self.n_rot)
            return (
                n
                * np.log(np.float32(self.n_ctx_orig) / (np.float32(beta) * 2 * np.float32(np.pi)))
                / (2 * np.log(np.float32(self.freq_base)))
            )

        return max(0.0, float(np.floor(corr(self.beta_fast)))), min(
            self.n_rot - 1.0, float(np.ceil(corr(self.beta_slow)))
        )

    def _rope(self, x: np.ndarray, meta: dict) -> np.ndarray:
        theta_e = rope_thetas(meta["p"], self.freq_base, self.n_rot)  # (n, n_rot/2) float32
        if self.freq_factors is not None:
            theta_e = theta_e / self.freq_factors.astype(np.float32)
        theta = np.float32(self.freq_scale) * theta_e
        if self.ext_factor:
            low, high = self._corr_dims()
            y = (np.arange(self.n_rot // 2) - low) / max(0.001, high - low)
            ramp = ((1.0 - np.clip(y, 0.0, 1.0)) * self.ext_factor).astype(np.float32)  # rope_yarn_ramp
            theta = theta * (1 - ramp) + theta_e * ramp
        return _rotate(x, theta.astype(np.float32), neox=False, mscale=self.mscale)

    def _q_scale(self, meta: dict) -> np.ndarray | float:
        if not self.temp_scale:
            return 1.0
        scale = np.log(np.floor(meta["p"] / self.n_ctx_orig) + 1.0) * self.temp_scale + 1.0
        return scale.astype(np.float32)[:, None, None]  # (n, 1, 1): one factor per query row


class RefQwen3VL(_DecoderRef):
    """Reference qwen3vl text model: qwen3's block, interleaved M-RoPE, deepstack slices on embedding rows."""

    ARCH = "qwen3vl"
    MROPE = True  # 4 positions per token, grids and the 2-D causal rule of reference_archs._ArchRef
    QK_NORM = True

    def _read_hparams(self, reader):
        super()._read_hparams(reader)
        self.sections = [int(s) for s in self._key(reader, "rope.dimension_sections")]
        self.n_deepstack = int(self._key(reader, "n_deepstack_layers", 0))

    @property
    def n_embd_inp(self) -> int:
        return self.n_embd * (1 + self.n_deepstack)

    def _token_rows(self, ids: np.ndarray) -> np.ndarray:
        rows = self.w["token_embd.weight"][ids]  # (n, n_embd)
        return np.concatenate([rows, np.zeros((len(ids), self.n_embd_inp - self.n_embd))], axis=1)

    def _mrope(self, x: np.ndarray, rope_pos: np.ndarray) -> np.ndarray:
        thetas = [rope_thetas(rope_pos[:, s], self.freq_base, self.n_rot) for s in range(4)]  # 4 x (n, n_rot/2)
        section = imrope_sections(self.sections, self.n_rot // 2)
        theta = np.choose(section[None, :], thetas)  # (n, n_rot/2)
        return _rotate(x, theta, neox=True)

    def _rope(self, x: np.ndarray, meta: dict) -> np.ndarray:
        return self._mrope(x, meta["rope"])

    def _layer(self, il: int, x: np.ndarray, meta: dict):
        d = self.n_embd
        h, probs = self._block(il, x[:, :d], meta)  # (n, n_embd)
        if il < self.n_deepstack:
            h = h + x[:, (il + 1) * d : (il + 2) * d]  # deepstack slice il, after the layer's FFN residual
        return np.concatenate([h, x[:, d:]], axis=1), probs

    def _logits(self, x_last: np.ndarray) -> np.ndarray:
        return super()._logits(x_last[: self.n_embd])
