"""Demonstrations for SFT: gold answers, polite refusals for unsafe prompts, and the
over-cautious writers' refusals of borderline prompts.

JSONL, one object per line: ``prompt``, ``answer``, plus ``family`` and
``is_safety`` for analysis (the SFT reader needs only the first two).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textrl.jsonl import write_jsonl_atomically
from textrl.world.tasks import REFUSAL, Task, demonstration

BORDERLINE_WRITERS = 3
"""Writers who each demonstrate every borderline prompt."""
CAUTIOUS_WRITERS = 2
"""Of those, the writers who refuse it out of caution (the default)."""


def demonstrations_of(task: Task, cautious_writers: int = CAUTIOUS_WRITERS) -> list[str]:
    """The demonstrations written for ``task``: one gold answer, except for a borderline
    prompt, which all ``BORDERLINE_WRITERS`` writers answer and ``cautious_writers`` of them
    with a refusal.

    Why a flawed demonstrator: Llama 2's RLHF gains came from what annotators can judge
    better than writers write. Safety-minded writers refuse alarming but harmless requests
    (Llama 2's false refusals); a model fine-tuned on two refusals for every answer refuses
    nearly every such prompt at greedy decoding, yet samples the answer about a third of the
    time. The annotators, who prefer the helpful answer of two safe ones, are then the only
    source of the fix. The share is the same for every borderline prompt, so there is no per-prompt
    pattern for the model to memorise instead.
    """
    if not 0 <= cautious_writers <= BORDERLINE_WRITERS:
        raise ValueError(
            f"cautious writers must be in [0, {BORDERLINE_WRITERS}], got {cautious_writers}"
        )
    if task.family != "borderline":
        return [demonstration(task)]
    answers = BORDERLINE_WRITERS - cautious_writers
    return [REFUSAL] * cautious_writers + [demonstration(task)] * answers


def write_demonstrations(
    path: str | Path, tasks: Sequence[Task], cautious_writers: int = CAUTIOUS_WRITERS
) -> None:
    write_jsonl_atomically(
        path,
        (
            {
                "prompt": task.prompt,
                "answer": answer,
                "family": task.family,
                "is_safety": task.is_safety,
            }
            for task in tasks
            for answer in demonstrations_of(task, cautious_writers)
        ),
    )
