"""Everything the run report shows, gathered in one streaming pass over a published output folder.

Memory stays bounded whatever the row count: counters per task and per second of the run, the few longest and
slowest rows (heaps), the sample rows (the input's first records, matched by id), and one triple per row that
carries a gold label (``tally``).
"""

from __future__ import annotations

import datetime
import heapq
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.failure_report import MAX_LETTERS_READ, top_reasons
from pipelines.report.reading import dead_letters, first_records, published_run, result_rows
from pipelines.report.tally import TaskFigures, TaskTally
from pipelines.run_info import CLASSIFY, RunInfo, TaskInfo

SAMPLE_ROWS = 12
TOP_ROWS = 10
TIMELINE_POINTS = 40
ANSWER_CHARS = 160


@dataclass(frozen=True)
class RowView:
    """One row as the report lists it: its cost, each task's answer, evidence, and (sample rows) its text."""

    id: str
    prompt_tokens: int
    output_tokens: int
    inference_ms: float | None
    answers: dict[str, str]  # task name -> "label (0.93)" or the generated text, cut
    evidence: dict[str, list[dict[str, Any]]]  # task name -> [{text, drop}] for tasks that explain
    text: str | None = None


@dataclass(frozen=True)
class Throughput:
    """Rows per second over the run (this run's rows, by when their model call ended)."""

    start: str  # ISO time of the first row
    seconds: float  # from the first row's second to the last's end
    points: tuple[tuple[float, float, float], ...]  # (seconds since start, rows/s, tokens/s) per interval
    rows: int
    tokens: int


@dataclass(frozen=True)
class ReportData:
    run: RunInfo
    generated_at: str
    rows: int
    carried: int  # rows carried from an earlier run (--skip_done)
    errors: int
    errors_by_stage: dict[str, int]
    top_reasons: list[tuple[str, int]]
    prompt_tokens: int
    output_tokens: int
    tasks: tuple[TaskFigures, ...]
    throughput: Throughput | None
    longest: tuple[RowView, ...]
    slowest: tuple[RowView, ...]
    samples: tuple[RowView, ...]
    sample_note: str | None

    def summary(self) -> dict[str, Any]:
        """The figures a program reads (report.json): counts and every task's numbers."""
        return {
            "run_id": self.run.run_id,
            "generated_at": self.generated_at,
            "rows": self.rows,
            "carried": self.carried,
            "errors": self.errors,
            "errors_by_stage": self.errors_by_stage,
            "tasks": {t.info.name: _task_summary(t) for t in self.tasks},
        }


def _task_summary(task: TaskFigures) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": task.info.kind, "rows": task.rows, "label_counts": task.label_counts}
    if task.mean_confidence is not None:
        out["mean_confidence"] = task.mean_confidence
    if task.quality is not None:
        q = asdict(task.quality)
        out["quality"] = {k: v for k, v in q.items() if k != "reliability"}
        out["quality"]["gold_field"] = task.info.gold_field
        out["quality"]["min_confidence"] = task.info.min_confidence
    return out


def _answer(info: TaskInfo, row: dict[str, Any]) -> str:
    if info.kind != CLASSIFY:
        text = str(row.get(info.column(info.output)) or "")
        return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"
    chosen = row.get(info.column("labels" if info.multi_label else "label"))
    shown = ", ".join(chosen) if isinstance(chosen, list) else (chosen or "(abstained)")
    return f"{shown} ({float(row[info.column('confidence')]):.2f})"


