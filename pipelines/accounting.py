"""Every input record is accounted for: input = results + errors (+ skipped, with --skip_done and
--skipped_rows drop), and the error rate stays under the limit.

The check runs inside the pipeline on the exact PCollections (not on counters, which a retried bundle can
count twice), so it holds on every runner; it fails the job before the output is published.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from common import metrics


class ErrorRateExceeded(RuntimeError):
    """Too many records failed: the job stops instead of publishing mostly dead letters."""


class RecordsLost(RuntimeError):
    """Input and outcomes do not add up: a bug, never an expected outcome."""


@dataclass(frozen=True)
class Accounting:
    inputs: int
    results: int
    errors: int
    skipped: int = 0  # done in an earlier run and not carried into this output

    @property
    def error_rate(self) -> float:
        return self.errors / self.inputs if self.inputs else 0.0


def check_accounting(counts: Accounting, max_error_rate: float, errors_at: str = "") -> Accounting:
    """Raise when records went missing or the error rate is over ``max_error_rate`` (1: no limit)."""
    outcomes = counts.results + counts.errors + counts.skipped
    if counts.inputs != outcomes:
        skipped = f" + {counts.skipped} skipped" if counts.skipped else ""
        raise RecordsLost(
            f"{counts.inputs} input records but {counts.results} results + {counts.errors} errors{skipped} "
            f"= {outcomes}; please report this with the input that caused it"
        )
    if counts.error_rate > max_error_rate:
        where = f" (dead letters kept in {errors_at})" if errors_at else ""
        raise ErrorRateExceeded(
            f"error rate {counts.errors}/{counts.inputs} = {counts.error_rate:.4f} is over "
            f"--max_error_rate={max_error_rate:g}; the output was not published{where}. "
            "Fix the input (see the errors-*.jsonl rows for why each record failed) or raise --max_error_rate"
        )
    return counts


def _count(pcoll: beam.PCollection, label: str) -> beam.pvalue.AsSingleton:
    return beam.pvalue.AsSingleton(pcoll | label >> beam.combiners.Count.Globally())


class CheckAccounting(beam.PTransform):
    """(inputs, results, errors[, skipped]) PCollections -> one Accounting element, or a failed job."""

    def __init__(self, max_error_rate: float, errors_at: str = "", after: tuple[beam.PCollection, ...] = ()) -> None:
        """``after``: steps to wait for first (the writes), so a failed check still leaves the dead letters."""
        super().__init__()
        self._max_error_rate = max_error_rate
        self._errors_at = errors_at
        self._after = after

    def expand(self, pcolls: tuple[beam.PCollection, ...]):
        inputs, results, errors, *rest = pcolls
        skipped = rest[0] if rest else inputs.pipeline | "NoneSkipped" >> beam.Create([])
        max_rate, errors_at = self._max_error_rate, self._errors_at

        waits = {f"wait{i}": beam.pvalue.AsList(p) for i, p in enumerate(self._after)}

        def check(_, n_in: int, n_results: int, n_errors: int, n_skipped: int, **_waits) -> Accounting:
            counts = check_accounting(Accounting(n_in, n_results, n_errors, n_skipped), max_rate, errors_at)
            Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.ACCOUNTED_RECORDS).inc(n_in)
            return counts

        return (
            inputs.pipeline
            | "Once" >> beam.Create([None])
            | "Check"
            >> beam.Map(
                check,
                n_in=_count(inputs, "CountInputs"),
                n_results=_count(results, "CountResults"),
                n_errors=_count(errors, "CountErrors"),
                n_skipped=_count(skipped, "CountSkipped"),
                **waits,
            )
        )


class AfterCheck(beam.PTransform):
    """Pass a PCollection on only once the accounting check has passed (its one element exists).

    For sinks that cannot be staged and swapped like files (BigQuery partitions): a run over
    --max_error_rate fails at the check, so these steps never start and the previous data stays."""

    def __init__(self, checked: beam.PCollection) -> None:
        super().__init__()
        self._checked = checked

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Gate" >> beam.Map(_pass_through, _checked=beam.pvalue.AsSingleton(self._checked))


def _pass_through(element, _checked: Accounting):
    return element
