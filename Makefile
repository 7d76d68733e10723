# Newcomer path: `make run-local INPUT=sample.jsonl` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

INPUT ?= sample.jsonl
OUTPUT ?= out/
TASK ?= sentiment
MODEL ?= embedded
ARGS ?=
# RunInference batches run on this many threads of the local runner; they share one engine loop, so one
# batch's finished requests make room for the next batch's instead of each batch running to empty.
LOCAL_THREADS ?= 4

.PHONY: setup run-local report browser test lint format bench clean

setup: $(STAMP)

# torch is pinned to the CPU build here (an unpinned torch pulls several GB of CUDA wheels);
# the Dataflow image installs its own CUDA build.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[embedded,dev]'
	touch $(STAMP)

run-local: setup
	$(PY) -m pipelines.batch_inference --input $(INPUT) --output $(OUTPUT) --task $(TASK) --model $(MODEL) \
		--runner DirectRunner --direct_num_workers $(LOCAL_THREADS) --direct_running_mode multi_threading $(ARGS)

# The run report of a published output folder (local or gs://), made again: OUTPUT/report.html and report.json.
report: setup
	$(PY) -m pipelines.report $(OUTPUT)

# Chromium from Debian's packages, for the report's headless-browser test (Playwright's own browser download
# is not used). Quick when it is there already; installs it (as root, or through sudo) when it is not.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) is still missing after apt-get install chromium" >&2; exit 1; }

test: setup browser
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m benchmarks.engine_throughput

.PHONY: bench-pipeline bench-load
bench-pipeline: setup
	$(PY) -m benchmarks.pipeline_throughput --records 500

bench-load: setup
	$(PY) -m benchmarks.pipeline_load

