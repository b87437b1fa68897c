"""What ``agents.PPO`` asks of a policy: score whole segments in one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from agents.row_batch import RowBatch


@dataclass(frozen=True)
class SegmentEvaluation:
    """Per-step outputs of a policy over a segment batch, each ``(B, T)``."""

    log_probs: torch.Tensor
    """``log pi(a_t | s_t)`` of the stored actions."""
    entropy: torch.Tensor
    """``H(pi(. | s_t))``."""
    values: torch.Tensor
    """``V(s_t)``."""
    next_values: torch.Tensor | None = None
    """``V(s'_t)`` when the same pass yields it (a sequence model reads it one position
    later); None when the policy computes it separately in ``bootstrap_values``."""


@runtime_checkable
class SegmentPolicy(Protocol):
    """A policy that evaluates ``[batch, time]`` segments (an MLP, a causal LM)."""

    scores_steps_independently: bool
    """True when step t's outputs depend on s_t alone (an MLP): PPO then shuffles single
    transitions into minibatches, as SB3 and CleanRL do. False for a sequence model (a
    causal LM), which must see whole rows."""

    def evaluate_segments(self, segments: RowBatch) -> SegmentEvaluation:
        """Log-prob, entropy and value of every step, with gradients."""
        ...

    def bootstrap_values(self, segments: RowBatch) -> torch.Tensor:
        """``V(s'_t)`` for every step, ``(B, T)``: what a truncated step bootstraps from."""
        ...


@runtime_checkable
class ReferenceScoringPolicy(Protocol):
    """A policy that also scores its actions under a frozen reference (RLHF's KL term).

    One no-grad pass over the finished episodes, instead of a reference forward per
    generated token inside the environment; with LoRA the reference is the same
    weights with the adapter switched off, so no second model sits in memory.
    """

    def reference_log_probs(self, segments: RowBatch) -> torch.Tensor:
        """``log pi_ref(a_t | s_t)`` of every stored action, ``(B, T)``, without gradients."""
        ...
