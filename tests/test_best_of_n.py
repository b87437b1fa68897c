"""Best-of-n KL and reward-by-N against hand cases and a brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textrl.best_of_n import (
    analytic_best_of_n_kl,
    best_of_n_kl,
    empirical_best_of_n_kl,
    merge_identical,
    reward_by_n,
)


def brute_force_best_of_n_kl(q: list[float], rewards: list[float], n: int) -> float:
    """Enumerate every n-tuple of draws; the best is a uniform pick among the tied maxima."""
    q = np.asarray(q) / np.sum(q)
    best = np.zeros(len(q))
    for draws in itertools.product(range(len(q)), repeat=n):
        probability = math.prod(q[i] for i in draws)
        top = max(rewards[i] for i in draws)
        tied = [i for i in draws if rewards[i] == top]
        for i in tied:
            best[i] += probability / len(tied)
    support = best > 0
    return float(np.sum(best[support] * np.log(best[support] / q[support])))


def test_the_analytic_formula_on_hand_values():
    assert analytic_best_of_n_kl(1) == 0.0
    assert analytic_best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    with pytest.raises(ValueError, match="n must be"):
        analytic_best_of_n_kl(0)


def test_exact_kl_on_hand_cases():
    # two equally likely items, n=2: the better wins with 3/4
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert best_of_n_kl([0.5, 0.5], [0.0, 1.0], 2) == pytest.approx(expected)
    assert best_of_n_kl([0.2, 0.3, 0.5], [3.0, 1.0, 2.0], 1) == pytest.approx(0.0)  # n=1 is q
    assert best_of_n_kl([1.0], [7.0], 16) == pytest.approx(0.0)  # one response: nothing to pick
    # equal rewards are ties broken uniformly: best-of-n is q itself
    assert best_of_n_kl([0.5, 0.5], [1.0, 1.0], 8) == pytest.approx(0.0)


def test_distinct_equally_likely_responses_approach_the_analytic_value_from_below():
    n = 16
    values = [best_of_n_kl(np.ones(m), np.arange(m), n) for m in (10, 100, 10_000)]
    assert values[0] < values[1] < values[2] < analytic_best_of_n_kl(n)
    assert values[2] == pytest.approx(analytic_best_of_n_kl(n), rel=0.01)


@pytest.mark.parametrize(("zipf_exponent", "distinct_share"), [(0.8, 0.9), (2.0, 0.12)])
def test_the_plug_in_estimate_from_128_samples_recovers_a_known_policys_kl(
    zipf_exponent, distinct_share
):
    """The pipeline's report estimates the KL from 128 samples per prompt. On a known q over
    10,000 responses with Zipf masses, the estimate matches the exact KL: spread out (most
    samples distinct) both sit at ``log n - (n-1)/n``; peaked (most samples repeat, as a small
    SFT model's do at T = 1) both sit far below it. So a shortfall is the policy's, not the
    estimate's."""
    rng = np.random.default_rng(0)
    size, samples, prompts = 10_000, 128, 100
    q = 1.0 / np.arange(1, size + 1) ** zipf_exponent
    q /= q.sum()
    rewards = rng.standard_normal(size)
    draws = [rng.choice(size, samples, p=q) for _ in range(prompts)]
    assert np.mean([len(set(d)) / samples for d in draws]) == pytest.approx(
        distinct_share, abs=0.05
    )
    responses = [d.tolist() for d in draws]
    sampled_rewards = [rewards[d].tolist() for d in draws]
    for n in (2, 4, 8, 16):
        exact = best_of_n_kl(q, rewards, n)
        assert empirical_best_of_n_kl(responses, sampled_rewards, n) == pytest.approx(
            exact, rel=0.03
        )
        ratio = exact / analytic_best_of_n_kl(n)
        assert ratio > 0.99 if distinct_share > 0.5 else ratio < 0.95


def test_duplicate_responses_lower_the_kl():
    n = 2
    distinct = empirical_best_of_n_kl([["a", "b", "c", "d"]], [[0.0, 1.0, 2.0, 3.0]], n)
    duplicated = empirical_best_of_n_kl([["a", "a", "c", "d"]], [[0.0, 0.0, 2.0, 3.0]], n)
    assert distinct == pytest.approx(brute_force_best_of_n_kl([1, 1, 1, 1], [0, 1, 2, 3], n))
    assert duplicated == pytest.approx(brute_force_best_of_n_kl([2, 1, 1], [0, 2, 3], n))
    assert duplicated < distinct


def test_merging_counts_samples_and_averages_a_noisy_reward():
    probabilities, rewards = merge_identical(["x", "y", "x", "x"], [1.0, 5.0, 2.0, 3.0])
    np.testing.assert_allclose(probabilities, [0.75, 0.25])
    np.testing.assert_allclose(rewards, [2.0, 5.0])


def test_empirical_kl_averages_over_prompts():
    first = [["a", "b"], [0.0, 1.0]]
    second = [["c", "c"], [0.0, 0.0]]
    value = empirical_best_of_n_kl([first[0], second[0]], [first[1], second[1]], 2)
    assert value == pytest.approx(best_of_n_kl([0.5, 0.5], [0.0, 1.0], 2) / 2)


@settings(max_examples=60, deadline=None)
@given(
    masses=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    reward_levels=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    n=st.integers(1, 4),
)
def test_exact_kl_equals_brute_force_enumeration(masses, reward_levels, n):
    rewards = [float(r) for r in reward_levels[: len(masses)]]  # small range: many ties
    assert best_of_n_kl(masses, rewards, n) == pytest.approx(
        brute_force_best_of_n_kl(masses, rewards, n), abs=1e-12
    )


def test_reward_by_n_takes_the_first_n_samples_of_each_prompt():
    rewards = np.array([[1.0, 3.0, 2.0, 5.0], [0.0, 0.0, 4.0, 0.0]])
    stats = reward_by_n(rewards, [1, 2, 4])
    assert [s.n for s in stats] == [1, 2, 4]
    assert [s.mean_max_reward for s in stats] == pytest.approx([0.5, 1.5, 4.5])
    assert [s.mean_median_reward for s in stats] == pytest.approx([0.5, 1.0, 1.25])
    with pytest.raises(ValueError, match="outside"):
        reward_by_n(rewards, [5])
