"""Strict JSONL reading: every problem names the file, the line and the field.

Nothing is skipped silently: a bad line stops the read with a ``DataFormatError``
that says what is wrong and where (``data.jsonl:17: field "chosen" is missing``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from textrl.checkpoint import write_atomically


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message says where and why."""


def read_jsonl(
    path: str | Path,
    fields: Mapping[str, type | tuple[type, ...]],
    choices: Mapping[str, Collection[Any]] | None = None,
) -> list[dict[str, Any]]:
    """All records of ``path``, each checked to have ``fields`` with the given types
    and, for the fields in ``choices``, one of the allowed values."""
    return list(iter_jsonl(path, fields, choices))


def iter_jsonl(
    path: str | Path,
    fields: Mapping[str, type | tuple[type, ...]],
    choices: Mapping[str, Collection[Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield validated records of ``path`` one line at a time (blank lines are allowed)."""
    for _, record in iter_jsonl_lines(path, fields, choices):
        yield record


def iter_jsonl_lines(
    path: str | Path,
    fields: Mapping[str, type | tuple[type, ...]],
    choices: Mapping[str, Collection[Any]] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Like ``iter_jsonl``, with each record's ``file:line`` for the caller's own checks."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    records = 0
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(f"{where}: invalid UTF-8 ({error.reason})") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{where}: malformed JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    f"{where}: expected a JSON object, got {type(record).__name__}"
                )
            for name, expected in fields.items():
                if name not in record:
                    raise DataFormatError(f'{where}: field "{name}" is missing')
                if (
                    not isinstance(record[name], expected)
                    or isinstance(record[name], bool)
                    and (bool not in (expected if isinstance(expected, tuple) else (expected,)))
                ):
                    expected_names = (
                        " or ".join(t.__name__ for t in expected)
                        if isinstance(expected, tuple)
                        else expected.__name__
                    )
                    raise DataFormatError(
                        f'{where}: field "{name}" should be {expected_names}, '
                        f"got {type(record[name]).__name__}"
                    )
            for name, allowed in (choices or {}).items():
                if record[name] not in allowed:
                    raise DataFormatError(
                        f'{where}: field "{name}" has unknown value {record[name]!r}; '
                        f"expected one of {sorted(allowed)}"
                    )
            records += 1
            yield where, record
    if records == 0:
        raise DataFormatError(f"{path}: the file holds no records")


def write_jsonl_atomically(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records``, one JSON object per line, atomically (see ``textrl.checkpoint``)."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    write_atomically(Path(path), lambda handle: handle.write(lines.encode("utf-8")))
