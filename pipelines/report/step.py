"""The job's last step: after the publish step has swapped the results in, write the run report.

The results are already published when it runs, so a report that cannot be made must not fail the job (the
CLI would then say that nothing was published): it is logged, counted, and the report says it failed, naming
``make report`` to make it again.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from common import metrics
from pipelines.report import write_failure, write_report

_LOG = logging.getLogger(__name__)


def report_after_publish(output: str, run_id: str) -> list[str]:
    """Write the report of ``output``; on any failure, a report saying so (and the error in the log)."""
    try:
        return list(write_report(output))
    except Exception as err:  # the results are published: the report's failure is reported, never the run's
        _LOG.exception("the run report of %s could not be made; make report OUTPUT=%s makes it again", output, output)
        Metrics.counter(metrics.PIPELINE_NAMESPACE, metrics.REPORT_FAILURES).inc()
        try:
            write_failure(output, run_id, err)
        except OSError:
            _LOG.exception("could not write the failed report's page either")
        return []


class WriteReport(beam.PTransform):
    """Published paths -> the report's paths, once every path is published."""

    def __init__(self, output: str, run_id: str) -> None:
        super().__init__()
        self._output = output
        self._run_id = run_id

    def expand(self, published: beam.PCollection) -> beam.PCollection:
        output, run_id = self._output, self._run_id
        return (
            published.pipeline
            | "Once" >> beam.Create([None])
            | "Write"
            >> beam.FlatMap(lambda _, paths: report_after_publish(output, run_id), paths=beam.pvalue.AsList(published))
        )
