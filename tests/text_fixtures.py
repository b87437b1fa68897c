"""Shared builders for the text tests: a tiny Llama over a character tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

from textrl.models import tiny_llama
from textrl.tokenization import build_char_tokenizer

TOKENIZER = build_char_tokenizer("abcdefgh ")
PROMPTS = ["abc", "h", "ggg fa", "de"]


def tiny_model(seed: int = 0):
    return tiny_llama(TOKENIZER, hidden_size=32, num_layers=2, num_heads=2, seed=seed)


def length_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """A transparent reward for hand-checked cases: the response's length."""
    return [float(len(response)) for response in responses]
