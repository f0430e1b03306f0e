"""The prompt every configuration prefills: text, image(s), question, as a LLaVA-style raw prompt.

Two kinds, one interface (`prefill(batch, prune) -> (n_past, PrefillStats)`, the prompt's logits left in the
context):
- MtmdWorkload: a real picture through mtmd (preprocess, vision encoder, projector), then the
  fastv_edge prefill; used whenever an mmproj is given.
- PseudoWorkload: no mmproj; the image is N embedding rows decoded through the embedding-batch
  path mtmd uses. The rows are the input embeddings of N random vocabulary tokens, so their
  scale matches text (x sqrt(n_embd) for gemma3, which scales token input only); gemma3
  images are decoded non-causally, as mtmd does. Vision encode time is 0 here.
About 60 text tokens surround the image, as in the paper's FLOPs examples.
"""

from __future__ import annotations

import ctypes
import time

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from .. import _native
from ..images import RGBImage, load_image
from ..prefill import PrefillStats, TokenBatch, check_fits, prefill, tokenize
from ..pruning import make_pruner

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
QUESTION = "Describe this picture in detail. What objects are there, what colours do they have, and where are they?"


def prompt_text(marker: str, n_images: int) -> str:
    """The raw prompt with n_images media markers (no chat template: synthetic models have none)."""
    return f"{SYSTEM}\nUSER: {marker * n_images}\n{QUESTION}\nASSISTANT:"


def synthetic_picture(seed: int, nx: int = 640, ny: int = 480) -> RGBImage:
    """A deterministic photo-like RGB image (gradients and discs); mtmd resizes it."""
    rng = np.random.default_rng([seed, 11])
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    img = np.stack([xx / nx, yy / ny, 0.5 + 0.5 * np.sin(xx / 37.0 + yy / 53.0)], axis=-1) * 200  # (ny, nx, 3)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, nx), rng.uniform(0, ny), rng.uniform(20, 90)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    data = np.clip(img, 0, 255).astype(np.uint8).tobytes()
    return RGBImage(nx, ny, data, "synthetic-picture")


class MtmdWorkload:
    """Tokenize (incl. image preprocessing) and prefill through mtmd on every call."""

    kind = "mtmd"

    def __init__(self, model, spec, seed: int):
        self.model = model
        if spec.images:
            self.images = [load_image(path) for path in spec.images]
        else:
            self.images = [synthetic_picture(seed + i) for i in range(spec.n_images)]
        self.text = prompt_text(model.marker, len(self.images)) if spec.prompt is None else spec.prompt
        with tokenize(model.llm, model.mtmd_ctx, self.text, self.images, add_special=True) as p:
            self.n_prompt_tokens, self.n_image_tokens = p.n_tokens, p.n_image_tokens
            check_fits(p, 0, model.n_ctx)
            self.encode_cpu_ms = min(self._encode_cpu(p) for _ in range(2))  # the 1st also warms up

    def _encode_cpu(self, prompt) -> float:
        # the vision encoder's CPU time does not depend on the pruning configuration: measure it
        # here, so that prefill CPU time = TTFT CPU time - this
        c0 = time.process_time()
        for piece in prompt.pieces:
            if piece.chunk is not None and mtmd.mtmd_encode_chunk(self.model.mtmd_ctx, piece.chunk) != 0:
                raise RuntimeError("mtmd_encode_chunk failed")
        return (time.process_time() - c0) * 1e3

    def prefill(self, batch: TokenBatch, prune) -> tuple[int, PrefillStats]:
        m = self.model
        with tokenize(m.llm, m.mtmd_ctx, self.text, self.images, add_special=True) as p:
            return prefill(m.ctx, m.mtmd_ctx, p, batch, n_past=0, n_ubatch=llama_cpp.llama_n_ubatch(m.ctx), prune=prune)


