"""agents.PPO: it learns, with our collector and with Tianshou's stock one; options behave."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.trainer import OnPolicyTrainerParams
from tianshou.utils.net.common import Net
from tianshou.utils.net.discrete import DiscreteActor

from agents import PPO, MLPActorCriticPolicy, SegmentBuffer, VectorEnvCollector
from agents.classic_control import build_training, preset
from agents.segments import Segments
from envs import make_vector_env
from textrl.distributions import diagonal_gaussian_log_probs_and_entropy


def cartpole_policy(seed: int = 0) -> MLPActorCriticPolicy:
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    return MLPActorCriticPolicy(
        observation_space=env.observation_space, action_space=env.action_space
    )


def test_ppo_rejects_a_policy_that_cannot_score_segments():
    env = gym.make("CartPole-v1")
    actor = DiscreteActor(preprocess_net=Net(state_shape=4, hidden_sizes=[8]), action_shape=2)
    policy = DiscreteActorPolicy(actor=actor, action_space=env.action_space)
    with pytest.raises(TypeError, match="scores whole segments"):
        PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-3))


@pytest.mark.slow
def test_ppo_learns_cartpole_with_the_vector_collector():
    config = dataclasses.replace(preset("CartPole-v1"), total_steps=20_000, eval_every_steps=5_000)
    training = build_training(config, seed=1, show_progress=False)
    info = training.algorithm.run_training(training.trainer_params)
    # a random policy averages about 20; this is a check on learning, not a benchmark
    assert info.best_reward >= 200


@pytest.mark.slow
def test_ppo_learns_cartpole_with_tianshous_stock_collector_and_vector_env():
    policy = cartpole_policy(seed=2)
    algorithm = PPO(
        policy=policy,
        optim=AdamOptimizerFactory(lr=1e-3),
        gamma=0.98,
        gae_lambda=0.8,
        annealing_updates=80,
    )
    train_envs = DummyVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(8)])
    test_envs = DummyVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(10)])
    train_envs.seed(2)
    test_envs.seed(3)
    params = OnPolicyTrainerParams(
        training_collector=Collector(algorithm, train_envs, VectorReplayBuffer(4096, 8)),
        test_collector=Collector(algorithm, test_envs),
        max_epochs=4,
        epoch_num_steps=5_000,
        collection_step_num_env_steps=256,
        test_step_num_episodes=10,
        batch_size=256,
        update_step_num_repetitions=20,
        stop_fn=lambda mean_return: mean_return >= 200,
        show_progress=False,
        verbose=False,
    )
    info = algorithm.run_training(params)
    assert info.best_reward >= 200


def rollout_for(policy: MLPActorCriticPolicy, env_id: str = "CartPole-v1", steps: int = 512):
    env = make_vector_env(env_id, 4)
    collector = VectorEnvCollector(policy, env, SegmentBuffer(4096), seed=0)
    collector.reset()
    with policy_within_training_step(policy):
        collector.collect(n_step=steps)
    return collector.buffer


def run_update(algorithm: PPO, buffer, batch_size: int, repeat: int):
    with policy_within_training_step(algorithm.policy):
        return algorithm.update(buffer, batch_size=batch_size, repeat=repeat)


def test_target_kl_stops_the_epochs_after_the_first_step_that_moves_the_policy():
    policy = cartpole_policy()
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-2), target_kl=1e-12)
    stats = run_update(algorithm, rollout_for(policy), batch_size=128, repeat=10)
    # the first minibatch sees pi == pi_old (KL 0) and steps; the next exceeds the target
    assert stats.gradient_steps == 1
    assert stats.epochs_completed == 0


def test_annealing_takes_learning_rate_and_clip_range_linearly_to_zero():
    policy = cartpole_policy()
    algorithm = PPO(
        policy=policy, optim=AdamOptimizerFactory(lr=1e-3), clip_epsilon=0.2, annealing_updates=4
    )
    buffer = rollout_for(policy)
    rates = [run_update(algorithm, buffer, batch_size=512, repeat=1) for _ in range(5)]
    assert [s.learning_rate for s in rates] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0])
    assert [s.clip_epsilon for s in rates] == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0])
    assert int(algorithm.state_dict()["num_updates"]) == 5  # checkpointed with the algorithm


def test_an_mlp_policy_gets_minibatches_of_single_transitions_and_epochs_repeat():
    policy = cartpole_policy()
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-4))
    buffer = rollout_for(policy, steps=512)
    stats = run_update(algorithm, buffer, batch_size=100, repeat=3)
    assert stats.gradient_steps == 3 * -(-len(buffer) // 100)
    assert np.isfinite([stats.loss, stats.value_loss, stats.entropy]).all()


def test_continuous_actions_update_on_pendulum():
    torch.manual_seed(0)
    env = make_vector_env("Pendulum-v1", 2)
    policy = MLPActorCriticPolicy(
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        initial_log_std=-0.5,
    )
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-3))
    before = policy.log_std.detach().clone()
    stats = run_update(
        algorithm, rollout_for(policy, "Pendulum-v1", steps=400), batch_size=200, repeat=2
    )
    assert np.isfinite(stats.loss)
    assert stats.entropy == pytest.approx(
        float(0.5 * (1 + np.log(2 * np.pi)) + before.sum()), abs=0.05
    )
    assert not torch.equal(before, policy.log_std.detach())


def test_gaussian_and_categorical_scores_match_torch_distributions():
    policy = cartpole_policy()
    observations = torch.randn(3, 5, 4)
    actions = torch.randint(0, 2, (3, 5))
    zeros = torch.zeros(3, 5)
    segments = Segments(
        observations, observations, actions, zeros, zeros.bool(), zeros.bool(), zeros + 1
    )
    evaluation = policy.evaluate_segments(segments)
    reference = torch.distributions.Categorical(logits=policy.networks.policy_output(observations))
    torch.testing.assert_close(evaluation.log_probs, reference.log_prob(actions))
    torch.testing.assert_close(evaluation.entropy, reference.entropy())

    mean, log_std, sample = torch.randn(3, 5, 2), torch.randn(2), torch.randn(3, 5, 2)
    log_probs, entropy = diagonal_gaussian_log_probs_and_entropy(mean, log_std, sample)
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(log_probs, normal.log_prob(sample).sum(-1))
    torch.testing.assert_close(entropy, normal.entropy().sum(-1))


def test_a_seed_fixes_a_training_run_on_cpu():
    def train(seed: int) -> torch.Tensor:
        config = dataclasses.replace(
            preset("CartPole-v1"), total_steps=1024, eval_every_steps=1024, eval_episodes=2
        )
        training = build_training(config, seed=seed, show_progress=False)
        training.algorithm.run_training(training.trainer_params)
        return torch.cat([p.detach().flatten() for p in training.algorithm.policy.parameters()])

    first, second = train(5), train(5)
    assert torch.equal(first, second)
    assert not torch.equal(first, train(6))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_a_shared_torso_is_one_network_that_both_losses_train():
    torch.manual_seed(0)
    env = gym.make("CartPole-v1")
    shared = MLPActorCriticPolicy(
        observation_space=env.observation_space, action_space=env.action_space, shared_torso=True
    )
    separate = cartpole_policy()
    assert shared.networks.actor_torso is shared.networks.critic_torso
    critic_torso_size = sum(p.numel() for p in separate.networks.critic_torso.parameters())
    assert parameter_count(separate) - parameter_count(shared) == critic_torso_size
    algorithm = PPO(policy=shared, optim=AdamOptimizerFactory(lr=1e-3))
    before = [p.detach().clone() for p in shared.networks.actor_torso.parameters()]
    run_update(algorithm, rollout_for(shared), batch_size=256, repeat=1)
    after = list(shared.networks.actor_torso.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
