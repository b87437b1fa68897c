"""PPO's loss terms as pure functions on masked ``[batch, time]`` tensors.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347;
dual clip from Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
Reinforcement Learning", arXiv:1912.09729. Each function returns
``(loss, metrics)``; metrics are detached scalars with namespaced keys.
"""

from __future__ import annotations

import torch

from textrl.kl import kl_estimate
from textrl.masked import masked_mean, masked_variance


def clipped_surrogate_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-E[min(r A, clip(r, 1-eps, 1+eps) A)]`` with ``r = pi/pi_old``.

    With ``dual_clip = c > 1`` the objective of negative-advantage steps is
    floored at ``c * A`` (bounding how hard one bad sample can push a
    probability down). All shapes ``(B, T)``.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (it multiplies the advantage); got {dual_clip}")
    log_ratio = log_probs - old_log_probs
    ratio = torch.exp(log_ratio)
    surrogate_unclipped = ratio * advantages  # (B, T)
    surrogate_clipped = torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantages
    objective = torch.min(surrogate_unclipped, surrogate_clipped)
    if dual_clip is not None:
        floored = torch.max(objective, dual_clip * advantages)
        objective = torch.where(advantages < 0, floored, objective)
    loss = -masked_mean(objective, mask)
    with torch.no_grad():
        clipped = (ratio - 1.0).abs() > clip_epsilon
        metrics = {
            "policy/loss": loss.detach(),
            "policy/clipfrac": masked_mean(clipped.to(ratio.dtype), mask),
            "policy/approxkl": masked_mean(kl_estimate(old_log_probs, log_probs, "k3"), mask),
        }
    return loss, metrics


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_epsilon: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Squared error ``(V - R)^2``, optionally pessimistic over a clipped ``V``.

    With ``clip_epsilon`` set, ``V_clip = V_old + clip(V - V_old, -eps, eps)`` and
    the loss is ``max((V - R)^2, (V_clip - R)^2)`` (the PPO2 baselines form).
    No factor 1/2: the value coefficient carries the scale, as in SB3 and Tianshou.
    """
    squared_error = (values - returns) ** 2
    if clip_epsilon is not None:
        clipped_values = old_values + torch.clamp(values - old_values, -clip_epsilon, clip_epsilon)
        squared_error = torch.max(squared_error, (clipped_values - returns) ** 2)
    loss = masked_mean(squared_error, mask)
    return loss, {"value/loss": loss.detach()}


def explained_variance(
    predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over valid steps: 1 is a perfect critic, <= 0 useless.

    NaN when the targets do not vary (undefined, as in CleanRL and SB3).
    """
    target_variance = masked_variance(targets, mask, unbiased=False)
    if target_variance.item() == 0:
        return torch.tensor(float("nan"))
    return 1.0 - masked_variance(targets - predictions, mask, unbiased=False) / target_variance
