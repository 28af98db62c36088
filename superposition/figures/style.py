"""The look every figure shares: a fixed style, sizes in quarter inches, panels placed by fixed
margins (no layout engine), and atomic PNG writes. A figure is a plain Agg Figure, so drawing
never touches pyplot's backend, and its pixel size is figsize × DPI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from superposition.store.files import write_atomically

DPI = 100
COLORBAR = 1.0  # inches right of the panels for a colorbar

STYLE = {
    "savefig.bbox": "standard",
    "savefig.transparent": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "figure.titlesize": 10,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@dataclass(frozen=True)
class Margins:
    """Fixed room around and between panels, in inches (no layout engine: fast, predictable)."""

    left: float = 0.55
    right: float = COLORBAR
    top: float = 0.6
    bottom: float = 0.45
    wgap: float = 0.4
    hgap: float = 0.6


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def axes_grid(
    fig: Figure, nrows: int, ncols: int, margins: Margins, sharey: str | None = None
) -> np.ndarray:
    width, height = fig.get_size_inches()
    m = margins
    panel_w = (width - m.left - m.right - (ncols - 1) * m.wgap) / ncols
    panel_h = (height - m.top - m.bottom - (nrows - 1) * m.hgap) / nrows
    grid = {
        "left": m.left / width,
        "right": 1 - m.right / width,
        "bottom": m.bottom / height,
        "top": 1 - m.top / height,
        "wspace": m.wgap / panel_w,
        "hspace": m.hgap / panel_h,
    }
    return fig.subplots(nrows, ncols, squeeze=False, sharey=sharey, gridspec_kw=grid)


def colorbar(fig: Figure, mappable, axes, label: str):
    """A colorbar in the right margin, as tall as the given axes."""
    boxes = [ax.get_position() for ax in np.ravel(axes)]
    y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    width, _ = fig.get_size_inches()
    cax = fig.add_axes(
        (1 - (COLORBAR - 0.2) / width, y0 + 0.05 * (y1 - y0), 0.12 / width, 0.9 * (y1 - y0))
    )
    return fig.colorbar(mappable, cax=cax, label=label)


def suptitle(fig: Figure, text: str) -> None:
    _, height = fig.get_size_inches()
    fig.suptitle(text, y=1 - 0.08 / height, va="top")


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG at exactly figsize × DPI pixels, atomically."""
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def to_rgba(fig: Figure) -> Annotated[np.ndarray, "height width 4"]:
    """The figure rendered in memory, uint8 RGBA (e.g. for an image logger)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    with matplotlib.style.context(["default", STYLE]):
        canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def draw_each(
    makers: dict[str, Callable[[Any], Figure]],
    subject: Any,
    plots_dir: Path,
    on_error: Callable[[str, Exception], None] | None = None,
) -> list[Path]:
    """makers[name](subject) saved as plots_dir/<name>.png in the shared style; the PNG paths.
    With on_error, a figure that fails is reported as on_error(name, error) and skipped; without
    it the error propagates."""
    paths = []
    for name, make in makers.items():
        try:
            with matplotlib.style.context(["default", STYLE]):
                paths.append(save_png(make(subject), Path(plots_dir) / f"{name}.png"))
        except Exception as err:
            if on_error is None:
                raise
            on_error(name, err)
    return paths
