"""GemmaModelHandler: Beam's RunInference over the GemmaEngine.

The handler takes ``(key, request)`` pairs and returns ``(key, response)`` pairs, one per element, in order.
Keys (the pipeline's records) stay in the SDK process; only the request dataclasses of ``batch_requests``
reach the model, which may live in another process (``share_model_across_processes``). The loaded model
is an :class:`~gemma_ops.runner.EngineRunner`.

This is the one module of ``gemma_ops`` that imports Beam.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import fasteners
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from gemma_ops.batch_requests import (
    GenerateResponse,
    Overflow,
    PromptStyle,
    Request,
    Response,
    RunnerInfo,
    error_response,
    estimate_tokens,
)
from gemma_ops.runner import EngineRunner

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "gemma"
LOAD_MARKER_ENV = "GEMMA_BEAM_LOAD_MARKER_DIR"  # tests: every load_model() leaves one file here
GPU_PICK_LOCK = "gemma-beam-gpu-pick.lock"


def build_engine(path: Path, **engine_kwargs: Any) -> Any:
    """The default engine factory: GemmaEngine, imported here so Beam code never needs torch."""
    from gemma_ops.engine import GemmaEngine

    return GemmaEngine.from_pretrained(path, **engine_kwargs)


def pick_gpu(free_bytes: Sequence[int]) -> int:
    """The GPU index with the most free memory (the first on ties)."""
    if not free_bytes:
        raise ValueError("no GPUs to choose from")
    return max(range(len(free_bytes)), key=lambda i: (free_bytes[i], -i))


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_gpu_memory() -> list[int]:
    import torch

    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def resolve_model_path(model: str) -> Path:
    from gemma_ops.checkpoints import resolve_model

    return resolve_model(model)


class GemmaModelHandler(ModelHandler[tuple[Any, Request], tuple[Any, Response], EngineRunner]):
    """RunInference handler: one engine per machine (by default), batches weighed in tokens.

    ``model_copies`` (default 1) makes Beam load the model in one process per machine and proxy every SDK
    process's calls to it; ``model_copies=None`` keeps one model per SDK process instead (Beam's default).
    """

    def __init__(
        self,
        *,
        model: str = "embedded",
        device: str | None = None,
        dtype: str | None = None,
        engine_max_batch_tokens: int | None = None,
        engine_max_slots: int | None = None,
        prompt_style: PromptStyle = "auto",
        max_prompt_tokens: int | None = None,
        overflow: Overflow = "truncate",
        batch_max_tokens: int = 16384,
        model_copies: int | None = 1,
        engine_factory: Callable[..., Any] = build_engine,
        model_resolver: Callable[[str], Path] = resolve_model_path,
    ) -> None:
        if batch_max_tokens < 1:
            raise ValueError(f"batch_max_tokens must be >= 1, got {batch_max_tokens}")
        if model_copies is not None and model_copies < 1:
            raise ValueError(f"model_copies must be >= 1 (or None for one model per process), got {model_copies}")
        if prompt_style not in ("auto", "completion", "chat"):
            raise ValueError(f"prompt_style must be auto, completion or chat, got {prompt_style!r}")
        # Beam 2.77's BatchElements has no max_batch_weight: with an element_size_fn, min/max_batch_size are
        # totals of element weights, so a batch holds up to batch_max_tokens estimated tokens.
        super().__init__(model_copies=model_copies)
        self._batch_max_tokens = batch_max_tokens
        self._model = model
        self._engine_kwargs = {
            k: v
            for k, v in {
                "device": device,
                "dtype": dtype,
                "max_batch_tokens": engine_max_batch_tokens,
                "max_slots": engine_max_slots,
            }.items()
            if v is not None
        }
        self._prompt_style = prompt_style
        self._max_prompt_tokens = max_prompt_tokens
        self._overflow = overflow
        self._engine_factory = engine_factory
        self._model_resolver = model_resolver
        self._info: RunnerInfo | None = None
        self._prompt_tokens = Metrics.counter(METRICS_NAMESPACE, "prompt_tokens")
        self._output_tokens = Metrics.counter(METRICS_NAMESPACE, "generated_tokens")
        self._batches = Metrics.counter(METRICS_NAMESPACE, "batches")
        self._requests = Metrics.counter(METRICS_NAMESPACE, "requests")
        self._request_errors = Metrics.counter(METRICS_NAMESPACE, "request_errors")
        self._truncated = Metrics.counter(METRICS_NAMESPACE, "truncated_prompts")
        self._split_batches = Metrics.counter(METRICS_NAMESPACE, "failed_batches_split")
        self._isolated = Metrics.counter(METRICS_NAMESPACE, "isolated_failures")
        self._load_ms = Metrics.distribution(METRICS_NAMESPACE, "model_load_ms")

    def load_model(self) -> EngineRunner:
        start = time.perf_counter()
        path = self._model_resolver(self._model)
        if "device" in self._engine_kwargs or _gpu_count() < 2:
            engine = self._engine_factory(path, **self._engine_kwargs)
        else:
            # Several GPUs: each model copy goes to the GPU with the most free memory. Copies load one at a
            # time (a machine-wide lock) so that each one sees the memory the previous one took.
            with fasteners.InterProcessLock(os.path.join(tempfile.gettempdir(), GPU_PICK_LOCK)):
                device = f"cuda:{pick_gpu(_free_gpu_memory())}"
                engine = self._engine_factory(path, **{**self._engine_kwargs, "device": device})
        seconds = time.perf_counter() - start
        _LOG.info("loaded %s from %s in %.1f s (pid %d)", self._model, path, seconds, os.getpid())
        marker_dir = os.environ.get(LOAD_MARKER_ENV)
        if marker_dir:
            Path(marker_dir).mkdir(parents=True, exist_ok=True)
            (Path(marker_dir) / f"load-{os.getpid()}-{uuid.uuid4().hex[:8]}").write_text(str(path))
        return EngineRunner(
            engine,
            prompt_style=self._prompt_style,
            max_prompt_tokens=self._max_prompt_tokens,
            overflow=self._overflow,
            load_seconds=seconds,
            # a gs:// model is loaded from a cache folder named by a digest: the rows name the source instead
            model_name=self._model.rstrip("/") if self._model.startswith("gs://") else None,
        )

    def run_inference(
        self,
        batch: Sequence[tuple[Any, Request]],
        model: EngineRunner,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[tuple[Any, Response]]:
        if not batch:
            return []
        if self._info is None:
            self._info = model.info()
            self._load_ms.update(int(self._info.load_seconds * 1000))
        keys = [key for key, _ in batch]
        responses = self._run_isolating(model, [request for _, request in batch], self._info)
        self._batches.inc()
        self._requests.inc(len(batch))
        self._prompt_tokens.inc(sum(r.prompt_tokens for r in responses))
        self._output_tokens.inc(sum(r.output_tokens for r in responses if isinstance(r, GenerateResponse)))
        self._request_errors.inc(sum(1 for r in responses if r.error))
        self._truncated.inc(sum(1 for r in responses if r.truncated))
        return list(zip(keys, responses, strict=True))

    def _run_isolating(self, model: EngineRunner, requests: list[Request], info: RunnerInfo) -> list[Response]:
        """``model.run``; when it raises, bisect the batch so only the requests that fail alone get errors.

        Beam's RunInference would dead-letter the whole batch; here the batch-mates of a bad request still
        get results. A failing single request becomes an error response (a dead letter downstream); a
        systemic failure therefore dead-letters every record, which --max_error_rate turns into a failed job.
        """
        try:
            return model.run(requests)
        except Exception as err:
            if len(requests) == 1:
                self._isolated.inc()
                _LOG.warning("inference failed for one request: %s: %s", type(err).__name__, err)
                return [error_response(requests[0], f"{type(err).__name__}: {err}", info.style, info.model_name)]
            self._split_batches.inc()
            mid = len(requests) // 2
            return self._run_isolating(model, requests[:mid], info) + self._run_isolating(model, requests[mid:], info)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        budget = self._batch_max_tokens
        return {
            "min_batch_size": budget,
            "max_batch_size": budget,
            "element_size_fn": lambda element: min(estimate_tokens(element), budget),
        }

    def get_num_bytes(self, batch: Sequence[tuple[Any, Request]]) -> int:
        return sum(len(request.document.encode("utf-8")) for _, request in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                f"GemmaModelHandler takes no inference_args (got {sorted(inference_args)}); "
                "put sampling settings in each GenerateRequest's params"
            )
