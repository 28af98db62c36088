"""Static figures of a finished run, in the look of the course and the paper.

Every figure is drawn from what a job leaves in its output directory (results.json,
weights.safetensors, history.safetensors) and saved as a PNG under OUTPUT_DIR/plots/, atomically.
Figures are plain `matplotlib.figure.Figure` objects on the Agg canvas (pyplot is never touched,
so importing this module changes no backend), drawn under a fixed style, so a figure's pixel size
is its figsize × DPI and nothing else: sizes are multiples of a quarter inch, exact in floating
point.

- features_2d.png (d_hidden == 2 only): each feature a line from the origin to its column of W
  (W1 for abs), coloured by importance; one panel per level.
- wtw.png: identity WᵀW; abs W1 and W2ᵀ (both neuron × feature); diverging colours centred at 0.
- neurons.png (abs, or identity with hidden_relu: where neurons form a privileged basis): one
  stacked bar per neuron, positive exposures stacked up from 0 and negative ones down, coloured
  by the feature's interference; abs adds W1 and W2ᵀ coloured by feature, with the features
  computed for one sign of x only outlined in black.
- dimensionality.png: D_i of every feature against 1 / p with the curve d_hidden / ‖W‖_F² and the
  "sticky" fractions 1, 3/4, 2/3, 1/2, 2/5, 3/8.
- feature_loss.png: each feature's held-out loss over its loss when dropped, one panel per
  level; abs bars coloured by the signs of |x| the model computes for the feature.
- loss.png: training loss per level (best restart, min–max band over restarts) and the held-out
  loss of every restart with the selected one starred; the first panel needs history.safetensors.
- restarts.png (results with restart_stats): every finite restart's held-out loss over its
  level's best, minus 1 (log axis; the best on the bottom line, the kept one starred), the count
  within 1 % above each level; below, per geometry (analysis/restarts.py) the restarts that show
  it. A phase sweep gets none (its many cells: results.json).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection, QuadMesh
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Patch
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from superposition import tasks
from superposition.analysis import metrics
from superposition.analysis.restarts import NEAR_BEST
from superposition.analysis.verdicts import classify_phase_cells
from superposition.figures.phase_figure import phase_figure
from superposition.figures.style import (
    COLORBAR,
    Margins,
    axes_grid,
    colorbar,
    draw_each,
    new_figure,
    suptitle,
)
from superposition.store.results import Run, load_run
from superposition.tasks.task import Shape

PLOTS_DIR = "plots"
# inches; multiples of 1/4 so that inches × DPI is an exact integer
PANEL = 2.5  # one level's panel, square figures
MATRIX_ROW = 1.75  # one row of abs W1 / W2ᵀ heatmaps
BAR_ROW = 2.25  # one row of neuron bars
HEADER = 0.75  # room for the suptitle and axis labels
MIN_WIDTH = 6.0  # of a figure with a panel per level, so that its title fits
SINGLE = (8.0, 5.0)  # dimensionality.png
LOSS_PANEL = (6.5, 4.75)  # each panel of loss.png

STICKY_FRACTIONS = [(1, "1"), (3 / 4, "3/4"), (2 / 3, "2/3"), (1 / 2, "1/2"), (2 / 5, "2/5")]
STICKY_FRACTIONS += [(3 / 8, "3/8")]


# Figures draw a store.results.Run: results.json, the selected weights (level axis first) and,
# when present, the loss record. What they need of it beyond its fields:


def feature_name(run: Run) -> str:
    """The parameter whose columns are the features (W, or W1 for abs)."""
    return tasks.get(run.task).feature_weights


def decoder_name(run: Run) -> str | None:
    """The (feature, hidden) parameter of an untied task (W2 for abs), None when tied."""
    return tasks.get(run.task).decoder_weights


def privileged(run: Run) -> bool:
    r = run.results
    shape = Shape(r.n_features, r.d_hidden, r.hidden_relu)
    return metrics.has_privileged_basis(run.task, shape)


def feature_array(run: Run) -> Annotated[np.ndarray, "level hidden feature"]:
    return run.features.numpy()


def feature_tensor(run: Run, level: int) -> Annotated[Tensor, "hidden feature"]:
    return metrics.feature_matrix(run.task, run.weights)[level]


def finite_levels(run: Run) -> list[bool]:
    """Per level: did some restart stay finite (else its weights are NaN)."""
    return [
        bool(all(np.isfinite(v[level].numpy()).all() for v in run.weights.values()))
        for level in range(run.n_levels)
    ]


def one_sign_features(run: Run, level: int) -> Annotated[np.ndarray, "feature"]:
    """abs: True for the features computed for one sign of x only (metrics.sign_counts)."""
    weights = {k: v[level] for k, v in run.weights.items()}
    computed = metrics.computed_fraction(weights) >= metrics.COMPUTED_SHARE
    return (computed.any(dim=-2) & ~computed.all(dim=-2)).numpy()


def importance_matrix(run: Run) -> Annotated[np.ndarray, "level feature"]:
    return np.array([lv.importance for lv in run.levels], dtype=float)


def probabilities(run: Run) -> list[float]:
    return [lv.feature_probability for lv in run.levels]


# --------------------------------------------------------------------------------------- helpers


def _levels_width(n_levels: int) -> float:
    """Width of a figure with one panel per level: the panels and a colorbar, at least MIN_WIDTH."""
    return max(n_levels * PANEL + COLORBAR, MIN_WIDTH)


def _header(run: Run, what: str) -> str:
    r = run.results
    relu = ", hidden ReLU" if r.hidden_relu else ""
    return f"{what} — {run.task}: n_features={r.n_features}, d_hidden={r.d_hidden}{relu}"


def _level_title(p: float) -> str:
    return f"p = {p:g}"


def _blank(ax, p: float, title: bool = True) -> None:
    if title:
        ax.set_title(_level_title(p))
    ax.text(0.5, 0.5, "no finite restart", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()  # not set_yticks([]): that would clear the ticks of a shared row


def _importance_norm(run: Run) -> Normalize:
    importance = importance_matrix(run)
    return Normalize(vmin=float(importance.min()), vmax=float(importance.max()))


def _symmetric_limit(arrays: list[np.ndarray]) -> float:
    finite = [np.abs(a).max() for a in arrays if a.size and np.isfinite(a).all()]
    return max([*finite, 1e-12])


def _feature_colors(n_features: int) -> ListedColormap:
    """Distinct colours by feature: tab10 / tab20 when they suffice, else samples of turbo."""
    if n_features <= 10:
        colors = matplotlib.colormaps["tab10"].colors[:n_features]
    elif n_features <= 20:
        colors = matplotlib.colormaps["tab20"].colors[:n_features]
    else:
        colors = matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n_features))
    return ListedColormap(colors, name="features")


def _stacked_bars(
    ax,
    M: Annotated[np.ndarray, "hidden feature"],
    colors: np.ndarray,
    outlined_features: np.ndarray | None = None,
) -> None:
    """One bar per neuron (row of M): positive entries stacked up from 0 and negative ones down,
    in feature order; entry (h, i) filled with colors[i]; the entries of the features where
    outlined_features is True get a black outline.

    Drawn as one QuadMesh, so thousands of segments cost one call: vertex columns are the bars'
    left and right edges, rows the stack boundaries (the positive stack, then the negative one).
    Cells between bars and the cell joining the two stacks are transparent.
    """
    n_hidden, n_features = M.shape
    pos, neg = np.clip(M, 0, None).T, np.clip(M, None, 0).T
    zero = np.zeros((1, n_hidden))
    boundaries = np.concatenate([zero, pos.cumsum(0), zero, neg.cumsum(0)])  # (2f+2, hidden)
    y = np.repeat(boundaries, 2, axis=1)
    x = np.broadcast_to(
        np.stack([np.arange(n_hidden) - 0.4, np.arange(n_hidden) + 0.4], 1), (n_hidden, 2)
    ).reshape(-1)
    coordinates = np.stack([np.broadcast_to(x, y.shape), y], axis=-1)
    face = np.zeros((2 * n_features + 1, 2 * n_hidden - 1, 4))
    face[:n_features, 0::2] = colors[:, None]
    face[n_features + 1 :, 0::2] = colors[:, None]
    edge = np.zeros_like(face)
    width = np.zeros(face.shape[:2])
    if n_features <= 30:  # thin white outlines while segments are few enough to see
        edge[face[..., 3] > 0] = (1.0, 1.0, 1.0, 1.0)
        width[face[..., 3] > 0] = 0.3
    if outlined_features is not None:
        # only segments of non-zero height: a zero one would draw a stray line
        marked = np.zeros(face.shape[:2], dtype=bool)
        marked[:n_features, 0::2] = outlined_features[:, None] & (M.T > 0)
        marked[n_features + 1 :, 0::2] = outlined_features[:, None] & (M.T < 0)
        edge[marked] = (0.0, 0.0, 0.0, 1.0)
        width[marked] = 0.6
    mesh = QuadMesh(
        coordinates,
        facecolors=face.reshape(-1, 4),
        edgecolors=edge.reshape(-1, 4),
        linewidths=width.reshape(-1),
    )
    ax.add_collection(mesh, autolim=False)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlim(-0.6, n_hidden - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))


# --------------------------------------------------------------------------------------- figures


def features_2d_limit(
    W: Annotated[np.ndarray, "level hidden feature"], finite: list[bool]
) -> float:
    """Half the width of a features-in-2D panel: the unit circle, or the longest feature of the
    finite levels with room to spare."""
    norms = [np.linalg.norm(W[lv], axis=0).max() for lv in range(len(W)) if finite[lv]]
    return max([1.0, *[1.15 * n for n in norms]])


def features_2d_panel(
    ax,
    W: Annotated[np.ndarray, "2 feature"],
    importance: Annotated[np.ndarray, "feature"],
    norm: Normalize,
    lim: float,
) -> None:
    """One level's features in 2D on `ax`: each feature a line from the origin to its column of W,
    coloured by importance (viridis under `norm`), the unit circle dotted, axes ±lim."""
    cmap = matplotlib.colormaps["viridis"]
    ax.set_aspect("equal")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.add_patch(Circle((0, 0), 1.0, fill=False, linestyle=":", color="0.75", linewidth=0.8))
    ax.axhline(0, color="0.85", linewidth=0.6, zorder=0)
    ax.axvline(0, color="0.85", linewidth=0.6, zorder=0)
    order = np.argsort(importance)  # most important drawn last, on top
    ends = W[:, order].T
    colors = cmap(norm(importance[order]))
    segments = np.stack([np.zeros_like(ends), ends], axis=1)
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=2.0))
    ax.scatter(ends[:, 0], ends[:, 1], c=colors, s=22, zorder=3, edgecolors="none")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3))


def features_2d_figure(run: Run) -> Figure:
    """The course's pentagon picture: each feature a line from the origin to its column."""
    W = feature_array(run)
    n_levels = run.n_levels
    fig = new_figure(_levels_width(n_levels), PANEL + HEADER)
    axes = axes_grid(fig, 1, n_levels, Margins(left=0.45, bottom=0.35, wgap=0.35))[0]
    cmap, norm = matplotlib.colormaps["viridis"], _importance_norm(run)
    finite = finite_levels(run)
    lim = features_2d_limit(W, finite)
    importance = importance_matrix(run)
    for level, (ax, p) in enumerate(zip(axes, probabilities(run), strict=True)):
        if not finite[level]:
            _blank(ax, p)
            continue
        ax.set_title(_level_title(p))
        features_2d_panel(ax, W[level], importance[level], norm, lim)
    suptitle(fig, _header(run, f"features in 2D (columns of {feature_name(run)})"))
    colorbar(fig, ScalarMappable(norm, cmap), axes, "importance")
    return fig


