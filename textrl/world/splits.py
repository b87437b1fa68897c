"""Seeded, disjoint train/validation/test splits of the world's prompts, per family."""

from __future__ import annotations

from typing import Literal

import numpy as np

from textrl.world.tasks import Task, all_tasks

Split = Literal["train", "validation", "test"]
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_tasks(split: Split, seed: int = 0) -> list[Task]:
    """The tasks of ``split``: each family is shuffled with ``seed`` and cut 80/10/10,
    so every split holds every family and no prompt is in two splits."""
    if split not in SPLIT_FRACTIONS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_FRACTIONS)}")
    rng = np.random.default_rng(seed)
    families: dict[str, list[Task]] = {}
    for task in all_tasks():
        families.setdefault(task.family, []).append(task)
    chosen: list[Task] = []
    for family in sorted(families):
        members = families[family]
        order = rng.permutation(len(members))
        n_train = round(SPLIT_FRACTIONS["train"] * len(members))
        n_validation = max(1, round(SPLIT_FRACTIONS["validation"] * len(members)))
        bounds = {
            "train": (0, n_train),
            "validation": (n_train, n_train + n_validation),
            "test": (n_train + n_validation, len(members)),
        }
        start, stop = bounds[split]
        chosen += [members[i] for i in order[start:stop]]
    return chosen
