"""Matplotlib figures rendered to PNG data URIs (Agg canvas, no pyplot state, no files, no network)."""
from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d", "#bab0ac")
DPI = 90


def new_figure(panels: int, cols: int = 3, panel_size=(4.2, 2.8)) -> tuple[Figure, list]:
    cols = max(1, min(cols, panels))
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def to_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histograms(column: str, everything: np.ndarray, groups: dict[str, np.ndarray],
               thresholds: dict[str, float], background: bool = True, bins: int = 60) -> str:
    """One panel per group: all rows in grey (when `background`), the group's rows in colour, its threshold
    as a dashed line."""
    finite = everything[np.isfinite(everything)]
    edges = np.histogram_bin_edges(finite, bins=bins) if len(finite) else np.linspace(0, 1, bins + 1)
    fig, axes = new_figure(len(groups))
    for k, (ax, (name, values)) in enumerate(zip(axes, groups.items())):
        color = COLORS[k % len(COLORS)]
        if background:
            ax.hist(finite, bins=edges, color="#c8ced6", label=f"all scored ({len(finite):,})")
        ax.hist(values[np.isfinite(values)], bins=edges, color=color, alpha=0.85, label=f"{name} ({len(values):,})")
        if name in thresholds:
            ax.axvline(thresholds[name], color="#222", linestyle="--", linewidth=1.2,
                       label=f"threshold {thresholds[name]:.4g}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(column, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, frameon=False)
    return to_data_uri(fig)


def by_kind(column: str, values: dict[str, np.ndarray], bins: int = 50) -> str:
    """Step histograms (density) of a score for each ground-truth kind, on one panel."""
    fig, (ax,) = new_figure(1, panel_size=(7.5, 3.2))
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()]) if values else np.zeros(0)
    edges = np.histogram_bin_edges(finite, bins=bins) if len(finite) else np.linspace(0, 1, bins + 1)
    for k, (name, v) in enumerate(values.items()):
        v = v[np.isfinite(v)]
        if len(v):
            ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.6, color=COLORS[k % len(COLORS)],
                    label=f"{name} ({len(v):,})")
    ax.set_xlabel(column, fontsize=9)
    ax.set_ylabel("density", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, frameon=False)
    return to_data_uri(fig)


def curves(series: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str) -> str:
    fig, (ax,) = new_figure(1, panel_size=(7.5, 3.4))
    for k, (name, (x, y)) in enumerate(series.items()):
        ax.plot(x, y, color=COLORS[k % len(COLORS)], linewidth=1.4, label=name)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    if len(series) <= 12:
        ax.legend(fontsize=7, frameon=False)
    return to_data_uri(fig)


def intervals(panels: dict[str, list[tuple[str, float, float, float, int]]]) -> str:
    """One panel per metric: a point per cell with its 95% interval (label, mean, low, high, n)."""
    fig, axes = new_figure(len(panels), cols=2, panel_size=(6.0, 0.45 * max(len(v) for v in panels.values()) + 1.2))
    for ax, (metric, rows) in zip(axes, panels.items()):
        y = np.arange(len(rows))
        means = np.array([r[1] for r in rows])
        lo, hi = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
        ax.errorbar(means, y, xerr=[means - lo, hi - means], fmt="o", color=COLORS[0], capsize=3, markersize=4)
        ax.set_yticks(y, [f"{r[0]} (n={r[4]})" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(metric, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    return to_data_uri(fig)


def against_budget(panels: dict[str, dict[str, list[tuple[float, float, float]]]]) -> str:
    """One panel per metric: a line per subset through (samples seen, mean), its 95% interval shaded."""
    fig, axes = new_figure(len(panels), cols=2, panel_size=(5.2, 3.2))
    for ax, (metric, lines) in zip(axes, panels.items()):
        for k, (subset, points) in enumerate(lines.items()):
            x, mean, half = (np.array(v, dtype=float) for v in zip(*sorted(points)))
            color = COLORS[k % len(COLORS)]
            ax.plot(x, mean, "o-", color=color, linewidth=1.4, markersize=4, label=subset)
            ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples seen", fontsize=9)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return to_data_uri(fig)


def entry_counts(panels: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> str:
    """One panel per balance rule (matches per entry over the pool, over the subset, t): entries sorted by their
    pool count, both counts on log axes, t as a dashed line; entries no caption contains are left out."""
    fig, axes = new_figure(len(panels), cols=2, panel_size=(5.6, 3.2))
    for ax, (name, (pool, subset, t)) in zip(axes, panels.items()):
        order = np.argsort(-pool, kind="stable")[:int((pool > 0).sum())]
        rank = np.arange(1, len(order) + 1)
        ax.plot(rank, pool[order], color=COLORS[0], linewidth=1.4, label="pool (before)")
        ax.plot(rank, subset[order], color=COLORS[1], linewidth=1.4, label="subset (after)")
        ax.axhline(t, color="#222", linestyle="--", linewidth=1.0, label=f"t = {t:,}")
        ax.set_xscale("log")
        ax.set_yscale("log", nonpositive="mask")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("entries, by pool count", fontsize=9)
        ax.set_ylabel("captions containing it", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, frameon=False)
    return to_data_uri(fig)
