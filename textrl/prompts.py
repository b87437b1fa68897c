"""Where a text environment's prompts come from: a list, a JSONL file, or a generator.

A source draws prompts with the environment's seeded ``numpy`` generator, so
``reset(seed=...)`` reproduces the same prompts: lists and files are sampled
uniformly, a prompt function receives the generator itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from textrl.jsonl import read_jsonl

PromptFunction = Callable[[np.random.Generator], str]


class PromptSource:
    """Draws prompts; build it with ``from_list``, ``from_jsonl`` or ``from_function``."""

    def __init__(
        self, prompts: Sequence[str] | None = None, function: PromptFunction | None = None
    ) -> None:
        if (prompts is None) == (function is None):
            raise ValueError("PromptSource takes either a list of prompts or a prompt function")
        if prompts is not None and len(prompts) == 0:
            raise ValueError("PromptSource needs at least one prompt")
        self._prompts = list(prompts) if prompts is not None else None
        self._function = function

    @classmethod
    def from_list(cls, prompts: Sequence[str]) -> PromptSource:
        bad = [i for i, prompt in enumerate(prompts) if not isinstance(prompt, str)]
        if bad:
            raise TypeError(f"prompts must be strings; entries {bad[:5]} are not")
        return cls(prompts=prompts)

    @classmethod
    def from_jsonl(cls, path: str | Path, field: str = "prompt") -> PromptSource:
        return cls(prompts=[record[field] for record in read_jsonl(path, {field: str})])

    @classmethod
    def from_function(cls, function: PromptFunction) -> PromptSource:
        return cls(function=function)

    @classmethod
    def coerce(
        cls, prompts: PromptSource | Sequence[str] | str | Path | PromptFunction
    ) -> PromptSource:
        """Accept what users naturally pass: a source, a list, a JSONL path or a function."""
        if isinstance(prompts, PromptSource):
            return prompts
        if isinstance(prompts, str | Path):
            return cls.from_jsonl(prompts)
        if callable(prompts):
            return cls.from_function(prompts)
        return cls.from_list(prompts)

    def sample(self, rng: np.random.Generator, count: int) -> list[str]:
        """``count`` prompts drawn with ``rng``."""
        if self._prompts is not None:
            return [self._prompts[i] for i in rng.integers(0, len(self._prompts), size=count)]
        assert self._function is not None
        return [self._function(rng) for _ in range(count)]