def wtw_figure(run: Run) -> Figure:
    """A tied model (identity): WᵀW (feature × feature); an untied one (abs): W1 and W2ᵀ
    (neuron × feature). One colour scale per row, symmetric about 0 and shared by the levels."""
    n_levels = run.n_levels
    encoder, decoder = feature_name(run), decoder_name(run)
    if decoder is not None:
        w = run.weights
        rows = [
            (encoder, w[encoder].double().numpy(), f"{encoder}\nneuron"),
            (
                f"{decoder}$^\\top$",
                w[decoder].double().numpy().transpose(0, 2, 1),
                f"{decoder}$^\\top$\nneuron",
            ),
        ]
        row_height, aspect = MATRIX_ROW, "auto"
    else:
        W = feature_array(run)
        rows = [(f"{encoder}$^\\top${encoder}", W.transpose(0, 2, 1) @ W, "feature")]
        row_height, aspect = PANEL, "equal"
    fig = new_figure(_levels_width(n_levels), len(rows) * row_height + HEADER)
    axes = axes_grid(fig, len(rows), n_levels, Margins(left=0.65, wgap=0.45, hgap=0.45))
    finite = finite_levels(run)
    cmap = matplotlib.colormaps["RdBu"]
    for r, (name, matrices, ylabel) in enumerate(rows):
        limit = _symmetric_limit([matrices[lv] for lv in range(n_levels) if finite[lv]])
        norm = Normalize(vmin=-limit, vmax=limit)
        for level, p in enumerate(probabilities(run)):
            ax = axes[r, level]
            if not finite[level]:
                _blank(ax, p, title=r == 0)
                continue
            ax.imshow(matrices[level], cmap=cmap, norm=norm, interpolation="nearest", aspect=aspect)
            if r == 0:
                ax.set_title(_level_title(p))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            if level == 0:
                ax.set_ylabel(ylabel)
            if r == len(rows) - 1:
                ax.set_xlabel("feature")
        colorbar(fig, ScalarMappable(norm, cmap), axes[r, :], name)
    what = "weights" if decoder is not None else f"{encoder}$^\\top${encoder}"
    suptitle(fig, _header(run, what))
    return fig


