"""Theoretical prefill FLOPs of FastV, the paper's eq. 5 (arXiv 2403.06764).

Per transformer layer with n tokens, hidden size d and FFN size m:
    F(n) = 4 n d^2 + 2 n^2 d + 2 n d m
With n_hat = n - N + n_keep tokens after layer K, out of T layers:
    ratio = [K F(n) + (T - K) F(n_hat)] / [T F(n)]
When image tokens are also selected before the LLM, layers [0, K) see only the n_1 = n - N + B1
that entered it: [K F(n_1) + (T - K) F(n_hat)] / [T F(n)] (K = 0: F(n_hat) / F(n)).
The vision encoder is not counted: no pruning makes it cheaper.
"""

from __future__ import annotations


def layer_flops(n: int, d: int, m: int) -> float:
    """F(n) of eq. 5: attention projections, attention scores and FFN of one layer.

    Args:
        n: tokens in the layer.
        d: hidden size.
        m: FFN intermediate size.

    Returns:
        Multiply-accumulate count as the paper defines it.
    """
    return 4.0 * n * d * d + 2.0 * n * n * d + 2.0 * n * d * m


def flops_ratio(
    n_tokens: int,
    n_image: int,
    n_kept: int,
    *,
    n_layer: int,
    layer: int,
    n_embd: int,
    n_ff: int,
    n_entered: int | None = None,
) -> float:
    """Share of the stock prefill FLOPs that the pruned prefill spends (1.0 = no saving).

    Args:
        n_tokens: n, all prompt tokens (text + image).
        n_image: N, image tokens among them.
        n_kept: image tokens kept from layer K on.
        n_layer: T, transformer layers.
        layer: K, layers that see every token that entered the LLM (0: selection before the LLM only).
        n_embd: d.
        n_ff: m.
        n_entered: n_1, prompt tokens that entered the LLM (text + B1 after a pre-LLM selection);
            None: all n.

    Returns:
        [K F(n_1) + (T-K) F(n_hat)] / [T F(n)], or 1.0 for an empty prompt.
    """
    n_entered = n_tokens if n_entered is None else n_entered
    n_hat = n_tokens - n_image + n_kept
    if not 0 <= n_kept <= n_image <= n_tokens or not n_hat <= n_entered <= n_tokens:
        raise ValueError(
            f"need 0 <= n_kept <= n_image <= n_tokens and n_hat <= n_entered <= n_tokens, "
            f"got {n_kept}, {n_image}, {n_tokens}, {n_entered}"
        )
    if not 0 <= layer <= n_layer or n_layer < 1:
        raise ValueError(f"need 0 <= K <= T and T >= 1, got K={layer}, T={n_layer}")
    if n_tokens == 0:
        return 1.0
    full = layer_flops(n_tokens, n_embd, n_ff)
    shallow = layer_flops(n_entered, n_embd, n_ff)
    pruned = layer_flops(n_hat, n_embd, n_ff)
    return (layer * shallow + (n_layer - layer) * pruned) / (n_layer * full)
