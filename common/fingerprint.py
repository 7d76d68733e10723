"""Stable hashes of what decides a result: the task's definition, and the ``result_key`` each row carries.

``result_key`` is the column that lets a rerun skip finished records (``--skip_done``): a record whose key is
already among an earlier run's rows would get the same result again. It hashes three things:

- the record: its id and its text as the model reads it (after input cleaning and any --max_record_bytes cut);
- the task definition: ``Task.fingerprint()``, a hash of the task's class name and its whole state (prompt
  template, labels, label words, sampling params, calibration documents), so a new task kind is covered
  without code of its own;
- the model: ``ModelSettings.fingerprint()`` (the --model value and the settings that change outputs).

The format is versioned (``KEY_VERSION``) and must not change silently: a changed key makes every earlier
result look unfinished. ``tests/common/test_fingerprint.py`` pins it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

KEY_VERSION = "result-key/v1"
KEY_HEX_CHARS = 32
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a field value as a delimiter by accident


def canonical(value: Any) -> Any:
    """A JSON-ready form of ``value`` that is the same in every process: dataclasses by type name and fields,
    tuples as lists, dict keys sorted (by ``json.dumps``); anything else by its repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__qualname__, **fields}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def digest(value: Any, chars: int = 16) -> str:
    """A short sha256 hex digest of ``canonical(value)``."""
    text = json.dumps(canonical(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:chars]


def job_fingerprint(task_fingerprint: str, model_fingerprint: str) -> str:
    """What a result depends on besides the record: the task's definition and the model's."""
    return digest({"task": task_fingerprint, "model": model_fingerprint})


def result_key(record_id: str, text: str, fingerprint: str) -> str:
    """The key of one record's result under one job fingerprint (see the module docstring)."""
    payload = _SEPARATOR.join((KEY_VERSION, record_id, text, fingerprint))
    return hashlib.sha256(payload.encode("utf-8", errors="surrogatepass")).hexdigest()[:KEY_HEX_CHARS]
