"""Benchmark runs in child processes (a fresh process per system or version: no shared caches, allocator state
or loaded modules between the runs compared), and the one line through which a child hands its figures back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_MARK = "RESULT "


def report(result: Any) -> None:
    """In the child: print the figures for ``run_child`` to read (the rest of stdout is ignored)."""
    print(_MARK + json.dumps(result), flush=True)


def run_child(module: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    """``python -m module args`` with ``env`` added to this environment; the figures its ``report`` printed.
    RuntimeError with the end of its stderr when it printed none."""
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=environment, cwd=cwd
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :])
    raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