def _stack_limits(matrices: list[np.ndarray]) -> tuple[float, float]:
    """y range holding every neuron's positive and negative stack."""
    low = min([0.0, *[float(np.clip(m, None, 0).sum(-1).min()) for m in matrices]])
    high = max([0.0, *[float(np.clip(m, 0, None).sum(-1).max()) for m in matrices]])
    pad = 0.05 * max(high - low, 1e-6)
    return low - pad, high + pad


def neurons_figure(run: Run) -> Figure:
    """Per-neuron stacked exposure bars (rows of W, or W1), coloured by each feature's
    interference; abs adds W1 and W2ᵀ coloured by feature, to follow a feature in and out."""
    n_levels = run.n_levels
    W = feature_array(run)
    n_features = W.shape[-1]
    finite = finite_levels(run)
    live = [lv for lv in range(n_levels) if finite[lv]]
    interference = {lv: metrics.interference(feature_tensor(run, lv)).numpy() for lv in live}
    interference_cmap = matplotlib.colormaps["viridis"]
    # interference grows with the other features' norms (W1 of abs is not unit-scaled): the scale
    # is shared by the levels and reaches at least 1
    top = max([1.0, *[float(v.max()) for v in interference.values()]])
    interference_norm = Normalize(vmin=0.0, vmax=top)
    feature_cmap = _feature_colors(n_features)
    feature_norm = BoundaryNorm(np.arange(n_features + 1) - 0.5, n_features)
    by_feature = feature_cmap(np.arange(n_features))
    name, decoder = feature_name(run), decoder_name(run)
    rows: list[tuple[str, np.ndarray, Callable[[int], np.ndarray], bool]] = [
        (
            f"{name} exposure\n(by interference)",
            W,
            lambda lv: interference_cmap(interference_norm(interference[lv])),
            False,
        )
    ]
    one_sign = {}
    if decoder is not None:
        W2t = run.weights[decoder].double().numpy().transpose(0, 2, 1)
        rows.append((f"{name} exposure\n(by feature)", W, lambda lv: by_feature, True))
        rows.append((f"{decoder}$^\\top$ exposure\n(by feature)", W2t, lambda lv: by_feature, True))
    if metrics.computes_signs(run.task):
        one_sign = {lv: one_sign_features(run, lv) for lv in live}
    fig = new_figure(_levels_width(n_levels), len(rows) * BAR_ROW + HEADER)
    margins = Margins(left=0.75, wgap=0.25, hgap=0.45)
    axes = axes_grid(fig, len(rows), n_levels, margins, sharey="row")
    for r, (label, matrices, colors_of, mark_signs) in enumerate(rows):
        for level, p in enumerate(probabilities(run)):
            ax = axes[r, level]
            if not finite[level]:
                _blank(ax, p, title=r == 0)
                continue
            marked = one_sign.get(level) if mark_signs else None
            _stacked_bars(ax, matrices[level], colors_of(level), marked)
            if r == 0:
                title = _level_title(p)
                if level in one_sign:
                    title += f"\n{_one_sign_text(one_sign[level])}"
                ax.set_title(title)
            if level == 0:
                ax.set_ylabel(label)
            if r == len(rows) - 1:
                ax.set_xlabel("neuron")
        if live:
            axes[r, 0].set_ylim(*_stack_limits([matrices[lv] for lv in live]))
    colorbar(fig, ScalarMappable(interference_norm, interference_cmap), axes[0, :], "interference")
    if len(rows) > 1:
        bar = colorbar(fig, ScalarMappable(feature_norm, feature_cmap), axes[1:, :], "feature")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    what = "neurons: stacked exposure to each feature"
    if one_sign:
        what += " (outlined: features computed for one sign only)"
    suptitle(fig, _header(run, what))
    return fig


