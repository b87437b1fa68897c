"""A person as the annotator: the terminal loop behind ``textrl annotate``.

The pairs to label are fixed in a pairs file first, so a later session shows
the same pairs. Each label is appended to the labels file and flushed to disk
the moment it is given; a restarted session skips every pair already labelled.
A line cut short by a crash mid-write is the only thing ever removed, and the
session says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from textrl.jsonl import read_jsonl, write_jsonl_atomically
from textrl.world.annotator import RATINGS, category_of
from textrl.world.pair_sampling import SampledPairs
from textrl.world.preferences import FIELD_CHOICES, FIELD_TYPES, PreferencePair

logger = logging.getLogger(__name__)

PAIR_FIELDS = {
    "pair_id": int,
    "prompt": str,
    "is_safety": bool,
    "first": str,
    "second": str,
    "first_model": str,
    "second_model": str,
}
LABEL_FIELDS = {**FIELD_TYPES, "pair_id": int}
RATING_KEYS = {str(number): rating for number, rating in enumerate(RATINGS, start=1)}


class AnnotationStopped(Exception):
    """The annotator asked to stop (q, Ctrl-D or Ctrl-C); every label given is saved."""


def write_pairs_file(path: Path, pairs: SampledPairs) -> None:
    write_jsonl_atomically(
        path,
        (
            {
                "pair_id": index,
                "prompt": task.prompt,
                "is_safety": task.is_safety,
                "first": first,
                "second": second,
                "first_model": first_model,
                "second_model": second_model,
            }
            for index, (task, first, second, first_model, second_model) in enumerate(
                zip(
                    pairs.tasks,
                    pairs.first,
                    pairs.second,
                    pairs.first_variant,
                    pairs.second_variant,
                    strict=True,
                )
            )
        ),
    )


def labelled_pair_ids(labels_path: Path) -> set[int]:
    """Pair ids already labelled; repairs a final line cut short by a crash."""
    if not labels_path.exists() or labels_path.stat().st_size == 0:
        return set()
    content = labels_path.read_bytes()
    if not content.endswith(b"\n"):
        kept = content[: content.rfind(b"\n") + 1]
        logger.warning(
            "%s: removing a final label cut short mid-write: %r",
            labels_path,
            content[len(kept) :][:80],
        )
        labels_path.write_bytes(kept)
        if not kept:
            return set()
    return {record["pair_id"] for record in read_jsonl(labels_path, LABEL_FIELDS, FIELD_CHOICES)}


def _append_label(labels_path: Path, label: dict[str, object]) -> None:
    with labels_path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(label, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _ask(read_line: Callable[[str], str], question: str, allowed: set[str]) -> str:
    while True:
        try:
            answer = read_line(question).strip().lower()
        except (EOFError, KeyboardInterrupt):
            raise AnnotationStopped from None
        if answer == "q":
            raise AnnotationStopped
        if answer in allowed:
            return answer


def annotate(
    pairs_path: Path,
    labels_path: Path,
    read_line: Callable[[str], str] | None = None,
    show: Callable[[str], None] = print,
) -> int:
    """Ask for a label for every pair not yet labelled; returns how many were given now.

    ``read_line`` defaults to ``input`` (the terminal); tests pass scripted answers.
    """
    read_line = read_line or input
    done = labelled_pair_ids(labels_path)
    pairs = [
        record for record in read_jsonl(pairs_path, PAIR_FIELDS) if record["pair_id"] not in done
    ]
    show(f"{len(done)} pairs already labelled, {len(pairs)} to go. Answer q to stop at any time.")
    given = 0
    try:
        for position, pair in enumerate(pairs, start=1):
            category = category_of(pair["is_safety"])
            show(
                f"\n[{position}/{len(pairs)}] judge {category}\nPROMPT: {pair['prompt']}\n"
                f"--- response 1 ---\n{pair['first']}\n--- response 2 ---\n{pair['second']}"
            )
            choice = _ask(read_line, "Which is better? [1/2, s = skip] ", {"1", "2", "s"})
            if choice == "s":
                continue
            rating_key = _ask(
                read_line,
                "How much better? 1 significantly, 2 better, 3 slightly, 4 negligibly/unsure: ",
                set(RATING_KEYS),
            )
            first_wins = choice == "1"
            label = PreferencePair(
                prompt=pair["prompt"],
                chosen=pair["first"] if first_wins else pair["second"],
                rejected=pair["second"] if first_wins else pair["first"],
                rating=RATING_KEYS[rating_key],
                category=category,
                is_safety=pair["is_safety"],
                chosen_model=pair["first_model"] if first_wins else pair["second_model"],
                rejected_model=pair["second_model"] if first_wins else pair["first_model"],
            )
            _append_label(labels_path, {**dataclasses.asdict(label), "pair_id": pair["pair_id"]})
            given += 1
    except AnnotationStopped:
        show(f"\nStopped; {given} new labels saved to {labels_path}.")
    return given
