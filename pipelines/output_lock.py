"""One publish at a time per output folder: a marker file names the run whose turn it is.

Two runs may write to the same output folder (a nightly run and a manual rerun). Each publish deletes the
job's files that are not its own and then moves its own in; two publishes interleaved would delete each
other's files as stale and leave a folder mixing both runs. So a publish first writes a marker
``_PUBLISHING-<run_id>`` into the output folder, and goes ahead only when its marker is the oldest one there
(by the filesystem's own timestamp, ties broken by name, so every run agrees on the order); the others wait
for it to be removed. A run that retries its publish (Dataflow retries a failed bundle) finds its own marker
and keeps its place. A marker older than ``ABANDONED_AFTER_SECONDS`` belongs to a run that died mid-publish
and is ignored. Only Beam's FileSystems calls are used (create, match, delete), so local folders and gs://
behave the same; GCS lists objects with strong consistency.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from apache_beam.io.filesystems import FileSystems

LOCK_PREFIX = "_PUBLISHING-"
WAIT_SECONDS = 900.0  # a publish is a handful of renames; waiting longer means the other run is stuck
POLL_SECONDS = 2.0
ABANDONED_AFTER_SECONDS = 3600.0

_LOG = logging.getLogger(__name__)


class OutputBusy(RuntimeError):
    """Another run has been publishing into the same output folder for longer than this run waits."""


def lock_path(output: str, run_id: str) -> str:
    return FileSystems.join(output, LOCK_PREFIX + run_id)


def _holders(output: str) -> list[tuple[float, str]]:
    """(timestamp, path) of every publish marker in ``output``; a listing error is raised, never ignored."""
    found = FileSystems.match([FileSystems.join(output, LOCK_PREFIX + "*")])[0].metadata_list
    return sorted((m.last_updated_in_seconds, m.path) for m in found)


def _write_marker(marker: str, run_id: str) -> None:
    with FileSystems.create(marker) as handle:
        handle.write(json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}).encode())


def _wait_for_turn(output: str, marker: str, run_id: str, wait: float, poll: float, abandoned_after: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        holders = _holders(output)
        if marker not in {path for _, path in holders}:  # removed under us (by hand): claim a place again
            _write_marker(marker, run_id)
            continue
        now = time.time()
        live = [(stamp, path) for stamp, path in holders if path == marker or now - stamp < abandoned_after]
        first_stamp, first = live[0]
        if first == marker:
            return
        if time.monotonic() >= deadline:
            raise OutputBusy(
                f"{output} is being published by another run ({first}, since {time.ctime(first_stamp)}); "
                f"waited {wait:.0f} s. If that run is no longer running, delete {first} and rerun"
            )
        _LOG.info("waiting for %s to finish publishing into %s", first, output)
        time.sleep(poll)


@contextmanager
def publishing_lock(
    output: str,
    run_id: str,
    *,
    wait: float | None = None,
    poll: float | None = None,
    abandoned_after: float | None = None,
) -> Iterator[None]:
    """Hold the output folder for one publish; the marker is removed when the block ends, even on error (the
    next publisher replaces every job file, so a half-done swap is never left mixed with another run's)."""
    marker = lock_path(output, run_id)
    if not FileSystems.exists(marker):
        _write_marker(marker, run_id)
    try:
        _wait_for_turn(
            output,
            marker,
            run_id,
            WAIT_SECONDS if wait is None else wait,
            POLL_SECONDS if poll is None else poll,
            ABANDONED_AFTER_SECONDS if abandoned_after is None else abandoned_after,
        )
        yield
    finally:
        if FileSystems.exists(marker):
            FileSystems.delete([marker])
