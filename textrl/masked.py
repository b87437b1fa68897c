"""Masked reductions over ``[batch, time]`` tensors.

Every PPO statistic in textrl is averaged over the *valid* steps of a padded
batch: a CartPole rollout whose rows end at different times, or a batch of
LM responses of different lengths. ``mask`` is 1 (or True) on a real step and
0 on padding; padding never contributes to a mean, a variance or a gradient.
This module is the one place where that aggregation lives (token mean), so
every loss and diagnostic agrees on what "the mean" is.

A batch split over processes (PPO under torchrun: each rank holds its own
rollouts) passes ``reduce_sum``, which sums a tensor over the processes
(``textrl.distributed.all_reduce_sum``). Means and variances are then ratios of
globally summed sums and counts, the statistics of the whole batch; ``None``
(the default) keeps everything local. A reduced statistic carries no gradient:
it is for whitening and diagnostics, not for a loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ReduceSum = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over the processes that each hold part of a batch."""


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over the steps where ``mask`` is set (a scalar)."""
    return (values * mask).sum()


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, reduce_sum: ReduceSum | None = None
) -> torch.Tensor:
    """Mean of ``values`` over valid steps (of all processes with ``reduce_sum``); raises
    if the mask selects nothing.

    An empty mask has no mean; returning 0 or NaN would silently poison a loss.
    """
    reduce_sum = reduce_sum or _local
    count = reduce_sum(mask.sum())
    if count.item() == 0:
        raise ValueError("masked_mean: the mask selects no step; nothing to average")
    return reduce_sum(masked_sum(values, mask)) / count


def masked_variance(
    values: torch.Tensor,
    mask: torch.Tensor,
    unbiased: bool = True,
    reduce_sum: ReduceSum | None = None,
) -> torch.Tensor:
    """Variance of ``values`` over valid steps (Bessel-corrected when ``unbiased``).

    Two passes (mean, then squared deviations from it), also across processes: the
    one-pass ``E[x^2] - E[x]^2`` loses precision when the mean is large.
    """
    reduce_sum = reduce_sum or _local
    mean = masked_mean(values, mask, reduce_sum)
    squared_deviation = reduce_sum(masked_sum((values - mean) ** 2, mask))
    count = reduce_sum(mask.sum())
    if unbiased:
        if count.item() < 2:
            raise ValueError("masked_variance: an unbiased variance needs at least two valid steps")
        return squared_deviation / (count - 1)
    return squared_deviation / count


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce_sum: ReduceSum | None = None,
) -> torch.Tensor:
    """Standardise ``values`` with statistics of the valid steps only.

    ``(x - mu) / sqrt(var + eps)`` with ``mu``, ``var`` from the masked steps. With
    ``shift_mean=False`` the mean is added back (TRL's reward whitening keeps the
    sign information of the mean). Padding positions come back as 0. With ``reduce_sum``
    the statistics are those of every process's steps together.
    """
    reduce_sum = reduce_sum or _local
    mean = masked_mean(values, mask, reduce_sum)
    count = reduce_sum(mask.sum())
    variance = (
        masked_variance(values, mask, reduce_sum=reduce_sum)
        if count.item() > 1
        else values.new_zeros(())
    )
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
