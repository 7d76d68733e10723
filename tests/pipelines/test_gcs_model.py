"""Copying a gs:// model folder to local disk, against gcp-storage-emulator on loopback (no credentials)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gemma_ops.checkpoints.gcs import MANIFEST, RemoteObject, _download, fetch_gcs_checkpoint, safe_relative_path

FILES = {
    "config.json": b'{"model_type": "gemma3_text"}',
    "model.safetensors": b"\x00" * 70_000,
    "tokenizer.json": b"{}",
    "extra/notes.txt": b"nested files keep their folders",
}


@pytest.fixture
def models(gcs):
    """The emulator (tests/conftest.py) with a model folder at gs://models/gemma/v1."""
    bucket = gcs.create_bucket("models")
    for name, data in FILES.items():
        bucket.blob(f"gemma/v1/{name}").upload_from_string(data)
    bucket.blob("gemma/v1/").upload_from_string(b"")  # a console-made "folder" placeholder
    return gcs, bucket


def test_copies_the_folder_once_and_reuses_it(models, tmp_path):
    client, _ = models
    local = fetch_gcs_checkpoint("gs://models/gemma/v1", tmp_path, client=client)
    copied = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert {k: v for k, v in copied.items() if k != MANIFEST} == FILES
    assert fetch_gcs_checkpoint("gs://models/gemma/v1/", tmp_path, client=client) == local
    assert [p.name for p in tmp_path.iterdir()] == [local.name]  # no staging folders left behind


def test_a_changed_folder_gets_a_fresh_copy(models, tmp_path):
    client, bucket = models
    first = fetch_gcs_checkpoint("gs://models/gemma/v1", tmp_path, client=client)
    bucket.blob("gemma/v1/config.json").upload_from_string(b'{"model_type": "gemma3_text", "v": 2}')
    second = fetch_gcs_checkpoint("gs://models/gemma/v1", tmp_path, client=client)
    assert second != first and (second / "config.json").read_bytes().endswith(b'"v": 2}')


def test_concurrent_fetches_agree(models, tmp_path):
    client, _ = models
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(fetch_gcs_checkpoint("gs://models/gemma/v1", tmp_path, client=client))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and (results[0] / "model.safetensors").stat().st_size == 70_000
    assert len(list(tmp_path.iterdir())) == 1


def test_missing_or_incomplete_folders_fail_clearly(models, tmp_path):
    client, bucket = models
    with pytest.raises(FileNotFoundError, match="no objects under this prefix"):
        fetch_gcs_checkpoint("gs://models/nothing-here", tmp_path, client=client)
    bucket.blob("weights-only/model.safetensors").upload_from_string(b"x")
    with pytest.raises(FileNotFoundError, match=r"expected config\.json and"):
        fetch_gcs_checkpoint("gs://models/weights-only", tmp_path, client=client)


def test_object_names_that_escape_the_folder_are_refused(tmp_path):
    # Real GCS allows "../" in object names (the emulator does not), so the listing is faked here.
    class Blob:
        def __init__(self, name):
            self.name, self.size, self.generation = name, 1, 1

    class Client:
        def list_blobs(self, bucket, prefix):
            return [Blob(prefix + "config.json"), Blob(prefix + "../../escape.txt")]

    with pytest.raises(ValueError, match="outside the local model folder"):
        fetch_gcs_checkpoint("gs://models/gemma/v1", tmp_path / "cache", client=Client())
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", ""])
def test_safe_relative_path_rejects(name):
    with pytest.raises(ValueError, match="refusing object name"):
        safe_relative_path(name)


def test_safe_relative_path_accepts_nested_names():
    assert safe_relative_path("a/b/c.json").parts == ("a", "b", "c.json")


def test_short_download_is_an_error(tmp_path):
    class ShortBlob:
        def download_to_filename(self, path):
            Path(path).write_bytes(b"abc")

    class Bucket:
        def blob(self, name, generation=None):
            return ShortBlob()

    with pytest.raises(OSError, match="has 3 bytes but the listing said 10"):
        _download(Bucket(), RemoteObject("p/model.safetensors", "model.safetensors", 10, 1), tmp_path)
