"""A small LLaVA-style VLM in PyTorch, written to compute exactly what llama.cpp will compute.

Vision side = llama.cpp's `clip_graph_llava` (tools/mtmd/models/llava.cpp) for projector_type "mlp":
patch conv (no conv bias) + patch bias + learned position embeddings, pre-LayerNorm, pre-LN blocks
(LayerNorm, MHA with biases, fc1 -> tanh-GELU -> fc2), no class token, no post-LayerNorm, the last
block's output is the feature (exported as clip.vision.feature_layer = [n_layer]), then
mm.0 -> tanh-GELU -> mm.2.
Text side = llama.cpp arch "llama": RMSNorm, RoPE of type NORM (rotates adjacent pairs x[2i], x[2i+1]),
GQA attention without biases, SwiGLU FFN, untied output.

The LM keeps only the rows of the token embedding and output matrices that easy-vqa uses; `export`
writes them back into full 49152-row matrices (unused output rows are zero, so their logits are 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 64  # easy-vqa's native size: mtmd copies a 64x64 input without resizing
    patch_size: int = 4  # (64 / 4)^2 = 256 image tokens
    n_embd: int = 128
    n_head: int = 4
    n_ff: int = 512  # must differ from n_embd: clip.cpp swaps ffn up/down when ffn_down.ne[0] == n_embd
    n_layer: int = 4
    eps: float = 1e-5
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49152
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 384
    n_layer: int = 4
    rms_eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def gelu(x: torch.Tensor) -> torch.Tensor:
    # ggml_gelu is the tanh approximation (ggml-cpu/vec.h ggml_gelu_f32).
    return F.gelu(x, approximate="tanh")


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.k = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.v = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.o = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.n_embd, cfg.n_ff)
        self.fc2 = nn.Linear(cfg.n_ff, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (batch, n_patches, n_embd)
        h = self.ln1(x)
        q, k, v = (p(h).view(b, n, self.n_head, d // self.n_head).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)  # (b, n_head, n, d_head), full (non-causal) attention
        x = x + self.o(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(gelu(self.fc1(self.ln2(x))))


class VisionEncoder(nn.Module):
    """ViT + mlp projector: pixels (b, 3, H, W), already normalised -> (b, n_patches, n_embd_text)."""

    def __init__(self, cfg: VisionConfig, n_embd_text: int):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(3, cfg.n_embd, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.patch_bias = nn.Parameter(torch.zeros(cfg.n_embd))
        self.pos = nn.Parameter(torch.randn(cfg.n_patches, cfg.n_embd) * 0.02)
        self.pre_ln = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.n_layer))
        self.mm0 = nn.Linear(cfg.n_embd, n_embd_text)
        self.mm2 = nn.Linear(n_embd_text, n_embd_text)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Output of the last ViT block, (b, n_patches, n_embd): clip.vision.feature_layer = [n_layer]."""
        x = self.patch(pixels).flatten(2).transpose(1, 2)  # (b, n_patches, n_embd), row-major patch order
        x = self.pre_ln(x + self.patch_bias + self.pos)
        for blk in self.blocks:
            x = blk(x)
        return x

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.mm2(gelu(self.mm0(features)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(pixels))


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(n_pos: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (n_pos, head_dim // 2): theta_i = pos * base^(-2i / head_dim)."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # LLAMA_ROPE_TYPE_NORM (ggml-cpu/ops.cpp rotate_pairs with n_offset=1): pairs are (x[2i], x[2i+1]).
    x0, x1 = x[..., 0::2], x[..., 1::2]  # (..., n_pos, head_dim // 2)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class TextBlock(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.n_embd, cfg.head_dim
        self.attn_norm = nn.Parameter(torch.ones(d))
        self.wq = nn.Linear(d, cfg.n_head * hd, bias=False)
        self.wk = nn.Linear(d, cfg.n_head_kv * hd, bias=False)
        self.wv = nn.Linear(d, cfg.n_head_kv * hd, bias=False)
        self.wo = nn.Linear(cfg.n_head * hd, d, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(d))
        self.gate = nn.Linear(d, cfg.n_ff, bias=False)
        self.up = nn.Linear(d, cfg.n_ff, bias=False)
        self.down = nn.Linear(cfg.n_ff, d, bias=False)

    def qkv(self, x, cos, sin):
        b, n, _ = x.shape
        c = self.cfg
        h = rms_norm(x, self.attn_norm, c.rms_eps)
        q = self.wq(h).view(b, n, c.n_head, c.head_dim).transpose(1, 2)  # (b, n_head, n, head_dim)
        k = self.wk(h).view(b, n, c.n_head_kv, c.head_dim).transpose(1, 2)  # (b, n_head_kv, n, head_dim)
        v = self.wv(h).view(b, n, c.n_head_kv, c.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(self, x, q, k, v, mask):
        b, _, n, _ = q.shape
        # enable_gqa maps query head h to kv head h // (n_head / n_head_kv), as ggml's broadcast does;
        # mask None means causal (the prefix), else a boolean (n, n_kv) mask
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        x = x + self.wo(a.transpose(1, 2).reshape(b, n, -1))
        h = rms_norm(x, self.ffn_norm, self.cfg.rms_eps)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TextModel(nn.Module):
    """Llama LM over a compact embedding table: `in_ids` / `out_ids` list the full-vocab ids kept."""

    def __init__(self, cfg: TextConfig, in_ids: list[int], out_ids: list[int], max_pos: int = 512):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("in_ids", torch.tensor(in_ids, dtype=torch.long))
        self.register_buffer("out_ids", torch.tensor(out_ids, dtype=torch.long))
        lookup = torch.full((cfg.vocab_size,), -1, dtype=torch.long)
        lookup[self.in_ids] = torch.arange(len(in_ids))
        self.register_buffer("lookup", lookup)
        self.embed = nn.Parameter(torch.randn(len(in_ids), cfg.n_embd) * 0.02)
        self.blocks = nn.ModuleList(TextBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.Parameter(torch.ones(cfg.n_embd))
        self.out = nn.Parameter(torch.randn(len(out_ids), cfg.n_embd) * 0.02)
        cos, sin = rope_tables(max_pos, cfg.head_dim, cfg.rope_base)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.lookup[ids]
        if (rows < 0).any():
            raise ValueError(f"token ids outside the trained set: {ids[rows < 0].unique().tolist()}")
        return self.embed[rows]

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Causal pass over a shared prefix (b, P, d) at positions 0..P-1; returns hidden and per-layer (k, v)."""
        p = x.shape[1]
        cos, sin = self.cos[:p], self.sin[:p]
        cache = []
        for blk in self.blocks:
            q, k, v = blk.qkv(x, cos, sin)
            cache.append((k, v))
            x = blk.finish(x, q, k, v, None)
        return x, cache

    def extend(self, x: torch.Tensor, cache, owner: torch.Tensor, taps: tuple[int, ...] = ()):
        """Run suffixes (m, S, d) after the prefix `owner[j]` of `cache`; returns normed hidden (m, S, d).

        With `taps`, also returns the residual stream after each listed block: (normed, [tapped, ...]).
        """
        p = cache[0][0].shape[2]
        s = x.shape[1]
        cos, sin = self.cos[p : p + s], self.sin[p : p + s]
        mask = torch.cat((torch.ones(s, p, dtype=torch.bool), torch.ones(s, s, dtype=torch.bool).tril()), dim=1)
        tapped = []
        for il, (blk, (pk, pv)) in enumerate(zip(self.blocks, cache, strict=True)):
            q, k, v = blk.qkv(x, cos, sin)
            k = torch.cat((pk[owner], k), dim=2)  # (m, n_head_kv, P + S, head_dim)
            v = torch.cat((pv[owner], v), dim=2)
            x = blk.finish(x, q, k, v, mask)
            if il in taps:
                tapped.append(x)
        out = rms_norm(x, self.norm, self.cfg.rms_eps)
        return (out, tapped) if taps else out

    def full_output(self) -> torch.Tensor:
        """(vocab_size, n_embd) output matrix as exported: zero rows for tokens never produced."""
        w = torch.zeros(self.cfg.vocab_size, self.cfg.n_embd)
        w[self.out_ids] = self.out.detach()
        return w


class VLM(nn.Module):
    def __init__(self, vcfg: VisionConfig, tcfg: TextConfig, in_ids: list[int], out_ids: list[int]):
        super().__init__()
        self.vision = VisionEncoder(vcfg, tcfg.n_embd)
        self.text = TextModel(tcfg, in_ids, out_ids)
        self._init_residual_outputs()

    def _init_residual_outputs(self):
        for blocks in (self.vision.blocks, self.text.blocks):
            scale = 0.02 / math.sqrt(2 * len(blocks))
            for blk in blocks:
                for name, p in blk.named_parameters():
                    if p.dim() == 2:
                        nn.init.normal_(p, std=scale if name.split(".")[0] in ("o", "fc2", "wo", "down") else 0.02)

    def prefill(self, pre_ids: torch.Tensor, pixels: torch.Tensor):
        """pre_ids (P0,) shared text before the image; pixels (b, 3, H, W) -> (hidden, cache)."""
        return self.prefill_features(pre_ids, self.vision.features(pixels))

    def prefill_features(self, pre_ids: torch.Tensor, features: torch.Tensor):
        img = self.vision.project(features)  # (b, n_patches, d)
        txt = self.text.embed_tokens(pre_ids).expand(img.shape[0], -1, -1)  # (b, P0, d)
        return self.text.prefill(torch.cat((txt, img), dim=1))

    def configs(self) -> dict:
        return {"vision": asdict(self.vision.cfg), "text": asdict(self.text.cfg)}
