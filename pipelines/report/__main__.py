"""``python -m pipelines.report OUTPUT`` (``make report OUTPUT=...``): make the run report of a published output
folder, local or gs://, again; prints where it went. Exit 2 when the folder holds no published run."""

from __future__ import annotations

import argparse
import sys

from pipelines.report import write_report
from pipelines.report.reading import NotAPublishedRun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="a published output folder, e.g. out/ or gs://bucket/run1")
    args = parser.parse_args(argv)
    try:
        page, figures = write_report(args.output)
    except NotAPublishedRun as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report:  {page}\nfigures: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
