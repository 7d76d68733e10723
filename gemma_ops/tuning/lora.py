"""Train a LoRA adapter with HF PEFT on transformers' Gemma, on the label-scoring objective, and save it in PEFT's
format (``adapter_config.json`` + ``adapter_model.safetensors``); the engine merges it at load
(``gemma_ops.adapters.lora``), exactly like an adapter trained anywhere else with PEFT.

The objective is the one inference uses: each label is scored as the continuation of the prompt, its score the
sum of its tokens' log-probabilities with the distribution taken over the labels' tokens only (the engine's
``restrict_vocab``), and the loss is the cross-entropy of the softmax over the labels' scores. Only those rows of
the output layer are computed, which keeps a step cheap on a CPU (the output layer is most of a small Gemma).

Deterministic for a seed on one machine: LoRA's A matrices are drawn from a ``torch.Generator`` (B starts at
zero), batches are shuffled with it, and there is no dropout; no process-wide random state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Progress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass(frozen=True)
class LoraSettings:
    """What a LoRA run trains: rank, alpha (scaling = alpha / rank), target modules, and the optimizer."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_LINEAR
    epochs: int = 3
    learning_rate: float = 3e-4
    batch_size: int = 8
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rank", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoRA {name} must be >= 1, got {getattr(self, name)}")
        unknown = sorted(set(self.targets) - set(ALL_LINEAR))
        if not self.targets or unknown:
            raise ValueError(f"LoRA targets must be among {', '.join(ALL_LINEAR)}; got {', '.join(self.targets)}")
        if self.learning_rate <= 0 or self.alpha <= 0:
            raise ValueError("LoRA learning_rate and alpha must be > 0")


@dataclass(frozen=True)
class LabelledPrompt:
    """One training example as the model sees it: the prompt's token ids and the index of its label."""

    prompt: tuple[int, ...]
    label: int


@dataclass(frozen=True)
class _Batch:
    """Right-padded sequences and, per example, the rows that predict each candidate token."""

    tokens: torch.Tensor  # [S, L]
    mask: torch.Tensor  # [S, L]
    read: torch.Tensor  # [n_targets] flat row index into [S * L]
    targets: torch.Tensor  # [n_targets] index into the label-token vocabulary
    owners: list[list[list[int]]] = field(default_factory=list)  # example -> candidate -> target positions


def _batch(examples: Sequence[LabelledPrompt], candidates: Sequence[Sequence[int]], vocab: list[int]) -> _Batch:
    """Single-token labels: one sequence per example (the prompt). Longer labels: one per label, the prompt
    followed by the label's tokens but the last (the row of token j predicts token j + 1)."""
    single = all(len(ids) == 1 for ids in candidates)
    sequences: list[list[int]] = []
    reads: list[tuple[int, int]] = []  # (sequence, position)
    targets: list[int] = []
    owners: list[list[list[int]]] = []
    for example in examples:
        per_candidate = []
        if single:
            sequences.append(list(example.prompt))
        for ids in candidates:
            if not single:
                sequences.append([*example.prompt, *ids[:-1]])
            start = len(example.prompt) - 1
            rows = []
            for j, token in enumerate(ids):
                rows.append(len(targets))
                reads.append((len(sequences) - 1, start + j))
                targets.append(vocab.index(token))
            per_candidate.append(rows)
        owners.append(per_candidate)
    width = max(len(s) for s in sequences)
    tokens = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    flat = torch.tensor([s * width + p for s, p in reads])
    return _Batch(tokens, mask, flat, torch.tensor(targets), owners)


def label_log_probs(model: torch.nn.Module, batch: _Batch, vocab: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """[examples, labels] log-softmax over the labels of each label's summed token log-probability."""
    hidden = model.model(input_ids=batch.tokens, attention_mask=batch.mask).last_hidden_state  # final-normed
    rows = hidden.reshape(-1, hidden.shape[-1])[batch.read]  # [n_targets, D]
    logits = rows @ model.get_output_embeddings().weight[vocab].T  # [n_targets, R]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    token_lp = torch.log_softmax(logits.float(), dim=-1).gather(1, batch.targets[:, None])[:, 0]
    scores = torch.stack(
        [torch.stack([token_lp[rows].sum() for rows in per_candidate]) for per_candidate in batch.owners]
    )
    return torch.log_softmax(scores, dim=-1)


def load_hf_model(checkpoint: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """transformers' Gemma for the checkpoint folder (eager attention where soft-capping needs it)."""
    import json

    from transformers import AutoModelForCausalLM

    raw = json.loads((checkpoint / "config.json").read_text())
    kwargs = {"attn_implementation": "eager"} if raw.get("attn_logit_softcapping") else {}
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, **kwargs)


def wrap_with_lora(model: torch.nn.Module, settings: LoraSettings, generator: torch.Generator) -> torch.nn.Module:
    """A PEFT model with fresh LoRA layers: A drawn like nn.Linear's default (from ``generator``), B zero."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        target_modules=list(settings.targets),
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(param.shape[1])
                param.copy_(torch.rand(param.shape, generator=generator) * 2 * bound - bound)
            elif ".lora_B." in name:
                param.zero_()
    return peft_model


def train_lora(
    checkpoint: Path,
    examples: Sequence[LabelledPrompt],
    candidates: Sequence[Sequence[int]],
    settings: LoraSettings,
    output: Path,
    progress: Progress | None = None,
) -> list[float]:
    """Train on ``examples`` (label i is scored by ``candidates[i]``) and save the adapter to ``output``.
    Returns each epoch's mean loss."""
    if not examples:
        raise ValueError("no training examples")
    generator = torch.Generator().manual_seed(settings.seed)
    base = load_hf_model(checkpoint)
    model = wrap_with_lora(base, settings, generator)
    vocab_ids = sorted({t for ids in candidates for t in ids})
    vocab = torch.tensor(vocab_ids)
    softcap = getattr(base.config, "final_logit_softcapping", None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)  # linear decay
    model.train()
    losses, step = [], 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        epoch_loss = 0.0
        for first in range(0, len(order), settings.batch_size):
            chosen = [examples[i] for i in order[first : first + settings.batch_size]]
            batch = _batch(chosen, candidates, vocab_ids)
            log_probs = label_log_probs(model.base_model.model, batch, vocab, softcap)
            loss = F.nll_loss(log_probs, torch.tensor([e.label for e in chosen]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            epoch_loss += loss.item() * len(chosen)
            if progress is not None:
                progress(step, total, loss.item())
        losses.append(epoch_loss / len(examples))
    model.eval()
    model.save_pretrained(str(output), safe_serialization=True)
    return losses
