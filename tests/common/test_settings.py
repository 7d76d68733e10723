"""Settings declared once: flags, conversion, validation and template patterns all come from the field."""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass

import pytest

from common.settings import (
    add_arguments,
    declared,
    default_of,
    pattern_for,
    problems,
    raise_problems,
    setting,
    values_from,
)


@dataclass(frozen=True, kw_only=True)
class Example:
    path: str = setting(help="Where to read.")
    mode: str = setting("fast", choices=("fast", "slow"), help="How.")
    count: int = setting(3, minimum=1, help="How many.")
    ratio: float | None = setting(None, minimum=0.0, maximum=1.0, help="A fraction.")
    names: tuple[str, ...] = setting((), flag="example_names", help="Comma-separated names.")
    day: datetime.date | None = setting(None, help="A date.")
    checked: bool = setting(True, off_flag="no_check", help="Turn checking off.")

    def __post_init__(self) -> None:
        raise_problems(problems(self, Example))


def parse(argv: list[str]) -> Example:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example, aliases={"example_names": "names"})
    return Example(**values_from(parser.parse_args(argv), Example))


def test_flags_are_derived_and_converted_to_the_declared_types():
    config = parse(["--path", "in", "--names", "a, b,,c", "--day", "2026-01-31", "--no_check", "--ratio", "0.5"])
    assert config == Example(path="in", names=("a", "b", "c"), day=datetime.date(2026, 1, 31), checked=False, ratio=0.5)
    assert parse(["--path", "in"]) == Example(path="in")  # every default is the declared one


def test_every_problem_names_its_flag():
    with pytest.raises(ValueError) as err:
        Example(path="", mode="medium", count=0, ratio=1.5)
    assert str(err.value).splitlines() == [
        "invalid options:",
        "  --path is required: Where to read.",
        "  --mode must be one of fast, slow, got 'medium'",
        "  --count must be >= 1, got 0",
        "  --ratio must be <= 1, got 1.5",
    ]
    with pytest.raises(ValueError, match=r"--day must be a date like 2026-01-31, got '31/01/2026'"):
        parse(["--path", "in", "--day", "31/01/2026"])


def test_template_patterns_and_names_come_from_the_declaration():
    items = {item.flag: item for item in declared(Example)}
    assert list(items) == ["path", "mode", "count", "ratio", "example_names", "day", "no_check"]
    assert pattern_for(items["mode"]) == "^(fast|slow)$"
    assert pattern_for(items["count"]) == r"^[0-9]+$"
    assert pattern_for(items["no_check"]) == "^(true|false)$"
    assert pattern_for(items["day"]) == r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
    assert pattern_for(items["path"]) is None and items["path"].required
    assert default_of(Example, "count") == 3


def test_job_settings_are_declared_once_across_layers():
    """The CLI, Beam's options and the template see every job setting exactly once."""
    from pipelines.options import JOB_GROUPS, JobConfig

    flags = [item.flag for group in JOB_GROUPS for item in declared(group)]
    assert len(flags) == len(set(flags))
    assert set(flags) >= {"input", "task", "task_labels", "model", "engine_max_slots", "no_calibration"}
    assert {item.name for group in JOB_GROUPS for item in declared(group)} == {
        item.name for item in declared(JobConfig)
    }
