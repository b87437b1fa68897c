"""A Tianshou collector for natively batched Gymnasium vector environments.

Tianshou's stock ``Collector`` loops over one Python worker per environment
and writes one transition per environment per ``buffer.add`` call; measured
here it costs about 1.1 ms per vector step plus 0.05 ms per environment,
tens of times a vectorised CartPole step. This collector drives any
``gymnasium.vector.VectorEnv`` (Gymnasium's native ``CartPoleVectorEnv``, or
``SyncVectorEnv``/``AsyncVectorEnv``) with one policy call and one env call
per vector step, keeps the rows in preallocated arrays, and hands them to a
``SegmentBuffer`` in one call at the end. It is a ``BaseCollector``, so
Tianshou's trainers use it unchanged.

Gymnasium's default autoreset mode (``NEXT_STEP``) resets a finished
environment on the *following* ``step`` call, which ignores that row's action
and is not a transition; those rows are skipped, so every stored transition is
real and each row stays contiguous in time.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from tianshou.algorithm.algorithm_base import Algorithm, Policy
from tianshou.data import Batch

from agents.batched_collector import BatchedEnvCollector
from agents.segment_buffer import SegmentBuffer


class VectorEnvCollector(BatchedEnvCollector):
    """Collects whole rows from a ``gymnasium.vector.VectorEnv`` into a ``SegmentBuffer``."""

    buffer_type = SegmentBuffer

    def __init__(
        self,
        policy: Policy | Algorithm,
        env: gym.vector.VectorEnv,
        buffer: SegmentBuffer | None = None,
        seed: int | None = None,
    ) -> None:
        """
        :param policy: any Tianshou policy (or an algorithm, whose policy is used).
        :param env: a Gymnasium vector env in ``NEXT_STEP`` autoreset mode (the default).
        :param buffer: where rows go; by default one large enough for 100k transitions.
        :param seed: seeds the environments on the first ``reset`` (later resets continue
            their random streams, so a seeded run is reproducible).
        """
        if not isinstance(env, gym.vector.VectorEnv):
            raise TypeError(
                f"VectorEnvCollector needs a gymnasium.vector.VectorEnv, got {type(env).__name__}; "
                "build one with gymnasium.make_vec(env_id, num_envs=...)"
            )
        autoreset_mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if autoreset_mode != AutoresetMode.NEXT_STEP:
            raise ValueError(
                f"VectorEnvCollector expects autoreset_mode NEXT_STEP (Gymnasium's default), got "
                f"{autoreset_mode}; create the vector env without overriding autoreset_mode"
            )
        self._seed = seed
        self._observations: np.ndarray | None = None
        self._resetting = np.zeros(env.num_envs, dtype=bool)
        """Rows whose next ``step`` is Gymnasium's autoreset, not a transition."""
        self._episode_returns = np.zeros(env.num_envs, dtype=np.float64)
        self._episode_lengths = np.zeros(env.num_envs, dtype=np.int64)
        super().__init__(
            policy,
            env,
            buffer if buffer is not None else SegmentBuffer(100_000),
            env.num_envs,
            env.single_action_space,
        )

    def reset_env(self, gym_reset_kwargs: dict[str, Any] | None = None) -> tuple[np.ndarray, Any]:
        kwargs = dict(gym_reset_kwargs or {})
        if self._seed is not None:
            kwargs.setdefault("seed", self._seed)
            self._seed = None
        observations, info = self.env.reset(**kwargs)
        self._observations = observations
        self._resetting = np.zeros(self._num_envs, dtype=bool)
        self._episode_returns = np.zeros(self._num_envs, dtype=np.float64)
        self._episode_lengths = np.zeros(self._num_envs, dtype=np.int64)
        return observations, info

    def _episode_quota(self, n_episode: int) -> np.ndarray:
        """Episodes each row contributes: spread evenly so that short episodes are not favoured."""
        quota = np.full(self._num_envs, n_episode // self._num_envs)
        quota[: n_episode % self._num_envs] += 1
        return quota

    def _collect_rows(
        self,
        n_step: int | None,
        n_episode: int | None,
        random: bool,
        gym_reset_kwargs: dict[str, Any] | None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        if n_episode:
            # every counted episode must be whole: start them all from a reset
            self.reset_env(gym_reset_kwargs)
        elif self._observations is None:
            raise RuntimeError(
                "call collector.reset() (or collect(..., reset_before_collect=True)) first"
            )
        num_envs = self._num_envs
        quota = self._episode_quota(n_episode) if n_episode else None
        episodes_done = np.zeros(num_envs, dtype=np.int64)
        capacity = math.ceil(n_step / num_envs) + 8 if n_step else 64
        rows = _RowArrays(num_envs, capacity, self._observations, self._action_space)
        returns: list[float] = []
        lengths: list[int] = []
        num_steps = 0
        while True:
            if n_step and num_steps >= n_step:
                break
            if quota is not None and (episodes_done >= quota).all():
                break
            observations = self._observations
            if random:
                env_actions = np.stack([self._action_space.sample() for _ in range(num_envs)])
                actions = self.policy.map_action_inverse(env_actions)
            else:
                with torch.no_grad():
                    actions = np.asarray(self.policy(Batch(obs=observations, info=None)).act)
                env_actions = self.policy.map_action(actions)
            next_observations, rewards, terminated, truncated, _ = self.env.step(env_actions)
            recording = ~self._resetting
            if quota is not None:
                recording &= episodes_done < quota
            rows.write(
                recording, observations, actions, rewards, terminated, truncated, next_observations
            )
            num_steps += int(recording.sum())
            done = terminated | truncated
            self._episode_returns[recording] += rewards[recording]
            self._episode_lengths[recording] += 1
            finished = recording & done
            if finished.any():
                returns.extend(self._episode_returns[finished].tolist())
                lengths.extend(self._episode_lengths[finished].tolist())
                self._episode_returns[finished] = 0.0
                self._episode_lengths[finished] = 0
                episodes_done += finished
            self._resetting = done
            self._observations = next_observations
        self.buffer.add_rows(rows.as_batch(), rows.lengths)
        return np.asarray(returns), np.asarray(lengths), num_steps


class _RowArrays:
    """Preallocated ``(num_envs, capacity, ...)`` arrays with a write position per row."""

    def __init__(
        self, num_envs: int, capacity: int, example_obs: np.ndarray, action_space: gym.Space
    ) -> None:
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self._capacity = capacity
        obs_shape, obs_dtype = example_obs.shape[1:], example_obs.dtype
        self.obs = np.zeros((num_envs, capacity, *obs_shape), dtype=obs_dtype)
        self.obs_next = np.zeros_like(self.obs)
        act_dtype = np.int64 if isinstance(action_space, gym.spaces.Discrete) else np.float32
        self.act = np.zeros((num_envs, capacity, *action_space.shape), dtype=act_dtype)
        self.rew = np.zeros((num_envs, capacity), dtype=np.float32)
        self.terminated = np.zeros((num_envs, capacity), dtype=bool)
        self.truncated = np.zeros((num_envs, capacity), dtype=bool)

    def _grow(self) -> None:
        for name in ("obs", "obs_next", "act", "rew", "terminated", "truncated"):
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, np.zeros_like(array)], axis=1))
        self._capacity *= 2

    def write(
        self,
        recording: np.ndarray,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_observations: np.ndarray,
    ) -> None:
        env_ids = np.flatnonzero(recording)
        if env_ids.size == 0:
            return
        positions = self.lengths[env_ids]
        if positions.max() >= self._capacity:
            self._grow()
        self.obs[env_ids, positions] = observations[env_ids]
        self.act[env_ids, positions] = actions[env_ids]
        self.rew[env_ids, positions] = rewards[env_ids]
        self.terminated[env_ids, positions] = terminated[env_ids]
        self.truncated[env_ids, positions] = truncated[env_ids]
        self.obs_next[env_ids, positions] = next_observations[env_ids]
        self.lengths[env_ids] += 1

    def as_batch(self) -> Batch:
        return Batch(
            obs=self.obs,
            act=self.act,
            rew=self.rew,
            terminated=self.terminated,
            truncated=self.truncated,
            obs_next=self.obs_next,
        )
