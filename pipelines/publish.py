"""Run-scoped staging and the publish step that makes reruns idempotent.

Beam's file sinks name files ``prefix-SSSSS-of-NNNNN``: a rerun with another shard count would leave the old
``-of-00003`` files beside the new ones and a glob over the folder would read both runs. So the sinks write
into ``<output>/.staging-<run_id>/`` and one final step, run only after every write (and the error-rate
check) succeeded, swaps the job's ``results-*`` / ``errors-*`` files in the output folder for the staged
ones. A run that fails before that step leaves the previous output untouched; its staged files stay for
inspection. The swap is restartable: a manifest of the staged names is written first, so a retried publish
(Dataflow retries a failed bundle) finishes the move instead of deleting what an earlier attempt moved.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

OUTPUT_KINDS = ("results", "errors")  # the job's own files in the output folder; nothing else is touched
MANIFEST = "_PUBLISH_MANIFEST.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def staging_dir(output: str, run_id: str) -> str:
    """Where this run's sinks write: a hidden folder in ``output``, one per run id."""
    return FileSystems.join(output.rstrip("/") or output, f".staging-{_UNSAFE.sub('_', run_id)}")


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def _match(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except OSError:  # Beam raises BeamIOError (an IOError) when nothing matches on some filesystems
        return []


def _job_files(folder: str) -> list[str]:
    return [p for kind in OUTPUT_KINDS for p in _match(FileSystems.join(folder, f"{kind}-*"))]


def _read_manifest(path: str) -> list[str] | None:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return list(json.loads(handle.read().decode("utf-8"))["files"])


def _write_manifest(path: str, names: Sequence[str]) -> None:
    with FileSystems.create(path) as handle:
        handle.write(json.dumps({"files": list(names)}).encode("utf-8"))


def publish(output: str, staging: str) -> list[str]:
    """Replace the job's files in ``output`` with the staged ones; returns the published paths.

    Idempotent: calling it again after a partial or complete publish ends in the same state.
    """
    output = output.rstrip("/") or output
    manifest = FileSystems.join(staging, MANIFEST)
    names = _read_manifest(manifest)
    if names is None:
        staged = _job_files(staging)
        if not staged:  # a retry after a finished publish (staging already removed): nothing to do
            return sorted(_job_files(output))
        names = sorted(_basename(p) for p in staged)
        _write_manifest(manifest, names)
    keep = set(names)
    stale = [p for p in _job_files(output) if _basename(p) not in keep]
    if stale:
        FileSystems.delete(stale)
    for name in names:
        source = FileSystems.join(staging, name)
        target = FileSystems.join(output, name)
        if not FileSystems.exists(source):
            continue  # moved by an earlier attempt
        if FileSystems.exists(target):
            FileSystems.delete([target])  # the previous run's file of the same name
        FileSystems.rename([source], [target])
    _remove_staging(staging)
    return sorted(FileSystems.join(output, name) for name in names)


def _remove_staging(staging: str) -> None:
    manifest = FileSystems.join(staging, MANIFEST)
    leftovers = [p for p in _match(FileSystems.join(staging, "*")) if _basename(p) != MANIFEST]
    if leftovers:
        FileSystems.delete(leftovers)
    FileSystems.delete([manifest])  # last: until it is gone a retry knows which files are the new ones
    if FileSystems.exists(staging):  # a real folder on local disk; on GCS the prefix is gone with its objects
        FileSystems.delete([staging])


class Publish(beam.PTransform):
    """After every PCollection in ``after`` is complete, swap the staged files into the output folder."""

    def __init__(self, output: str, staging: str) -> None:
        super().__init__()
        self._output = output
        self._staging = staging

    def expand(self, after: Iterable[beam.PCollection]):
        pcolls = list(after)
        if not pcolls:
            raise ValueError("Publish needs the write steps it must wait for")
        pipeline = pcolls[0].pipeline
        waits = {f"wait{i}": beam.pvalue.AsList(p) for i, p in enumerate(pcolls)}
        output, staging = self._output, self._staging
        return (
            pipeline
            | "Once" >> beam.Create([None])
            | "Swap" >> beam.FlatMap(lambda _, **_waits: publish(output, staging), **waits)
        )