def _one_sign_text(features: np.ndarray, most: int = 6) -> str:
    listed = np.flatnonzero(features).tolist()
    if not listed:
        return "one sign: none"
    more = f" +{len(listed) - most}" if len(listed) > most else ""
    return f"one sign: {', '.join(map(str, listed[:most]))}{more}"


def feature_loss_figure(run: Run) -> Figure:
    """Each feature's held-out loss over its loss when dropped (results.json
    feature_loss_ratio): 1 = dropped, 0 = computed exactly; for abs, one sign only ≈ 0.5.
    abs bars are coloured by which signs of |x| the model computes (computed_fraction)."""
    n_levels = run.n_levels
    fig = new_figure(_levels_width(n_levels), BAR_ROW + HEADER)
    axes = axes_grid(fig, 1, n_levels, Margins(left=0.75, wgap=0.25), sharey="row")
    finite = finite_levels(run)
    palette = {"both": "#2b83ba", "one": "#d7191c", "neither": "#bababa"}
    signs = metrics.computes_signs(run.task)
    for level, p in enumerate(probabilities(run)):
        ax = axes[0, level]
        ratio = run.levels[level].feature_loss_ratio
        if not finite[level] or ratio is None:
            _blank(ax, p)
            continue
        values = np.array([np.nan if v is None else v for v in ratio], dtype=float)
        if signs:
            computed = (
                metrics.computed_fraction({k: v[level] for k, v in run.weights.items()}).numpy()
                >= metrics.COMPUTED_SHARE
            )
            kind = np.where(computed.all(0), "both", np.where(computed.any(0), "one", "neither"))
        else:
            kind = np.where(
                metrics.represented(feature_tensor(run, level)).numpy(), "both", "neither"
            )
        ax.bar(
            np.arange(values.size),
            np.nan_to_num(values),
            width=0.85,
            color=[palette[k] for k in kind],
            linewidth=0,
        )
        ax.axhline(1.0, color="black", linewidth=0.6)
        if signs:
            ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
        ax.set_title(_level_title(p))
        ax.set_xlabel("feature (by importance)")
        ax.set_xlim(-0.6, values.size - 0.4)
    axes[0, 0].set_ylabel("loss / loss when dropped")
    axes[0, 0].set_ylim(0, 1.15)
    labels = (
        {"both": "|x| for both signs", "one": "one sign only", "neither": "neither"}
        if signs
        else {"both": "represented", "neither": "not represented"}
    )
    handles = [Patch(color=palette[k], label=text) for k, text in labels.items()]
    fig.legend(handles=handles, loc="upper right", frameon=False, fontsize=7)
    what = "loss per feature over its loss when dropped"
    if signs:
        what += " (dotted: 0.5, one sign only)"
    suptitle(fig, _header(run, what))
    return fig


