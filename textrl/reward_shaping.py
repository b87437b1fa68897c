"""RLHF's per-token reward: the environment's reward minus a KL penalty to the reference.

    r'_t = r_t - beta * KL_t,    KL_t = estimate(log pi(a_t) - log pi_ref(a_t))

Ziegler et al. 2019 (arXiv:1909.08593), Llama 2 (arXiv:2307.09288) section 3.2.3.
The reward model's score arrives as ``r_t`` on the last token of a response; the
penalty is paid on every token, so its sum over a response is ``beta`` times the
sequence's KL estimate.
"""

from __future__ import annotations

import torch

from textrl.kl import KLEstimator, kl_estimate


def kl_shaped_rewards(
    rewards: torch.Tensor,
    log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shaped rewards, per-token KL)``, both ``(B, T)`` and zero on padding."""
    per_token_kl = torch.where(
        mask.bool(),
        kl_estimate(log_probs, reference_log_probs, estimator),
        torch.zeros_like(log_probs),
    )
    return (rewards - kl_coef * per_token_kl) * mask, per_token_kl
