"""Seeded, disjoint splits of the world's prompts, per family.

``train`` (80%) is itself cut in two, as Llama 2's data was: ``sft`` prompts come
with demonstrations, ``rlhf`` prompts do not, and are where preferences are
collected and rejection sampling and PPO run. Keeping them apart is what lets
RLHF add information: on a prompt whose gold answer the SFT model was already
shown, the best of K samples can only re-teach that answer.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from textrl.world.tasks import Task, all_tasks

Split = Literal["sft", "rlhf", "train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("sft", "rlhf", "train", "validation", "test")
TRAIN_SHARE, VALIDATION_SHARE = 0.8, 0.1
SFT_SHARE_OF_TRAIN = 0.5
"""Share of each family's train prompts that have demonstrations (at least one)."""


def _bounds(size: int) -> dict[Split, tuple[int, int]]:
    """Index ranges of each split within one family's shuffled prompts of ``size``."""
    n_train = round(TRAIN_SHARE * size)
    n_sft = min(n_train, max(1, round(SFT_SHARE_OF_TRAIN * n_train)))
    n_validation = max(1, round(VALIDATION_SHARE * size))
    return {
        "sft": (0, n_sft),
        "rlhf": (n_sft, n_train),
        "train": (0, n_train),
        "validation": (n_train, n_train + n_validation),
        "test": (n_train + n_validation, size),
    }


def split_tasks(split: Split, seed: int = 0) -> list[Task]:
    """The tasks of ``split``: each family is shuffled with ``seed`` and cut 80/10/10 into
    train/validation/test (train = sft + rlhf), so every split holds every family and no
    prompt is in two of sft, rlhf, validation and test."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    rng = np.random.default_rng(seed)
    families: dict[str, list[Task]] = {}
    for task in all_tasks():
        families.setdefault(task.family, []).append(task)
    chosen: list[Task] = []
    for family in sorted(families):
        members = families[family]
        order = rng.permutation(len(members))
        start, stop = _bounds(len(members))[split]
        chosen += [members[i] for i in order[start:stop]]
    return chosen
