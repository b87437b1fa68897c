"""Shared builders and checks for the text tests: a tiny Llama over a character tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from agents.lm_policy import LMActorCriticPolicy
from envs.text_generation import TextGenerationVectorEnv
from textrl.models import tiny_llama
from textrl.sampling import SamplingConfig
from textrl.tokenization import build_char_tokenizer

TOKENIZER = build_char_tokenizer("abcdefgh ")
PROMPTS = ["abc", "h", "ggg fa", "de"]


def tiny_model(seed: int = 0):
    return tiny_llama(TOKENIZER, hidden_size=32, num_layers=2, num_heads=2, seed=seed)


def length_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """A transparent reward for hand-checked cases: the response's length."""
    return [float(len(response)) for response in responses]


def text_env_and_policy(
    num_envs: int = 4,
    max_new_tokens: int = 6,
    policy_seed: int = 0,
    reference_seed: int | None = 1,
    sampling: SamplingConfig | None = None,
) -> tuple[TextGenerationVectorEnv, LMActorCriticPolicy]:
    """A batched env over ``PROMPTS`` (with a tiny reference model unless ``reference_seed``
    is None) and a tiny-Llama policy; torch is seeded so that sampling is reproducible."""
    torch.manual_seed(0)
    env = TextGenerationVectorEnv(
        num_envs,
        tokenizer=TOKENIZER,
        prompts=PROMPTS,
        reward_fn=length_reward,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=8,
        reference_model=None if reference_seed is None else tiny_model(seed=reference_seed),
    )
    policy = LMActorCriticPolicy(
        model=tiny_model(seed=policy_seed),
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=8,
        sampling=sampling,
    )
    return env, policy


def assert_identical_weights(left: Path, right: Path) -> None:
    """Two checkpoints hold the same tensors bit for bit (a resumed run against a straight one)."""
    left_weights = load_file(left / "model.safetensors")
    right_weights = load_file(right / "model.safetensors")
    assert left_weights.keys() == right_weights.keys()
    for name, weights in left_weights.items():
        assert torch.equal(weights, right_weights[name]), name
