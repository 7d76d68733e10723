"""A flag that neither the job nor Beam knows is an error, with the closest known flag suggested.

Beam passes arguments it does not know through (a log warning at most), so ``--max_eror_rate 0.1`` would
silently run with the default limit. The known flags are the job's declared settings, as the CLI shows them
(``--labels`` for the task's label set), plus every flag of Beam's own ``PipelineOptions`` subclasses
(StandardOptions, GoogleCloudOptions, WorkerOptions, DebugOptions, SetupOptions, ...), found by walking the
subclasses as Beam does itself. Both ``--flag value`` and ``--flag=value`` are accepted; abbreviations are
not (Beam's parser does not take them either, so an abbreviation would be dropped there).
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Iterator, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from common.errors import UserInputError


def beam_option_classes() -> list[type[PipelineOptions]]:
    """Every PipelineOptions subclass loaded (Beam's and the job's), each once, parents first."""

    def walk(cls: type[PipelineOptions]) -> Iterator[type[PipelineOptions]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    return list(dict.fromkeys(walk(PipelineOptions)))


def known_flags_parser(add_job_flags: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """One parser holding Beam's flags and the job's; the job's win where both name a flag (``--labels``)."""
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    for cls in beam_option_classes():
        cls._add_argparse_args(parser)
    add_job_flags(parser)
    return parser


def unknown_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """The arguments ``parser`` does not know, flags by name (``--x=1`` -> ``--x``), values of those dropped."""
    _, unknown = parser.parse_known_args(list(argv))
    found: list[str] = []
    after_unknown_flag = False
    for token in unknown:
        if token.startswith("-") and len(token) > 1:
            found.append(token.split("=", 1)[0])
            after_unknown_flag = "=" not in token
        elif after_unknown_flag:  # the value of the unknown flag just reported
            after_unknown_flag = False
        else:
            found.append(token)
    return found


def suggestion(flag: str, parser: argparse.ArgumentParser) -> str:
    """`` (did you mean --x?)`` for the closest known flag (two when both are close), or nothing."""
    options = [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]
    close = difflib.get_close_matches(flag, options, n=2, cutoff=0.8) or difflib.get_close_matches(flag, options, n=1)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def check_flags(argv: Sequence[str], add_job_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Raise UserInputError naming every argument neither the job nor Beam knows."""
    parser = known_flags_parser(add_job_flags)
    unknown = unknown_flags(argv, parser)
    if not unknown:
        return
    named = [
        f"unknown flag {item}{suggestion(item, parser)}" if item.startswith("-") else f"unexpected argument {item!r}"
        for item in unknown
    ]
    raise UserInputError("; ".join(named) + "; see --help for the job's flags (Beam's own flags are accepted too)")
