"""Where a text environment's prompts come from: a list, a JSONL file, or a generator.

A source draws prompts with the environment's seeded ``numpy`` generator, so
``reset(seed=...)`` reproduces the same prompts: lists and files are sampled
uniformly, a prompt function receives the generator itself. A Python iterator
(a generator of prompts) is read in order instead; a seed cannot replay it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from textrl.jsonl import read_jsonl

PromptFunction = Callable[[np.random.Generator], str]


class PromptSource:
    """Draws prompts; build it with ``from_list``, ``from_jsonl`` or ``from_function``."""

    def __init__(
        self,
        prompts: Sequence[str] | None = None,
        function: PromptFunction | None = None,
        iterator: Iterator[str] | None = None,
    ) -> None:
        if sum(source is not None for source in (prompts, function, iterator)) != 1:
            raise ValueError(
                "PromptSource takes one of: a list of prompts, a prompt function, "
                "an iterator of prompts"
            )
        if prompts is not None and len(prompts) == 0:
            raise ValueError("PromptSource needs at least one prompt")
        self._prompts = list(prompts) if prompts is not None else None
        self._function = function
        self._iterator = iterator

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
    def from_iterator(cls, iterator: Iterable[str]) -> PromptSource:
        return cls(iterator=iter(iterator))

    @classmethod
    def coerce(
        cls, prompts: PromptSource | Sequence[str] | str | Path | PromptFunction
    ) -> PromptSource:
        """Accept what users naturally pass: a source, a list, a JSONL path or a function."""
        if isinstance(prompts, PromptSource):
            return prompts
        if isinstance(prompts, str | Path):
            return cls.from_jsonl(prompts)
        if isinstance(prompts, Iterator):
            return cls.from_iterator(prompts)
        if callable(prompts):
            return cls.from_function(prompts)
        return cls.from_list(prompts)

    def sample(self, rng: np.random.Generator, count: int) -> list[str]:
        """``count`` prompts drawn with ``rng``."""
        if self._prompts is not None:
            return [self._prompts[i] for i in rng.integers(0, len(self._prompts), size=count)]
        if self._function is not None:
            return [self._function(rng) for _ in range(count)]
        assert self._iterator is not None
        prompts = list(islice(self._iterator, count))
        if len(prompts) < count:
            raise ValueError(
                f"the prompt iterator ran out: {count} prompts needed, {len(prompts)} left"
            )
        return prompts
