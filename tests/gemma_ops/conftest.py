"""Fixtures: tiny random Gemma checkpoints of each family (HF-format, safetensors) and the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma_ops.checkpoints import default_model_path
from tests.tiny_models import FAMILIES, build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_checkpoint(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    return default_model_path()
