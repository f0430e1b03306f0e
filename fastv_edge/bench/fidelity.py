"""Fidelity of a pruned run against the unpruned (stock) run of the same model file.

The stock run decodes greedily, EOS ignored: its tokens t_0..t_{M-1} are the fixed
continuation. Every other configuration is teacher-forced on those tokens, so both runs
see identical inputs and produce M+1 next-token distributions (after the prompt, then after
each fed token). Reported: the share of positions where the argmax agrees, and the mean
KL(P_stock || P_pruned) in nats.

Only meaningful for real weights; for synthetic ones the caller withholds the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities in float64 (logits: (n_vocab,))."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


@dataclass
class Reference:
    """The stock run's continuation and its distributions."""

    tokens: list[int] = field(default_factory=list)  # (M,) greedy tokens, EOS ignored
    logprobs: list[np.ndarray] = field(default_factory=list)  # M+1 arrays of (n_vocab,) float64
    argmax: list[int] = field(default_factory=list)  # M+1

    def add(self, logits: np.ndarray) -> None:
        self.logprobs.append(log_softmax(logits))  # float64: an identical run then gives KL exactly 0
        self.argmax.append(int(np.argmax(logits)))


@dataclass
class Comparison:
    """Accumulates agreement and KL of one configuration against a Reference, step by step."""

    reference: Reference
    agree: list[bool] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)

    def add(self, logits: np.ndarray) -> None:
        i = len(self.agree)
        if i >= len(self.reference.logprobs):
            raise ValueError(f"more steps ({i + 1}) than the reference has ({len(self.reference.logprobs)})")
        q = log_softmax(logits)
        p = self.reference.logprobs[i]
        self.kl.append(float(np.sum(np.exp(p) * (p - q))))
        self.agree.append(int(np.argmax(logits)) == self.reference.argmax[i])

    @property
    def agreement(self) -> float:
        return float(np.mean(self.agree)) if self.agree else float("nan")

    @property
    def mean_kl(self) -> float:
        # a KL of a few -1e-9 is float rounding of an identical distribution
        return max(float(np.mean(self.kl)), 0.0) if self.kl else float("nan")
