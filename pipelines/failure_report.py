"""What the CLI prints when a run fails: why, the top dead-letter reasons with counts, and where they are.

A failed run publishes nothing, but its sinks have already written its dead letters into the run's staging
folder (``<output>/.staging-<run_id>/errors-*.jsonl``), which stays for inspection. The reasons are counted
from those files, so the report reads the same on every runner; the exception text only supplies the
headline (a runner may hand back the job's exception as text, with a traceback around it).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from apache_beam.io.filesystems import FileSystems

TOP_REASONS = 5
MAX_LETTERS_READ = 100_000  # enough to rank the reasons; a huge errors file is not read whole
REASON_CHARS = 160
# Numbers that differ per record ("at byte 26", "is 3015 bytes") are folded, so one cause is one reason.
_NUMBER = re.compile(r"(?<![\w-])\d+(?:\.\d+)?(?!\w)")
_RATE = re.compile(r"error rate \d+/\d+ = [0-9.]+ is over --max_error_rate=[0-9.e+-]+")


def reason_of(letter: dict[str, Any]) -> str:
    """A dead letter's reason: its stage and error, numbers folded to N, cut to a line's length."""
    text = f"{letter.get('stage')}: {_NUMBER.sub('N', str(letter.get('error', '')))}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def top_reasons(letters: Iterable[dict[str, Any]], n: int = TOP_REASONS) -> tuple[list[tuple[str, int]], int]:
    """(the ``n`` most common reasons with their counts, how many dead letters were read)."""
    counts = Counter(reason_of(letter) for letter in letters)
    return counts.most_common(n), sum(counts.values())


def staged_letters(staging: str, limit: int = MAX_LETTERS_READ) -> Iterator[dict[str, Any]]:
    """The dead letters a run wrote into its staging folder (at most ``limit``)."""
    paths = sorted(m.path for m in FileSystems.match([FileSystems.join(staging, "errors-*.jsonl")])[0].metadata_list)
    read = 0
    for path in paths:
        with FileSystems.open(path) as handle:
            for line in handle:
                if read >= limit:
                    return
                if line.strip():
                    read += 1
                    yield json.loads(line)


def headline(err: BaseException) -> str:
    """The failure's own message: the error-rate verdict when that is why, else the last error line."""
    text = str(err)
    rate = _RATE.search(text)
    if rate:
        return rate.group(0)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith((" ", "Traceback"))]
    last = lines[-1] if lines else type(err).__name__
    return re.sub(r"\s*\[while running '[^']*'\]\s*$", "", last)


def failure_lines(run_id: str, err: BaseException, staging: str) -> list[str]:
    """The report: what failed, that the previous output stays, the top reasons, where the dead letters are."""
    lines = [f"run {run_id} FAILED: {headline(err)}", "nothing was published: the previous output is untouched"]
    try:
        reasons, read = top_reasons(staged_letters(staging))
    except (OSError, ValueError) as listing_error:  # the staging folder is unreadable: say so, keep the verdict
        return [*lines, f"(could not read this run's dead letters in {staging}: {listing_error})"]
    if reasons:
        lines.append(f"top error reasons (of {read} dead letters{' read' if read >= MAX_LETTERS_READ else ''}):")
        lines += [f"  {count:>8}  {reason}" for reason, count in reasons]
    lines.append(f"this run's dead letters: {FileSystems.join(staging, 'errors-*.jsonl')}")
    if _RATE.search(str(err)):
        lines.append("fix the input (or --text_field / --id_field), or pass --max_error_rate 1 to publish anyway")
    return lines
