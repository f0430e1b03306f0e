"""Save/load the trained VLM as numpy arrays named like the GGUF tensors llama.cpp loads.

Names: vision side = tools/mtmd/clip-impl.h TN_* (v.*, mm.*), text side = llama.cpp's llama tensors.
Shapes are PyTorch's (out_features, in_features); a GGUF writer reverses them into ggml's ne order,
as llama.cpp's converters do. attn_q/attn_k are NOT to be permuted: the model already uses
llama.cpp's adjacent-pair RoPE (HF checkpoints need the converter's permute, this one does not).
"""

from __future__ import annotations

import numpy as np
import torch

from .model import VLM, TextConfig, VisionConfig

# PyTorch module name -> GGUF tensor name inside one block
VISION_BLOCK = {
    "ln1": "ln1",
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_out",
    "ln2": "ln2",
    "fc1": "ffn_up",
    "fc2": "ffn_down",
}
TEXT_BLOCK = {
    "attn_norm": "attn_norm",
    "wq": "attn_q",
    "wk": "attn_k",
    "wv": "attn_v",
    "wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}


def vision_arrays(model: VLM) -> dict[str, np.ndarray]:
    v = model.vision
    out = {
        "v.patch_embd.weight": v.patch.weight,  # (n_embd, 3, patch, patch)
        "v.patch_embd.bias": v.patch_bias,
        "v.position_embd.weight": v.pos,  # (n_patches, n_embd)
        "v.pre_ln.weight": v.pre_ln.weight,
        "v.pre_ln.bias": v.pre_ln.bias,
        "mm.0.weight": v.mm0.weight,
        "mm.0.bias": v.mm0.bias,
        "mm.2.weight": v.mm2.weight,
        "mm.2.bias": v.mm2.bias,
    }
    for i, blk in enumerate(v.blocks):
        for mod, gg in VISION_BLOCK.items():
            m = getattr(blk, mod)
            out[f"v.blk.{i}.{gg}.weight"] = m.weight
            out[f"v.blk.{i}.{gg}.bias"] = m.bias
    return {k: t.detach().float().numpy().copy() for k, t in out.items()}


def text_arrays(model: VLM, seed: int) -> dict[str, np.ndarray]:
    t = model.text
    cfg = t.cfg
    # rows never fed to the LM keep a seeded N(0, 0.02) init so the matrix looks like an ordinary embedding
    gen = torch.Generator().manual_seed(seed + 1)
    embd = torch.randn(cfg.vocab_size, cfg.n_embd, generator=gen) * 0.02
    embd[t.in_ids] = t.embed.detach()
    out = {"token_embd.weight": embd, "output_norm.weight": t.norm, "output.weight": t.full_output()}
    for i, blk in enumerate(t.blocks):
        for mod, gg in TEXT_BLOCK.items():
            m = getattr(blk, mod)
            out[f"blk.{i}.{gg}.weight"] = m if isinstance(m, torch.Tensor) else m.weight
    return {k: v.detach().float().numpy().copy() for k, v in out.items()}


def save(model: VLM, vision_path, text_path, seed: int) -> None:
    np.savez(vision_path, **vision_arrays(model))
    np.savez(text_path, **text_arrays(model, seed))


def load(vision_path, text_path, vcfg: VisionConfig, tcfg: TextConfig) -> VLM:
    """Rebuild a full-vocab VLM from the two .npz files (every token id becomes usable)."""
    vz, tz = np.load(vision_path), np.load(text_path)
    ids = list(range(tcfg.vocab_size))
    model = VLM(vcfg, tcfg, ids, ids)
    ref_v, ref_t = vision_arrays(model), text_arrays(model, 0)
    missing = (set(ref_v) - set(vz.files)) | (set(ref_t) - set(tz.files))
    if missing:
        raise ValueError(f"npz files lack tensors: {sorted(missing)}")
    with torch.no_grad():
        _assign_vision(model, vz)
        _assign_text(model, tz)
    return model.eval()


def _assign_vision(model: VLM, z) -> None:
    v = model.vision
    v.patch.weight.copy_(torch.from_numpy(z["v.patch_embd.weight"]))
    v.patch_bias.copy_(torch.from_numpy(z["v.patch_embd.bias"]))
    v.pos.copy_(torch.from_numpy(z["v.position_embd.weight"]))
    for mod, name in ((v.pre_ln, "v.pre_ln"), (v.mm0, "mm.0"), (v.mm2, "mm.2")):
        mod.weight.copy_(torch.from_numpy(z[f"{name}.weight"]))
        mod.bias.copy_(torch.from_numpy(z[f"{name}.bias"]))
    for i, blk in enumerate(v.blocks):
        for mod, gg in VISION_BLOCK.items():
            getattr(blk, mod).weight.copy_(torch.from_numpy(z[f"v.blk.{i}.{gg}.weight"]))
            getattr(blk, mod).bias.copy_(torch.from_numpy(z[f"v.blk.{i}.{gg}.bias"]))


def _assign_text(model: VLM, z) -> None:
    t = model.text
    t.embed.copy_(torch.from_numpy(z["token_embd.weight"]))
    t.out.copy_(torch.from_numpy(z["output.weight"]))
    t.norm.copy_(torch.from_numpy(z["output_norm.weight"]))
    for i, blk in enumerate(t.blocks):
        for mod, gg in TEXT_BLOCK.items():
            m = getattr(blk, mod)
            (m if isinstance(m, torch.Tensor) else m.weight).copy_(torch.from_numpy(z[f"blk.{i}.{gg}.weight"]))
