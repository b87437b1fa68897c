"""Sample-based estimators of KL(pi || pi_ref) from per-step log-probabilities.

Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html).
With ``log_ratio = log pi(a) - log pi_ref(a)`` for ``a ~ pi``:

- ``k1 = log_ratio``: unbiased, high variance, can be negative per sample.
- ``k2 = log_ratio**2 / 2``: biased, low variance, always >= 0.
- ``k3 = (exp(-log_ratio) - 1) + log_ratio``: unbiased, low variance, always >= 0.

PPO uses k3 of (new || old) as its "approx KL" diagnostic; RLHF shapes the
reward with k1 of (policy || reference) by default, k3 as an option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(
    log_probs: torch.Tensor, reference_log_probs: torch.Tensor, estimator: KLEstimator = "k1"
) -> torch.Tensor:
    """Per-step KL estimate, same shape as the inputs; samples come from ``log_probs``' policy."""
    log_ratio = log_probs - reference_log_probs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1', 'k2' or 'k3'")


@dataclass
class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019, "Fine-Tuning Language Models from
    Human Preferences", arXiv:1909.08593, section 2.2:

        e = clip(KL / target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n / horizon)

    where ``n`` is the number of sequences the KL was measured on.
    """

    value: float
    """The current coefficient beta."""
    target: float
    """The KL (nats per sequence) to steer towards."""
    horizon: int
    """Sequences over which beta may change by about 20%."""

    def update(self, current_kl: float, num_sequences: int) -> float:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * num_sequences / self.horizon
        return self.value
