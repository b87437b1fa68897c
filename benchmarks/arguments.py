"""Command-line argument types shared by the benchmark scripts."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def comma_separated_choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated, non-empty subset of ``allowed``."""

    def parse(value: str) -> list[str]:
        chosen = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"unknown or missing name(s) {unknown or value!r}; choose from {', '.join(allowed)}"
            )
        return chosen

    return parse


def positive_int(value: str) -> int:
    """A positive integer option."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number
