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
               errors: dict[str, Sequence[float]] | None = None, xticks: Sequence[float] | None = None) -> str:
    """Lines of (x, y) per named series, with optional error bars (``errors[name]``, one per
    point) and horizontal reference levels (baselines, a ceiling) drawn dashed."""
    fig, ax = _axes(title, xlabel, ylabel)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        err = (errors or {}).get(name)
        ax.errorbar(xs, ys, yerr=err, marker="o", color=COLORS[i % len(COLORS)], label=name, capsize=3)
    for j, (name, y) in enumerate((levels or {}).items()):
        ax.axhline(y, linestyle="--", linewidth=1, color=COLORS[(len(series) + j) % len(COLORS)], label=name)
    if xticks is not None:
        ax.set_xticks(list(xticks))
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
