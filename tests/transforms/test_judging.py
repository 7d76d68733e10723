"""Task-file keys that say how to judge a classify task rather than what it outputs: ``gold:`` (the input
field holding each record's known label, which the run report scores against) and ``confidence_temperature:``
(temperature scaling of the confidence), with the flags that set them for the --task shortcuts."""

from __future__ import annotations

import pytest

from tests.transforms.test_taskfile import classify, error_of, tasks_from
from transforms.registry import make_task_set
from transforms.settings import TaskSettings
from transforms.taskfile import TaskFileError

TWO_CLASSIFY = """
tasks:
  - name: topic
    kind: classify
    labels: [billing, shipping]
    gold: topic_gold
  - name: tone
    kind: classify
    labels: [calm, angry]
"""


def test_gold_fields_come_from_the_task_file_and_change_no_row():
    tasks = tasks_from(TWO_CLASSIFY)
    assert tasks.gold_fields == {"topic": "topic_gold"}
    without = tasks_from(TWO_CLASSIFY.replace("    gold: topic_gold\n", ""))
    assert tasks.fingerprint() == without.fingerprint() and tasks.schema() == without.schema()


def test_gold_field_flag_scores_a_files_one_classify_task(tmp_path):
    (tmp_path / "one.yaml").write_text(classify())
    assert make_task_set(TaskSettings(task_file=str(tmp_path / "one.yaml"), gold_field="label")).gold_fields == {
        "topic": "label"
    }
    (tmp_path / "two.yaml").write_text(TWO_CLASSIFY)
    with pytest.raises(ValueError, match=r"two\.yaml: --gold_field scores a file's one classify task, and this file "
                       r"has 2; write gold: FIELD on each classify task instead"):  # fmt: skip
        TaskSettings(task_file=str(tmp_path / "two.yaml"), gold_field="label")
    assert make_task_set(TaskSettings(task="sentiment", gold_field="stars")).gold_fields == {"sentiment": "stars"}
    with pytest.raises(ValueError, match="--task summarize: --gold_field works with the scored tasks"):
        TaskSettings(task="summarize", gold_field="label")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    gold: 3\n", "t.yaml: task 'topic': key 'gold': expected the input field holding each record's known"),
        (
            "    gold: label\n    multi_label: true\n",
            "t.yaml: task 'topic': key 'gold': gold labels are scored for single-label tasks; remove gold: or "
            "multi_label: true",
        ),
    ],
)
def test_bad_gold_keys_say_what_to_write(extra, message):
    assert error_of(classify(extra)).startswith(message)


def test_preflight_refuses_a_gold_field_the_input_lacks():
    from pathlib import Path

    from pipelines.options import JobConfig
    from pipelines.preflight import preflight

    source = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tickets.jsonl"
    config = JobConfig(input=str(source), output="-", task="sentiment", gold_field="sentiment")
    with pytest.raises(TaskFileError, match=r"--task sentiment: task 'sentiment': key 'gold': the gold label field "
                       r"'sentiment' is in none of the first \d+ input records \(fields: channel\)"):  # fmt: skip
        preflight(config, make_task_set(config))


def test_confidence_temperature_key():
    assert tasks_from(classify("    confidence_temperature: 0.5\n")).tasks[0].confidence_temperature == 0.5
    assert error_of(classify("    confidence_temperature: 0\n")) == (
        "t.yaml: task 'topic': key 'confidence_temperature': expected a number > 0 that rescales confidence "
        "(below 1 surer, above 1 less sure); the run report fits it, got int"
    )
