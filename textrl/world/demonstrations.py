"""Demonstrations for SFT: gold answers, and polite refusals for unsafe prompts.

JSONL, one object per line: ``prompt``, ``answer``, plus ``family`` and
``is_safety`` for analysis (the SFT reader needs only the first two).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textrl.jsonl import write_jsonl_atomically
from textrl.world.tasks import Task, demonstration


def write_demonstrations(path: str | Path, tasks: Sequence[Task]) -> None:
    write_jsonl_atomically(
        path,
        (
            {
                "prompt": task.prompt,
                "answer": demonstration(task),
                "family": task.family,
                "is_safety": task.is_safety,
            }
            for task in tasks
        ),
    )
