"""Tianshou's Ray workers behind Gymnasium's vector API: one env copy per Ray actor.

``tianshou.env.RayVectorEnv`` runs each copy in a Ray actor, on this machine or on a
Ray cluster's nodes (``ray.init(address=...)`` before building it), for environments
whose step is far more expensive than a remote call to an actor. It
speaks Tianshou's worker API (``step(actions, id)``, no autoreset), while our
collector drives any ``gymnasium.vector.VectorEnv`` in ``NEXT_STEP`` autoreset mode;
this adapter does that autoreset: a copy that ended is reset by the next ``step``,
whose action for it is ignored, exactly as in ``SyncVectorEnv``, and ``reset(seed=s)``
seeds copy i with ``s + i`` as Gymnasium does, so a seeded run matches ``sync``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from tianshou.env import RayVectorEnv as TianshouRayVectorEnv

RAY_INSTALL = "pip install 'textrl[ray]'"


class RayVectorEnv(gym.vector.VectorEnv):
    """``len(env_fns)`` copies, each in a Ray actor (Tianshou's ``RayVectorEnv``)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, env_fns: list[Callable[[], gym.Env]]) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ImportError(f"vector mode 'ray' needs the ray package: {RAY_INSTALL}")
        self.workers = TianshouRayVectorEnv(env_fns)
        self.num_envs = len(env_fns)
        self.single_observation_space = self.workers.observation_space[0]
        self.single_action_space = self.workers.action_space[0]
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._ended = np.zeros(self.num_envs, dtype=bool)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every copy; copy i is seeded with ``seed + i``."""
        observations = [
            self.workers.reset(env_id=[i], seed=None if seed is None else seed + i)[0][0]
            for i in range(self.num_envs)
        ]
        self._ended[:] = False
        return np.stack(observations), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        observations = np.zeros(self.observation_space.shape, self.observation_space.dtype)
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        ended, running = np.flatnonzero(self._ended), np.flatnonzero(~self._ended)
        if len(ended):
            observations[ended] = self.workers.reset(env_id=ended)[0]
        if len(running):
            stepped = self.workers.step(np.asarray(actions)[running], id=running)
            observations[running], rewards[running] = stepped[0], stepped[1]
            terminated[running], truncated[running] = stepped[2], stepped[3]
        self._ended = terminated | truncated
        return observations, rewards, terminated, truncated, {}

    def close_extras(self, **kwargs: Any) -> None:
        self.workers.close()