def dimensionality_figure(run: Run) -> Figure:
    """D_i of every feature of every level against 1 / p, with d_hidden / ‖W‖_F²."""
    fig = new_figure(*SINGLE)
    ax = axes_grid(fig, 1, 1, Margins(left=0.7, right=1.6, top=0.45, bottom=0.55))[0, 0]
    finite = finite_levels(run)
    importance = importance_matrix(run)
    cmap, norm = matplotlib.colormaps["viridis"], _importance_norm(run)
    xs, ys, cs, curve_x, curve_y = [], [], [], [], []
    for level, p in enumerate(probabilities(run)):
        if not finite[level]:
            continue
        W_level = feature_tensor(run, level)
        dims = metrics.dimensionality(W_level).numpy()
        xs.append(np.full(dims.shape, 1 / p))
        ys.append(dims)
        cs.append(importance[level])
        per_feature = float(metrics.dimensions_per_feature(W_level))
        if np.isfinite(per_feature):
            curve_x.append(1 / p)
            curve_y.append(per_feature)
    for value, _ in STICKY_FRACTIONS:
        ax.axhline(value, color="0.6", linestyle="--", linewidth=0.8, zorder=0)
    top = max([1.1, *[1.05 * y for y in curve_y]])
    if xs:
        ax.scatter(
            np.concatenate(xs),
            np.concatenate(ys),
            c=np.concatenate(cs),
            cmap=cmap,
            norm=norm,
            s=18,
            alpha=0.7,
            edgecolors="none",
            label=r"$D_i$ of each feature",
        )
        ax.plot(
            curve_x,
            curve_y,
            color="black",
            marker="o",
            markersize=4,
            linewidth=1.5,
            label=r"$d_{hidden}\,/\,\|W\|_F^2$",
        )
        x_all = np.concatenate(xs)
        ax.set_xlim(x_all.min() / 1.6, x_all.max() * 1.6)
        legend = ax.legend(loc="upper left")
        legend.legend_handles[0].set_color("0.45")  # the scatter's key, not one importance
    else:
        ax.text(0.5, 0.5, "no finite level", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_ylim(0, top)
    ax.set_xlabel("1 / feature probability  (1 / (1 − S))")
    ax.set_ylabel("dimensions per feature")
    sticky = ax.secondary_yaxis("right")
    sticky.set_yticks([v for v, _ in STICKY_FRACTIONS], labels=[s for _, s in STICKY_FRACTIONS])
    sticky.tick_params(length=0, labelsize=8, colors="0.35")
    suptitle(fig, _header(run, f"feature dimensionality (of {feature_name(run)})"))
    colorbar(fig, ScalarMappable(norm, cmap), [ax], "importance")
    return fig


def _level_colors(n_levels: int) -> np.ndarray:
    return matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, n_levels))


