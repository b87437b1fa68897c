"""Build a Gymnasium vector environment for an id, in-process or one subprocess per copy.

Gymnasium registers natively batched implementations for some ids (CartPole:
one numpy state array for all copies, about 75 us per step for 8 copies here);
``auto`` uses those and falls back to ``SyncVectorEnv`` (one Python env per copy,
stepped in turn). ``subproc`` is Gymnasium's ``AsyncVectorEnv``: each copy in its
own worker process, stepped in parallel, for environments whose step costs more
CPU than the pipe round trip (about 0.1 ms); CartPole is far too cheap for it.
``ray`` runs each copy in a Ray actor (``envs.ray_vector``, needs ``ray``), also on
other machines of a Ray cluster, for steps that cost well over a remote call (~1 ms).
"""

from __future__ import annotations

from typing import Literal

import gymnasium as gym

VectorMode = Literal["auto", "sync", "subproc", "ray"]


def make_vector_env(
    env_id: str, num_envs: int, mode: VectorMode = "auto", **env_kwargs: object
) -> gym.vector.VectorEnv:
    """A ``VectorEnv`` of ``num_envs`` copies (see the module docstring for ``mode``)."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(f"unknown environment id {env_id!r}: {error}") from error
    if mode == "ray":
        from envs.ray_vector import RayVectorEnv

        return RayVectorEnv([lambda: gym.make(env_id, **env_kwargs)] * num_envs)
    if mode == "subproc":
        vectorization_mode = "async"
    elif mode == "auto" and spec.vector_entry_point is not None:
        vectorization_mode = "vector_entry_point"
    elif mode in ("auto", "sync"):
        vectorization_mode = "sync"
    else:
        raise ValueError(f"unknown vector mode {mode!r}; use 'auto', 'sync', 'subproc' or 'ray'")
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode=vectorization_mode, **env_kwargs
    )