def _token_embeddings(model_path: str, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of token_embd.weight, dequantized: (len(ids), n_embd) float32."""
    import gguf

    reader = gguf.GGUFReader(model_path)
    tensor = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if tensor is None:
        raise ValueError(f"{model_path} has no token_embd.weight to draw a pseudo image from")
    rows = np.asarray(tensor.data)[ids]  # (n, bytes per row) or (n, n_embd)
    return gguf.quants.dequantize(rows, tensor.tensor_type).astype(np.float32).reshape(len(ids), -1)


class PseudoWorkload:
    """Text tokens, N pseudo-image embedding rows, text tokens; FastV through the _native calls."""

    kind = "pseudo"

    def __init__(self, model, n_image: int, seed: int):
        if model.info.architecture == "qwen2vl":
            raise ValueError("pseudo images need 4 M-RoPE positions per row; give qwen2vl models an --mmproj")
        self.model = model
        llm = model.llm
        self.pre = llm.tokenize(f"{SYSTEM}\nUSER: ".encode(), add_bos=True, special=True)
        self.post = llm.tokenize(f"\n{QUESTION}\nASSISTANT:".encode(), add_bos=False, special=True)
        rng = np.random.default_rng([seed, 12])
        ids = rng.integers(0, llm.n_vocab(), n_image)
        rows = _token_embeddings(model.info.path, ids)  # (N, n_embd)
        if model.info.architecture == "gemma3":
            rows *= np.sqrt(model.info.n_embd)
        self.image = np.ascontiguousarray(rows, dtype=np.float32)
        self.non_causal = model.info.architecture == "gemma3"  # mtmd decodes Gemma 3 images bidirectionally
        self.n_image_tokens = n_image
        self.encode_cpu_ms = 0.0  # no vision encoder
        self.n_prompt_tokens = len(self.pre) + n_image + len(self.post)
        if self.n_prompt_tokens > model.n_ctx:
            raise ValueError(f"pseudo prompt needs {self.n_prompt_tokens} tokens, n_ctx is {model.n_ctx}; raise -c")

    def _decode_image(self, ctx, n_past: int, n_batch: int) -> int:
        n, n_embd = self.image.shape
        if self.non_causal:
            llama_cpp.llama_set_causal_attn(ctx, False)
        try:
            for start in range(0, n, n_batch):
                part = self.image[start : start + n_batch]  # (n_part, n_embd)
                batch = llama_cpp.llama_batch_init(len(part), n_embd, 1)
                try:
                    batch.n_tokens = len(part)
                    ctypes.memmove(batch.embd, part.ctypes.data, part.nbytes)
                    for i in range(len(part)):
                        batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = n_past + start + i, 1, 0
                        batch.logits[i] = False
                    rc = llama_cpp.llama_decode(ctx, batch)
                    if rc != 0:
                        raise RuntimeError(f"llama_decode of the pseudo image returned {rc}")
                finally:
                    llama_cpp.llama_batch_free(batch)
        finally:
            if self.non_causal:
                llama_cpp.llama_set_causal_attn(ctx, True)
        return n_past + n

    def prefill(self, batch: TokenBatch, prune) -> tuple[int, PrefillStats]:
        ctx = self.model.ctx
        use_fastv = prune.enabled
        stats = PrefillStats(
            n_prompt_tokens=self.n_prompt_tokens,
            n_image_tokens=self.n_image_tokens,
            n_kept=self.n_image_tokens,
            pruned=use_fastv,
        )
        if use_fastv:
            _native.begin(ctx, 0, prune.layer)
        try:
            t0 = time.perf_counter()
            n_past = batch.decode(ctx, self.pre, 0, logits_last=False)
            n_past = self._decode_image(ctx, n_past, batch.n_batch)
            n_past = batch.decode(ctx, self.post, n_past, logits_last=not use_fastv)
            t1 = time.perf_counter()
            stats.shallow_ms = (t1 - t0) * 1e3
            if use_fastv:
                scores = np.asarray(_native.get_scores(ctx))  # (N,)
                _native.finish_with_keep(ctx, make_pruner(prune)(scores).tolist())  # keep > N raises
                stats.deep_ms = (time.perf_counter() - t1) * 1e3
                stats.kept = _native.get_kept(ctx)
                stats.n_kept = len(stats.kept)
        except BaseException:
            if use_fastv:
                _native.abort(ctx)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            raise
        return n_past, stats


def make_workload(model, spec, seed: int):
    """MtmdWorkload when the model was loaded with an mmproj, else PseudoWorkload."""
    if model.mtmd_ctx is not None:
        return MtmdWorkload(model, spec, seed)
    if spec.images or spec.prompt is not None:
        raise ValueError("--image and --prompt need an mmproj (--mmproj); a pseudo image has neither")
    return PseudoWorkload(model, spec.pseudo_image_tokens, seed)
