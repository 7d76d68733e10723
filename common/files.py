"""Reading a small whole file from a local path or gs:// (task files, example files) through Beam's FileSystems,
so every place that takes a path takes the same kinds of path."""

from __future__ import annotations


def read_bytes(path: str) -> bytes:
    """The file's bytes; OSError (Beam's BeamIOError included) when it cannot be read."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        return handle.read()
