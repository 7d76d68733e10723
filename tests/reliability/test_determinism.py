"""Same input, model and parameters give the same rows, whatever the batches looked like (real tiny Gemma 3).

Generation (greedy and seeded sampling) is bit-identical across batch compositions. Label scores agree to
float32 rounding, not bit for bit: a prompt prefilled alone and one packed with others go through matmuls of
different shapes (see the closing note of issue 5); labels, ids and every other column are identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from tests.matchers import untimed
from tests.reliability.jobs import error_rows, result_rows, run_job
from transforms.task import TIMING_COLUMNS

TEXTS = [
    "The battery lasts two days and the screen is lovely.",
    "Refund please, it arrived broken.",
    "What time do you open on Sundays?",
    "Terrible support, nobody answered for a week and the replacement was also faulty.",
    "ok",
    "The hotel room was clean, quiet and close to the station; breakfast could be better.",
]
WIDE, NARROW = 16384, 150  # one batch of everything vs one or two records per batch
SCORE_TOLERANCE = 1e-6


def _run(
    model: Path, source: Path, out: Path, batch_max_tokens: int, threads: int = 1, **job
) -> tuple[list[dict], int]:
    config = JobConfig(
        input=str(source), output=str(out), model=str(model), run_id="det", batch_max_tokens=batch_max_tokens, **job
    )
    handler = GemmaModelHandler(
        ModelSettings(
            model=str(model), device="cpu", dtype="float32", model_copies=0, batch_max_tokens=batch_max_tokens
        )
    )
    summary = run_job(config, handler, threads=threads)
    assert error_rows(summary) == []
    return sorted(result_rows(summary), key=lambda r: r["id"]), summary.batches


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def test_sentiment_labels_and_scores_do_not_depend_on_the_batches(tiny_gemma3, source, tmp_path):
    wide, wide_batches = _run(tiny_gemma3, source, tmp_path / "wide", WIDE, task="sentiment")
    narrow, narrow_batches = _run(tiny_gemma3, source, tmp_path / "narrow", NARROW, task="sentiment")
    assert wide_batches == 1 and narrow_batches >= 4  # the batches really differed
    assert len(wide) == len(TEXTS)
    fixed = ("label", "label_scores", "confidence", *TIMING_COLUMNS)
    assert [{k: v for k, v in r.items() if k not in fixed} for r in wide] == [
        {k: v for k, v in r.items() if k not in fixed} for r in narrow
    ]
    assert [r["label"] for r in wide] == [r["label"] for r in narrow]
    for a, b in zip(wide, narrow, strict=True):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=SCORE_TOLERANCE)
        assert dict(a["label_scores"]) == pytest.approx(dict(b["label_scores"]), abs=SCORE_TOLERANCE)


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.0}, {"temperature": 0.9, "seed": 1234}],
    ids=["greedy", "seeded"],
)
def test_summaries_are_identical_across_batch_compositions(tiny_gemma3, source, tmp_path, sampling):
    job = {"task": "summarize", "max_new_tokens": 6, **sampling}
    wide, wide_batches = _run(tiny_gemma3, source, tmp_path / "wide", WIDE, **job)
    narrow, narrow_batches = _run(tiny_gemma3, source, tmp_path / "narrow", NARROW, **job)
    assert wide_batches == 1 and narrow_batches >= 4
    assert untimed(wide) == untimed(narrow)  # every column but the timing, bit for bit
    assert all(r["output_tokens"] > 0 for r in wide)
    assert len({r["summary"] for r in wide}) > 1  # not a degenerate constant output


def test_summaries_are_identical_when_batches_from_several_threads_share_the_engine(tiny_gemma3, source, tmp_path):
    """Three runner threads send their RunInference batches to the one serving engine at once: the requests of
    different batches decode side by side, and every row is still the same as from one batch on one thread."""
    job = {"task": "summarize", "max_new_tokens": 6, "temperature": 0.9, "seed": 99}
    alone, _ = _run(tiny_gemma3, source, tmp_path / "alone", WIDE, **job)
    shared, batches = _run(tiny_gemma3, source, tmp_path / "shared", NARROW, threads=3, **job)
    assert batches >= 4
    assert untimed(alone) == untimed(shared)
