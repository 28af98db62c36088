"""The paper's phase diagram of a phase sweep (identity 2 -> 1 or 3 -> 2), as a static PNG.

x is the feature probability p, y the extra feature's relative importance r, both on log axes;
each grid cell is filled with the class of its trained weights (verdicts.classify_phase_cells), a
cell without finite weights is left blank, and a cell clear of the boundaries whose class is not the
analytic phase is crossed out. The analytic boundaries are drawn on top: s*(r) (superposition
wins to its left) and, right of s*(1) = 4/7, the line r = 1 between "not represented" (below) and
"dedicated" (above). Drawn like run_figures.py: a plain Agg Figure of a fixed size under
style.STYLE, written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import matplotlib.style
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import Tensor

from superposition.analysis import geometry
from superposition.analysis.verdicts import PhaseCells, classify_phase_cells, grid_agreement
from superposition.figures import style
from superposition.store.results import RunResults

SIZE = (7.0, 5.0)  # inches, multiples of 1/4 like run_figures.py's
PHASE_COLORS = {
    geometry.NOT_REPRESENTED: "#d9d9d9",
    geometry.DEDICATED: "#4c72b0",
    geometry.SUPERPOSITION: "#dd8452",
}
PHASE_LABELS = {
    geometry.NOT_REPRESENTED: "extra feature not represented",
    geometry.DEDICATED: "dedicated dimension",
    geometry.SUPERPOSITION: "superposition",
}
BOUNDARY_POINTS = 200


def _log_edges(values: list[float]) -> Annotated[np.ndarray, "cell+1"]:
    """Cell edges around sorted, log-spaced values: geometric midpoints, half a step beyond."""
    logs = np.log(np.asarray(values, dtype=float))
    if logs.size == 1:
        return np.exp(logs + np.array([-0.5, 0.5]) * np.log(10))
    mids = (logs[1:] + logs[:-1]) / 2
    first, last = 2 * logs[0] - mids[0], 2 * logs[-1] - mids[-1]
    return np.exp(np.concatenate([[first], mids, [last]]))


def _class_codes(cells: PhaseCells) -> Annotated[np.ma.MaskedArray, "r p"]:
    """Rows by increasing r, columns by increasing p: the index of the class in
    geometry.PHASES, masked where the cell was skipped."""
    r_order, p_order = np.argsort(cells.r_values), np.argsort(cells.p_values)
    codes = np.full((len(r_order), len(p_order)), -1)
    for i, a in enumerate(r_order):
        for j, b in enumerate(p_order):
            cls = cells.classes[a][b]
            codes[i, j] = -1 if cls is None else geometry.PHASES.index(cls)
    return np.ma.masked_less(codes, 0)


def _disagreements(cells: PhaseCells) -> tuple[list[float], list[float]]:
    """(p, r) of the cells clear of the boundaries whose class is not the analytic phase."""
    xs, ys = [], []
    for r, row in zip(cells.r_values, cells.classes, strict=True):
        for p, cls in zip(cells.p_values, row, strict=True):
            clear = geometry.clear_of_boundary(r, p)
            if cls is not None and clear and cls != geometry.analytic_phase(r, p):
                xs.append(p)
                ys.append(r)
    return xs, ys


def _draw_boundaries(ax, r_edges: np.ndarray, p_edges: np.ndarray) -> None:
    r = np.geomspace(r_edges[0], r_edges[-1], BOUNDARY_POINTS)
    s = np.array([geometry.phase_boundary(float(v)) for v in r])
    ax.plot(s, r, color="black", linewidth=1.5)
    if r_edges[0] < 1 < r_edges[-1]:
        ax.plot([geometry.phase_boundary(1.0), p_edges[-1]], [1, 1], color="black", linewidth=1.5)


def _title(cells: PhaseCells, results: RunResults) -> str:
    fraction, n_cells = grid_agreement(cells)
    shape = f"identity {results.n_features} → {results.d_hidden}"
    if fraction is None:
        return f"phase diagram — {shape}: no cell clear of the boundaries"
    return f"phase diagram — {shape}: {fraction:.0%} of {n_cells} clear cells agree with theory"


def phase_figure(cells: PhaseCells, results: RunResults) -> Figure:
    fig = style.new_figure(*SIZE)
    margins = style.Margins(left=0.7, right=2.2, top=0.5, bottom=0.55)
    ax = style.axes_grid(fig, 1, 1, margins)[0, 0]
    p_edges = _log_edges(sorted(cells.p_values))
    r_edges = _log_edges(sorted(cells.r_values))
    colors = [PHASE_COLORS[phase] for phase in geometry.PHASES]
    cmap = ListedColormap(colors).with_extremes(bad=(1.0, 1.0, 1.0, 0.0))
    codes = _class_codes(cells)
    ax.pcolormesh(p_edges, r_edges, codes, cmap=cmap, vmin=-0.5, vmax=len(geometry.PHASES) - 0.5)
    _draw_boundaries(ax, r_edges, p_edges)
    xs, ys = _disagreements(cells)
    ax.scatter(xs, ys, marker="x", color="black", s=30, linewidths=1.0, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(p_edges[0], p_edges[-1])
    ax.set_ylim(r_edges[0], r_edges[-1])
    ax.set_xlabel("feature probability p  (1 − S)")
    ax.set_ylabel("relative importance r of the extra feature")
    handles = [
        Patch(color=PHASE_COLORS[phase], label=PHASE_LABELS[phase]) for phase in PHASE_LABELS
    ]
    handles.append(Line2D([], [], color="black", linewidth=1.5, label="analytic boundary"))
    handles.append(
        Line2D([], [], marker="x", color="black", linestyle="none", label="disagrees with theory")
    )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), frameon=False)
    style.suptitle(fig, _title(cells, results))
    return fig


def draw_phase_diagram(results: RunResults, weights: dict[str, Tensor], path: Path | str) -> Path:
    """Draw the phase diagram of a phase sweep into `path` (a PNG); return the path."""
    cells = classify_phase_cells(results, weights)
    with matplotlib.style.context(["default", style.STYLE]):
        return style.save_png(phase_figure(cells, results), Path(path))
