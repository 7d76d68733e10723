"""Reading a small whole file from a local path or gs:// (task files, example files) through Beam's FileSystems,
so every place that takes a path takes the same kinds of path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from common.errors import UserInputError


def read_bytes(path: str) -> bytes:
    """The file's bytes; OSError (Beam's BeamIOError included) when it cannot be read."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        return handle.read()


def read_jsonl(path: str, read: Callable[[str], bytes] = read_bytes) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a small JSONL file; UserInputError names the file, and the
    line that is not JSON."""
    try:
        lines = read(path).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"cannot read {path} ({err})") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{path} line {number} is not JSON: {err}") from err
