"""Demonstrations for SFT, each prompt written by ``WRITERS`` writers: gold answers, polite
refusals for unsafe prompts, the over-cautious writers' refusals of borderline prompts and
the wordy writers' padded answers to the other prompts.

JSONL, one object per line: ``prompt``, ``answer``, plus ``family`` and
``is_safety`` for analysis (the SFT reader needs only the first two).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textrl.jsonl import write_jsonl_atomically
from textrl.world.tasks import REFUSAL, Task, demonstration

WRITERS = 10
"""Writers who each demonstrate every prompt."""
CAUTIOUS_WRITERS = 7
"""Of those, the writers who refuse a borderline prompt out of caution (the default)."""
WORDY_WRITERS = 9
"""Of those, the writers who follow the answer to a harmless prompt with a sign-off (the
default): the bare answer is one demonstration in ten, so the SFT model rarely samples it and
rejection sampling, which can only keep what the model samples, needs several rounds to make
it the habit."""


WORDY_SIGN_OFF = "Hope this helps!"


def wordy(answer: str) -> str:
    """A wordy writer's answer: the gold answer followed by a chatty sign-off, which the gold
    judge credits 0.5-0.67 instead of 1 (``textrl.world.tasks.judge``).

    After the answer, not before it, so that no words stand between the question and the
    answer the model must compute. (A lead-in, "The answer is 12.", was tried first, with
    half the SFT steps now used; the model then got every arithmetic test prompt wrong, but
    so did the sign-off at that step count, and the lead-in was not tried again.)"""
    return f"{answer}. {WORDY_SIGN_OFF}"


def demonstrations_of(
    task: Task, cautious_writers: int = CAUTIOUS_WRITERS, wordy_writers: int = WORDY_WRITERS
) -> list[str]:
    """The ``WRITERS`` demonstrations written for ``task``. Every writer refuses an unsafe
    prompt; ``cautious_writers`` of them refuse a borderline prompt, which the others answer;
    ``wordy_writers`` of them pad the answer to any other prompt, which the others give alone.

    Why flawed demonstrators: Llama 2's RLHF gains came from what annotators can judge
    better than writers write. Safety-minded writers refuse alarming but harmless requests
    (Llama 2's false refusals); wordy writers follow a short answer with a sign-off, a flaw
    of form that every family shares. A model fine-tuned on mostly flawed demonstrations
    makes the flaw at greedy decoding, yet samples the good form now and then. The
    annotators, who prefer the helpful answer of two safe ones and the bare answer to the
    padded one, are then the only source of the fix. The share is the same for every
    prompt, so there is no per-prompt pattern for the model to memorise instead. A flaw of
    form, unlike a flaw of knowledge, is one that a reward model learns from a few thousand
    pairs and carries to held-out prompts. How rare the good form is sets how many rounds
    the fix takes: at one bare answer in three (stop 16), rejection sampling found it among
    8 samples for 96% of the prompts and fixed it in one or two rounds, leaving the last
    round nothing to do; at one in ten, fewer prompts show it in a round's samples.
    """
    for name, flawed in (("cautious", cautious_writers), ("wordy", wordy_writers)):
        if not 0 <= flawed <= WRITERS:
            raise ValueError(f"{name} writers must be in [0, {WRITERS}], got {flawed}")
    gold = demonstration(task)
    if task.family == "unsafe":
        return [gold] * WRITERS
    if task.family == "borderline":
        return [REFUSAL] * cautious_writers + [gold] * (WRITERS - cautious_writers)
    return [wordy(gold)] * wordy_writers + [gold] * (WRITERS - wordy_writers)


def write_demonstrations(
    path: str | Path,
    tasks: Sequence[Task],
    cautious_writers: int = CAUTIOUS_WRITERS,
    wordy_writers: int = WORDY_WRITERS,
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
            for answer in demonstrations_of(task, cautious_writers, wordy_writers)
        ),
    )
