"""Atomic file writes: a crash mid-save never leaves a half-written file behind.

Everything is written to a temporary file in the target's directory, flushed to
disk, then renamed over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary binary file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_atomically(state: Any, path: Path) -> None:
    """``torch.save(state)`` to ``path``, atomically."""
    write_atomically(path, lambda handle: torch.save(state, handle))
