"""Toy text tasks for testing agents before LLMs: copy or reverse a short string.

The vocabulary is a few letters plus the special tokens, prompts are random
strings drawn with the environment's seeded generator, and the reward is the
fraction of positions right, ``matches / max(len(target), len(response))``, so
both missing and extra characters cost. Cheap enough for a small policy to
learn on a CPU in minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from envs.text_generation import TextGenerationEnv, TextGenerationVectorEnv
from textrl.tokenization import build_char_tokenizer

TOY_ALPHABET = "abc"


def positional_accuracy(
    prompts: Sequence[str], responses: Sequence[str], target: Callable[[str], str]
) -> list[float]:
    """Fraction of positions where the response matches ``target(prompt)``."""
    scores = []
    for prompt, response in zip(prompts, responses, strict=True):
        expected = target(prompt)
        matches = sum(a == b for a, b in zip(expected, response, strict=False))
        scores.append(matches / max(len(expected), len(response), 1))
    return scores


def _random_string(rng: np.random.Generator, length: int, alphabet: str) -> str:
    return "".join(rng.choice(list(alphabet), size=length))


def _identity(text: str) -> str:
    return text


def _reversed(text: str) -> str:
    return text[::-1]


def toy_task_kwargs(
    target: Callable[[str], str], length: int = 3, alphabet: str = TOY_ALPHABET
) -> dict[str, Any]:
    """Constructor arguments of a text env for the toy task ``target``."""
    return {
        "tokenizer": build_char_tokenizer(alphabet),
        "prompts": partial(_random_string, length=length, alphabet=alphabet),
        "reward_fn": partial(positional_accuracy, target=target),
        "max_new_tokens": length + 1,
        "max_prompt_tokens": length + 1,
        "use_chat_template": False,
    }


def make_toy_env(
    target: Callable[[str], str], length: int = 3, alphabet: str = TOY_ALPHABET, **kwargs: Any
) -> TextGenerationEnv:
    return TextGenerationEnv(**{**toy_task_kwargs(target, length, alphabet), **kwargs})


def make_toy_vector_env(
    target: Callable[[str], str],
    num_envs: int = 1,
    length: int = 3,
    alphabet: str = TOY_ALPHABET,
    **kwargs: Any,
) -> TextGenerationVectorEnv:
    return TextGenerationVectorEnv(
        num_envs, **{**toy_task_kwargs(target, length, alphabet), **kwargs}
    )


make_copy_env = partial(make_toy_env, _identity)
make_copy_vector_env = partial(make_toy_vector_env, _identity)
make_reverse_env = partial(make_toy_env, _reversed)
make_reverse_vector_env = partial(make_toy_vector_env, _reversed)
