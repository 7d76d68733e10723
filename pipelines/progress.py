"""Progress lines while a local run works, and the summary printed when it ends.

Progress is counted where the rows are made (per worker process), logged at most every few seconds; the
summary reads Beam's metrics after the run, so it is the same on every runner that reports metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from common import metrics

PROGRESS_LOGGER = "gemma_beam.progress"
PROGRESS_EVERY_SECONDS = 5.0


class ReportProgress(beam.DoFn):
    """Passes rows through; logs "N records done, X tokens/s" for this worker every few seconds."""

    def __init__(self, every_seconds: float = PROGRESS_EVERY_SECONDS) -> None:
        self._every = every_seconds

    def setup(self) -> None:
        self._log = logging.getLogger(PROGRESS_LOGGER)
        self._start: float | None = None  # the first row: model loading is not counted in tokens/s
        self._last = 0.0
        self._rows = 0
        self._tokens = 0

    def process(self, row: dict[str, Any]):
        if self._start is None:
            self._start = self._last = time.monotonic()
        self._rows += 1
        self._tokens += int(row.get("prompt_tokens", 0)) + int(row.get("output_tokens", 0))
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            rate = self._tokens / max(now - self._start, 1e-9)
            self._log.info("progress: %d records done, %.0f tokens/s", self._rows, rate)
        yield row


@dataclass(frozen=True)
class RunSummary:
    input_lines: int
    rows: int
    errors: int
    errors_by_stage: dict[str, int]
    prompt_tokens: int
    generated_tokens: int
    batches: int
    wall_seconds: float
    result_files: tuple[str, ...]
    error_files: tuple[str, ...]
    skipped: int = 0  # --skip_done: records already done in an earlier run

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k}={v}" for k, v in sorted(self.errors_by_stage.items())) or "none"
        tokens = self.prompt_tokens + self.generated_tokens
        skipped = [f"skipped:       {self.skipped} done in an earlier run (--skip_done)"] if self.skipped else []
        return [
            f"input records: {self.input_lines}",
            *skipped,
            f"rows written:  {self.rows}",
            f"errors:        {self.errors} ({stages})",
            f"tokens:        {self.prompt_tokens} prompt + {self.generated_tokens} generated "
            f"in {self.batches} batches ({tokens / max(self.wall_seconds, 1e-9):.0f} tokens/s overall)",
            f"wall time:     {self.wall_seconds:.1f} s",
            "results:       " + (", ".join(self.result_files) or "(none)"),
            "errors file:   " + (", ".join(self.error_files) or "(none)"),
        ]


def _counters(result: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for namespace in (metrics.ENGINE_NAMESPACE, metrics.PIPELINE_NAMESPACE):
        for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
            value = counter.committed if counter.committed is not None else counter.attempted
            name = counter.key.metric.name
            totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


def matched_files(prefix: str) -> tuple[str, ...]:
    try:
        matches = FileSystems.match([prefix + "-*"])[0].metadata_list
    except OSError:  # an unreachable output folder: the summary says "no files" rather than failing the run
        return ()
    return tuple(sorted(m.path for m in matches))


def summarize_run(result: Any, results_prefix: str, errors_prefix: str, wall_seconds: float) -> RunSummary:
    counts = _counters(result)
    prefix = metrics.ERRORS_BY_STAGE_PREFIX
    by_stage = {k[len(prefix) :]: v for k, v in counts.items() if k.startswith(prefix) and v}
    return RunSummary(
        input_lines=counts.get(metrics.INPUT_LINES, 0),
        rows=counts.get(metrics.RESULTS, 0),
        errors=counts.get(metrics.ERRORS, 0),
        errors_by_stage=by_stage,
        prompt_tokens=counts.get(metrics.PROMPT_TOKENS, 0),
        generated_tokens=counts.get(metrics.GENERATED_TOKENS, 0),
        batches=counts.get(metrics.BATCHES, 0),
        wall_seconds=wall_seconds,
        result_files=matched_files(results_prefix),
        error_files=matched_files(errors_prefix),
        skipped=counts.get(metrics.SKIPPED_DONE, 0),
    )
