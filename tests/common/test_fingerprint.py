"""result_key and the fingerprints it hashes: stable across processes and releases, and sensitive to exactly
what changes a result (the record, the task's definition, the model), nothing else."""

from __future__ import annotations

import subprocess
import sys

from common.fingerprint import KEY_VERSION, canonical, digest, result_key
from inference.settings import ModelSettings
from transforms.registry import shortcut


def test_result_key_format_is_pinned():
    """Changing it makes every earlier result look unfinished to --skip_done: bump KEY_VERSION knowingly."""
    assert KEY_VERSION == "result-key/v1"
    assert result_key("r1", "great", "abc") == "6a2b9a387cb76e310c19aaae672ccd4f"
    assert result_key("r1", "great", "abd") != result_key("r1", "great", "abc")
    assert result_key("r1", "great!", "abc") != result_key("r1", "great", "abc")
    assert result_key("r2", "great", "abc") != result_key("r1", "great", "abc")
    assert result_key("r1\x1fgreat", "", "abc") != result_key("r1", "great", "abc")  # fields cannot run together


def test_canonical_form_is_plain_json_and_order_free():
    assert canonical({"b": (1, 2), "a": None}) == {"b": [1, 2], "a": None}
    assert digest({"b": (1, 2), "a": None}) == digest({"a": None, "b": [1, 2]}) == "ee743f2fa2570a1b"


def test_task_fingerprint_follows_the_task_definition():
    sentiment = shortcut("sentiment")
    assert sentiment.fingerprint() == shortcut("sentiment").fingerprint()
    assert sentiment.tasks[0].fingerprint() == shortcut("sentiment").tasks[0].fingerprint()
    assert shortcut("sentiment", calibrate=False).fingerprint() != sentiment.fingerprint()
    assert (
        shortcut("classify", labels=("a", "b")).fingerprint() != shortcut("classify", labels=("a", "c")).fingerprint()
    )
    assert (
        shortcut("summarize", max_new_tokens=64).fingerprint() != shortcut("summarize", max_new_tokens=32).fingerprint()
    )
    hot = {"temperature": 0.7}
    assert shortcut("summarize", seed=1, **hot).fingerprint() != shortcut("summarize", seed=2, **hot).fingerprint()


def test_task_fingerprint_is_the_same_in_another_process():
    """Compiled patterns, examples and labels all hash the same in a fresh interpreter (no id() or hash())."""
    for name in ("sentiment", "summarize"):
        code = f"from transforms.registry import shortcut; print(shortcut({name!r}).fingerprint())"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert other.strip() == shortcut(name).fingerprint(), name


def test_model_fingerprint_ignores_runtime_only_settings():
    base = ModelSettings().fingerprint()
    assert ModelSettings(batch_max_tokens=99, engine_max_slots=2, model_copies=0, device="cpu").fingerprint() == base
    assert ModelSettings(model="gs://bucket/gemma-2b").fingerprint() != base
    assert ModelSettings(prompt_style="chat").fingerprint() != base
    assert ModelSettings(max_prompt_tokens=100).fingerprint() != base
