"""Gymnasium environments of textrl and the helpers that build vector versions of them."""

from envs.vector import make_vector_env

__all__ = ["make_vector_env"]
