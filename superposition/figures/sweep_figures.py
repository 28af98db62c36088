"""Figures across a sweep's jobs, in the look of run_figures.py (sweep/collect.py draws them).

They take plain data: one SweepJob per finished job (its label, its results and, for a 2D model,
its feature directions), never the sweep's manifest.

- metrics.png: each per-level number that some job has (held-out loss, features represented,
  dimensions per feature, monosemantic fraction) in a panel against the feature probability p on
  a log axis; one line per job, labelled by its overrides. A phase sweep's job (relative_importance
  set) gets one line per r, coloured by r, its jobs told apart by line style and marker.
- features_2d.png (jobs with d_hidden == 2): the features-in-2D panel of run_figures.py for every
  job (rows) and level (columns); one importance scale for all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.textpath import TextToPath
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from superposition.figures.run_figures import features_2d_limit, features_2d_panel
from superposition.figures.style import (
    COLORBAR,
    Margins,
    axes_grid,
    colorbar,
    draw_each,
    new_figure,
    suptitle,
)
from superposition.store.results import LevelResult, RunResults

# per-level numbers drawn against p: key (eval_loss, or a name in LevelResult.metrics) → axis label
METRIC_PANELS = {
    "eval_loss": "held-out loss (best restart)",
    "features_represented": "features represented",
    "dimensions_per_feature": "dimensions per feature",
    "monosemantic_fraction": "monosemantic fraction of neurons",
}
# inches, multiples of 1/4 like run_figures.py's
METRIC_PANEL = (3.5, 2.5)
GRID_PANEL = 2.0  # one level's features-in-2D panel
MIN_WIDTH = 6.0
ROW_LABEL_RISE = 0.28  # inches from a row's panels up to its label, clear of the panels' titles
# a job with more levels (a phase sweep's grid) is left out of features_2d.png
MAX_GRID_LEVELS = 12
# a label wider than this (inches) is broken after its commas
LABEL_WIDTH = 3.0
LEGEND_FONT = 7.0  # points, style.STYLE's legend.fontsize
LINE_STYLES = ["-", "--", ":", "-."]
# the values of p themselves label the axis when there are at most this many
MAX_P_TICKS = 7
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


@dataclass(frozen=True, eq=False)
class SweepJob:
    """One finished job of a sweep, as its figures draw it."""

    # what sets the job apart: its overrides of the swept keys, e.g. "task=abs, model.d_hidden=2"
    label: str
    results: RunResults
    # every level's feature directions (level, 2, feature) when d_hidden == 2, else None
    features: Annotated[np.ndarray, "level hidden feature"] | None = None
    # the parameter whose columns they are (W, or W1 for abs)
    feature_name: str = "W"


def _quarter(inches: float) -> float:
    """Rounded up to a multiple of 1/4, so that inches × DPI is an exact integer."""
    return math.ceil(inches * 4 - 1e-9) / 4


def _text_width(text: str, size: float) -> float:
    """Inches the text takes in the style's font (its widest line)."""
    props = FontProperties(size=size)
    widths = [
        TextToPath().get_text_width_height_descent(line, props, ismath=False)[0]
        for line in text.split("\n")
    ]
    return max(widths) / 72


def wrap_label(label: str, width: float = LABEL_WIDTH, size: float = LEGEND_FONT) -> str:
    """The label on one line, or broken after its commas into lines of at most `width` inches."""
    if _text_width(label, size) <= width:
        return label
    lines: list[str] = []
    for part in label.split(", "):
        if lines and _text_width(f"{lines[-1]}, {part}", size) <= width:
            lines[-1] = f"{lines[-1]}, {part}"
        else:
            lines.append(part)
    return ",\n".join(lines)


def level_value(level: LevelResult, key: str) -> float:
    """The level's eval_loss or metric `key` as a float; NaN where it has none."""
    value = level.eval_loss if key == "eval_loss" else level.metrics.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def metric_keys(jobs: Sequence[SweepJob]) -> list[str]:
    """The keys of METRIC_PANELS that some job has a number for at some level."""
    return [
        key
        for key in METRIC_PANELS
        if any(
            math.isfinite(level_value(level, key)) for job in jobs for level in job.results.levels
        )
    ]


@dataclass(frozen=True)
class Curve:
    """One line of a metric panel: a job's levels at one r (None outside a phase sweep), by p."""

    job: int
    r: float | None
    levels: list[LevelResult]


