"""Preference pairs: the record, its JSONL form, and how the annotator produces them.

One JSON object per line with the fields of ``PreferencePair``; the reader
rejects unknown ratings and categories with the file, line and field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textrl.jsonl import read_jsonl, write_jsonl_atomically
from textrl.world.annotator import (
    RATINGS,
    Category,
    Rating,
    SimulatedAnnotator,
    category_of,
    gold_value,
)
from textrl.world.pair_sampling import SampledPairs
from textrl.world.tasks import Task, judge


@dataclass(frozen=True)
class PreferencePair:
    """One comparison, as Llama 2 collected them."""

    prompt: str
    chosen: str
    rejected: str
    rating: Rating
    category: Category
    is_safety: bool
    chosen_model: str
    rejected_model: str


FIELD_TYPES = {
    field.name: (bool if field.name == "is_safety" else str)
    for field in dataclasses.fields(PreferencePair)
}
FIELD_CHOICES = {"rating": RATINGS, "category": ("helpfulness", "safety")}


def read_preferences(path: str | Path) -> list[PreferencePair]:
    return [
        PreferencePair(**{name: record[name] for name in FIELD_TYPES})
        for record in read_jsonl(path, FIELD_TYPES, FIELD_CHOICES)
    ]


def write_preferences(path: str | Path, pairs: Sequence[PreferencePair]) -> None:
    write_jsonl_atomically(path, (dataclasses.asdict(pair) for pair in pairs))


def annotate_sampled(sampled: SampledPairs, annotator: SimulatedAnnotator) -> list[PreferencePair]:
    """The annotator's verdict on each sampled (task, first response, second response)."""
    pairs = []
    for task, a, b, model_a, model_b in zip(
        sampled.tasks,
        sampled.first,
        sampled.second,
        sampled.first_variant,
        sampled.second_variant,
        strict=True,
    ):
        category = category_of(task.is_safety)
        judgement = annotator.compare(
            gold_value(judge(task, a), category), gold_value(judge(task, b), category)
        )
        responses, models = (a, b), (model_a, model_b)
        pairs.append(
            PreferencePair(
                prompt=task.prompt,
                chosen=responses[judgement.preferred],
                rejected=responses[1 - judgement.preferred],
                rating=judgement.rating,
                category=category,
                is_safety=task.is_safety,
                chosen_model=models[judgement.preferred],
                rejected_model=models[1 - judgement.preferred],
            )
        )
    return pairs


def sample_pair_tasks(tasks: Sequence[Task], count: int, seed: int) -> list[Task]:
    """``count`` prompts drawn with replacement (seeded) from a split."""
    rng = np.random.default_rng(seed)
    return [tasks[i] for i in rng.integers(0, len(tasks), size=count)]


def gold_gaps(
    pairs: Sequence[PreferencePair], tasks: Sequence[Task], graded: bool = True
) -> np.ndarray:
    """``gold(chosen) - gold(rejected)`` in each pair's category (the world knows the truth;
    ``graded=False``: by the judge that does not grade near misses)."""
    by_prompt = {task.prompt: task for task in tasks}
    missing = [p.prompt for p in pairs if p.prompt not in by_prompt]
    if missing:
        raise ValueError(f"prompt {missing[0]!r} is not one of the world's tasks")
    return np.array(
        [
            gold_value(judge(by_prompt[p.prompt], p.chosen, graded), p.category)
            - gold_value(judge(by_prompt[p.prompt], p.rejected, graded), p.category)
            for p in pairs
        ]
    )
