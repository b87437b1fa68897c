"""RLHF reward shaping inside agents.PPO: KL penalty, score on EOS, adaptive beta."""

from __future__ import annotations

import pytest
import torch
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tianshou.algorithm.optim import AdamOptimizerFactory

from agents import PPO
from agents.text_collector import TextCollector
from tests.text_fixtures import text_env_and_policy
from textrl.kl import AdaptiveKLController
from textrl.reward_shaping import kl_shaped_rewards


def test_the_score_stays_on_the_eos_step_and_the_penalties_sum_to_beta_times_the_sequence_kl():
    rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0]])  # EOS on the third token, then padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    log_probs = torch.tensor([[-1.0, -2.0, -0.5, -9.0]])
    reference = torch.tensor([[-1.5, -1.0, -0.5, -1.0]])
    shaped, per_token_kl = kl_shaped_rewards(rewards, log_probs, reference, mask, kl_coef=0.1)
    assert per_token_kl.tolist() == [[0.5, -1.0, 0.0, 0.0]]
    assert shaped[0].tolist() == pytest.approx([-0.05, 0.1, 2.0, 0.0])
    sequence_kl = (log_probs - reference)[mask.bool()].sum()
    assert (rewards - shaped).sum().item() == pytest.approx(0.1 * sequence_kl.item())


def test_the_adaptive_controller_raises_beta_above_the_target_and_lowers_it_below():
    controller = AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    # the error is clipped to +-0.2 and scaled by 1,000 / 10,000 sequences
    assert controller.update(current_kl=12.0, num_sequences=1_000) == pytest.approx(0.1 * 1.02)
    controller = AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    assert controller.update(current_kl=3.0, num_sequences=1_000) == pytest.approx(0.1 * 0.98)


def rollout(policy_seed: int, reference_seed: int, **ppo_options):
    env, policy = text_env_and_policy(
        max_new_tokens=5, policy_seed=policy_seed, reference_seed=reference_seed
    )
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-3), gamma=1.0, **ppo_options)
    collector = TextCollector(algorithm, env, seed=0)
    with policy_within_training_step(policy):
        collector.collect(n_episode=8)
        return algorithm, algorithm.update(collector.buffer, batch_size=None, repeat=1)


def test_a_policy_identical_to_the_reference_has_zero_kl():
    _, stats = rollout(policy_seed=0, reference_seed=0, kl_coef=0.01)
    assert stats.sequence_kl == pytest.approx(0.0, abs=1e-4)
    _, stats = rollout(policy_seed=0, reference_seed=1, kl_coef=0.01)
    assert abs(stats.sequence_kl) > 1e-2


def test_the_adaptive_controller_inside_ppo_updates_beta_from_the_measured_kl():
    controller = AdaptiveKLController(value=0.05, target=1e-6, horizon=100)
    algorithm, stats = rollout(
        policy_seed=0, reference_seed=1, adaptive_kl=controller, kl_estimator="k3"
    )
    assert stats.kl_coef == 0.05 and stats.sequence_kl > 0
    assert controller.value == pytest.approx(0.05 * (1 + 0.2 * 8 / 100))


def test_a_kl_penalty_without_reference_log_probs_is_explained():
    env, policy = text_env_and_policy(num_envs=2, max_new_tokens=3, reference_seed=None)
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-3), kl_coef=0.01)
    collector = TextCollector(algorithm, env, seed=0)
    with policy_within_training_step(policy), pytest.raises(ValueError, match="reference_model"):
        collector.collect(n_episode=2)
        algorithm.update(collector.buffer, batch_size=None, repeat=1)
