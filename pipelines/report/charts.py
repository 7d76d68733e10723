"""The run report's charts, drawn with matplotlib and embedded as PNG data URIs: the page fetches nothing.

Figures are made with ``matplotlib.figure.Figure`` directly (no pyplot, no backend switch): nothing
process-wide changes, and the charts draw the same on a worker as on a laptop.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from common.quality import Bin, Coverage

WIDTH, HEIGHT, DPI = 5.2, 2.8, 100
BAR = "#4c72b0"
ACCENT = "#dd8452"
GRID = "#dddddd"


def _figure(height: float = HEIGHT):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    axes.grid(True, color=GRID, linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return figure, axes


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def label_distribution(counts: dict[str, int], title: str) -> str:
    """Rows per label, most common on top."""
    names = list(counts)[::-1]
    figure, axes = _figure(max(1.6, 0.35 * len(names) + 0.9))
    bars = axes.barh(names, [counts[n] for n in names], color=BAR)
    axes.bar_label(bars, padding=3, fontsize=8)
    axes.set_xlabel("rows")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def confidence_histogram(histogram: Sequence[int], title: str) -> str:
    """Rows per confidence bin (the chosen label's probability)."""
    figure, axes = _figure()
    width = 1.0 / len(histogram)
    axes.bar([i * width for i in range(len(histogram))], histogram, width=width, align="edge", color=BAR)
    axes.set_xlim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("rows")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def reliability_diagram(bins: Sequence[Bin], title: str) -> str:
    """Accuracy against mean confidence per bin; on the diagonal, confidence means what it says."""
    figure, axes = _figure(3.4)
    axes.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=1, label="perfect calibration")
    axes.bar(
        [b.low for b in bins], [b.accuracy for b in bins], width=[b.high - b.low for b in bins], align="edge",
        color=BAR, alpha=0.8, edgecolor="white", label="accuracy in the bin",
    )  # fmt: skip
    axes.plot([b.mean_confidence for b in bins], [b.accuracy for b in bins], "o", color=ACCENT, label="mean confidence")
    for b in bins:
        axes.annotate(str(b.count), (b.low + (b.high - b.low) / 2, b.accuracy), ha="center", va="bottom", fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.legend(fontsize=7, loc="upper left")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def coverage_accuracy(curve: Sequence[Coverage], title: str) -> str:
    """Accuracy of the rows kept against the share kept, one point per min_confidence threshold."""
    points = [c for c in curve if c.accuracy is not None]
    figure, axes = _figure()
    axes.plot([c.coverage for c in points], [c.accuracy for c in points], "o-", color=BAR)
    for c in points:
        axes.annotate(
            f"≥{c.threshold:g}", (c.coverage, c.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    axes.set_xlim(0, 1.05)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("coverage (share of rows answered)")
    axes.set_ylabel("accuracy of answered rows")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def throughput(points: Sequence[tuple[float, float, float]], title: str) -> str:
    """Rows per second (and tokens per second, right axis) over the run."""
    figure, axes = _figure()
    seconds = [p[0] for p in points]
    width = seconds[1] - seconds[0] if len(seconds) > 1 else 1.0
    axes.bar(seconds, [p[1] for p in points], width=width, align="edge", color=BAR, alpha=0.8)
    axes.set_xlabel("seconds since the first row")
    axes.set_ylabel("rows/s", color=BAR)
    tokens = axes.twinx()
    tokens.plot([s + width / 2 for s in seconds], [p[2] for p in points], "o-", color=ACCENT, markersize=3)
    tokens.set_ylabel("tokens/s", color=ACCENT)
    axes.set_ylim(bottom=0)
    tokens.set_ylim(bottom=0)
    axes.set_title(title, fontsize=10)
    return _png(figure)
