"""Build a cache entry in a private folder beside it, then rename it into place.

Several processes racing on a cold cache (Beam's SDK processes on one worker) never see, or leave behind, a
half-written checkpoint: each builds its own copy and the first rename wins; a loser finds the winner's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> Path:
    """Run ``build(staging)`` in a private folder and rename it to ``target``; first finisher wins."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the machine's users
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(target):  # not a lost race: a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
