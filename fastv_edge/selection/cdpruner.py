"""CDPruner (Zhang et al., NeurIPS 2025, arXiv 2506.10967): instruction-conditioned diversity.

The kept set maximises det L[Y, Y] for the conditional kernel L = diag(q) S diag(q):
- S: cosine similarity of the L2-normalised image embeddings;
- r_i: relevance of image token i to the instruction, in [0, 1] (see `relevance`);
- q_i = exp(alpha r_i), alpha = theta / (2 (1 - theta)), theta the relevance weight in [0, 1)
  (0.5 by default; theta = 0 gives q = 1, the pure-diversity DPP on S).
The MAP is found greedily (`dpp.greedy_map`, Chen et al. 2018), O(N k^2) after the kernel.

Text features: there is no separate text encoder in a llama.cpp vision model, so (as OpenVINO
GenAI does for Qwen-VL) the instruction is represented by the LLM's own input embeddings of
its tokens (fastv_edge.text_features), which live in the space the projector maps images to.
Pass the ids of the user's instruction text, not the chat template's role and control tokens:
every token weighs the same in the mean, and template tokens say nothing about the question.
"""

from __future__ import annotations

import numpy as np

from ._common import TIE_TOL, ascending, check_embd, check_n_keep, cosine_matrix, unit_rows
from .dpp import greedy_map

DEFAULT_RELEVANCE_WEIGHT = 0.5  # theta; OpenVINO GenAI's default
FLAT_RELEVANCE = 1e-12  # a relevance spread below this is no signal: every r_i = 0


def relevance(embd: np.ndarray, text_embd: np.ndarray) -> np.ndarray:
    """Relevance r of each image token to the instruction, min-max normalised to [0, 1].

    Aggregation: the mean over instruction tokens of the cosine similarity between the image
    row and the token's embedding (every instruction token weighs the same). The sign is kept:
    rows aligned with the prompt score high. (CDPruner's LLaVA code negates the mean for CLIP
    text features; OpenVINO GenAI keeps it positive for LLM input embeddings, as here.)
    Min-max over the image's tokens; a spread below 1e-12, or no instruction token, gives
    r = 0 everywhere (no relevance signal, so the kernel is the pure-diversity one).

    Image rows wider than the text rows (Qwen3-VL's deepstack: [main | deepstack slices]) are
    compared on their first n_embd columns, the part that enters the LLM's first layer.

    Args:
        embd: (N, d) float64 image embeddings.
        text_embd: (T, d_text) float64 instruction token embeddings, d_text <= d.

    Returns:
        (N,) float64 in [0, 1].
    """
    n, d = embd.shape
    d_text = text_embd.shape[1]
    if d_text > d:
        raise ValueError(f"text features have {d_text} columns but the image rows only {d}; they must share a space")
    if text_embd.shape[0] == 0 or n == 0:
        return np.zeros(n)
    mean_cos = (unit_rows(embd[:, :d_text]) @ unit_rows(text_embd).T).mean(axis=1)  # (N, T) -> (N,)
    spread = float(mean_cos.max() - mean_cos.min())
    if spread < FLAT_RELEVANCE:
        return np.zeros(n)
    return (mean_cos - mean_cos.min()) / spread


def conditional_kernel(embd: np.ndarray, rel: np.ndarray, relevance_weight: float) -> np.ndarray:
    """L = diag(q) S diag(q) with q = exp(alpha r), alpha = theta / (2 (1 - theta)).

    Args:
        embd: (N, d) float64.
        rel: (N,) relevance in [0, 1].
        relevance_weight: theta in [0, 1).

    Returns:
        (N, N) float64 PSD kernel.
    """
    alpha = relevance_weight / (2.0 * (1.0 - relevance_weight))
    quality = np.exp(alpha * rel)  # (N,)
    return quality[:, None] * cosine_matrix(embd) * quality[None, :]


def cdpruner(embd, n_keep: int, *, text_embd, relevance_weight: float = DEFAULT_RELEVANCE_WEIGHT) -> np.ndarray:
    """Conditional-DPP selection of image tokens (relevance to the prompt x diversity).

    Greedy MAP on `conditional_kernel`; ties go to the earliest token. When the marginal gain
    vanishes before n_keep tokens (the chosen rows already span every candidate, e.g. with
    duplicated rows), the set is completed with the remaining tokens of highest relevance r,
    ties to the earliest, so exactly n_keep indices come back.

    Args:
        embd: (N, d) image embeddings.
        n_keep: how many to keep, 0 <= n_keep <= N.
        text_embd: (T, d_text) the instruction's token input embeddings
            (fastv_edge.text_features); T = 0 means no instruction (pure diversity).
        relevance_weight: theta in [0, 1); 0 is pure diversity.

    Returns:
        (n_keep,) int32 indices, ascending.
    """
    embd = check_embd(embd)
    n = embd.shape[0]
    k = check_n_keep(n_keep, n)
    if text_embd is None:
        raise ValueError(
            "cdpruner needs the instruction's text features: pass text_embd "
            "(fastv_edge.text_features.TokenEmbeddings(model).rows(prompt_ids)), or use divprune"
        )
    text_embd = check_embd(text_embd, "text_embd") if np.size(text_embd) else np.zeros((0, embd.shape[1]))
    w = relevance_weight
    if isinstance(w, bool) or not isinstance(w, (int, float, np.floating)) or not 0.0 <= w < 1.0:
        raise ValueError(f"relevance_weight (theta) must be in [0, 1), got {w!r}; 0 is pure diversity")
    rel = relevance(embd, text_embd)  # (N,)
    if k == 0 or k == n:
        return ascending(np.arange(k))
    chosen = greedy_map(conditional_kernel(embd, rel, float(w)), k)
    if len(chosen) < k:
        by_relevance = np.argsort(-np.round(rel / TIE_TOL), kind="stable")  # (N,) ties within 1e-12: earlier
        rest = by_relevance[~np.isin(by_relevance, chosen)]
        chosen += [int(i) for i in rest[: k - len(chosen)]]
    return ascending(chosen)
