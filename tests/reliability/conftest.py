"""Fixtures for the reliability tests that need a real model: one tiny random Gemma 3 checkpoint per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    """A 4-layer random Gemma 3 with the real tokenizer (safetensors): real engine code, seconds per run."""
    return build_tiny_checkpoint("gemma3", tmp_path_factory.mktemp("tiny") / "gemma3")
