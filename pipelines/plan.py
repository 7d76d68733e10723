"""Plan a Dataflow run before paying for it: sample the input, count tokens, print expected worker-hours.

    python -m pipelines.plan --input 'gs://bucket/reviews/*.jsonl' --model embedded --task sentiment

Reads the first ``--sample`` records, renders each into the task's real prompt, counts tokens with the
model's own tokenizer (prompt + scored labels, or prompt + --max_new_tokens for summarize), scales the
mean to the whole input (exact row counts for Parquet, bytes per record for JSONL), and divides by
``--tokens_per_s``, the tokens one GPU worker processes per second.

The default throughput, DEFAULT_TOKENS_PER_S, is a measurement, not a promise: measure your own model on your
GPU type with ``make bench`` (tokens/s of GemmaEngine) and pass it with --tokens_per_s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from common.records import Record
from inference.prompts import PromptEncoder
from pipelines.io import RecordSpec, detect_format, to_record
from pipelines.options import JobConfig, add_cli_arguments
from transforms.task import TaskSet

# Measured: `make bench-pipeline` (500 sentiment records, embedded Gemma 3 270M, bfloat16, a quiet 2-core CPU,
# the template head shared): the pipeline ran 19.15 records/s x 240 planned tokens/record = about 4600 tokens/s.
# A GPU worker is far faster, so this over-estimates GPU worker-hours; replace it with a figure measured on
# your GPU type.
DEFAULT_TOKENS_PER_S = 4600.0


@dataclass(frozen=True)
class InputSample:
    records: tuple[Record, ...]
    sampled_bytes: int  # bytes of the sampled JSONL lines (0 for Parquet)
    total_bytes: int
    exact_total: int | None  # Parquet row counts from the footers; None for JSONL


@dataclass(frozen=True)
class Plan:
    sampled: int
    estimated_records: int
    mean_tokens: float
    total_tokens: int
    tokens_per_s: float
    worker_hours: float

    def lines(self) -> list[str]:
        return [
            f"sampled records:     {self.sampled}",
            f"estimated records:   {self.estimated_records}",
            f"tokens per record:   {self.mean_tokens:.1f} (prompt + output, mean of the sample)",
            f"estimated tokens:    {self.total_tokens}",
            f"throughput:          {self.tokens_per_s:g} tokens/s per worker",
            f"worker-hours:        {self.worker_hours:.2f}",
        ]


def _jsonl_lines(path: str) -> Iterator[bytes]:
    with FileSystems.open(path) as handle:
        for line in handle:
            if line.strip():
                yield line


def read_sample(pattern: str, spec: RecordSpec, size: int, input_format: str = "auto") -> InputSample:
    """The first ``size`` valid records of the input, with what is needed to scale them to the whole."""
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise FileNotFoundError(f"--input {pattern!r} matches no files")
    files = sorted(matches, key=lambda m: m.path)
    total_bytes = sum(m.size_in_bytes for m in files)
    records: list[Record] = []
    sampled_bytes = 0
    if detect_format(pattern, input_format) == "parquet":
        import pyarrow.parquet as pq

        exact = 0
        for meta in files:
            with FileSystems.open(meta.path) as handle:
                parquet = pq.ParquetFile(handle)
                exact += parquet.metadata.num_rows
                for batch in parquet.iter_batches(batch_size=256):
                    for row in batch.to_pylist():
                        if len(records) < size:
                            records.append(to_record(row, spec, ""))
        return InputSample(tuple(records), 0, total_bytes, exact)
    for meta in files:
        for line in _jsonl_lines(meta.path):
            if len(records) >= size:
                break
            try:
                records.append(to_record(json.loads(line), spec, ""))
            except ValueError:
                continue  # the pipeline dead-letters it; it costs no inference
            sampled_bytes += len(line)
        if len(records) >= size:
            break
    if not records:
        raise ValueError(f"--input {pattern!r}: no valid records in the sample (check --text_field)")
    return InputSample(tuple(records), sampled_bytes, total_bytes, None)


def record_tokens(prompts: PromptEncoder, task: TaskSet, record: Record) -> int | None:
    """Tokens one record costs: the prompt the run would send, plus the scored candidates or the generation
    budget (rendered by the run's own encoder, so prompt style, label words and truncation match the run);
    None for a record the run would dead-letter (too long under --on_overflow error)."""
    try:
        return prompts.request_tokens(task.build_request(record))
    except ValueError:
        return None


def make_plan(sample: InputSample, token_counts: list[int], tokens_per_s: float) -> Plan:
    if tokens_per_s <= 0:
        raise ValueError(f"--tokens_per_s must be > 0, got {tokens_per_s}")
    if not token_counts:
        raise ValueError("no sampled records to plan from")
    mean = sum(token_counts) / len(token_counts)
    if sample.exact_total is not None:
        records = sample.exact_total
    else:
        records = round(sample.total_bytes * len(sample.records) / max(sample.sampled_bytes, 1))
    total = round(mean * records)
    return Plan(len(token_counts), records, mean, total, tokens_per_s, total / tokens_per_s / 3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.plan", description=__doc__.split("\n\n")[0])
    add_cli_arguments(parser)  # the job's own flags: plan reads the command line the run would get
    parser.add_argument("--sample", type=int, default=200, help="Records to read and tokenize.")
    parser.add_argument(
        "--tokens_per_s",
        type=float,
        default=DEFAULT_TOKENS_PER_S,
        help=f"Tokens one worker processes per second (default {DEFAULT_TOKENS_PER_S:g}, measured on a 2-core "
        "CPU; measure your GPU with `make bench`).",
    )
    args = parser.parse_args(argv)
    args.output = args.output or "-"  # plan writes nothing
    config = JobConfig.from_flags(args)

    from gemma_ops.checkpoints import resolve_model
    from gemma_ops.config import GemmaConfig
    from gemma_ops.engine import EngineConfig
    from gemma_ops.tokenizer import GemmaTokenizer
    from transforms.registry import make_task_set

    path = resolve_model(config.model)
    max_context = min(EngineConfig().max_context, GemmaConfig.from_pretrained(path).max_position_embeddings)
    prompts = PromptEncoder(
        GemmaTokenizer.from_pretrained(path),
        max_context,
        config.prompt_style,
        config.max_prompt_tokens,
        config.on_overflow,
    )
    task = make_task_set(config)
    sample = read_sample(config.input, RecordSpec.of(config), args.sample, config.input_format)
    counts = [n for n in (record_tokens(prompts, task, record) for record in sample.records) if n is not None]
    plan = make_plan(sample, counts, args.tokens_per_s)
    print("\n".join(plan.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