# Specialize a classify task with labelled examples (pipelines/tune.py): a head and/or a LoRA adapter, measured
# against zero-shot and examples-in-prompt.  make tune INPUT=labelled.jsonl LABELS=a,b,c METHOD=head,lora
# ADAPTER=adapters/topic  (or ARGS="--task_file tasks.yaml --task topic" instead of LABELS)
LABELS ?=
METHOD ?= head
ADAPTER ?= adapters/tuned
.PHONY: tune
tune: setup
	$(PY) -m pipelines.tune --input $(INPUT) --output $(ADAPTER) --method $(METHOD) --model $(MODEL) \
		$(if $(LABELS),--labels $(LABELS),) $(ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache

# ---------------------------------------------------------------------------------------------------------
# Dataflow: build the Flex Template, stage a model, launch on GPU workers, schedule nightly runs, plan.
# Walkthrough: docs/dataflow.md. DRY_RUN=1 prints the exact commands instead of running them.
#   PROJECT        Google Cloud project id (required)
#   REGION         Dataflow / Artifact Registry / Scheduler region          (us-central1)
#   BUCKET         bucket name, no gs://, for templates, temp files, models  ($(PROJECT)-gemma-beam)
#   REPOSITORY     Artifact Registry Docker repository                       (gemma-beam)
#   IMAGE          template + worker image                                    (REGION-docker.pkg.dev/PROJECT/REPOSITORY/gemma-beam:IMAGE_TAG)
#   BUILDER        cloudbuild (no local Docker needed) or docker              (cloudbuild)
#   TEMPLATE       template spec path                                         (gs://BUCKET/templates/gemma-batch.json)
#   GPU_TYPE       nvidia-l4 | nvidia-tesla-a100 | nvidia-h100-80gb ...        (nvidia-l4)
#   GPU_COUNT      GPUs per worker                                            (1)
#   MACHINE_TYPE   worker machine type matching the GPU (g2-* for L4, a2-* for A100, a3-* for H100) (g2-standard-8)
#   DISK_GB        worker boot disk; the CUDA image is large                  (100)
#   MAX_WORKERS    autoscaling cap                                            (4)
#   SERVICE_ACCOUNT  workers' service account                                 (gemma-dataflow@PROJECT.iam.gserviceaccount.com)
#   JOB_NAME       Dataflow job name                                          (gemma-TASK-<UTC time>)
#   INPUT, OUTPUT, TASK, MODEL   as for run-local, but gs:// paths; {run_date} is replaced at launch
#   OUTPUT_TABLE   PROJECT:DATASET.TABLE to write BigQuery instead of files  (empty: files)
#   PARAMS         extra template parameters, ~-separated: ~max_new_tokens=96~seed=1
#   LOCAL_MODEL    checkpoint folder for stage-model                          (the embedded model)
#   MODEL_GCS      where stage-model puts it                                  (gs://BUCKET/models/gemma-3-270m)
#   SCHEDULE, TIME_ZONE, SCHEDULER_JOB, SCHEDULER_SA, RUN_DATE_OFFSET_DAYS    the nightly job (schedule)
DRY_RUN ?=
PROJECT ?=
REGION ?= us-central1
BUCKET ?= $(PROJECT)-gemma-beam
REPOSITORY ?= gemma-beam
IMAGE_TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
IMAGE ?= $(REGION)-docker.pkg.dev/$(PROJECT)/$(REPOSITORY)/gemma-beam:$(IMAGE_TAG)
BUILDER ?= cloudbuild
TEMPLATE ?= gs://$(BUCKET)/templates/gemma-batch.json
GPU_TYPE ?= nvidia-l4
GPU_COUNT ?= 1
MACHINE_TYPE ?= g2-standard-8
DISK_GB ?= 100
MAX_WORKERS ?= 4
SERVICE_ACCOUNT ?= gemma-dataflow@$(PROJECT).iam.gserviceaccount.com
JOB_NAME ?= gemma-$(TASK)-$(shell date -u +%Y%m%d-%H%M%S)
OUTPUT_TABLE ?=
PARAMS ?=
LOCAL_MODEL ?= $$($(PY) -c 'from gemma_ops import default_model_path; print(default_model_path())')
MODEL_GCS ?= gs://$(BUCKET)/models/gemma-3-270m
SCHEDULE ?= 0 3 * * *
TIME_ZONE ?= Etc/UTC
SCHEDULER_JOB ?= gemma-nightly-$(TASK)
SCHEDULER_SA ?= gemma-scheduler@$(PROJECT).iam.gserviceaccount.com
RUN_DATE_OFFSET_DAYS ?= -1
SCHEDULER_BODY ?= build/scheduler-body.json
PLAN_ARGS ?=

# $(call run,COMMAND): print COMMAND (shell-quoted exactly) under DRY_RUN=1, else run it.
run = $(if $(filter 1,$(DRY_RUN)),@printf '%s\n' '$(subst ','\'',$(1))',$(1))

TABLE_PARAMS = $(if $(OUTPUT_TABLE),~output_format=bigquery~output_table=$(OUTPUT_TABLE))
ACCELERATOR = worker_accelerator=type:$(GPU_TYPE);count:$(GPU_COUNT);install-nvidia-driver

BUILD_CMD_cloudbuild = gcloud builds submit --project=$(PROJECT) --region=$(REGION) \
	--config=templates/cloudbuild.yaml --substitutions=_IMAGE=$(IMAGE) .
BUILD_CMD_docker = docker build -f templates/Dockerfile -t $(IMAGE) . && docker push $(IMAGE)
TEMPLATE_SPEC_CMD = gcloud dataflow flex-template build $(TEMPLATE) --project=$(PROJECT) \
	--image=$(IMAGE) --sdk-language=PYTHON --metadata-file=templates/metadata.json
LAUNCH_CMD = gcloud dataflow flex-template run $(JOB_NAME) --project=$(PROJECT) --region=$(REGION) \
	--template-file-gcs-location=$(TEMPLATE) --worker-machine-type=$(MACHINE_TYPE) --max-workers=$(MAX_WORKERS) \
	--service-account-email=$(SERVICE_ACCOUNT) --temp-location=gs://$(BUCKET)/tmp \
	--staging-location=gs://$(BUCKET)/staging --additional-experiments='$(ACCELERATOR)' \
	--parameters='^~^input=$(INPUT)~output=$(OUTPUT)~task=$(TASK)~model=$(MODEL)$(TABLE_PARAMS)~sdk_container_image=$(IMAGE)~disk_size_gb=$(DISK_GB)$(PARAMS)'
STAGE_CMD = gcloud storage cp --recursive "$(LOCAL_MODEL)/*" $(MODEL_GCS)/
STAGE_LIST_CMD = gcloud storage ls --long $(MODEL_GCS)/
SCHEDULER_BODY_CMD = mkdir -p $(dir $(SCHEDULER_BODY)) && $(PY) templates/scheduler.py --project=$(PROJECT) \
	--region=$(REGION) --template=$(TEMPLATE) --image=$(IMAGE) --job-name=$(SCHEDULER_JOB) --input='$(INPUT)' \
	--output='$(OUTPUT)' --task=$(TASK) --model=$(MODEL) --output-table=$(OUTPUT_TABLE) \
	--run-date-offset-days=$(RUN_DATE_OFFSET_DAYS) --gpu-type=$(GPU_TYPE) --gpu-count=$(GPU_COUNT) \
	--machine-type=$(MACHINE_TYPE) --disk-gb=$(DISK_GB) --max-workers=$(MAX_WORKERS) \
	--service-account=$(SERVICE_ACCOUNT) --temp-location=gs://$(BUCKET)/tmp > $(SCHEDULER_BODY)
SCHEDULE_CMD = gcloud scheduler jobs create http $(SCHEDULER_JOB) --project=$(PROJECT) --location=$(REGION) \
	--schedule='$(SCHEDULE)' --time-zone=$(TIME_ZONE) --http-method=POST \
	--uri=https://dataflow.googleapis.com/v1b3/projects/$(PROJECT)/locations/$(REGION)/flexTemplates:launch \
	--oauth-service-account-email=$(SCHEDULER_SA) --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform \
	--headers=Content-Type=application/json --message-body-from-file=$(SCHEDULER_BODY)

.PHONY: template launch stage-model schedule plan require-project require-gcs-io

require-project:
	@test -n "$(PROJECT)" || { echo "PROJECT is not set: make $(MAKECMDGOALS) PROJECT=my-project (see docs/dataflow.md)" >&2; exit 2; }

require-gcs-io:
	@case "$(INPUT)" in gs://*) ;; *) echo "INPUT must be a gs:// pattern for Dataflow, got '$(INPUT)'" >&2; exit 2;; esac
	@case "$(OUTPUT)" in gs://*) ;; *) echo "OUTPUT must be a gs:// folder for Dataflow, got '$(OUTPUT)'" >&2; exit 2;; esac

template: require-project
	$(call run,$(BUILD_CMD_$(BUILDER)))
	$(call run,$(TEMPLATE_SPEC_CMD))

launch: require-project require-gcs-io
	$(call run,$(LAUNCH_CMD))

stage-model: require-project
	$(call run,$(STAGE_CMD))
	$(call run,$(STAGE_LIST_CMD))

schedule: require-project require-gcs-io
	$(call run,$(SCHEDULER_BODY_CMD))
	$(call run,$(SCHEDULE_CMD))

plan: setup
	$(PY) -m pipelines.plan --input $(INPUT) --model $(MODEL) --task $(TASK) $(PLAN_ARGS)