@dataclass
class _Collector:
    run: RunInfo
    sample_ids: dict[str, str | None]  # id -> text, in input order
    tallies: list[TaskTally] = field(init=False)
    rows: int = 0
    carried: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: Counter = field(default_factory=Counter)  # this run's rows per second of the run
    tokens: Counter = field(default_factory=Counter)
    longest: list[tuple[int, str, int, RowView]] = field(default_factory=list)  # (tokens, id, row number, view)
    slowest: list[tuple[float, str, int, RowView]] = field(default_factory=list)
    samples: dict[str, RowView] = field(default_factory=dict)
    first_rows: list[RowView] = field(default_factory=list)  # the sample when the input cannot be read

    def __post_init__(self) -> None:
        self.tallies = [TaskTally(info) for info in self.run.tasks]

    def view(self, row: dict[str, Any], text: str | None = None) -> RowView:
        infos = self.run.tasks
        return RowView(
            id=str(row["id"]),
            prompt_tokens=int(row.get("prompt_tokens") or 0),
            output_tokens=int(row.get("output_tokens") or 0),
            inference_ms=row.get("inference_ms"),
            answers={info.name: _answer(info, row) for info in infos},
            evidence={info.name: list(row.get(info.column("evidence")) or []) for info in infos if info.explain},
            text=text,
        )

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        for tally in self.tallies:
            tally.add(row)
        tokens = int(row.get("prompt_tokens") or 0) + int(row.get("output_tokens") or 0)
        self.prompt_tokens += int(row.get("prompt_tokens") or 0)
        self.output_tokens += int(row.get("output_tokens") or 0)
        if row.get("run_id") != self.run.run_id:
            self.carried += 1
        elif row.get("inferred_at") is not None:
            second = int(row["inferred_at"].timestamp())
            self.seconds[second] += 1
            self.tokens[second] += tokens
            if row.get("inference_ms") is not None:
                key = (float(row["inference_ms"]), str(row["id"]), self.rows)
                _keep_top(self.slowest, key, lambda: self.view(row))
        _keep_top(self.longest, (int(row.get("prompt_tokens") or 0), str(row["id"]), self.rows), lambda: self.view(row))
        row_id = str(row["id"])
        if row_id in self.sample_ids:
            self.samples[row_id] = self.view(row, self.sample_ids[row_id])
        elif not self.sample_ids and len(self.first_rows) < SAMPLE_ROWS:
            self.first_rows.append(self.view(row))

    def throughput(self) -> Throughput | None:
        if not self.seconds:
            return None
        first, last = min(self.seconds), max(self.seconds) + 1
        width = max(1, -(-(last - first) // TIMELINE_POINTS))
        rows: Counter = Counter()
        tokens: Counter = Counter()
        for second, count in self.seconds.items():
            rows[(second - first) // width] += count
            tokens[(second - first) // width] += self.tokens[second]
        points = tuple(
            (float(i * width), rows[i] / width, tokens[i] / width) for i in range(-(-(last - first) // width))
        )
        start = datetime.datetime.fromtimestamp(first, datetime.timezone.utc).isoformat()
        return Throughput(start, float(last - first), points, sum(self.seconds.values()), sum(self.tokens.values()))


def _keep_top(heap: list, key: tuple, make: Any) -> None:
    """Keep the TOP_ROWS largest keys; ``make`` builds the row's view only when it gets in."""
    if len(heap) < TOP_ROWS:
        heapq.heappush(heap, (*key, make()))
    elif key > heap[0][:3]:
        heapq.heapreplace(heap, (*key, make()))


def collect(output: str) -> ReportData:
    """Read the published folder ``output`` (local or gs://) and gather the report's numbers."""
    run, files = published_run(output)
    records, note = first_records(run, SAMPLE_ROWS)
    collector = _Collector(run, {record.id: record.text for record in records})
    for row in result_rows(files):
        collector.add(row)
    stages: Counter = Counter()
    reasons_seen: list[dict[str, Any]] = []
    for letter in dead_letters(files):
        stages[str(letter.get("stage"))] += 1
        if len(reasons_seen) < MAX_LETTERS_READ:
            reasons_seen.append(letter)
    reasons, _ = top_reasons(reasons_seen)
    samples = [collector.samples[r.id] for r in records if r.id in collector.samples] or collector.first_rows
    return ReportData(
        run=run,
        generated_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        rows=collector.rows,
        carried=collector.carried,
        errors=sum(stages.values()),
        errors_by_stage=dict(stages.most_common()),
        top_reasons=reasons,
        prompt_tokens=collector.prompt_tokens,
        output_tokens=collector.output_tokens,
        tasks=tuple(tally.figures() for tally in collector.tallies),
        throughput=collector.throughput(),
        longest=tuple(view for *_, view in sorted(collector.longest, reverse=True)),
        slowest=tuple(view for *_, view in sorted(collector.slowest, reverse=True)),
        samples=tuple(samples),
        sample_note=note,
    )


def summary_json(data: ReportData) -> str:
    return json.dumps(data.summary(), indent=2, default=str) + "\n"