def curves(jobs: Sequence[SweepJob]) -> list[Curve]:
    """A line per job, or per (job, r) for a phase sweep's job; levels sorted by p."""
    lines = []
    for index, job in enumerate(jobs):
        results = job.results
        if results.relative_importance:
            try:
                r_values, p_values = results.phase_axes()
            except ValueError:
                r_values, p_values = [], []
            for r_index, r in enumerate(r_values):
                levels = [
                    results.levels[results.level_at(r_index, p_index)]
                    for p_index in range(len(p_values))
                ]
                lines.append(Curve(index, r, sorted(levels, key=lambda lv: lv.feature_probability)))
            if r_values:
                continue
        levels = sorted(results.levels, key=lambda lv: lv.feature_probability)
        lines.append(Curve(index, None, levels))
    return lines


def _job_colors(n: int) -> list:
    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:n])
    return list(matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n)))


def _log_p_axis(ax, p_values: Sequence[float]) -> None:
    """A log axis of p, ticked at the sweep's own values when they are few and far enough apart
    to label, else at powers of 10."""
    ax.set_xscale("log")
    ticks = sorted({p for p in p_values if p > 0})
    if 0 < len(ticks) <= MAX_P_TICKS and all(b / a >= 2 for a, b in itertools.pairwise(ticks)):
        ax.set_xticks(ticks)
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("feature probability p")


def metrics_figure(jobs: Sequence[SweepJob]) -> Figure:
    """Every metric of metric_keys against p, a line per job (per job and r in a phase sweep)."""
    keys = metric_keys(jobs)
    if not keys:
        raise ValueError("no job has a per-level number to draw")
    lines = curves(jobs)
    phase = any(line.r is not None for line in lines)
    labels = [wrap_label(job.label) for job in jobs]
    # the legend in the right margin: handle, padding and the widest label
    legend_w = max(_text_width(label, LEGEND_FONT) for label in labels) + 0.45
    legend_lines = sum(label.count("\n") + 1 for label in labels) + 1  # + its title
    legend_h = legend_lines * LEGEND_FONT * 1.7 / 72 + 0.3
    ncols = 1 if len(keys) == 1 else 2
    nrows = math.ceil(len(keys) / ncols)
    m = Margins(
        left=0.75,
        right=_quarter(legend_w + 0.15 + (COLORBAR if phase else 0.0)),
        top=0.75,
        bottom=0.55,
        wgap=0.85,
        hgap=0.75,
    )
    width = _quarter(m.left + m.right + ncols * METRIC_PANEL[0] + (ncols - 1) * m.wgap)
    height = _quarter(
        max(m.top + m.bottom + nrows * METRIC_PANEL[1] + (nrows - 1) * m.hgap, legend_h + m.top)
    )
    fig = new_figure(width, height)
    axes = axes_grid(fig, nrows, ncols, m).ravel()
    job_colors = _job_colors(len(jobs))
    r_values = [line.r for line in lines if line.r is not None]
    r_norm = LogNorm(min(r_values), max(r_values)) if phase and min(r_values) > 0 else None
    if phase and r_norm is None:
        r_norm = Normalize(min(r_values), max(r_values))
    r_cmap = matplotlib.colormaps["viridis"]
    for ax, key in zip(axes, keys, strict=False):
        positive = True
        for line in lines:
            p = np.array([lv.feature_probability for lv in line.levels], dtype=float)
            y = np.array([level_value(lv, key) for lv in line.levels])
            if not np.isfinite(y).any():
                continue
            positive &= bool((y[np.isfinite(y)] > 0).all())
            if phase:
                color = "0.4" if line.r is None else r_cmap(r_norm(line.r))
                style = LINE_STYLES[line.job % len(LINE_STYLES)]
                marker = MARKERS[line.job % len(MARKERS)]
            else:
                color, style, marker = job_colors[line.job], "-", "o"
            ax.plot(p, y, style, color=color, marker=marker, markersize=3.5, linewidth=1.2)
        _log_p_axis(ax, [lv.feature_probability for job in jobs for lv in job.results.levels])
        if key == "eval_loss" and positive:
            ax.set_yscale("log")
        if key == "features_represented":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(METRIC_PANELS[key])
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    if phase:
        handles = [
            Line2D(
                [],
                [],
                linestyle=LINE_STYLES[i % len(LINE_STYLES)],
                marker=MARKERS[i % len(MARKERS)],
                color="black",
                markersize=3.5,
                linewidth=1.2,
            )
            for i in range(len(jobs))
        ]
        colorbar(fig, ScalarMappable(r_norm, r_cmap), axes[:ncols], "relative importance r")
    else:
        handles = [
            Line2D([], [], color=c, marker="o", markersize=3.5, linewidth=1.2) for c in job_colors
        ]
    right_of_panels = 1 - (m.right - 0.1) / width
    fig.legend(
        handles,
        labels,
        title="job",
        loc="upper left",
        bbox_to_anchor=(right_of_panels, 1 - m.top / height),
        frameon=False,
        alignment="left",
    )
    what = "a line per job and r" if phase else "a line per job"
    suptitle(fig, f"the sweep against feature probability: {len(jobs)} jobs, {what}")
    return fig


