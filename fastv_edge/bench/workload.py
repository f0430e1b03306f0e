"""The prompt every configuration prefills: text, image(s), question, as a LLaVA-style raw prompt.

Two kinds, one interface (`prefill(prune) -> (n_past, PrefillStats)`, the prompt's logits left in the
context), both through prefill.prefill, the package's one orchestrator:
- MtmdWorkload: a real picture through mtmd (preprocess, vision encoder, projector); used
  whenever an mmproj is given.
- PseudoWorkload: no mmproj; the image is prompt.pseudo_image's N rows (input embeddings of
  random vocabulary tokens, at mtmd's positions and causal rule for the architecture), decoded
  through the same path as a real image's rows. Vision encode time is 0 here.
About 60 text tokens surround the image, as in the paper's FLOPs examples.
"""

from __future__ import annotations

import time

import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from ..config import PruneConfig
from ..images import RGBImage, load_image
from ..prefill import PrefillStats, check_fits, prefill
from ..prompt import Prompt, TextPiece, pseudo_image, tokenize

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
STOCK_PRUNE = PruneConfig(strategy="none")
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
            check_fits(p, STOCK_PRUNE, 0, model.n_ctx)  # stock needs the most cells
            self.encode_cpu_ms = min(self._encode_cpu(p) for _ in range(2))  # the 1st also warms up

    def _encode_cpu(self, prompt) -> float:
        # the vision encoder's CPU time does not depend on the pruning configuration: measure it
        # here, so that prefill CPU time = TTFT CPU time - this
        c0 = time.process_time()
        for piece in prompt.images:
            if mtmd.mtmd_encode_chunk(self.model.mtmd_ctx, piece.chunk) != 0:
                raise RuntimeError("mtmd_encode_chunk failed")
        return (time.process_time() - c0) * 1e3

    def prefill(self, prune) -> tuple[int, PrefillStats]:
        m = self.model
        with tokenize(m.llm, m.mtmd_ctx, self.text, self.images, add_special=True) as p:
            return prefill(m.target, p, n_past=0, prune=prune)


class PseudoWorkload:
    """Text tokens, N pseudo-image rows, text tokens: the rows stand in for a projected image."""

    kind = "pseudo"

    def __init__(self, model, n_image: int, seed: int):
        self.model = model
        llm = model.llm
        pre = llm.tokenize(f"{SYSTEM}\nUSER: ".encode(), add_bos=True, special=True)
        post = llm.tokenize(f"\n{QUESTION}\nASSISTANT:".encode(), add_bos=False, special=True)
        self.n_prompt_tokens = len(pre) + n_image + len(post)
        if self.n_prompt_tokens > model.n_ctx:  # before the rows are made: N x n_embd floats
            raise ValueError(f"pseudo prompt needs {self.n_prompt_tokens} tokens, n_ctx is {model.n_ctx}; raise -c")
        self.image = pseudo_image(model, n_image, seed)
        self.prompt = Prompt([TextPiece(list(pre)), self.image, TextPiece(list(post))])
        self.n_image_tokens = n_image
        self.encode_cpu_ms = 0.0  # no vision encoder

    def prefill(self, prune) -> tuple[int, PrefillStats]:
        return prefill(self.model.target, self.prompt, n_past=0, prune=prune)


def make_workload(model, spec, seed: int):
    """MtmdWorkload when the model was loaded with an mmproj, else PseudoWorkload."""
    if model.mtmd_ctx is not None:
        return MtmdWorkload(model, spec, seed)
    if spec.images or spec.prompt is not None:
        raise ValueError("--image and --prompt need an mmproj (--mmproj); a pseudo image has neither")
    return PseudoWorkload(model, spec.pseudo_image_tokens, seed)
