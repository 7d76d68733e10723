"""--long_documents through the whole pipeline with the real engine on a tiny model: a document three times
the context is read whole in chunks (row: chunks, not truncated); the default still truncates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_ops.tokenizer import GemmaTokenizer
from inference.handler import GemmaModelHandler
from inference.settings import ModelSettings
from pipelines.options import JobConfig
from tests.reliability.jobs import result_rows, run_job
from tests.tiny_models import build_tiny_checkpoint
from transforms.task import TIMING_COLUMNS

CONTEXT = 256


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_checkpoint("gemma3", tmp_path_factory.mktemp("tiny") / "gemma3", max_position_embeddings=CONTEXT)


def long_text(tokenizer: GemmaTokenizer) -> str:
    paragraphs = [
        " ".join(f"In part {p}, line {s} describes the delivery, the packaging and the support call." for s in range(8))
        for p in range(6)
    ]
    text = "\n\n".join(paragraphs)
    assert len(tokenizer.encode(text, add_bos=False)) > 3 * CONTEXT  # three times the model's context
    return text


def summarize(tiny_model: Path, tmp_path: Path, run_id: str, **settings) -> dict:
    config = JobConfig(
        input=str(tmp_path / "in.jsonl"), output=str(tmp_path / run_id), task="summarize", model=str(tiny_model),
        max_new_tokens=8, run_id=run_id, device="cpu", dtype="float32", model_copies=0, **settings,
    )  # fmt: skip
    handler = GemmaModelHandler(ModelSettings.of(config))
    return {row["id"]: row for row in result_rows(run_job(config, handler))}


def test_a_document_three_times_the_context_is_summarized_in_chunks(tiny_model, tmp_path):
    text = long_text(GemmaTokenizer.from_pretrained(tiny_model))
    lines = [{"id": "long", "text": text}, {"id": "short", "text": "The desk arrived quickly and works well."}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    chunked = summarize(tiny_model, tmp_path, "chunk", long_documents="chunk")
    assert chunked["long"]["truncated"] is False and chunked["long"]["chunks"] >= 4
    assert chunked["long"]["prompt_tokens"] > 3 * CONTEXT  # every chunk was read, plus the reduce step
    assert chunked["long"]["finish_reason"] in ("stop", "length")
    assert (chunked["short"]["chunks"], chunked["short"]["truncated"]) == (1, False)

    default = summarize(tiny_model, tmp_path, "truncate")
    assert (default["long"]["truncated"], default["long"]["chunks"]) == (True, 1)
    assert default["long"]["prompt_tokens"] == CONTEXT - 8  # cut to the context, room kept for the output
    same = {"run_id": "truncate", "result_key": default["short"]["result_key"]}
    same.update({name: default["short"][name] for name in TIMING_COLUMNS})
    assert default["short"] == {**chunked["short"], **same}
    assert default["short"]["result_key"] != chunked["short"]["result_key"]  # --long_documents is in the model key
