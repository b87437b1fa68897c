"""Masked GAE against a naive per-step loop written straight from the definition."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textrl.gae import masked_gae


def naive_gae(rewards, values, next_values, terminated, truncated, lengths, gamma, lam):
    """Per row: walk each valid step backwards; stop at episode ends and at the row end."""
    advantages = np.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        following = 0.0
        for t in reversed(range(lengths[row])):
            bootstrap = 0.0 if terminated[row, t] else gamma * next_values[row, t]
            delta = rewards[row, t] + bootstrap - values[row, t]
            episode_ends = terminated[row, t] or truncated[row, t]
            following = delta + (0.0 if episode_ends else gamma * lam * following)
            advantages[row, t] = following
    return advantages


@st.composite
def segment_batches(draw):
    rows = draw(st.integers(1, 4))
    time = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, time + 1, size=rows)
    ends = rng.random((rows, time))
    terminated = ends < 0.15
    truncated = (ends >= 0.15) & (ends < 0.3)
    return dict(
        rewards=rng.normal(size=(rows, time)),
        values=rng.normal(size=(rows, time)),
        next_values=rng.normal(size=(rows, time)),
        terminated=terminated,
        truncated=truncated,
        lengths=lengths,
        gamma=draw(st.floats(0.0, 1.0)),
        lam=draw(st.floats(0.0, 1.0)),
    )


@settings(max_examples=200, deadline=None)
@given(segment_batches())
def test_masked_gae_matches_naive_loop(batch):
    rows, time = batch["rewards"].shape
    mask = np.arange(time)[None, :] < batch["lengths"][:, None]
    advantages, returns = masked_gae(
        torch.tensor(batch["rewards"]),
        torch.tensor(batch["values"]),
        torch.tensor(batch["next_values"]),
        torch.tensor(batch["terminated"]),
        torch.tensor(batch["truncated"]),
        torch.tensor(mask, dtype=torch.float64),
        batch["gamma"],
        batch["lam"],
    )
    expected = naive_gae(**batch)
    np.testing.assert_allclose(advantages.numpy(), expected, rtol=1e-10, atol=1e-10)
    expected_returns = (expected + batch["values"]) * mask
    np.testing.assert_allclose(returns.numpy(), expected_returns, rtol=1e-10, atol=1e-10)


def one_row(values_list):
    return torch.tensor([values_list], dtype=torch.float64)


def test_terminated_step_does_not_bootstrap_but_truncated_does():
    rewards, values, next_values = one_row([1.0]), one_row([0.5]), one_row([10.0])
    mask = one_row([1.0])
    terminated_adv, _ = masked_gae(
        rewards,
        values,
        next_values,
        torch.tensor([[True]]),
        torch.tensor([[False]]),
        mask,
        0.9,
        0.95,
    )
    truncated_adv, _ = masked_gae(
        rewards,
        values,
        next_values,
        torch.tensor([[False]]),
        torch.tensor([[True]]),
        mask,
        0.9,
        0.95,
    )
    assert terminated_adv.item() == 1.0 - 0.5
    assert truncated_adv.item() == 1.0 + 0.9 * 10.0 - 0.5


def test_advantage_does_not_flow_across_an_episode_end_or_from_padding():
    rewards = one_row([0.0, 100.0, 7.0])
    values = one_row([0.0, 0.0, 0.0])
    next_values = one_row([0.0, 0.0, 0.0])
    terminated = torch.tensor([[True, False, False]])
    truncated = torch.zeros(1, 3, dtype=torch.bool)
    mask = one_row([1.0, 1.0, 0.0])
    advantages, returns = masked_gae(
        rewards, values, next_values, terminated, truncated, mask, 1.0, 1.0
    )
    assert advantages.tolist() == [[0.0, 100.0, 0.0]]
    assert returns.tolist() == [[0.0, 100.0, 0.0]]
