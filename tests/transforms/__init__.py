"""Tests of the task transforms (fake engine)."""
