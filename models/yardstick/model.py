"""The yardstick VLM: models.easyvqa's LLaVA-style VLM at a new shape, plus train-only patch heads.

The network itself is models.easyvqa.model.VLM (ViT + LLaVA 'mlp' projector + llama LM, written
to compute exactly what llama.cpp computes); only the configuration differs:

| part | easy-vqa | yardstick |
|---|---|---|
| image | 64 px, 4 px patches | 96 px, 6 px patches: still 16 x 16 = 256 image tokens |
| LM | 4 layers | 8 layers, so FastV K = 2 leaves 6 pruned layers |

PatchHeads read each ViT output token and predict what covers that patch (colour, category,
letter, object centre). Nothing of them is exported: they make every image token carry its own
patch's content early in training, which is also what makes the choice of tokens matter.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.easyvqa.model import VLM, TextConfig, VisionConfig, rms_norm

from .scenes import center, glyph_mask, shape_mask, side

VISION = VisionConfig(image_size=96, patch_size=6, n_embd=128, n_head=4, n_ff=512, n_layer=4)
TEXT = TextConfig(n_embd=128, n_head=4, n_head_kv=2, n_ff=384, n_layer=8)
MIN_COVER = 0.2  # a patch belongs to an object covering at least this share of it


def build(in_ids: list[int], out_ids: list[int], vision: VisionConfig = VISION, text: TextConfig = TEXT) -> VLM:
    """A freshly initialised VLM over the compact token sets (see models.easyvqa.model.TextModel)."""
    return VLM(vision, text, in_ids, out_ids)


def configs_from_json(cfg: dict) -> tuple[VisionConfig, TextConfig]:
    """(VisionConfig, TextConfig) from the config.json the trainer writes."""
    vision = VisionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["vision"].items()})
    return vision, TextConfig(**cfg["text"])


def side_bin(obj_side: int) -> int:
    """Object size class of a patch label: 2-px bins from 8 px (0) up; shapes span 8-28 px."""
    return max(0, (obj_side - 8) // 2)


N_SIDE_BINS = side_bin(28) + 1


def patch_labels(scene: dict, p: dict, grid: int) -> np.ndarray:
    """(grid * grid, 7) int labels per patch, row-major: colour, category, letter, centre, size, row, column.

    colour: index in p['colors'] or len (none); category: index in p['shapes'], len = glyph,
    len + 1 = background; letter: index in p['letters'] or len (none); centre: category of the
    object whose centre lies in the patch, else background; size: side_bin of the object's side
    or N_SIDE_BINS (none); row, column: the patch's own grid position, so that the image tokens
    carry where they are as well as what they show. Objects do not overlap, so the object covering
    most of a patch is the only one covering it much.
    """
    colors, shapes, letters = list(p["colors"]), p["shapes"], p["letters"]
    out = np.empty((grid * grid, 7), dtype=np.int64)
    out[:, :5] = (len(colors), len(shapes) + 1, len(letters), len(shapes) + 1, N_SIDE_BINS)
    out[:, 5], out[:, 6] = np.divmod(np.arange(grid * grid), grid)
    owner = patch_objects(scene, p, grid)
    for i, obj in enumerate(scene["objects"]):
        take = owner == i
        cat = shapes.index(obj["shape"]) if obj["kind"] == "shape" else len(shapes)
        letter = letters.index(obj["letter"]) if obj["kind"] == "glyph" else len(letters)
        out[take, :3] = (colors.index(obj["color"]), cat, letter)
        out[take, 4] = side_bin(side(obj))
        cx, cy = center(obj)
        cell = p["image_size"] // grid
        out[min(int(cy // cell), grid - 1) * grid + min(int(cx // cell), grid - 1), 3] = cat
    return out


def patch_objects(scene: dict, p: dict, grid: int) -> np.ndarray:
    """(grid * grid,) index of the object covering >= MIN_COVER of each patch (the most-covering one), -1 none."""
    size = p["image_size"]
    cell = size // grid
    owner = np.full(grid * grid, -1, dtype=np.int64)
    best = np.zeros(grid * grid)
    for i, obj in enumerate(scene["objects"]):
        if obj["kind"] == "shape":
            mask = shape_mask(obj["shape"], obj["box"], size)
        else:
            mask = glyph_mask(obj["letter"], obj["box"], size)
        cover = mask.reshape(grid, cell, grid, cell).mean(axis=(1, 3)).reshape(-1)  # (grid * grid,)
        take = (cover >= MIN_COVER) & (cover > best)
        owner[take] = i
        best = np.maximum(best, cover)
    return owner


class PatchHeads(torch.nn.Module):
    """Train-only linear heads on the ViT's output tokens (never exported)."""

    def __init__(self, n_embd: int, n_colors: int, n_shapes: int, n_letters: int, grid: int):
        super().__init__()
        self.sizes = (n_colors + 1, n_shapes + 2, n_letters + 1, n_shapes + 2, N_SIDE_BINS + 1, grid, grid)
        self.proj = torch.nn.Linear(n_embd, sum(self.sizes))

    def loss(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Summed cross-entropy over the label columns; also each column's accuracy on object patches.

        Args:
            feats: (b, n_patches, n_embd) ViT output.
            labels: (b, n_patches, 7) from patch_labels.

        Returns:
            (loss, [accuracy per column]); row and column accuracies are over all patches.
        """
        logits = self.proj(feats).split(self.sizes, dim=-1)  # 7 x (b, n_patches, size)
        total, accs = torch.zeros(()), []
        for col, lg in enumerate(logits):
            target = labels[..., col]
            total = total + F.cross_entropy(lg.flatten(0, 1), target.flatten())
            counted = target != self.sizes[col] - 1 if col < 5 else torch.ones_like(target, dtype=torch.bool)
            accs.append(float((lg.argmax(-1) == target)[counted].float().mean()) if counted.any() else 1.0)
        return total, accs


def extend_with_attention(text, x: torch.Tensor, cache, owner: torch.Tensor, layer: int, query_pos: torch.Tensor):
    """models.easyvqa's TextModel.extend, also returning one layer's attention of one suffix token per row.

    Args:
        text: the TextModel.
        x: (m, S, d) suffix embeddings; cache, owner: as TextModel.extend.
        layer: the block whose attention probabilities are returned.
        query_pos: (m,) suffix index of the querying token of each row (the last prompt token).

    Returns:
        (normed hidden (m, S, d), probabilities (m, n_head, P + S) over the prefix and suffix keys,
        residual stream (m, d) of the querying token after that block).
    """
    cfg = text.cfg
    p, s = cache[0][0].shape[2], x.shape[1]
    cos, sin = text.cos[p : p + s], text.sin[p : p + s]
    mask = torch.cat((torch.ones(s, p, dtype=torch.bool), torch.ones(s, s, dtype=torch.bool).tril()), dim=1)
    rows = torch.arange(x.shape[0])
    probs = tapped = None
    for il, (blk, (pk, pv)) in enumerate(zip(text.blocks, cache, strict=True)):
        q, k, v = blk.qkv(x, cos, sin)
        k = torch.cat((pk[owner], k), dim=2)  # (m, n_head_kv, P + S, head_dim)
        v = torch.cat((pv[owner], v), dim=2)
        if il == layer:
            qi = q[rows, :, query_pos]  # (m, n_head, head_dim)
            kk = k.repeat_interleave(cfg.n_head // cfg.n_head_kv, dim=1)  # (m, n_head, P + S, head_dim), GQA
            scores = torch.einsum("mhd,mhtd->mht", qi, kk) / cfg.head_dim**0.5
            probs = scores.masked_fill(~mask[query_pos][:, None, :], float("-inf")).softmax(-1)
        x = blk.finish(x, q, k, v, mask)
        if il == layer:
            tapped = x[rows, query_pos]  # (m, d)
    return rms_norm(x, text.norm, cfg.rms_eps), probs, tapped


def grounding_loss(probs: torch.Tensor, first_image: int, target: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass that lands on the patches of the asked-about objects, per head group.

    Args:
        probs: (m, n_head, n_keys) from extend_with_attention.
        first_image: key index of the first image token.
        target: (m, n_groups, n_patches) bool; the heads are split into n_groups equal groups and
            group g is pointed at target[:, g] (two-object questions: one object per group); rows
            without any target are ignored.

    Returns:
        The mean over rows and groups of -log(mass averaged over the group's heads).
    """
    m, n_head, _ = probs.shape
    n_groups, n_patches = target.shape[1:]
    img = probs[:, :, first_image : first_image + n_patches].reshape(m, n_groups, n_head // n_groups, n_patches)
    mass = (img.mean(2) * target).sum(-1)  # (m, n_groups)
    keep = target.any(-1)
    if not keep.any():
        return torch.zeros(())
    return -torch.log(mass[keep] + 1e-6).mean()


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """x scaled to unit RMS per token, as the LM's RMSNorm sees it (without its weight)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


class ReadoutHeads(torch.nn.Module):
    """Stage-2 train-only heads (never exported).

    patch: PatchHeads on the image-token embeddings the LM receives (projector output), so the
    patch content survives the projector. readout: on the last prompt token's residual stream after
    the grounded LM block, what that block's attention should have fetched: colour / category /
    letter of the one object a question names (attribute, glyph, exist-yes), or centre row, column
    and size of each of the two objects of a spatial or size question (see readout_target).
    """

    def __init__(self, n_embd: int, n_colors: int, n_shapes: int, n_letters: int, grid: int):
        super().__init__()
        self.patch = PatchHeads(n_embd, n_colors, n_shapes, n_letters, grid)
        self.sizes = (n_colors, n_shapes + 1, n_letters + 1) + (grid, grid, N_SIDE_BINS) * 2
        self.readout = torch.nn.Linear(n_embd, sum(self.sizes))

    def readout_loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the (m, 9) targets (-1 = not asked) from residuals h (m, n_embd)."""
        logits = self.readout(unit_rms(h)).split(self.sizes, dim=-1)  # 9 x (m, size)
        total = torch.zeros(())
        for i, lg in enumerate(logits):
            keep = target[:, i] >= 0
            if keep.any():
                total = total + F.cross_entropy(lg[keep], target[keep, i])
        return total


def readout_target(scene: dict, ref: list[int], p: dict, grid: int) -> list[int]:
    """9 readout labels of a question: (colour, category, letter) of a single referent, then (row, column,
    size bin) of the first and of the second of two referents; -1 where not applicable."""
    out = [-1] * 9
    objs = [scene["objects"][i] for i in ref]
    if len(objs) == 1:
        o = objs[0]
        cat = p["shapes"].index(o["shape"]) if o["kind"] == "shape" else len(p["shapes"])
        letter = p["letters"].index(o["letter"]) if o["kind"] == "glyph" else len(p["letters"])
        out[:3] = [list(p["colors"]).index(o["color"]), cat, letter]
    elif len(objs) == 2 and len(ref) == 2:
        cell = p["image_size"] // grid
        for j, o in enumerate(objs):
            cx, cy = center(o)
            out[3 + 3 * j : 6 + 3 * j] = [
                min(int(cy // cell), grid - 1),
                min(int(cx // cell), grid - 1),
                side_bin(side(o)),
            ]
    return out
