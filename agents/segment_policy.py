"""What ``agents.PPO`` asks of a policy: score whole segments in one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from agents.segments import Segments


@dataclass(frozen=True)
class SegmentEvaluation:
    """Per-step outputs of a policy over a segment batch, each ``(B, T)``."""

    log_probs: torch.Tensor
    """``log pi(a_t | s_t)`` of the stored actions."""
    entropy: torch.Tensor
    """``H(pi(. | s_t))``."""
    values: torch.Tensor
    """``V(s_t)``."""


@runtime_checkable
class SegmentPolicy(Protocol):
    """A policy that evaluates ``[batch, time]`` segments (an MLP, a causal LM)."""

    def evaluate_segments(self, segments: Segments) -> SegmentEvaluation:
        """Log-prob, entropy and value of every step, with gradients."""
        ...

    def bootstrap_values(self, segments: Segments) -> torch.Tensor:
        """``V(s'_t)`` for every step, ``(B, T)``: what a truncated step bootstraps from."""
        ...
