"""Train a classification head: L2-regularized logistic regression (torch, L-BFGS) over frozen features, with the
pooling and the L2 strength chosen by k-fold cross-validation on the training examples alone.

Features come as ``last+mean`` vectors (the engine's ``features``); ``last`` and ``mean`` are their halves, so one
prefill per example serves every pooling tried. The criterion is the mean held-out log-loss (a proper scoring
rule, steadier than accuracy on folds of a few dozen examples). Deterministic: folds come from a seeded
``torch.Generator`` and L-BFGS starts from zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gemma_ops.adapters.head import standardization
from gemma_ops.features import POOLINGS


@dataclass(frozen=True)
class HeadSettings:
    """The grid cross-validation searches, and how."""

    poolings: tuple[str, ...] = POOLINGS
    l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    folds: int = 5
    seed: int = 0
    max_iter: int = 200

    def __post_init__(self) -> None:
        unknown = sorted(set(self.poolings) - set(POOLINGS))
        if not self.poolings or unknown:
            raise ValueError(f"head poolings must be among {', '.join(POOLINGS)}, got {self.poolings}")
        if not self.l2 or min(self.l2) < 0:
            raise ValueError(f"head l2 strengths must be >= 0, got {self.l2}")
        if self.folds < 2:
            raise ValueError(f"cross-validation needs at least 2 folds, got {self.folds}")


@dataclass(frozen=True)
class FittedHead:
    """A trained logistic regression, the choices behind it, and every grid point's cross-validated scores."""

    pooling: str
    l2: float
    weight: torch.Tensor  # [C, F]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [F]
    scale: torch.Tensor  # [F]
    cv: tuple[tuple[str, float, float, float], ...]  # (pooling, l2, log-loss, accuracy) per grid point


def view(features: torch.Tensor, pooling: str) -> torch.Tensor:
    """The ``pooling`` columns of ``last+mean`` features [N, 2D]."""
    half = features.shape[1] // 2
    return {"last": features[:, :half], "mean": features[:, half:], "last+mean": features}[pooling]


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight, bias, mean, scale) minimizing mean cross-entropy + l2 * |weight|^2 on standardized x."""
    mean, scale = standardization(x)
    z = (x.float() - mean) / scale
    weight = torch.zeros(classes, z.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach(), mean, scale


def folds_of(y: torch.Tensor, folds: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Stratified folds: each label's examples shuffled and dealt round-robin, so every fold holds every label."""
    assignment = torch.empty(len(y), dtype=torch.long)
    offset = 0
    for label in sorted(set(y.tolist())):
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assignment[members] = (torch.arange(len(members)) + offset) % folds
        offset += len(members)
    return [torch.nonzero(assignment == k).flatten() for k in range(folds)]


def cross_validate(
    x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, folds: Sequence[torch.Tensor], max_iter: int
) -> tuple[float, float]:
    """(mean held-out log-loss, held-out accuracy) over the folds."""
    loss, correct = 0.0, 0
    for held in folds:
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        weight, bias, mean, scale = fit_logistic(x[keep], y[keep], classes, l2, max_iter)
        logits = ((x[held].float() - mean) / scale) @ weight.T + bias
        loss += F.cross_entropy(logits, y[held], reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y[held]).sum())
    return loss / len(y), correct / len(y)


def train_head(features: torch.Tensor, y: Sequence[int], classes: int, settings: HeadSettings) -> FittedHead:
    """Choose pooling and L2 by cross-validation on (features [N, 2D] as last+mean, labels), then fit on all."""
    labels = torch.tensor(list(y))
    smallest = min(int((labels == c).sum()) for c in range(classes))
    if smallest < 2:
        raise ValueError(f"every label needs at least 2 training examples for a head; one label has {smallest}")
    folds = folds_of(labels, min(settings.folds, smallest), torch.Generator().manual_seed(settings.seed))
    grid = []
    for pooling in settings.poolings:
        for l2 in settings.l2:
            loss, accuracy = cross_validate(view(features, pooling), labels, classes, l2, folds, settings.max_iter)
            grid.append((pooling, l2, loss, accuracy))
    pooling, l2, _, _ = min(grid, key=lambda point: point[2])
    weight, bias, mean, scale = fit_logistic(view(features, pooling), labels, classes, l2, settings.max_iter)
    return FittedHead(pooling, l2, weight, bias, mean, scale, tuple(grid))
