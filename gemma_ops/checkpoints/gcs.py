"""Copy a checkpoint folder from ``gs://`` to local disk once per machine.

Workers read weights from local disk, so a ``gs://`` model is downloaded before the engine loads it. The local
copy is keyed by the URI *and* the listing (names, sizes, generations): a changed folder gets a fresh copy, an
unchanged one is reused. The copy is built beside the target and renamed into place (``staging.build_once``).
Object names are untrusted: a name that would land outside the target folder is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gemma_ops.checkpoints.staging import build_once

MANIFEST = ".gcs-source.json"
DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class RemoteObject:
    """One object of the model folder: its full name, its name relative to the folder, size and generation."""

    name: str
    relative: str
    size: int
    generation: int | None


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> (``bucket``, ``a/b/``); the prefix always ends with ``/`` (or is empty)."""
    if not uri.startswith("gs://"):
        raise ValueError(f"expected a gs://bucket/folder URI, got {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket name (expected gs://bucket/folder)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def safe_relative_path(relative: str) -> PurePosixPath:
    """Validate an object name relative to the model folder; refuse anything that could escape it."""
    if not relative or "\\" in relative or "\x00" in relative:
        raise ValueError(f"refusing object name {relative!r}: empty, or contains a backslash or NUL")
    path = PurePosixPath(relative)
    if path.is_absolute() or any(part in ("", ".", "..") for part in relative.split("/")):
        raise ValueError(
            f"refusing object name {relative!r}: it would be written outside the local model folder "
            "(absolute path, '.' or '..' component, or an empty component)"
        )
    return path


def _check_model_names(names: set[str], uri: str) -> None:
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise FileNotFoundError(
            f"--model {uri}: expected config.json and *.safetensors directly in the folder, found {sorted(names)[:10]}"
        )


def list_model_objects(
    client: Any, uri: str, check: Callable[[set[str], str], None] = _check_model_names, flag: str = "--model"
) -> list[RemoteObject]:
    """List the folder's objects (folder placeholders skipped); fail clearly when there is nothing to copy.
    ``check`` gets the names directly in the folder (a model needs config.json and *.safetensors)."""
    bucket, prefix = split_gcs_uri(uri)
    objects = []
    for blob in client.list_blobs(bucket, prefix=prefix):
        if blob.name.endswith("/"):  # a "folder" placeholder made by the console
            continue
        relative = blob.name[len(prefix) :]
        safe_relative_path(relative)
        objects.append(RemoteObject(blob.name, relative, int(blob.size or 0), blob.generation))
    if not objects:
        raise FileNotFoundError(f"{flag} {uri}: no objects under this prefix (expected a {flag[2:]} folder)")
    check({PurePosixPath(o.relative).name for o in objects if "/" not in o.relative}, uri)
    return sorted(objects, key=lambda o: o.relative)


def listing_digest(uri: str, objects: Iterable[RemoteObject]) -> str:
    """A short key for this exact version of the folder."""
    digest = hashlib.sha256(uri.encode())
    for obj in objects:
        digest.update(f"\n{obj.relative}\t{obj.size}\t{obj.generation}".encode())
    return digest.hexdigest()[:20]


def check_gcs_checkpoint(uri: str, *, client: Any = None) -> None:
    """Raise FileNotFoundError when ``uri`` is not a listable checkpoint folder (nothing is downloaded)."""
    from google.api_core import exceptions as gcs_errors
    from google.auth import exceptions as auth_errors

    try:
        if client is None:
            from google.cloud import storage

            client = storage.Client()
        list_model_objects(client, uri)
    except (gcs_errors.GoogleAPICallError, auth_errors.GoogleAuthError) as err:  # no bucket, no access: say so
        raise FileNotFoundError(f"--model {uri}: cannot list the folder ({type(err).__name__}: {err})") from err
    except ValueError as err:  # a malformed URI or an object name that would escape the folder
        raise FileNotFoundError(f"--model {uri}: {err}") from err


def fetch_gcs_checkpoint(
    uri: str,
    cache_dir: Path,
    *,
    client: Any = None,
    max_workers: int = DEFAULT_WORKERS,
    check: Callable[[set[str], str], None] = _check_model_names,
    flag: str = "--model",
) -> Path:
    """Return a local folder holding the checkpoint (or, with ``check``, another folder such as an adapter) at
    ``uri``, downloading it on first use."""
    if client is None:
        from google.cloud import storage

        client = storage.Client()
    objects = list_model_objects(client, uri, check, flag)
    bucket_name, prefix = split_gcs_uri(uri)
    uri = f"gs://{bucket_name}/{prefix}"  # one cache entry for gs://b/m and gs://b/m/
    target = Path(cache_dir) / listing_digest(uri, objects)
    if (target / MANIFEST).is_file():
        return target
    bucket = client.bucket(bucket_name)

    def download(staging: Path) -> None:
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            # list() re-raises the first download error here.
            list(pool.map(lambda obj: _download(bucket, obj, staging), objects))
        manifest = {"uri": uri, "objects": [[o.relative, o.size, o.generation] for o in objects]}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))

    return build_once(target, download, lambda folder: (folder / MANIFEST).is_file())


def _download(bucket: Any, obj: RemoteObject, staging: Path) -> None:
    destination = staging.joinpath(*safe_relative_path(obj.relative).parts)
    if staging.resolve() not in destination.resolve().parents:
        raise ValueError(f"refusing object {obj.name!r}: resolves outside {staging}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    blob = bucket.blob(obj.name, generation=obj.generation)
    blob.download_to_filename(str(destination))
    written = destination.stat().st_size
    if written != obj.size:
        raise OSError(
            f"downloaded {obj.name!r} has {written} bytes but the listing said {obj.size}; "
            "the object changed during the copy or the transfer was cut short; rerun to retry"
        )
