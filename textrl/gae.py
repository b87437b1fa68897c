"""Generalized Advantage Estimation on padded ``[batch, time]`` segments.

Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation", arXiv:1506.02438.

For step ``t`` of a row::

    delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
    done_t  = terminated_t or truncated_t

``V(s'_t)`` is the value of the observation that step ``t`` produced
(``next_values``), so the two ways an episode ends are kept apart: a
*terminated* episode has no future (no bootstrap), a *truncated* one (time
limit, a length cap on a response) bootstraps from the value of its final
observation. A row may hold several episodes (classic control) or one
(an LM response); the recursion never crosses an episode end. The last valid
step of a row bootstraps through ``next_values`` and receives nothing from the
padding after it.
"""

from __future__ import annotations

import torch


def masked_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (``A + V``), all ``(B, T)``; zero on padding.

    Args:
        rewards: ``r_t``, ``(B, T)``.
        values: ``V(s_t)``, ``(B, T)``.
        next_values: ``V(s'_t)``, the value of the observation after step ``t``, ``(B, T)``.
        terminated: ``(B, T)`` bool, the episode ended in a terminal state at ``t``.
        truncated: ``(B, T)`` bool, the episode was cut at ``t`` (time or length limit).
        mask: ``(B, T)``, 1 on real steps, 0 on padding.
        gamma: discount ``gamma``.
        gae_lambda: GAE's ``lambda``.
    """
    float_mask = mask.to(values.dtype)
    not_terminated = 1.0 - terminated.to(values.dtype)
    continues = (1.0 - (terminated | truncated).to(values.dtype)) * float_mask
    deltas = (rewards + gamma * not_terminated * next_values - values) * float_mask  # (B, T)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    for t in range(values.shape[1] - 1, -1, -1):
        running = deltas[:, t] + gamma * gae_lambda * continues[:, t] * running
        advantages[:, t] = running
    advantages = advantages * float_mask
    returns = (advantages + values) * float_mask
    return advantages, returns
