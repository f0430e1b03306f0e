"""Quantized vision projectors of real shapes: file size, encode time and cosine to the F16 source.

    python -m models.mmproj_quant OUT_DIR [--shape clip-l-336 --shape qwen2-vl-2b ...]
        [--types q8_0 q4_0] [--reps 3] [--threads 1] [--image-max-tokens N]

Each projector is written once in F16 with random weights (make_shapes' writers; the cost of an
encode does not depend on the values, the cosine does only through their statistics), quantized
with `fastv-edge quantize-mmproj`'s code (llama.cpp's quantizer), and all versions encode
scikit-image's astronaut (512 x 512) in one process, the order rotating every round; the table
gives medians. Prints a Markdown table and writes OUT_DIR/mmproj_quant.json.

SYNTHETIC WEIGHTS: the cosines say how much quantization moves random-weight rows of these
shapes, which tracks, but is not, what it does to a trained projector.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fastv_edge.testing.mmproj_archs import VisionHParams

# Qwen2-VL-2B's own ViT (make_shapes' qwen2-vl-2b stands in for it with a LLaVA mlp tower at patch 28)
QWEN2VL_2B_VIT = VisionHParams(
    projector="qwen2vl_merger",
    image_size=560,
    patch_size=14,
    n_embd=1280,
    n_ff=5120,
    n_head=16,
    n_layer=32,
    projection_dim=1536,
    merge=2,
)


@dataclass(frozen=True)
class Projector:
    shape: str  # the make_shapes key whose tower this is
    clip: VisionHParams | None  # None: the shape's own
    description: str


PROJECTORS = {
    "clip-l-336": Projector("llava-1.5-7b", None, "CLIP ViT-L/14-336 + mlp (LLaVA-1.5-7B): 576 tokens"),
    "qwen2-vl-2b": Projector("qwen2-vl-2b", QWEN2VL_2B_VIT, "Qwen2-VL-2B ViT + qwen2vl_merger: dynamic"),
    "qwen2.5-vl-3b": Projector("qwen2.5-vl-3b", None, "Qwen2.5-VL-3B ViT (window attention) + merger: dynamic"),
    "siglip-896": Projector("gemma-3-4b", None, "SigLIP-So400m/14-896 + gemma3 projector (Gemma-3-4B): 256 tokens"),
}


def source(out_dir: Path, name: str, seed: int, log=print) -> Path:
    """The F16 projector `name`, written if missing."""
    from models.make_shapes import write_shape_mmproj

    proj = PROJECTORS[name]
    path = out_dir / name / f"{name}-synthetic-mmproj-f16.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_shape_mmproj(path, proj.shape, seed, clip=proj.clip)
        log(f"{path.name}: written in {time.perf_counter() - t0:.0f} s")
    return path


def measure_projector(out_dir: Path, name: str, types: list[str], args, log=print) -> list[dict]:
    """Quantize one projector to each type and measure them all against the source."""
    from fastv_edge.quantize_mmproj import default_photo, measure, quantize_mmproj

    src = source(out_dir, name, args.seed, log)
    dsts = []
    for qtype in types:
        dst = src.with_name(f"{name}-synthetic-mmproj-{qtype}.gguf")
        if not dst.is_file():
            quantize_mmproj(src, dst, qtype, n_threads=args.threads)
        dsts.append(dst)
    t0 = time.perf_counter()
    results = measure(src, dsts, default_photo(), n_threads=args.threads, reps=args.reps, image_max_tokens=args.cap)
    log(f"{name}: measured in {time.perf_counter() - t0:.0f} s")
    rows = []
    for qtype, dst, result in zip(types, dsts, results, strict=True):
        rows.append(
            {
                "projector": name,
                "description": PROJECTORS[name].description,
                "type": qtype,
                "mib_f16": src.stat().st_size / 2**20,
                "mib": dst.stat().st_size / 2**20,
                **result,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table of the measured rows (times in seconds: wall / process CPU, medians)."""
    lines = [
        "| projector | type | MiB (F16) | size | tokens | F16 encode, wall / CPU | encode, wall / CPU "
        "| CPU time | cosine mean | cosine min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['projector']} | {r['type']} | {r['mib']:.0f} ({r['mib_f16']:.0f}) | {r['mib'] / r['mib_f16']:.2f}x "
            f"| {r['n_tokens']} | {r['encode_ms_in'] / 1e3:.1f} / {r['encode_cpu_ms_in'] / 1e3:.1f} s "
            f"| {r['encode_ms_out'] / 1e3:.1f} / {r['encode_cpu_ms_out'] / 1e3:.1f} s "
            f"| {r['encode_cpu_ms_out'] / r['encode_cpu_ms_in']:.2f}x "
            f"| {r['cosine_mean']:.5f} | {r['cosine_min']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.mmproj_quant", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", action="append", choices=sorted(PROJECTORS), help="repeatable (default: all)")
    parser.add_argument("--types", nargs="+", default=["q8_0", "q4_0"], help="quantizations (default q8_0 q4_0)")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="encoder and quantizer threads (default 1)")
    parser.add_argument("--image-max-tokens", dest="cap", type=int, help="cap the dynamic projectors' tokens")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    rows = []
    for name in args.shape or list(PROJECTORS):
        rows += measure_projector(args.out_dir, name, args.types, args)
        print(table(rows[-len(args.types) :]), flush=True)
    path = args.out_dir / "mmproj_quant.json"
    if path.is_file():  # keep the rows of other projectors and types measured before
        done = {(r["projector"], r["type"]) for r in rows}
        rows = [r for r in json.loads(path.read_text())["rows"] if (r["projector"], r["type"]) not in done] + rows
    record = {
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "threads": args.threads,
        "reps": args.reps,
        "image": "scikit-image astronaut 512x512",
        "image_max_tokens": args.cap,
        "rows": rows,
    }
    path.write_text(json.dumps(record, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
