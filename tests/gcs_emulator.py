"""gcp-storage-emulator on loopback, with google-cloud-storage and Beam's GcsIO pointed at it, no credentials.

Beam looks up Application Default Credentials before it builds its storage client; without any it retries for
about 25 s and probes beyond loopback. Returning None makes it connect anonymously, which the emulator accepts.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gcs_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """An in-memory emulator for the duration; yields a google.cloud.storage.Client on it."""
    from apache_beam.internal.gcp import auth as beam_auth
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    # The emulator warns on every download that it buffered the body: noise in failure output.
    monkeypatch.setattr(logging.getLogger("gcp_storage_emulator"), "level", logging.ERROR)
    port = free_loopback_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setattr(beam_auth, "get_service_credentials", lambda *args, **kwargs: None)
        yield storage.Client(project="test", credentials=AnonymousCredentials())
    finally:
        server.stop()
