"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from tests.gcs_emulator import gcs_emulator


@pytest.fixture
def gcs(monkeypatch):
    """A google.cloud.storage.Client on a fresh loopback GCS emulator; Beam's gs:// IO uses it too."""
    with gcs_emulator(monkeypatch) as client:
        yield client
