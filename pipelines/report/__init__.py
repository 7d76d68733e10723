"""The run report: ``report.html`` (for people) and ``report.json`` (the same figures, for programs), written
next to the results when a run publishes, and again by ``make report OUTPUT=...`` from any published folder.

Both read only the published folder (``collect``): its ``_PUBLISHED.json`` says what the run was
(``pipelines.run_info``), its results and dead letters are the rows and failures, and the input's first
records give the sample rows their text. So a Dataflow job's report (written by the job's last step, after
publishing; the launcher does not wait for it) and one made later on a laptop are the same page.
"""

from __future__ import annotations

import json
import logging

from apache_beam.io.filesystems import FileSystems

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
_LOG = logging.getLogger(__name__)


def report_paths(output: str) -> tuple[str, str]:
    folder = output.rstrip("/") or output
    return FileSystems.join(folder, REPORT_HTML), FileSystems.join(folder, REPORT_JSON)


def _write(path: str, text: str, mime_type: str) -> None:
    with FileSystems.create(path, mime_type=mime_type) as handle:
        handle.write(text.encode("utf-8"))


def write_report(output: str) -> tuple[str, str]:
    """Make the report of the run published in ``output`` (local or gs://); returns the two paths."""
    from pipelines.report.collect import collect, summary_json
    from pipelines.report.page import render

    data = collect(output)
    page, figures = report_paths(output)
    _write(figures, summary_json(data), "application/json")
    _write(page, render(data), "text/html")
    return page, figures


def write_failure(output: str, run_id: str, err: BaseException) -> None:
    """A report that says it could not be made, so a stale one never describes the new results."""
    from pipelines.report.page import CSP, esc

    message = f"{type(err).__name__}: {err}"
    page, figures = report_paths(output)
    _write(figures, json.dumps({"run_id": run_id, "error": message}, indent=2) + "\n", "application/json")
    _write(
        page,
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
        f'content="{CSP}"><title>Run report {esc(run_id)}</title></head><body><h1>Run report</h1><p>Run '
        f"{esc(run_id)} published its results, but its report could not be made: {esc(message)}</p><p>Make it "
        f"again with <code>make report OUTPUT={esc(output)}</code>.</p></body></html>\n",
        "text/html",
    )


def read_figures(output: str) -> dict | None:
    """report.json of ``output``, or None when there is none."""
    _, figures = report_paths(output)
    if not FileSystems.exists(figures):
        return None
    with FileSystems.open(figures) as handle:
        return json.loads(handle.read().decode("utf-8"))


def summary_lines(output: str, run_id: str) -> list[str]:
    """What the CLI prints about the report after a run: where it is, and each task scored on gold labels."""
    page, _ = report_paths(output)
    try:
        figures = read_figures(output)
    except (OSError, ValueError) as err:
        figures = {"error": str(err)}
    if figures is None or figures.get("run_id") != run_id or "error" in figures:
        why = (figures or {}).get("error", "not written")
        return [f"report:        none ({why}); make report OUTPUT={output} makes it"]
    lines = [f"report:        {page}"]
    for name, task in figures.get("tasks", {}).items():
        quality = task.get("quality")
        if quality is None:
            continue
        lines.append(
            f"quality:       {name} vs {quality['gold_field']} (n={quality['labelled']}): accuracy "
            f"{quality['accuracy']:.3f}, macro-F1 {quality['macro_f1']:.3f}, ECE {quality['ece']:.3f}"
        )
        if quality.get("fitted_temperature") is not None:
            lines.append(
                f"               confidence_temperature {quality['fitted_temperature']:.2f} fits these rows best "
                f"(ECE with it {quality['fitted_ece']:.3f}; check it on another labelled set before using it)"
            )
        own = [c for c in quality["coverage"] if c["threshold"] == quality.get("min_confidence")]
        for c in own:
            accuracy = "-" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
            lines.append(
                f"               min_confidence {c['threshold']:g}: coverage {c['coverage']:.1%}, accuracy {accuracy}"
            )
    return lines
