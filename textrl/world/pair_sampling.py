"""Sample response pairs for preference collection from model variants.

A variant is a (checkpoint, temperature) combination, as Llama 2 sampled its
pairs "from two different model variants, and varying the temperature
hyper-parameter". Each pair takes two distinct variants; all responses of one
variant are generated in large batches. A pair whose two responses are the same text is
dropped: an annotator has nothing to compare, and its label would be a coin flip that
only teaches a reward model noise (with a small, confident model, about half the pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textrl.generation import generate_responses
from textrl.sampling import SamplingConfig
from textrl.world.tasks import Task


@dataclass(frozen=True)
class Variant:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    temperature: float

    def sample(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        batch_size: int = 256,
        progress: bool = False,
    ) -> list[str]:
        """One response per prompt at this variant's temperature."""
        return generate_responses(
            self.model,
            self.tokenizer,
            prompts,
            SamplingConfig(temperature=self.temperature),
            max_new_tokens,
            batch_size,
            progress=progress,
        )


@dataclass(frozen=True)
class SampledPairs:
    tasks: list[Task]
    first: list[str]
    second: list[str]
    first_variant: list[str]
    second_variant: list[str]


def sample_pairs(
    variants: Sequence[Variant],
    tasks: Sequence[Task],
    count: int,
    seed: int,
    max_new_tokens: int = 48,
    batch_size: int = 256,
    progress: bool = False,
) -> SampledPairs:
    """Up to ``count`` pairs over prompts drawn with replacement from ``tasks``: ``count``
    are sampled and those with two identical responses dropped."""
    if len(variants) < 2:
        raise ValueError(
            "pairs need at least two variants: give two checkpoints or two temperatures"
        )
    rng = np.random.default_rng(seed)
    chosen_tasks = [tasks[i] for i in rng.integers(0, len(tasks), size=count)]
    assignment = np.stack([rng.choice(len(variants), size=2, replace=False) for _ in range(count)])
    responses = np.empty((count, 2), dtype=object)
    for index, variant in enumerate(variants):
        slots = np.argwhere(assignment == index)  # (n, 2): pair, side
        if len(slots) == 0:
            continue
        prompts = [chosen_tasks[pair].prompt for pair, _ in slots]
        texts = variant.sample(prompts, max_new_tokens, batch_size, progress)
        for (pair, side), text in zip(slots, texts, strict=True):
            responses[pair, side] = text
    names = [variant.name for variant in variants]
    return distinct_pairs(
        chosen_tasks,
        list(responses[:, 0]),
        list(responses[:, 1]),
        [names[i] for i in assignment[:, 0]],
        [names[i] for i in assignment[:, 1]],
    )


def distinct_pairs(
    tasks: Sequence[Task],
    first: Sequence[str],
    second: Sequence[str],
    first_variant: Sequence[str],
    second_variant: Sequence[str],
) -> SampledPairs:
    """The pairs whose two responses differ (the others are not sent to annotators)."""
    keep = [i for i in range(len(tasks)) if first[i].strip() != second[i].strip()]
    return SampledPairs(
        tasks=[tasks[i] for i in keep],
        first=[first[i] for i in keep],
        second=[second[i] for i in keep],
        first_variant=[first_variant[i] for i in keep],
        second_variant=[second_variant[i] for i in keep],
    )
