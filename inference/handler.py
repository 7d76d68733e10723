"""GemmaModelHandler: Beam's RunInference over the GemmaEngine.

The handler takes ``(key, request)`` pairs and returns ``(key, response)`` pairs, one per element, in order.
Keys (the pipeline's records) stay in the SDK process; only the request dataclasses of ``inference.requests``
reach the model, which may live in another process (``share_model_across_processes``). The loaded model
is an :class:`~inference.runner.EngineRunner` over a serving engine: calls from every thread (and, through the
proxy, every process) run at once, and their generation requests share the engine loop's one batch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import fasteners
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from common import metrics
from common.metrics import ENGINE_NAMESPACE
from inference.adapters import LoadedAdapter
from inference.batching import estimate_tokens
from inference.failures import DeviceFailure, device_failure, is_device_failure
from inference.requests import RecordRequest, RecordResponse, RunnerInfo, error_response
from inference.runner import EngineRunner
from inference.settings import ModelSettings

_LOG = logging.getLogger(__name__)
GPU_PICK_LOCK = "gemma-beam-gpu-pick.lock"


def build_engine(path: Path, **engine_kwargs: Any) -> Any:
    """The default engine factory: a serving GemmaEngine (imported here so Beam code never needs torch). Every
    RunInference call and thread of the worker that reaches this model copy shares its one engine loop, so
    slots freed by one batch's finished requests refill with the next batch's."""
    from gemma_ops.engine import GemmaEngine

    engine = GemmaEngine.from_pretrained(path, **engine_kwargs)
    engine.serve()
    return engine


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


def resolve_adapter_path(adapter: str) -> Path:
    """The default adapter resolver (a local folder, or a gs:// folder copied once per worker)."""
    from gemma_ops.checkpoints import resolve_adapter

    return resolve_adapter(adapter)


def resolve_model_path(model: str) -> Path:
    """The default model resolver, imported here so Beam code never needs torch."""
    from gemma_ops.checkpoints import resolve_model

    return resolve_model(model)


class GemmaModelHandler(ModelHandler[tuple[Any, RecordRequest], tuple[Any, RecordResponse], EngineRunner]):
    """RunInference handler: one engine per machine (by default), batches weighed in tokens.

    ``model_copies`` (default 1) makes Beam load the model in one process per machine and proxy every SDK
    process's calls to it; ``model_copies=None`` keeps one model per SDK process instead (Beam's default).
    """

    def __init__(
        self,
        settings: ModelSettings | None = None,
        *,
        engine_factory: Callable[..., Any] = build_engine,
        model_resolver: Callable[[str], Path] = resolve_model_path,
        adapter_resolver: Callable[[str], Path] = resolve_adapter_path,
    ) -> None:
        settings = settings or ModelSettings()
        # Beam 2.77's BatchElements has no max_batch_weight: with an element_size_fn, min/max_batch_size are
        # totals of element weights, so a batch holds up to batch_max_tokens estimated tokens.
        super().__init__(model_copies=settings.model_copies or None)
        self._settings = settings
        self._engine_factory = engine_factory
        self._model_resolver = model_resolver
        self._adapter_resolver = adapter_resolver
        self._info: RunnerInfo | None = None
        counter = lambda name: Metrics.counter(ENGINE_NAMESPACE, name)  # noqa: E731
        self._prompt_tokens = counter(metrics.PROMPT_TOKENS)
        self._output_tokens = counter(metrics.GENERATED_TOKENS)
        self._batches = counter(metrics.BATCHES)
        self._requests = counter(metrics.REQUESTS)
        self._request_errors = counter(metrics.REQUEST_ERRORS)
        self._truncated = counter(metrics.TRUNCATED_PROMPTS)
        self._split_batches = counter(metrics.FAILED_BATCHES_SPLIT)
        self._isolated = counter(metrics.ISOLATED_FAILURES)
        self._load_ms = Metrics.distribution(ENGINE_NAMESPACE, metrics.MODEL_LOAD_MS)

    def load_model(self) -> EngineRunner:
        start = time.perf_counter()
        model = self._settings.model
        path = self._model_resolver(model)
        # a gs:// model is loaded from a cache folder named by a digest: the rows name the source instead
        model_name = model.rstrip("/") if model.startswith("gs://") else None
        kwargs = self._settings.engine_kwargs()
        adapter = self._load_adapter() if self._settings.adapter else None
        if adapter is not None and adapter.kind == "lora":
            kwargs["adapter"] = adapter.folder
        engine = self._load_engine(path, kwargs)
        seconds = time.perf_counter() - start
        _LOG.info("loaded %s from %s in %.1f s (pid %d)", model, path, seconds, os.getpid())
        head = adapter.head(engine, path, model_name or path.name) if adapter is not None else None
        return EngineRunner(
            engine,
            self._settings,
            load_seconds=seconds,
            model_name=model_name,
            head=head,
            adapter=adapter.lineage if adapter is not None else None,
        )

    def _load_adapter(self) -> LoadedAdapter:
        """The job's adapter folder, read and hashed (a LoRA one is merged by the engine factory)."""
        source = str(self._settings.adapter)
        return LoadedAdapter.read(source, self._adapter_resolver(source))

    def _load_engine(self, path: Path, engine_kwargs: dict[str, Any]) -> Any:
        """The engine, on the GPU chosen for it. Copies that go on GPUs load one at a time (a machine-wide
        lock): a copy picks the GPU with the most free memory, and measures its KV-cache budget, after the
        previous copy's weights are in. Each copy's budget is its share of its GPU (``cache_shared_by``:
        the copies per GPU), so copies whose first calls coincide never size against the same memory."""
        gpus = _gpu_count()
        device = engine_kwargs.get("device")
        if gpus == 0 or (device is not None and not device.startswith("cuda")):
            return self._engine_factory(path, **engine_kwargs)
        copies = self._settings.model_copies or 1  # 0 (one per SDK process): their number is unknown here
        kwargs = {**engine_kwargs, "cache_shared_by": -(-copies // gpus)}
        with fasteners.InterProcessLock(os.path.join(tempfile.gettempdir(), GPU_PICK_LOCK)):
            if device is None and gpus >= 2:
                kwargs["device"] = f"cuda:{pick_gpu(_free_gpu_memory())}"
            return self._engine_factory(path, **kwargs)

    def run_inference(
        self,
        batch: Sequence[tuple[Any, RecordRequest]],
        model: EngineRunner,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[tuple[Any, RecordResponse]]:
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
        self._output_tokens.inc(sum(r.output_tokens for r in responses))
        self._request_errors.inc(sum(1 for r in responses if r.error))
        self._truncated.inc(sum(1 for r in responses if r.truncated))
        return list(zip(keys, responses, strict=True))

    def _run_isolating(
        self, model: EngineRunner, requests: list[RecordRequest], info: RunnerInfo
    ) -> list[RecordResponse]:
        """``model.run``; when it raises, bisect the batch so only the requests that fail alone get errors.

        Beam's RunInference would dead-letter the whole batch; here the batch-mates of a bad request still
        get results. A failing single request becomes an error response (a dead letter downstream). A broken
        device is no request's fault: it is raised, never bisected (which would repeat ~2N failing calls and
        dead-letter every record), so the bundle fails and the runner retries it on another worker.
        """
        try:
            return model.run(requests)
        except DeviceFailure:
            raise
        except Exception as err:
            if is_device_failure(err):
                raise device_failure(err) from err
            if len(requests) == 1:
                self._isolated.inc()
                _LOG.warning("inference failed for one request: %s: %s", type(err).__name__, err)
                return [error_response(f"{type(err).__name__}: {err}", info.style, info.model_name)]
            self._split_batches.inc()
            mid = len(requests) // 2
            return self._run_isolating(model, requests[:mid], info) + self._run_isolating(model, requests[mid:], info)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        budget = self._settings.batch_max_tokens
        return {
            "min_batch_size": budget,
            "max_batch_size": budget,
            "element_size_fn": lambda element: min(estimate_tokens(element), budget),
        }

    def get_num_bytes(self, batch: Sequence[tuple[Any, RecordRequest]]) -> int:
        return sum(len(value.encode("utf-8")) for _, request in batch for value in request.fields.values())

    def get_metrics_namespace(self) -> str:
        return ENGINE_NAMESPACE

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                f"GemmaModelHandler takes no inference_args (got {sorted(inference_args)}); "
                "sampling settings belong to each question of the request's template"
            )
