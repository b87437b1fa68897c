"""VectorEnvCollector: only real transitions, contiguous rows, whole evaluation episodes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tianshou.data import Batch

from agents import MLPActorCriticPolicy, SegmentBuffer, VectorEnvCollector
from agents.segments import buffer_rows
from envs import make_vector_env


def make_collector(env_id: str, num_envs: int, seed: int = 0) -> VectorEnvCollector:
    torch.manual_seed(seed)
    env = make_vector_env(env_id, num_envs)
    policy = MLPActorCriticPolicy(
        observation_space=env.single_observation_space, action_space=env.single_action_space
    )
    collector = VectorEnvCollector(policy, env, SegmentBuffer(10_000), seed=seed)
    collector.reset()
    return collector


def collect(collector: VectorEnvCollector, **kwargs):
    with policy_within_training_step(collector.policy):
        return collector.collect(**kwargs)


def test_rows_hold_only_real_contiguous_transitions():
    collector = make_collector("CartPole-v1", num_envs=4)
    stats = collect(collector, n_step=600)
    buffer = collector.buffer
    stored = buffer[:]
    assert len(buffer) == stats.n_collected_steps >= 600
    # Gymnasium's NEXT_STEP autoreset step pays reward 0; a stored one would show here
    assert (stored.rew == 1.0).all()
    rows = buffer_rows(buffer)
    assert len(rows) == 4 and sum(len(row) for row in rows) == len(buffer)
    for row in rows:
        data = buffer[row]
        continuing = ~data.done[:-1]
        np.testing.assert_array_equal(data.obs[1:][continuing], data.obs_next[:-1][continuing])
        # a new episode starts from CartPole's reset distribution, |s| <= 0.05
        assert (np.abs(data.obs[1:][~continuing]) <= 0.05).all()
    assert stats.n_collected_episodes == int(stored.done.sum())
    assert stats.lens.sum() <= len(buffer)


def test_episode_statistics_span_collect_calls():
    collector = make_collector("CartPole-v1", num_envs=2)
    lengths = []
    for _ in range(10):
        lengths.extend(collect(collector, n_step=20).lens.tolist())
    assert lengths and all(
        length >= 8 for length in lengths
    )  # no episode is cut at a collect boundary


def test_n_episode_collects_whole_episodes_spread_over_rows():
    collector = make_collector("CartPole-v1", num_envs=4)
    collect(collector, n_step=52)
    collector.reset_buffer()
    stats = collect(collector, n_episode=6)
    assert stats.n_collected_episodes == 6
    rows = buffer_rows(collector.buffer)
    assert sorted(len(collector.buffer[row].obs) > 0 for row in rows) == [True] * 4
    assert int(collector.buffer[:].done.sum()) == 6
    np.testing.assert_allclose(stats.returns, stats.lens)  # CartPole pays 1 per step
    assert stats.lens.sum() == len(collector.buffer)


def test_continuous_actions_are_scaled_into_the_action_space_and_stored_raw():
    collector = make_collector("Pendulum-v1", num_envs=3)
    collect(collector, n_step=30)
    collect(collector, n_step=30, random=True)
    actions = collector.buffer[:].act
    assert actions.shape[1:] == (1,)
    random_actions = actions[-30:]
    assert (np.abs(random_actions) <= 1.0 + 1e-6).all()  # mapped back into the policy's [-1, 1]


def test_a_seed_fixes_the_collected_data():
    def run(seed: int):
        collector = make_collector("CartPole-v1", num_envs=3, seed=seed)
        collect(collector, n_step=90)
        return collector.buffer[:]

    first, second, other = run(7), run(7), run(8)
    np.testing.assert_array_equal(first.obs, second.obs)
    np.testing.assert_array_equal(first.act, second.act)
    assert not np.array_equal(first.obs[:10], other.obs[:10])


def test_wrong_env_and_buffer_types_are_explained():
    env = gym.make("CartPole-v1")
    policy = MLPActorCriticPolicy(
        observation_space=env.observation_space, action_space=env.action_space
    )
    with pytest.raises(TypeError, match="gymnasium.make_vec"):
        VectorEnvCollector(policy, env)
    too_long = 20_000
    rows = Batch(
        obs=np.zeros((1, too_long, 4)),
        obs_next=np.zeros((1, too_long, 4)),
        act=np.zeros((1, too_long)),
        rew=np.zeros((1, too_long)),
        terminated=np.zeros((1, too_long), bool),
        truncated=np.zeros((1, too_long), bool),
    )
    with pytest.raises(ValueError, match="cannot take"):
        SegmentBuffer(10_000).add_rows(rows, np.array([too_long]))
