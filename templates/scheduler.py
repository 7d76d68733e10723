"""The Cloud Scheduler job definition: the flexTemplates:launch request it sends every day.

    python templates/scheduler.py --project P --region R --template gs://.../gemma-batch.json ... > body.json

Cloud Scheduler repeats the same body daily, so dates are not written in: ``{run_date}`` in the input or output
is resolved at launch by templates/main.py (``run_date_offset_days=-1`` processes yesterday's folder), and the
BigQuery partition follows the same run date. ``make schedule`` renders this body and creates the job.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

LAUNCH_URI = "https://dataflow.googleapis.com/v1b3/projects/{project}/locations/{region}/flexTemplates:launch"


def accelerator_experiment(gpu_type: str, gpu_count: int) -> str:
    """Dataflow's GPU request: the accelerator, how many per worker, and the NVIDIA driver install."""
    if gpu_count < 1:
        raise ValueError(f"GPU count must be >= 1, got {gpu_count}")
    return f"worker_accelerator=type:{gpu_type};count:{gpu_count};install-nvidia-driver"


def launch_body(args: argparse.Namespace) -> dict[str, Any]:
    parameters = {
        "input": args.input,
        "output": args.output,
        "task": args.task,
        "model": args.model,
        "run_date_offset_days": str(args.run_date_offset_days),
    }
    if args.output_table:
        parameters.update(output_format="bigquery", output_table=args.output_table)
    for extra in args.param:
        name, sep, value = extra.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {extra!r} is not NAME=VALUE")
        parameters[name] = value
    return {
        "launchParameter": {
            "jobName": args.job_name,
            "containerSpecGcsPath": args.template,
            "parameters": parameters,
            "environment": {
                "machineType": args.machine_type,
                "maxWorkers": args.max_workers,
                "diskSizeGb": args.disk_gb,
                "sdkContainerImage": args.image,
                "serviceAccountEmail": args.service_account,
                "tempLocation": args.temp_location,
                "additionalExperiments": [accelerator_experiment(args.gpu_type, args.gpu_count)],
            },
        }
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--project", required=True)
    add("--region", required=True)
    add("--template", required=True, help="gs:// path of the template spec written by `make template`.")
    add("--image", required=True, help="The template image, also the workers' SDK container.")
    add("--job-name", required=True)
    add("--input", required=True, help="gs:// pattern; may contain {run_date}.")
    add("--output", required=True, help="gs:// folder; may contain {run_date}.")
    add("--task", default="sentiment")
    add("--model", default="embedded")
    add("--output-table", default="", help="PROJECT:DATASET.TABLE to write BigQuery instead of files.")
    add("--run-date-offset-days", type=int, default=-1)
    add("--gpu-type", default="nvidia-l4")
    add("--gpu-count", type=int, default=1)
    add("--machine-type", default="g2-standard-8")
    add("--disk-gb", type=int, default=100)
    add("--max-workers", type=int, default=4)
    add("--service-account", required=True, help="The workers' service account email.")
    add("--temp-location", required=True)
    add("--param", action="append", default=[], help="Extra template parameter NAME=VALUE (repeatable).")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    print(json.dumps(launch_body(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
