"""PPO loss terms: exact values at ratio 1, gradients cut outside the clip range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from textrl.kl import kl_estimate
from textrl.ppo_losses import clipped_surrogate_loss, clipped_value_loss, explained_variance

small = st.floats(-5, 5, allow_nan=False, width=64)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, (3, 4), elements=small), arrays(np.float64, (3, 4), elements=small))
def test_ratio_one_gives_minus_the_mean_advantage(log_probs, advantages):
    mask = torch.ones(3, 4, dtype=torch.float64)
    mask[2, 3] = 0.0
    t_log_probs = torch.tensor(log_probs)
    loss, metrics = clipped_surrogate_loss(
        t_log_probs, t_log_probs.clone(), torch.tensor(advantages), mask, clip_epsilon=0.2
    )
    expected = -(advantages * mask.numpy()).sum() / mask.sum().item()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-10, atol=1e-12)
    assert metrics["policy/clipfrac"].item() == 0.0
    assert metrics["policy/approxkl"].item() == 0.0


@pytest.mark.parametrize(
    ("log_ratio", "advantage", "gradient_flows"),
    [
        (np.log(1.5), 1.0, False),  # ratio above 1+eps with A > 0: clipped, no gradient
        (np.log(0.5), -1.0, False),  # ratio below 1-eps with A < 0: clipped, no gradient
        (np.log(1.5), -1.0, True),  # ratio above 1+eps with A < 0: pessimistic term unclipped
        (np.log(0.5), 1.0, True),  # ratio below 1-eps with A > 0: unclipped
        (np.log(1.1), 1.0, True),  # inside the range
    ],
)
def test_clipping_stops_the_gradient_outside_the_range(log_ratio, advantage, gradient_flows):
    log_probs = torch.tensor([[log_ratio]], dtype=torch.float64, requires_grad=True)
    loss, _ = clipped_surrogate_loss(
        log_probs,
        torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([[advantage]], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        clip_epsilon=0.2,
    )
    loss.backward()
    assert (log_probs.grad.abs().item() > 0) == gradient_flows


def test_dual_clip_floors_the_objective_of_negative_advantages():
    log_probs = torch.tensor([[np.log(10.0)]], dtype=torch.float64, requires_grad=True)
    advantage = torch.tensor([[-1.0]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    plain, _ = clipped_surrogate_loss(
        log_probs, torch.zeros(1, 1, dtype=torch.float64), advantage, mask, 0.2
    )
    dual, _ = clipped_surrogate_loss(
        log_probs, torch.zeros(1, 1, dtype=torch.float64), advantage, mask, 0.2, dual_clip=3.0
    )
    assert plain.item() == pytest.approx(10.0)  # -min(10 * -1, 1.2 * -1)
    assert dual.item() == pytest.approx(3.0)  # floored at c * A = -3
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate_loss(log_probs, log_probs, advantage, mask, 0.2, dual_clip=0.5)


def test_value_clip_takes_the_pessimistic_error():
    values = torch.tensor([[2.0]], requires_grad=True)
    old_values, returns, mask = torch.tensor([[0.0]]), torch.tensor([[3.0]]), torch.ones(1, 1)
    unclipped, _ = clipped_value_loss(values, old_values, returns, mask)
    clipped, _ = clipped_value_loss(values, old_values, returns, mask, clip_epsilon=0.5)
    assert unclipped.item() == pytest.approx(1.0)
    assert clipped.item() == pytest.approx((0.5 - 3.0) ** 2)
    clipped.backward()
    assert values.grad.item() == 0.0  # the clipped branch does not move V


def test_kl_estimators_on_a_known_pair():
    log_p = torch.log(torch.tensor([0.5]))
    log_q = torch.log(torch.tensor([0.25]))
    assert kl_estimate(log_p, log_q, "k1").item() == pytest.approx(np.log(2))
    assert kl_estimate(log_p, log_q, "k2").item() == pytest.approx(0.5 * np.log(2) ** 2)
    assert kl_estimate(log_p, log_q, "k3").item() == pytest.approx(0.5 - 1 + np.log(2))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(log_p, log_q, "k9")


def test_k1_and_k3_are_unbiased_for_the_true_kl():
    generator = torch.Generator().manual_seed(0)
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    samples = torch.multinomial(p, 200_000, replacement=True, generator=generator)
    true_kl = (p * (p / q).log()).sum().item()
    for estimator in ("k1", "k3"):
        estimate = kl_estimate(p.log()[samples], q.log()[samples], estimator).mean().item()
        assert estimate == pytest.approx(true_kl, abs=3e-3)


def test_explained_variance_is_one_for_a_perfect_critic_and_nan_for_constant_targets():
    targets = torch.tensor([[1.0, 2.0, 4.0]])
    mask = torch.ones(1, 3)
    assert explained_variance(targets, targets, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3), targets, mask).item() == pytest.approx(0.0)
    assert torch.isnan(explained_variance(targets, torch.ones(1, 3), mask))
