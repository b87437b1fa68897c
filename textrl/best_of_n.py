"""Best-of-n sampling: its KL from the base policy, and reward as n grows.

Best-of-n draws n responses from a base policy q and returns the one the reward
ranks highest (ties broken uniformly at random). Its KL from q is often quoted as

    KL(best-of-n || q) = log n - (n - 1) / n

(quoted since Stiennon et al. 2020, arXiv:2009.01325), but that is exact only in
the limit where every response is distinct with a distinct reward; for a
discrete q it is an upper bound (Beirami et al. 2024, arXiv:2401.01879). A
language model repeats short or confident responses, so on real samples the
true value is lower. ``best_of_n_kl`` computes it exactly for a discrete q:

Sort the reward levels v ascending; let m_v be the mass of q on level v and
Q(v) = sum of the masses of levels <= v. The best of n lands on level v with
probability F_v = Q(v)^n - Q(v-)^n (all n draws at or below v, not all below),
and within a level it picks response i with probability q_i / m_v (the draws
on a level are exchangeable, so a uniform pick among them is distributed as q
restricted to the level). Hence p(i) = F_v q_i / m_v and

    KL(p || q) = sum_v F_v log(F_v / m_v),

which depends only on the level masses. ``empirical_best_of_n_kl`` plugs in,
per prompt, the distribution of M sampled responses (identical responses
merged) and averages over prompts. ``reward_by_n`` gives the mean over prompts
of the maximum and the median reward among the first N samples, Llama 2's
Figure 7 (arXiv:2307.09288), the gain that rejection sampling exploits.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np


def analytic_best_of_n_kl(n: int) -> float:
    """``log n - (n - 1) / n``: the KL of best-of-n when every response is distinct."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_kl(probabilities: Sequence[float], rewards: Sequence[float], n: int) -> float:
    """Exact ``KL(best-of-n || q)`` for a discrete ``q`` over items with ``rewards``.

    Items with equal rewards are ties, broken uniformly at random. ``probabilities``
    are normalised here (counts work too).
    """
    q = np.asarray(probabilities, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if q.shape != r.shape or q.ndim != 1 or len(q) == 0:
        raise ValueError(
            f"probabilities and rewards must be two 1-D arrays of one length, got shapes "
            f"{q.shape} and {r.shape}"
        )
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if (q < 0).any() or q.sum() <= 0:
        raise ValueError("probabilities must be non-negative with a positive sum")
    levels, level_of_item = np.unique(r, return_inverse=True)  # ascending reward levels
    level_mass = np.bincount(level_of_item, weights=q / q.sum(), minlength=len(levels))
    at_or_below = np.minimum(np.cumsum(level_mass), 1.0)  # Q(v)
    below = np.concatenate([[0.0], at_or_below[:-1]])  # Q(v-)
    best_level = at_or_below**n - below**n  # F_v
    terms = np.zeros_like(best_level)
    counted = (best_level > 0) & (level_mass > 0)
    terms[counted] = best_level[counted] * np.log(best_level[counted] / level_mass[counted])
    return float(max(terms.sum(), 0.0))


def merge_identical(
    responses: Sequence[Hashable], rewards: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution of samples: (probability, reward) per distinct response.

    Identical responses should have one reward; if the reward model is noisy their mean is used.
    """
    if len(responses) != len(rewards) or not responses:
        raise ValueError(
            f"need one reward per response and at least one sample, got {len(responses)} "
            f"responses and {len(rewards)} rewards"
        )
    counts: dict[Hashable, int] = {}
    reward_sums: dict[Hashable, float] = {}
    for response, reward in zip(responses, rewards, strict=True):
        counts[response] = counts.get(response, 0) + 1
        reward_sums[response] = reward_sums.get(response, 0.0) + float(reward)
    count = np.array(list(counts.values()), dtype=np.float64)
    mean_reward = np.array([reward_sums[key] for key in counts]) / count
    return count / count.sum(), mean_reward


def empirical_best_of_n_kl(
    responses: Sequence[Sequence[Hashable]], rewards: Sequence[Sequence[float]], n: int
) -> float:
    """Mean over prompts of the exact best-of-n KL under each prompt's sample distribution.

    ``responses[p]`` are M samples of the base policy for prompt p (text or token tuples)
    and ``rewards[p]`` their rewards. A plug-in estimate: exact for the empirical
    distribution, which approaches the policy's as M grows (take M well above n).
    """
    if len(responses) != len(rewards) or not responses:
        raise ValueError("need the samples and rewards of at least one prompt, one list each")
    return float(
        np.mean(
            [
                best_of_n_kl(*merge_identical(prompt_responses, prompt_rewards), n)
                for prompt_responses, prompt_rewards in zip(responses, rewards, strict=True)
            ]
        )
    )


@dataclass(frozen=True)
class RewardAtN:
    """Reward statistics of N samples per prompt, averaged over prompts."""

    n: int
    mean_max_reward: float
    """Mean over prompts of the highest reward among the first N samples."""
    mean_median_reward: float
    """Mean over prompts of the median reward among the first N samples."""


def reward_by_n(rewards: np.ndarray, sizes: Sequence[int]) -> list[RewardAtN]:
    """Max and median reward among the first N samples, for each N in ``sizes``.

    ``rewards (prompts, M)``: M sampled rewards per prompt, in sampling order; every
    N must be in ``[1, M]``.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (prompts, samples), got shape {rewards.shape}")
    bad = [n for n in sizes if not 1 <= n <= rewards.shape[1]]
    if bad:
        raise ValueError(f"sizes {bad} are outside [1, {rewards.shape[1]}] samples per prompt")
    return [
        RewardAtN(
            n=n,
            mean_max_reward=float(rewards[:, :n].max(1).mean()),
            mean_median_reward=float(np.median(rewards[:, :n], axis=1).mean()),
        )
        for n in sizes
    ]