def grid_jobs(jobs: Sequence[SweepJob]) -> list[SweepJob]:
    """The jobs features_2d.png draws: 2D models whose directions were read, with at most
    MAX_GRID_LEVELS levels."""
    return [
        job
        for job in jobs
        if job.results.d_hidden == 2
        and job.features is not None
        and job.results.n_levels <= MAX_GRID_LEVELS
    ]


def _level_title(level: LevelResult) -> str:
    title = f"p = {level.feature_probability:g}"
    if level.relative_importance is not None:
        title += f", r = {level.relative_importance:g}"
    return title


def features_2d_grid_figure(jobs: Sequence[SweepJob]) -> Figure:
    """The features in 2D of every job of grid_jobs (rows) at every level (columns)."""
    rows = grid_jobs(jobs)
    if not rows:
        raise ValueError("no job has a 2D model to draw")
    ncols = max(job.results.n_levels for job in rows)
    labels = [f"{wrap_label(job.label, size=8.0)}  ({job.feature_name})" for job in rows]
    # room above each row for its label (ROW_LABEL_RISE above the panels, over their titles)
    label_h = max(label.count("\n") + 1 for label in labels) * 8 * 1.3 / 72
    left, wgap, hgap, top = 0.45, 0.35, 0.6 + label_h, 0.55 + ROW_LABEL_RISE + label_h
    panels_w = ncols * GRID_PANEL + (ncols - 1) * wgap
    panels_h = len(rows) * GRID_PANEL + (len(rows) - 1) * hgap
    label_w = max(_text_width(label, 8.0) for label in labels)
    width = _quarter(max(left + max(panels_w, label_w) + COLORBAR, MIN_WIDTH))
    height = _quarter(top + panels_h + 0.35)
    m = Margins(
        left=left,
        right=width - left - panels_w,
        top=top,
        bottom=height - top - panels_h,
        wgap=wgap,
        hgap=hgap,
    )
    fig = new_figure(width, height)
    axes = axes_grid(fig, len(rows), ncols, m)
    importance = np.concatenate(
        [
            np.array([lv.importance for lv in job.results.levels], dtype=float).ravel()
            for job in rows
        ]
    )
    norm = Normalize(vmin=float(importance.min()), vmax=float(importance.max()))
    for row, (job, label) in enumerate(zip(rows, labels, strict=True)):
        W = job.features
        finite = [bool(np.isfinite(W[lv]).all()) for lv in range(len(W))]
        lim = features_2d_limit(W, finite)
        for col in range(ncols):
            ax = axes[row, col]
            if col >= job.results.n_levels:
                ax.set_axis_off()
                continue
            level = job.results.levels[col]
            ax.set_title(_level_title(level))
            if not finite[col]:
                ax.text(
                    0.5, 0.5, "no finite restart", ha="center", va="center", transform=ax.transAxes
                )
                ax.set_axis_off()
                continue
            importance_row = np.asarray(level.importance, dtype=float)
            features_2d_panel(ax, W[col], importance_row, norm, lim)
        top = axes[row, 0].get_position().y1
        fig.text(
            m.left / width,
            top + ROW_LABEL_RISE / height,
            label,
            ha="left",
            va="bottom",
            fontsize=8,
            fontweight="bold",
        )
    colorbar(fig, ScalarMappable(norm, matplotlib.colormaps["viridis"]), axes, "importance")
    suptitle(fig, f"features in 2D across the sweep: {len(rows)} jobs × their levels")
    return fig


# every figure this module draws, by file stem
SWEEP_FIGURES = ("metrics", "features_2d")


def sweep_figure_makers(
    jobs: Sequence[SweepJob],
) -> dict[str, Callable[[Sequence[SweepJob]], Figure]]:
    """The figures that apply to these jobs, by file stem."""
    makers = {}
    if jobs and metric_keys(jobs):
        makers["metrics"] = metrics_figure
    if grid_jobs(jobs):
        makers["features_2d"] = features_2d_grid_figure
    return makers


def draw_sweep(
    jobs: Sequence[SweepJob],
    plots_dir: Path,
    on_error: Callable[[str, Exception], None] | None = None,
) -> list[Path]:
    """Draw every applicable sweep figure into plots_dir; return the PNG paths. With on_error, a
    figure that fails is reported as on_error(name, error) and skipped."""
    return draw_each(sweep_figure_makers(jobs), jobs, plots_dir, on_error)
