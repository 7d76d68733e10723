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

.PHONY: setup run-local test lint format bench clean

setup: $(STAMP)

# torch is pinned to the CPU build here (an unpinned torch pulls several GB of CUDA wheels);
# the Dataflow image installs its own CUDA build.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[embedded,dev]' --config-settings editable_mode=compat
	touch $(STAMP)

run-local: setup
	$(PY) -m pipelines.batch_inference --input $(INPUT) --output $(OUTPUT) --task $(TASK) --model $(MODEL) \
		--runner DirectRunner $(ARGS)

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m benchmarks.engine_throughput

.PHONY: bench-pipeline
bench-pipeline: setup
	$(PY) -m benchmarks.pipeline_throughput --records 500

clean:
	rm -rf $(VENV) out .pytest_cache
