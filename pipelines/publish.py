"""Run-scoped staging and the publish step that makes reruns idempotent.

Beam's file sinks name files ``prefix-SSSSS-of-NNNNN``: a rerun with another shard count would leave the old
``-of-00003`` files beside the new ones and a glob over the folder would read both runs. So the sinks write
into ``<output>/.staging-<run_id>/`` and one final step, run only after every write (and the error-rate
check) succeeded, swaps the job's ``results-*`` / ``errors-*`` files in the output folder for the staged
ones. A run that fails before that step leaves the previous output untouched; its staged files stay for
inspection.

- One publish at a time per folder (``output_lock``): two runs publishing into the same folder never delete
  each other's files as stale mid-swap; the later one replaces the earlier one's files whole.
- The swap is restartable: a manifest of the staged names is written first, so a retried publish (Dataflow
  retries a failed bundle) finishes the move instead of deleting what an earlier attempt moved.
- The output keeps ``_PUBLISHED.json`` (the run, its files, and what the run was: ``pipelines.run_info``, which
  the run report reads): a retry that finds the staging folder empty goes the "already published" way only
  when that record names its own run. A staging folder that cannot be listed is an error, never taken for
  "nothing to publish".
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines.output_lock import publishing_lock

OUTPUT_KINDS = ("results", "errors")  # the job's own files in the output folder; nothing else is touched
MANIFEST = "_PUBLISH_MANIFEST.json"
PUBLISHED = "_PUBLISHED.json"  # in the output folder: which run's files it holds


class NothingToPublish(RuntimeError):
    """The staging folder holds no files and the output was not published by this run."""


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def staging_dir(output: str, run_id: str) -> str:
    """Where this run's sinks write: a hidden folder in ``output``, one per run id."""
    return FileSystems.join(output.rstrip("/") or output, f".staging-{_UNSAFE.sub('_', run_id)}")


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def _match(pattern: str) -> list[str]:
    """The paths matching ``pattern``; a listing that fails raises (an empty match is an empty list)."""
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _job_files(folder: str) -> list[str]:
    return [p for kind in OUTPUT_KINDS for p in _match(FileSystems.join(folder, f"{kind}-*"))]


def read_published(output: str) -> dict | None:
    """The output folder's ``_PUBLISHED.json`` (run_id, files, run), or None before any run published."""
    return _read_json(FileSystems.join(output.rstrip("/") or output, PUBLISHED))


def _read_json(path: str) -> dict | None:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def _write_json(path: str, content: dict) -> None:
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(content).encode("utf-8"))


def publish(output: str, staging: str, run_id: str, run: Mapping[str, Any] | None = None) -> list[str]:
    """Replace the job's files in ``output`` with the staged ones; returns the published paths. ``run``: what
    the run was (``RunInfo.to_dict()``), kept in ``_PUBLISHED.json`` for the run report.

    Idempotent: calling it again after a partial or complete publish ends in the same state.
    """
    output = output.rstrip("/") or output
    with publishing_lock(output, run_id):
        manifest = FileSystems.join(staging, MANIFEST)
        found = _read_json(manifest)
        if found is None:
            staged = _job_files(staging)
            if not staged:
                return _already_published(output, staging, run_id)
            names = sorted(_basename(p) for p in staged)
            _write_json(manifest, {"files": names})
        else:
            names = list(found["files"])
        _swap(output, staging, names)
        record: dict[str, Any] = {"run_id": run_id, "files": names}
        if run is not None:
            record["run"] = dict(run)
        _write_json(FileSystems.join(output, PUBLISHED), record)
        _remove_staging(staging)
    return sorted(FileSystems.join(output, name) for name in names)


def _already_published(output: str, staging: str, run_id: str) -> list[str]:
    """A retry after a finished publish (staging already removed); anything else is an error."""
    record = _read_json(FileSystems.join(output, PUBLISHED))
    if record is None or record.get("run_id") != run_id:
        raise NothingToPublish(
            f"{staging} holds no results-*/errors-* files and {output} was not published by run {run_id}; "
            "the write steps left nothing to publish, or the staging folder was removed: rerun the job"
        )
    return sorted(FileSystems.join(output, name) for name in record["files"])


def _swap(output: str, staging: str, names: Sequence[str]) -> None:
    """Delete the job's files that are not among ``names``, then move the staged ones in."""
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

    def __init__(self, output: str, staging: str, run_id: str, run: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._output = output
        self._staging = staging
        self._run_id = run_id
        self._run = dict(run) if run is not None else None

    def expand(self, after: Iterable[beam.PCollection]):
        pcolls = list(after)
        if not pcolls:
            raise ValueError("Publish needs the write steps it must wait for")
        pipeline = pcolls[0].pipeline
        waits = {f"wait{i}": beam.pvalue.AsList(p) for i, p in enumerate(pcolls)}
        output, staging, run_id, run = self._output, self._staging, self._run_id, self._run
        return (
            pipeline
            | "Once" >> beam.Create([None])
            | "Swap" >> beam.FlatMap(lambda _, **_waits: publish(output, staging, run_id, run), **waits)
        )
