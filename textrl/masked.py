"""Masked reductions over ``[batch, time]`` tensors.

Every PPO statistic in textrl is averaged over the *valid* steps of a padded
batch: a CartPole rollout whose rows end at different times, or a batch of
LM responses of different lengths. ``mask`` is 1 (or True) on a real step and
0 on padding; padding never contributes to a mean, a variance or a gradient.
This module is the one place where that aggregation lives (token mean), so
every loss and diagnostic agrees on what "the mean" is.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over the steps where ``mask`` is set (a scalar)."""
    return (values * mask).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over valid steps; raises if the mask selects nothing.

    An empty mask has no mean; returning 0 or NaN would silently poison a loss.
    """
    count = mask.sum()
    if count.item() == 0:
        raise ValueError("masked_mean: the mask selects no step; nothing to average")
    return masked_sum(values, mask) / count


def masked_variance(
    values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True
) -> torch.Tensor:
    """Variance of ``values`` over valid steps (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(values, mask)
    squared_deviation = masked_sum((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased:
        if count.item() < 2:
            raise ValueError("masked_variance: an unbiased variance needs at least two valid steps")
        return squared_deviation / (count - 1)
    return squared_deviation / count


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Standardise ``values`` with statistics of the valid steps only.

    ``(x - mu) / sqrt(var + eps)`` with ``mu``, ``var`` from the masked steps. With
    ``shift_mean=False`` the mean is added back (TRL's reward whitening keeps the
    sign information of the mean). Padding positions come back as 0.
    """
    mean = masked_mean(values, mask)
    variance = masked_variance(values, mask) if mask.sum().item() > 1 else values.new_zeros(())
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
