"""Loopback GCS and BigQuery emulators for the BigQuery sink tests.

The GCS emulator stores objects on disk and the BigQuery emulator resolves ``gs://bucket/name`` under the
same folder, so Beam's FILE_LOADS load files written through the GCS API are what the load job reads.
Both servers listen on 127.0.0.1 only and are stopped by the fixture that started them.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.gcs_emulator import free_loopback_port

STARTUP_TIMEOUT_S = 60


@dataclass(frozen=True)
class GcsEmulator:
    """A disk-backed gcp-storage-emulator; ``root`` is the folder holding ``<bucket>/<object>`` files."""

    url: str
    root: Path
    server: object

    @classmethod
    def start(cls, data_dir: Path) -> GcsEmulator:
        from gcp_storage_emulator.server import create_server
        from gcp_storage_emulator.settings import STORAGE_DIR

        port = free_loopback_port()
        server = create_server("127.0.0.1", port, in_memory=False, data_dir=str(data_dir))
        server.start()
        return cls(url=f"http://127.0.0.1:{port}", root=data_dir / STORAGE_DIR, server=server)

    def create_bucket(self, name: str) -> None:
        from gcp_storage_emulator.handlers import buckets

        buckets.create_bucket(name, self.server._storage)

    def stop(self) -> None:
        self.server.stop()


class BigQueryEmulator:
    """bqemulator's server on its own thread and event loop (the package's own runner needs testcontainers)."""

    def __init__(self, gcs_root: Path, project: str) -> None:
        from bqemulator.config import PersistenceMode, Settings
        from bqemulator.server import EmulatorServer

        install_duckdb_spatial()
        settings = Settings(
            persistence_mode=PersistenceMode.EPHEMERAL,
            rest_host="127.0.0.1",
            rest_port=0,
            grpc_host="127.0.0.1",
            grpc_port=0,
            gcs_local_root=gcs_root,
            default_project_id=project,
        )
        self.server = EmulatorServer(settings)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bqemulator", daemon=True)

    @property
    def url(self) -> str:
        return self.server.rest_url

    def start(self) -> BigQueryEmulator:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            raise RuntimeError(f"bqemulator did not start within {STARTUP_TIMEOUT_S}s")
        if self._error is not None:
            raise RuntimeError(f"bqemulator failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as err:  # surfaced by start() in the test's thread
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._error is None and self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop)
            future.result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def install_duckdb_spatial() -> None:
    """bqemulator runs ``INSTALL spatial`` at start-up; install it from the PyPI wheel so nothing downloads."""
    import duckdb_extensions

    duckdb_extensions.import_extension("spatial")
