"""The model and engine settings of a job, declared once; the handler takes them as they are."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from common.fingerprint import digest
from common.settings import problems, raise_problems, setting

PROMPT_STYLES = ("auto", "completion", "chat")
OVERFLOW_POLICIES = ("truncate", "error")
LONG_DOCUMENT_POLICIES = ("truncate", "chunk")
PromptStyle = Literal["auto", "completion", "chat"]
Overflow = Literal["truncate", "error"]
LongDocuments = Literal["truncate", "chunk"]

GCS_FOLDER = r"gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+"
# Settings that change how fast a result comes, never what it is: left out of the model fingerprint.
RUNTIME_ONLY = frozenset(
    {"batch_max_tokens", "device", "dtype", "engine_max_batch_tokens", "engine_max_slots", "model_copies"}
)


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Which model, how prompts are rendered and cut, and how the engine is sized."""

    model: str = setting(
        "embedded",
        help="'embedded' (Gemma 3 270M shipped with the package), a local HF checkpoint folder, "
        "a .gguf file, or a gs:// checkpoint folder (copied once per worker).",
        pattern=f"^(embedded|{GCS_FOLDER})$",
    )
    adapter: str | None = setting(
        None,
        metavar="DIR",
        pattern=f"^{GCS_FOLDER}$",
        help="A folder (local or gs://) made by make tune or by PEFT: a LoRA adapter (adapter_config.json + "
        "adapter_model.safetensors), merged into the weights at load, or a classification head (head.json + "
        "head.safetensors) that answers classify tasks from one read of each record. Refused before any record "
        "runs when it was trained on another base model. A task file's adapter: key sets it too.",
    )
    prompt_style: PromptStyle = setting(
        "auto",
        choices=PROMPT_STYLES,
        help="auto: Gemma's turn format if the checkpoint has a chat template (instruction-tuned), "
        "else few-shot completion prompts (base models).",
    )
    batch_max_tokens: int = setting(16384, minimum=1, help="Estimated tokens (prompt + output) per RunInference batch.")
    max_prompt_tokens: int | None = setting(
        None, minimum=1, help="Cap on prompt tokens per record (default: the model's context minus the output)."
    )
    on_overflow: Overflow = setting(
        "truncate",
        choices=OVERFLOW_POLICIES,
        help="A record over --max_record_bytes or a prompt over --max_prompt_tokens: truncate the "
        "record's text (truncated=true) or dead-letter it.",
    )
    long_documents: LongDocuments = setting(
        "truncate",
        choices=LONG_DOCUMENT_POLICIES,
        help="summarize (and any generation task): a document longer than the context is cut (truncate, "
        "truncated=true) or read whole (chunk: split at paragraph/sentence bounds, each chunk summarized, "
        "then the summaries; the chunks column says how many were read).",
    )
    device: str | None = setting(
        None,
        help="Torch device for the engine (default: cuda if present, else cpu).",
        pattern=r"^(cpu|cuda(:[0-9]+)?)$",
    )
    dtype: str | None = setting(
        None,
        help="Engine dtype, e.g. bfloat16 or float32 (default: best for the device).",
        pattern=r"^(float32|bfloat16|float16)$",
    )
    engine_max_batch_tokens: int | None = setting(
        None, minimum=1, help="Engine token budget per forward pass (default: the engine's)."
    )
    engine_max_slots: int | None = setting(
        None, minimum=1, help="Requests the engine decodes at once, i.e. KV-cache slots (default: the engine's)."
    )
    model_copies: int = setting(
        1,
        minimum=0,
        help="Models per machine; each SDK process talks to them through Beam's shared-model proxy. "
        "0 loads one model in every SDK process instead.",
    )

    def __post_init__(self) -> None:
        raise_problems(problems(self, ModelSettings))

    @classmethod
    def of(cls, config: Any) -> ModelSettings:
        """The model settings of a larger config that declares them too (the job's)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    def fingerprint(self) -> str:
        """A hash of the model and every setting that can change a result (all but ``RUNTIME_ONLY``, so a
        setting added later, an adapter say, counts by default). The --model value stands for the weights:
        a new checkpoint under the same path is not noticed, so stage each version under its own path."""
        return digest({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_ONLY})

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the engine factory; unset ones keep the engine's defaults."""
        kwargs = {
            "device": self.device,
            "dtype": self.dtype,
            "max_batch_tokens": self.engine_max_batch_tokens,
            "max_slots": self.engine_max_slots,
        }
        return {k: v for k, v in kwargs.items() if v is not None}