def _training_panel(ax, run: Run, colors: np.ndarray) -> None:
    steps = run.history["steps"].numpy()
    loss = run.history["loss"].double().numpy()  # (T, level, restart)
    ok = np.isfinite(loss) & (loss > 0)
    low = np.where(ok, loss, np.inf).min(axis=-1)
    high = np.where(ok, loss, -np.inf).max(axis=-1)
    any_ok = ok.any(axis=-1)
    for level, (lv, p) in enumerate(zip(run.levels, probabilities(run), strict=True)):
        color = colors[level]
        has = any_ok[:, level]
        ax.fill_between(
            steps[has], low[has, level], high[has, level], color=color, alpha=0.2, linewidth=0
        )
        best = lv.best_restart
        if best is not None:
            curve = np.where(ok[:, level, best], loss[:, level, best], np.nan)
            ax.plot(steps, curve, color=color, linewidth=1.2, label=f"p = {p:g}")
        else:
            ax.plot([], [], color=color, label=f"p = {p:g} (none finite)")
    if ok.any():  # a log scale on an axis with no positive value raises
        ax.set_yscale("log")
    else:
        _nothing_finite(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss: selected restart, band = min–max over restarts")
    ax.legend(loc="best", ncols=2 if run.n_levels > 6 else 1)


def _eval_panel(ax, run: Run, colors: np.ndarray) -> None:
    restarts = run.results.restarts
    offsets = np.linspace(-0.3, 0.3, restarts) if restarts > 1 else np.zeros(1)
    starred = any_finite = False
    for level, lv in enumerate(run.levels):
        values = lv.restart_eval_losses or [None] * restarts
        losses = np.array([np.nan if v is None else v for v in values], dtype=float)
        ok = np.isfinite(losses) & (losses > 0)
        any_finite = any_finite or bool(ok.any())
        ax.scatter(
            level + offsets[ok], losses[ok], color=colors[level], s=18, alpha=0.8, linewidths=0
        )
        best = lv.best_restart
        if best is not None and ok[best]:
            label = None if starred else "selected (lowest held-out loss)"
            _mark_kept(ax, level + offsets[best], losses[best], 130, label)
            starred = True
        missing = int((~ok).sum())
        if missing:
            ax.annotate(
                f"{missing} excluded",
                (level, 0.02),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=6,
                color="0.3",
            )
    references = _reference_lines(ax, run)
    if any_finite or references:
        ax.set_yscale("log")
    if not any_finite:
        _nothing_finite(ax)
    ax.set_xticks(range(run.n_levels), labels=[f"{p:g}" for p in probabilities(run)])
    ax.set_xlim(-0.6, run.n_levels - 0.4)
    ax.set_xlabel("feature probability p")
    ax.set_ylabel("held-out loss")
    ax.set_title(f"held-out loss of each of {restarts} restarts")
    if starred or references:
        ax.legend(loc="best")


# the reference losses of each level (LevelResult.references; README, "Baselines"): name, label,
# colour and dashes of its line
REFERENCE_LINES = (
    ("constant", "constant: represents nothing", "0.35", "--"),
    ("dedicated", "dedicated: no superposition", "tab:blue", ":"),
    ("closed_form", "best closed-form configuration", "tab:green", "-."),
)


def _reference_lines(ax, run: Run) -> bool:
    """A short horizontal line across each level's restarts at each of its positive reference
    losses, one legend entry per reference; whether any was drawn."""
    drawn = False
    for name, label, color, dashes in REFERENCE_LINES:
        labelled = False
        for level, lv in enumerate(run.levels):
            value = lv.references().get(name)
            if value is None or not math.isfinite(value) or value <= 0:
                continue
            ax.hlines(
                value,
                level - 0.42,
                level + 0.42,
                colors=color,
                linestyles=dashes,
                linewidth=1.3,
                zorder=2,
                label=None if labelled else label,
            )
            labelled = drawn = True
    return drawn


def _mark_kept(ax, x: float, y: float, size: float, label: str | None) -> None:
    """The kept restart's red star (loss.png, restarts.png)."""
    ax.scatter(
        x,
        y,
        marker="*",
        s=size,
        color="red",
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
        label=label,
    )


def _nothing_finite(ax) -> None:
    ax.text(0.5, 0.5, "no finite loss", ha="center", va="center", transform=ax.transAxes)


def loss_figure(run: Run) -> Figure:
    """Training curves per level (when the history is there) and every restart's held-out loss."""
    panels = 2 if run.history is not None else 1
    fig = new_figure(panels * LOSS_PANEL[0], LOSS_PANEL[1])
    margins = Margins(left=0.75, right=0.25, top=0.6, bottom=0.55, wgap=0.85)
    axes = axes_grid(fig, 1, panels, margins)[0]
    colors = _level_colors(run.n_levels)
    if run.history is not None:
        _training_panel(axes[0], run, colors)
    _eval_panel(axes[-1], run, colors)
    r = run.results
    suptitle(fig, _header(run, f"loss ({r.restarts} restarts, {r.steps} steps)"))
    return fig


RESTARTS_WIDTH_PER_LEVEL = 1.0  # inches per level of restarts.png
RESTARTS_LOSS_HEIGHT = 3.0  # its loss panel
RESTARTS_ROW = 0.25  # each geometry's row under it
RESTARTS_FLOOR = 1e-6  # where a loss equal to the best sits at least (log axis)


def _restart_excess(level) -> tuple[np.ndarray, np.ndarray]:
    """(restart index, loss / best − 1) of the level's finite restarts."""
    values = level.restart_eval_losses or []
    losses = np.array([np.nan if v is None else v for v in values], dtype=float)
    ok = np.flatnonzero(np.isfinite(losses) & (losses > 0))
    if ok.size == 0:
        return ok, np.zeros(0)
    return ok, losses[ok] / losses[ok].min() - 1


def _restart_floor(excess: list[np.ndarray]) -> float:
    """The y of the best restart: a decade below the smallest positive excess (at most 1e-3)."""
    positive = [float(e[e > 0].min()) for e in excess if (e > 0).any()]
    smallest = min([1e-2, *positive])
    return max(RESTARTS_FLOOR, 10 ** (np.floor(np.log10(smallest)) - 1))


def _geometry_rows(run: Run) -> list[str]:
    names: list[str] = []
    for level in run.levels:
        names += [n for n in (level.restart_stats or {}).get("geometry", {}) if n not in names]
    return names


def _restart_loss_panel(ax, run: Run, colors: np.ndarray) -> None:
    found = [_restart_excess(level) for level in run.levels]
    floor = _restart_floor([excess for _, excess in found])
    restarts = run.results.restarts
    offsets = np.linspace(-0.3, 0.3, restarts) if restarts > 1 else np.zeros(1)
    marked = False
    for index, (level, (which, excess)) in enumerate(zip(run.levels, found, strict=True)):
        stats = level.restart_stats or {}
        if which.size == 0:
            ax.annotate(
                "no finite restart",
                (index, 0.5),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=6,
                color="0.3",
            )
            continue
        y = np.maximum(excess, floor)
        ax.scatter(index + offsets[which], y, color=colors[index], s=16, alpha=0.8, linewidths=0)
        kept = level.best_restart
        if kept is not None and kept in which:
            k = int(np.flatnonzero(which == kept)[0])
            label = None if marked else "kept (lowest held-out loss)"
            _mark_kept(ax, index + offsets[kept], y[k], 120, label)
            marked = True
        within = stats.get("within_1pct", int((excess <= NEAR_BEST).sum()))
        ax.annotate(
            f"{within}/{which.size}",
            (index, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.axhline(NEAR_BEST, color="0.4", linestyle="--", linewidth=0.8, label="1 % above the best")
    ax.axhspan(floor / 2, NEAR_BEST, color="0.92", zorder=0, linewidth=0)
    ax.set_yscale("log")
    top = max([0.1, *[2 * float(e.max()) for _, e in found if e.size]])
    ax.set_ylim(floor / 2, top)
    ticks = [t for t in 10.0 ** np.arange(np.ceil(np.log10(floor)) + 1, np.log10(top) + 1)]
    ax.set_yticks([floor, *ticks], labels=["best", *[f"{t:g}" for t in ticks]])
    ax.minorticks_off()
    ax.set_xlim(-0.6, run.n_levels - 0.4)
    ax.set_xticks(range(run.n_levels), labels=[f"{p:g}" for p in probabilities(run)])
    ax.set_ylabel("held-out loss / best − 1")
    ax.set_title(
        "every restart's loss over its level's best; above each level: restarts "
        "within 1 % of the best",
        pad=12,
    )
    if marked:
        ax.figure.legend(loc="upper right", frameon=False, fontsize=7)


def _geometry_panel(ax, run: Run, names: list[str]) -> None:
    """Per geometry (row) and level (column): the share of finite restarts that show it, the
    count written in, bold where the kept restart shows it."""
    share = np.full((len(names), run.n_levels), np.nan)
    for col, level in enumerate(run.levels):
        for row, name in enumerate(names):
            entry = ((level.restart_stats or {}).get("geometry") or {}).get(name)
            if entry is None:
                continue
            if entry["of"]:
                share[row, col] = entry["restarts"] / entry["of"]
            ax.text(
                col,
                row,
                f"{entry['restarts']}/{entry['of']}",
                ha="center",
                va="center",
                fontsize=7,
                fontweight="bold" if entry["kept"] else "normal",
                color="white" if entry["of"] and share[row, col] > 0.6 else "black",
            )
    ax.imshow(np.ma.masked_invalid(share), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xticks(range(run.n_levels), labels=[f"{p:g}" for p in probabilities(run)])
    ax.set_xlim(-0.6, run.n_levels - 0.4)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(
        "feature probability p   (geometry: restarts showing it; bold: the kept one does)"
    )


def restarts_figure(run: Run) -> Figure:
    """Every finite restart's held-out loss relative to its level's best, the kept one starred
    and the count within 1 % written above; below, per geometry the restarts that show it."""
    names = _geometry_rows(run)
    rows = len(names) * RESTARTS_ROW
    gap = 0.5 if names else 0.0
    margins = Margins(left=1.25, right=0.25, top=1.0, bottom=0.5)
    width = max(MIN_WIDTH, margins.left + margins.right + RESTARTS_WIDTH_PER_LEVEL * run.n_levels)
    height = margins.top + RESTARTS_LOSS_HEIGHT + gap + rows + margins.bottom
    fig = new_figure(width, height)
    box_w = (width - margins.left - margins.right) / width
    loss_ax = fig.add_axes(
        (
            margins.left / width,
            (margins.bottom + rows + gap) / height,
            box_w,
            RESTARTS_LOSS_HEIGHT / height,
        )
    )
    _restart_loss_panel(loss_ax, run, _level_colors(run.n_levels))
    if names:
        loss_ax.set_xticklabels([])
        geometry_ax = fig.add_axes(
            (margins.left / width, margins.bottom / height, box_w, rows / height)
        )
        _geometry_panel(geometry_ax, run, names)
    else:
        loss_ax.set_xlabel("feature probability p")
    suptitle(fig, _header(run, f"restarts ({run.results.restarts} per level)"))
    return fig


# ------------------------------------------------------------------------------------- drawing


def phase_diagram_figure(run: Run) -> Figure:
    """The phase diagram of a relative-importance × probability sweep (phase_figure.py)."""
    return phase_figure(classify_phase_cells(run.results, run.weights), run.results)


def figure_makers(run: Run) -> dict[str, Callable[[Run], Figure]]:
    """The figures that apply to this run, by file stem, in drawing order. A phase sweep (many
    grid points of a tiny model) gets its phase diagram instead of one panel per grid point."""
    if run.results.relative_importance:
        return {"phase_diagram": phase_diagram_figure}
    makers: dict[str, Callable[[Run], Figure]] = {}
    wanted = tasks.get(run.task).figures
    if run.results.d_hidden == 2:
        makers["features_2d"] = features_2d_figure
    makers["wtw"] = wtw_figure
    if privileged(run):
        makers["neurons"] = neurons_figure
    makers["dimensionality"] = dimensionality_figure
    if all(level.feature_loss_ratio is not None for level in run.levels):
        makers["feature_loss"] = feature_loss_figure
    makers["loss"] = loss_figure
    if all(level.restart_stats is not None for level in run.levels):
        makers["restarts"] = restarts_figure
    return {name: make for name, make in makers.items() if name in wanted}


def draw_run(
    run: Run, plots_dir: Path, on_error: Callable[[str, Exception], None] | None = None
) -> list[Path]:
    """Draw every applicable figure of `run` into plots_dir; return the PNG paths.

    With on_error, a figure that fails is reported as on_error(name, error) and skipped, so that
    an optional figure never costs a job its results; without it the error propagates.
    """
    return draw_each(figure_makers(run), run, plots_dir, on_error)


def draw_all(out_dir: Path) -> list[Path]:
    """Read results.json, weights.safetensors and history.safetensors (if present) from out_dir
    and draw every applicable figure into out_dir/plots/; return the PNG paths."""
    out_dir = Path(out_dir)
    return draw_run(load_run(out_dir), out_dir / PLOTS_DIR)
