"""The project's plots, in one style: PNG files drawn with matplotlib's Agg backend (no
display needed, so they draw on a cluster node or in CI as well as on a laptop).

Each function takes plain numbers and a path, and returns the path it wrote; benchmarks
and reports build their figures from these, so every figure looks alike.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot's import

import matplotlib.pyplot as plt  # noqa: E402

# One palette and size for every figure (colour-blind safe: Okabe-Ito).
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SIZE = (6.4, 4.2)
DPI = 120


def _axes(title: str, xlabel: str, ylabel: str):
    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def line_chart(path: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
               xlabel: str, ylabel: str, levels: dict[str, float] | None = None,
               errors: dict[str, Sequence[float]] | None = None, xticks: Sequence[float] | None = None,
               marks: dict[str, tuple[float, float]] | None = None) -> str:
    """Lines of (x, y) per named series, with optional error bars (``errors[name]``, one per
    point), horizontal reference levels (baselines, a ceiling) drawn dashed, and named
    points ringed (``marks``: the best epoch)."""
    fig, ax = _axes(title, xlabel, ylabel)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        err = (errors or {}).get(name)
        ax.errorbar(xs, ys, yerr=err, marker="o", color=COLORS[i % len(COLORS)], label=name, capsize=3)
    for j, (name, y) in enumerate((levels or {}).items()):
        ax.axhline(y, linestyle="--", linewidth=1, color=COLORS[(len(series) + j) % len(COLORS)], label=name)
    for name, (x, y) in (marks or {}).items():
        ax.plot([x], [y], "o", markersize=12, markerfacecolor="none", markeredgecolor=COLORS[3], label=name)
    if xticks is not None:
        ax.set_xticks(list(xticks))
    ax.legend(fontsize=8, frameon=False, loc="best")
    return _save(fig, path)


def bar_chart(path: str, groups: dict[str, dict[str, float]], *, title: str, ylabel: str,
              xlabel: str = "", hatched: Sequence[str] = ()) -> str:
    """Grouped bars: one group per key of ``groups`` (a metric, a table), one bar per
    series inside it (the model, each baseline), each bar labelled with its value. The
    ``hatched`` series (numbers from elsewhere, such as published results) are drawn
    pale and hatched, apart from the ones measured."""
    series = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    fig, ax = _axes(title, xlabel, ylabel)
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [bars.get(name, float("nan")) for bars in groups.values()]
        style = {"alpha": 0.45, "hatch": "//", "edgecolor": "0.3"} if name in hatched else {}
        drawn = ax.bar(xs, ys, width=width, color=COLORS[i % len(COLORS)], label=name, **style)
        many = len(series) > 4  # narrow bars: upright labels would run into each other
        ax.bar_label(drawn, fmt="%.3g", fontsize=6 if many else 7, padding=1, rotation=90 if many else 0)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.margins(y=0.12)
    ax.grid(False, axis="x")
    if len(series) > 4:  # beside the axes, where it hides no bar
        fig.set_size_inches(SIZE[0] + 2.2, SIZE[1])
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    elif len(series) > 1:
        ax.legend(fontsize=8, frameon=False, loc="best")
    return _save(fig, path)


def stacked_bars(path: str, labels: Sequence[str], stacks: dict[str, Sequence[float]], *, title: str,
                 xlabel: str, ylabel: str) -> str:
    """One bar per label, stacked by named part (events per day by behaviour type)."""
    fig, ax = _axes(title, xlabel, ylabel)
    bottom = [0.0] * len(labels)
    for i, (name, ys) in enumerate(stacks.items()):
        ax.bar(range(len(labels)), ys, bottom=bottom, color=COLORS[i % len(COLORS)], label=name)
        bottom = [b + y for b, y in zip(bottom, ys)]
    step = max(1, len(labels) // 10)  # at most about ten date labels
    ax.set_xticks(range(0, len(labels), step), list(labels)[::step], rotation=30, ha="right", fontsize=7)
    ax.grid(False, axis="x")
    ax.legend(fontsize=8, frameon=False, loc="best")
    return _save(fig, path)



def curves_chart(path: str, curves: dict[str, tuple[Sequence[float], Sequence[float], bool]], *, title: str,
                 xlabel: str, ylabel: str) -> str:
    """One thin line per curve (x, y, stopped); the best curve's peak highlighted, and a
    cross where a stopped curve ended (a search's trials, ASHA's early stops)."""
    fig, ax = _axes(title, xlabel, ylabel)
    best = max(curves, key=lambda k: max(curves[k][1]), default=None)
    for name, (xs, ys, stopped) in curves.items():
        top = name == best
        ax.plot(xs, ys, color=COLORS[0] if top else COLORS[7], alpha=1.0 if top else 0.35,
                linewidth=2 if top else 1, marker="o" if top else None, markersize=3,
                label=f"best: {name}" if top else None)
        if stopped:
            ax.plot(xs[-1], ys[-1], "x", color=COLORS[3], markersize=7)
    ax.plot([], [], "x", color=COLORS[3], label="stopped early")
    ax.legend(fontsize=8, frameon=False, loc="best")
    return _save(fig, path)


def reliability_chart(path: str, diagrams: dict[str, dict], *, title: str) -> str:
    """Reliability diagrams (:class:`interest.evaluate.metrics.Reliability`'s dicts): each
    bin's mean predicted probability against how often the event happened, the point's
    area the bin's share of predictions; the diagonal is a perfectly calibrated model."""
    fig, ax = _axes(title, "predicted probability", "observed frequency")
    ax.plot([0, 1], [0, 1], linestyle="--", linewidth=1, color=COLORS[7], label="calibrated")
    for i, (name, d) in enumerate(diagrams.items()):
        bins = d["bins"]
        total = max(sum(b["n"] for b in bins), 1)
        xs, ys = [b["probability"] for b in bins], [b["frequency"] for b in bins]
        ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.5,
                label=f"{name} (ECE {d['ece']:.3f}, {total:,} predictions)")
        ax.scatter(xs, ys, s=[20 + 400 * b["n"] / total for b in bins], color=COLORS[i % len(COLORS)], alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _save(fig, path)
