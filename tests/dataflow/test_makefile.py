"""The Dataflow make targets: with DRY_RUN=1 they print the exact commands; the tests parse and check them."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = ["PROJECT=acme-ml", "IMAGE_TAG=v1", "JOB_NAME=job-1", "PY=python3"]
GCS_IO = ["INPUT=gs://acme-in/reviews/{run_date}/*.jsonl", "OUTPUT=gs://acme-out/{run_date}"]
IMAGE = "us-central1-docker.pkg.dev/acme-ml/gemma-beam/gemma-beam:v1"


def dry_run(target: str, *variables: str) -> list[list[str]]:
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "DRY_RUN=1", target, *BASE, *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_launch_runs_the_template_on_gpu_workers():
    [argv] = dry_run("launch", *GCS_IO, "GPU_TYPE=nvidia-tesla-a100", "GPU_COUNT=2", "MACHINE_TYPE=a2-highgpu-2g")
    assert argv[:5] == ["gcloud", "dataflow", "flex-template", "run", "job-1"]
    f = flags(argv)
    assert f["region"] == "us-central1"
    assert f["template-file-gcs-location"] == "gs://acme-ml-gemma-beam/templates/gemma-batch.json"
    assert f["worker-machine-type"] == "a2-highgpu-2g"
    assert f["additional-experiments"] == "worker_accelerator=type:nvidia-tesla-a100;count:2;install-nvidia-driver"
    assert f["service-account-email"] == "gemma-dataflow@acme-ml.iam.gserviceaccount.com"
    params = f["parameters"]
    assert params.startswith("^~^")
    assert dict(p.split("=", 1) for p in params[3:].split("~")) == {
        "input": "gs://acme-in/reviews/{run_date}/*.jsonl",
        "output": "gs://acme-out/{run_date}",
        "task": "sentiment",
        "model": "embedded",
        "sdk_container_image": IMAGE,
        "disk_size_gb": "100",
    }


def test_launch_to_bigquery_with_labels_keeps_commas():
    [argv] = dry_run(
        "launch", *GCS_IO, "OUTPUT_TABLE=acme-ml:reviews.tickets", "TASK=classify", "PARAMS=~task_labels=bug,billing"
    )
    params = dict(p.split("=", 1) for p in flags(argv)["parameters"][3:].split("~"))
    assert params["output_format"] == "bigquery"
    assert params["output_table"] == "acme-ml:reviews.tickets"
    assert params["task_labels"] == "bug,billing"
    assert params["task"] == "classify"


def test_launch_refuses_local_paths_and_missing_project():
    done = subprocess.run(
        ["make", "-s", "DRY_RUN=1", "launch", "PROJECT=acme-ml", "INPUT=sample.jsonl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "INPUT must be a gs:// pattern" in done.stderr
    done = subprocess.run(
        ["make", "-s", "DRY_RUN=1", "launch", *GCS_IO], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "PROJECT is not set" in done.stderr


def test_template_builds_image_then_spec():
    build, spec = dry_run("template")
    assert build[:3] == ["gcloud", "builds", "submit"]
    assert flags(build)["config"] == "templates/cloudbuild.yaml"
    assert flags(build)["substitutions"] == f"_IMAGE={IMAGE}"
    assert build[-1] == "."
    assert spec[:5] == [
        "gcloud",
        "dataflow",
        "flex-template",
        "build",
        "gs://acme-ml-gemma-beam/templates/gemma-batch.json",
    ]
    assert flags(spec) == {
        "project": "acme-ml",
        "image": IMAGE,
        "sdk-language": "PYTHON",
        "metadata-file": "templates/metadata.json",
    }
    docker = dry_run("template", "BUILDER=docker")[0]
    assert docker[:5] == ["docker", "build", "-f", "templates/Dockerfile", "-t"]


def test_stage_model_copies_a_checkpoint_folder():
    copy, listing = dry_run("stage-model", "LOCAL_MODEL=/ckpt/gemma")
    assert copy == [
        "gcloud",
        "storage",
        "cp",
        "--recursive",
        "/ckpt/gemma/*",
        "gs://acme-ml-gemma-beam/models/gemma-3-270m/",
    ]
    assert listing[-1] == "gs://acme-ml-gemma-beam/models/gemma-3-270m/"


def test_stage_model_defaults_to_the_embedded_checkpoint():
    done = subprocess.run(
        ["make", "-s", "DRY_RUN=1", "stage-model", *BASE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    first = done.stdout.splitlines()[0]
    assert "from gemma_ops import default_model_path; print(default_model_path())" in first


def test_make_n_shows_commands_without_running_them():
    done = subprocess.run(
        ["make", "-n", "launch", *BASE, *GCS_IO], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "gcloud dataflow flex-template run job-1" in done.stdout


def load_scheduler():
    spec = importlib.util.spec_from_file_location("flex_scheduler", ROOT / "templates" / "scheduler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schedule_renders_the_launch_body_and_creates_the_job(tmp_path):
    body_file = tmp_path / "body.json"
    render, create = dry_run(
        "schedule", *GCS_IO, f"SCHEDULER_BODY={body_file}", "OUTPUT_TABLE=acme-ml:reviews.sentiment"
    )
    assert create[:5] == ["gcloud", "scheduler", "jobs", "create", "http"]
    f = flags(create)
    assert f["schedule"] == "0 3 * * *"
    assert (
        f["uri"] == "https://dataflow.googleapis.com/v1b3/projects/acme-ml/locations/us-central1/flexTemplates:launch"
    )
    assert f["oauth-service-account-email"] == "gemma-scheduler@acme-ml.iam.gserviceaccount.com"
    assert f["message-body-from-file"] == str(body_file)
    # Run the rendering step exactly as printed, and check the body it writes.
    subprocess.run(
        " ".join(shlex.quote(a) if a not in ("&&", ">") else a for a in render),
        shell=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    body = json.loads(body_file.read_text())["launchParameter"]
    assert body["containerSpecGcsPath"] == "gs://acme-ml-gemma-beam/templates/gemma-batch.json"
    assert body["parameters"] == {
        "input": "gs://acme-in/reviews/{run_date}/*.jsonl",
        "output": "gs://acme-out/{run_date}",
        "task": "sentiment",
        "model": "embedded",
        "run_date_offset_days": "-1",
        "output_format": "bigquery",
        "output_table": "acme-ml:reviews.sentiment",
    }
    env = body["environment"]
    assert env["additionalExperiments"] == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert (env["machineType"], env["diskSizeGb"], env["sdkContainerImage"]) == ("g2-standard-8", 100, IMAGE)


def test_scheduler_rejects_bad_gpu_count_and_params():
    scheduler = load_scheduler()
    with pytest.raises(ValueError, match="GPU count must be >= 1"):
        scheduler.accelerator_experiment("nvidia-l4", 0)
    args = scheduler.parser().parse_args(
        ["--project=p", "--region=r", "--template=gs://b/t.json", "--image=i", "--job-name=j", "--input=gs://b/i",
         "--output=gs://b/o", "--service-account=s", "--temp-location=gs://b/tmp", "--param=oops"]
    )  # fmt: skip
    with pytest.raises(ValueError, match="is not NAME=VALUE"):
        scheduler.launch_body(args)
