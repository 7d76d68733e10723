"""Beam metric namespaces and counter names: written by the steps, read back by the run summary."""

from __future__ import annotations

PIPELINE_NAMESPACE = "gemma_pipeline"  # reading, rows, dead letters, accounting
ENGINE_NAMESPACE = "gemma"  # the model handler: tokens, batches, requests

# Pipeline counters.
INPUT_LINES = "input_lines"
RESULTS = "results"
ERRORS = "errors"
ERRORS_BY_STAGE_PREFIX = "errors_"  # one counter per stage: errors_read, errors_inference, ...
ACCOUNTED_RECORDS = "accounted_records"
SKIPPED_DONE = "skipped_done"  # --skip_done: records whose result was already there
REPORT_FAILURES = "report_failures"  # the run report could not be made after publishing

# Engine counters.
PROMPT_TOKENS = "prompt_tokens"
GENERATED_TOKENS = "generated_tokens"
BATCHES = "batches"
REQUESTS = "requests"
REQUEST_ERRORS = "request_errors"
TRUNCATED_PROMPTS = "truncated_prompts"
FAILED_BATCHES_SPLIT = "failed_batches_split"
ISOLATED_FAILURES = "isolated_failures"
MODEL_LOAD_MS = "model_load_ms"


def errors_counter(stage: str) -> str:
    """The counter of dead letters from one stage."""
    return ERRORS_BY_STAGE_PREFIX + stage
