"""report.html: one self-contained page. Styles are inline, charts are PNG data URIs, there is no script,
and the page's Content-Security-Policy forbids fetching anything, so it reads the same offline, from a
bucket or attached to a ticket. Every value from the data is HTML-escaped (record text is untrusted)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pipelines.report import charts
from pipelines.report.collect import ReportData, RowView
from pipelines.report.tally import TaskFigures, TaskQuality
from pipelines.run_info import TaskInfo

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts img{border:1px solid #eee;max-width:100%}
mark{background:#ffd54f;padding:0 2px;border-radius:2px}mark.r2{background:#ffe58f}mark.r3{background:#fff1bf}
.note{color:#666}.sample{border:1px solid #eee;padding:8px 12px;margin:8px 0}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    lines = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = (f'<td class="n">{esc(v)}</td>' if i in numeric else f"<td>{esc(v)}</td>" for i, v in enumerate(row))
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(lines) + "</table>"


def image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def highlight(text: str, evidence: Sequence[dict[str, Any]]) -> str:
    """The escaped text with each evidence span marked at its first occurrence (strongest drop darkest)."""
    marks: list[tuple[int, int, int, float]] = []
    for rank, item in enumerate(evidence, start=1):
        found = _find_words(text, str(item["text"]))
        if found is not None and all(found[1] <= s or found[0] >= e for s, e, _, _ in marks):
            marks.append((*found, rank, float(item["drop"])))
    out, at = [], 0
    for start, end, rank, drop in sorted(marks):
        out.append(esc(text[at:start]))
        out.append(f'<mark class="r{min(rank, 3)}" title="drop {drop:.3f}">{esc(text[start:end])}</mark>')
        at = end
    out.append(esc(text[at:]))
    return "".join(out)


def _find_words(text: str, words: str) -> tuple[int, int] | None:
    """Where ``words`` first stand as whole words in ``text`` ("it" not inside "waited"), else anywhere."""
    match = re.search(r"(?<!\w)" + re.escape(words) + r"(?!\w)", text)
    if match is not None:
        return match.start(), match.end()
    start = text.find(words)
    return (start, start + len(words)) if start >= 0 and words else None


def _summary(data: ReportData) -> str:
    run = data.run
    tasks = ", ".join(f"{t.name} ({t.kind})" for t in run.tasks)
    rows = [
        ("run", run.run_id),
        ("input", run.input),
        ("model", run.model),
        ("tasks", tasks),
        ("output", run.output_format + (f" → {run.output_table}" if run.output_table else "")),
        ("report made", data.generated_at),
    ]
    return "<h1>Run report</h1>" + table(("", ""), rows)


def _counts(data: ReportData) -> str:
    records = data.rows + data.errors
    rows = [
        ("records read", records),
        ("rows written", data.rows),
        ("  of which carried from an earlier run (--skip_done)", data.carried),
        ("dead letters", data.errors),
        ("prompt tokens", data.prompt_tokens),
        ("generated tokens", data.output_tokens),
    ]
    parts = ['<h2 id="counts">Counts</h2>', table(("", "count"), rows, numeric=(1,))]
    if data.run.output_format == "bigquery":
        parts.append(f'<p class="note">Rows went to BigQuery ({esc(data.run.output_table)}); this folder holds '
                     "the dead letters, so the row sections below are empty.</p>")  # fmt: skip
    parts.append("<h3>Dead letters by stage</h3>")
    if data.errors:
        share = [(stage, n, f"{n / max(records, 1):.1%}") for stage, n in data.errors_by_stage.items()]
        parts.append(table(("stage", "dead letters", "of records"), share, numeric=(1, 2)))
        parts.append("<h3>Top reasons</h3>" + table(("count", "reason"), [(n, r) for r, n in data.top_reasons], (0,)))
    else:
        parts.append('<p class="note">none</p>')
    return "".join(parts)


def _quality(task: TaskFigures, quality: TaskQuality) -> str:
    info = task.info
    figures = [
        ("rows with a gold label", quality.labelled),
        ("rows without one", quality.unlabelled),
        ("accuracy (top label of every row)", f"{quality.accuracy:.3f}"),
        ("macro-F1", f"{quality.macro_f1:.3f}"),
        ("macro recall", f"{quality.macro_recall:.3f}"),
        ("expected calibration error (10 bins)", f"{quality.ece:.3f}"),
    ]
    if quality.outside_labels:
        figures.append(("gold labels outside the label set (counted wrong)", quality.outside_labels))
    if quality.fitted_temperature is not None:
        figures.append(
            ("confidence_temperature fitted on these rows (least log-loss)", f"{quality.fitted_temperature:.2f}")
        )
        figures.append(("ECE with it, on these same rows", f"{quality.fitted_ece:.3f}"))
    coverage = [
        (f"{c.threshold:g}" + (" (this task's)" if c.threshold == info.min_confidence else ""), f"{c.coverage:.1%}",
         c.answered, "—" if c.accuracy is None else f"{c.accuracy:.3f}")
        for c in quality.coverage
    ]  # fmt: skip
    return "".join(
        [
            f"<h3>Against the gold labels in <code>{esc(info.gold_field)}</code></h3>",
            table(("", "value"), figures, numeric=(1,)),
            '<div class="charts">',
            image(charts.reliability_diagram(quality.reliability, f"{info.name}: reliability"), "reliability diagram"),
            image(charts.coverage_accuracy(quality.coverage, f"{info.name}: coverage vs accuracy"), "coverage"),
            "</div><p>Abstaining below min_confidence: what is answered and how right it is.</p>",
            table(("min_confidence", "coverage", "answered", "accuracy"), coverage, numeric=(1, 2, 3)),
            _temperature_note(info, quality),
        ]
    )


def _temperature_note(info: TaskInfo, quality: TaskQuality) -> str:
    if quality.fitted_temperature is None:
        return ""
    return (
        f'<p class="note">These gold labels are likeliest (least log-loss) with confidence_temperature '
        f"{quality.fitted_temperature:.2f} (this run: {info.confidence_temperature:g}; below 1 surer, above 1 less "
        f"sure), which gives an ECE of {quality.fitted_ece:.3f} here. It was fitted on these rows, so measure it on "
        f"another labelled set before using it for {esc(info.name)} (--confidence_temperature, or "
        "confidence_temperature: in a task file).</p>"
    )


def _task(task: TaskFigures) -> str:
    info = task.info
    parts = [f'<h2 id="task-{esc(info.name)}">Task {esc(info.name)} ({esc(info.kind)})</h2>']
    if task.rows == 0:
        return parts[0] + '<p class="note">no rows</p>'
    if task.finish_reasons:
        parts.append(table(("finish reason", "rows"), task.finish_reasons.items(), numeric=(1,)))
        return "".join(parts)
    parts.append(f"<p>{task.rows} rows; mean confidence {task.mean_confidence:.3f}</p>")
    parts.append('<div class="charts">')
    parts.append(image(charts.label_distribution(task.label_counts, f"{info.name}: labels"), "label distribution"))
    title = f"{info.name}: confidence of the chosen label"
    parts.append(image(charts.confidence_histogram(task.confidence_histogram, title), "confidence histogram"))
    parts.append("</div>")
    if task.quality is not None:
        parts.append(_quality(task, task.quality))
    elif info.gold_field:
        parts.append(f'<p class="note">No row carried a gold label in {esc(info.gold_field)}.</p>')
    return "".join(parts)


def _throughput(data: ReportData) -> str:
    parts = ['<h2 id="throughput">Throughput over the run</h2>']
    speed = data.throughput
    if speed is None:
        return parts[0] + '<p class="note">no rows computed by this run</p>'
    parts.append(
        f"<p>{speed.rows} rows and {speed.tokens} tokens in {speed.seconds:.0f} s from {esc(speed.start)} "
        f"({speed.rows / speed.seconds:.2f} rows/s, {speed.tokens / speed.seconds:.0f} tokens/s)</p>"
    )
    parts.append(image(charts.throughput(speed.points, "rows/s and tokens/s"), "throughput over the run"))
    return "".join(parts)


def _rows(title: str, anchor: str, views: Sequence[RowView]) -> str:
    head = ("id", "prompt tokens", "output tokens", "model ms", "answers")
    rows = [
        (v.id, v.prompt_tokens, v.output_tokens, "—" if v.inference_ms is None else f"{v.inference_ms:.0f}",
         "; ".join(f"{k}: {a}" for k, a in v.answers.items()))
        for v in views
    ]  # fmt: skip
    body = table(head, rows, numeric=(1, 2, 3)) if rows else '<p class="note">none</p>'
    return f'<h2 id="{anchor}">{esc(title)}</h2>{body}'


def _sample(view: RowView) -> str:
    parts = [f'<div class="sample"><b>{esc(view.id)}</b> — ']
    parts.append("; ".join(f"{esc(k)}: <b>{esc(a)}</b>" for k, a in view.answers.items()))
    if view.text is not None and view.evidence:
        for task, evidence in view.evidence.items():
            words = ", ".join(f"{e['text']} ({e['drop']:.3f})" for e in evidence) or "none"
            parts.append(f"<p>{highlight(view.text, evidence)}</p><p class='note'>{esc(task)} evidence: "
                         f"{esc(words)}</p>")  # fmt: skip
    elif view.text is not None:
        parts.append(f"<p>{esc(view.text)}</p>")
    else:
        parts.append("".join(f"<p class='note'>{esc(t)} evidence: {esc(e)}</p>" for t, e in view.evidence.items()))
    return "".join(parts) + "</div>"


def _samples_note(data: ReportData) -> str:
    if not any(task.explain for task in data.run.tasks):
        return '<p class="note">The first records of the input.</p>'
    return (
        '<p class="note">The first records of the input; marked words are the evidence (darkest: the largest '
        "drop in the chosen label's probability when the word is left out).</p>"
    )


def render(data: ReportData) -> str:
    note = f'<p class="note">{esc(data.sample_note)}</p>' if data.sample_note else ""
    body = [
        _summary(data),
        _counts(data),
        *(_task(task) for task in data.tasks),
        _throughput(data),
        _rows("Longest records (prompt tokens)", "longest", data.longest),
        _rows("Slowest records (model time)", "slowest", data.slowest),
        '<h2 id="samples">Sample rows</h2>',
        _samples_note(data),
        note,
        *(_sample(view) for view in data.samples),
    ]
    head = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>Run report {esc(data.run.run_id)}</title><style>{STYLE}</style></head><body>"
    )
    return head + "".join(body) + "</body></html>\n"
