"""A vector env whose copies start in groups of K from one start state.

Best-of-K selection compares K episodes from the same start state: on text the
same prompt (``TextGenerationVectorEnv(samples_per_prompt=K)``), on a classic
control task the same initial state. Gymnasium's natively batched
``CartPoleVectorEnv`` draws every copy's start from one generator and cannot be
seeded per copy, so this wrapper drives a ``SyncVectorEnv`` (or
``AsyncVectorEnv``), whose ``reset`` takes one seed per copy: each reset draws
``num_envs // K`` start seeds from its own generator and gives each to K
contiguous copies. Copies with one seed start in the same state and then
diverge through the agent's sampled actions.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class SharedStartVectorEnv(gym.vector.VectorWrapper):
    """Contiguous groups of ``samples_per_start`` copies reset to one start state each."""

    def __init__(self, env: gym.vector.VectorEnv, samples_per_start: int) -> None:
        """
        :param env: a vector env whose ``reset`` accepts a list of seeds, one per copy
            (``gymnasium.make_vec(id, num_envs, vectorization_mode="sync")``).
        :param samples_per_start: K, the copies sharing each start state.
        """
        if not isinstance(env, gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv):
            raise TypeError(
                f"SharedStartVectorEnv seeds each copy on its own, which {type(env).__name__} "
                "cannot do; build the env with gymnasium.make_vec(..., vectorization_mode='sync')"
            )
        if samples_per_start < 1 or env.num_envs % samples_per_start:
            raise ValueError(
                f"num_envs={env.num_envs} must be a positive multiple of "
                f"samples_per_start={samples_per_start}"
            )
        super().__init__(env)
        self.samples_per_start = samples_per_start
        self._start_seeds = np.random.default_rng()

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """New start states; an int ``seed`` makes the sequence of start states reproducible."""
        if isinstance(seed, list):
            raise ValueError(
                "SharedStartVectorEnv chooses the per-copy seeds itself; pass one int seed or None"
            )
        if seed is not None:
            self._start_seeds = np.random.default_rng(seed)
        starts = self._start_seeds.integers(2**31, size=self.num_envs // self.samples_per_start)
        seeds = np.repeat(starts, self.samples_per_start).tolist()
        return self.env.reset(seed=seeds, options=options)


def make_shared_start_vector_env(
    env_id: str, num_start_states: int, samples_per_start: int, **env_kwargs: object
) -> SharedStartVectorEnv:
    """``num_start_states * samples_per_start`` copies of ``env_id`` in shared-start groups."""
    env = gym.make_vec(
        env_id,
        num_envs=num_start_states * samples_per_start,
        vectorization_mode="sync",
        **env_kwargs,
    )
    return SharedStartVectorEnv(env, samples_per_start)
