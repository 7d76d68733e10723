"""Engine calls that shrink after running out of memory and stop for good after a broken device."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from inference.failures import (
    DeviceFailure,
    device_failure,
    is_device_failure,
    is_out_of_memory,
    release_accelerator_memory,
)

_LOG = logging.getLogger(__name__)
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class ShrinkingCalls:
    """Runs an engine call over items in chunks, for one runner (one engine)."""

    def __init__(self) -> None:
        self._max_call: int | None = None  # items per engine call; set (and halved) by out-of-memory errors
        self._broken: DeviceFailure | None = None  # the device failure that made the engine unusable
        self.oom_retries = 0

    def check_device(self) -> None:
        """Raise the device failure seen earlier, if any: a broken device is never touched again."""
        if self._broken is not None:
            raise self._broken

    def run(self, items: list[_Item], call: Callable[[list[_Item]], list[_Result]]) -> list[_Result]:
        """``call`` over ``items`` in chunks; an out-of-memory error halves the chunk size and retries.

        The smaller size sticks for later calls: the batch that ran out of memory is typical of the job.
        A single request that still runs out of memory raises (the handler dead-letters it alone).
        """
        out: list[_Result] = []
        start = 0
        while start < len(items):
            size = min(self._max_call or len(items), len(items) - start)
            try:
                results = call(items[start : start + size])
            except Exception as err:
                if is_device_failure(err):
                    self._broken = device_failure(err)
                    raise self._broken from err
                if not is_out_of_memory(err) or size == 1:
                    raise
                self._max_call = max(1, size // 2)
                self.oom_retries += 1
                release_accelerator_memory()
                _LOG.warning("engine ran out of memory on %d requests; retrying %d at a time", size, self._max_call)
                continue
            if len(results) != size:
                raise RuntimeError(f"internal error: the engine returned {len(results)} results for {size} requests")
            out.extend(results)
            start += size
        return out
