"""Statistics over a level's restarts: how all N restarts of a grid point came out, not only the
one kept, so that a researcher can tell whether N restarts were enough.

Per level (results.json `levels[i].restart_stats`):

- finite: the restarts whose held-out loss is finite (the others diverged and were frozen);
- loss_quantiles: min, q25, median, q75 and max of those losses (linear interpolation, as
  torch.quantile and numpy's default); null when no restart is finite;
- within_1pct: the finite restarts whose loss is at most (1 + NEAR_BEST) × the best, the best
  itself included: 1 means only the kept restart found that minimum;
- geometry: for each geometry that applies to the run (geometries below), {"restarts": how
  many finite restarts show it, "of": of how many, "kept": whether the kept restart shows it
  (null when none is kept)}.

The geometries are the ones the presets judge (analysis/verdicts.py decides each on one model):
- d_hidden = 2: the polygon (every feature on a regular polygon, named by its corners:
  "pentagon" for 5 features; verdicts.shows_polygon) and "orthogonal_pair" (exactly two features
  represented, orthogonal; verdicts.shows_orthogonal_pair);
- where the hidden units are neurons and the task measures them: "monosemantic" and
  "polysemantic" (monosemantic fraction at least the dense minimum, at most the sparse maximum of
  verdicts.monosemantic_bounds);
- an untied model with neurons (abs): "antipodal_pairs" (verdicts.shows_antipodal_pairs);
- a phase sweep (relative importance set) instead: the class of the extra feature, one entry per
  class of geometry.PHASES (not_represented, dedicated, superposition).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from superposition import tasks
from superposition.analysis import geometry, metrics, verdicts
from superposition.tasks.task import Shape

# within_1pct counts the restarts whose loss is at most (1 + NEAR_BEST) × the best
NEAR_BEST = 0.01
QUANTILES = {"min": 0.0, "q25": 0.25, "median": 0.5, "q75": 0.75, "max": 1.0}

Params = dict[str, Tensor]


@dataclass(frozen=True)
class Geometries:
    """The geometries of a run, by name in report order, and what one restart shows of them."""

    names: tuple[str, ...]
    shown: Callable[[Params], set[str]]  # one restart's parameters (float64) → names it shows


def geometries(task: str, shape: Shape, phase: bool) -> Geometries:
    """The geometries that apply to a run of `task` at `shape` (phase: a phase sweep)."""
    spec = tasks.get(task)
    feature, decoder = spec.feature_weights, spec.decoder_weights
    if phase:
        return Geometries(geometry.PHASES, lambda params: {geometry.classify_cell(params[feature])})
    tests: dict[str, Callable[[Params], bool]] = {}
    if shape.d_hidden == 2:
        tests[geometry.polygon_name(shape.n_features)] = lambda params: verdicts.shows_polygon(
            params[feature]
        )
        tests[verdicts.ORTHOGONAL_PAIR] = lambda params: verdicts.shows_orthogonal_pair(
            params[feature]
        )
    neurons = metrics.has_privileged_basis(task, shape) and "neurons" in spec.metrics
    if neurons:
        dense_min, sparse_max = verdicts.monosemantic_bounds(task)
        tests[verdicts.MONOSEMANTIC] = lambda params: _fraction_holds(
            params[feature], dense_min.__le__
        )
        tests[verdicts.POLYSEMANTIC] = lambda params: _fraction_holds(
            params[feature], sparse_max.__ge__
        )
    if neurons and decoder is not None:
        tests[verdicts.ANTIPODAL_PAIRS] = lambda params: verdicts.shows_antipodal_pairs(
            params[feature], params[decoder]
        )
    return Geometries(
        tuple(tests), lambda params: {name for name, test in tests.items() if test(params)}
    )


def _fraction_holds(W: Tensor, holds: Callable[[float], bool]) -> bool:
    fraction = metrics.monosemantic_fraction(W)
    return fraction is not None and bool(holds(fraction))


def level_stats(
    losses: Annotated[Tensor, "restart"],
    params: dict[str, Annotated[Tensor, "restart ..."]],
    kept: int | None,
    measured: Geometries,
) -> dict[str, Any]:
    """One level's statistics (the module doc): losses +inf (or NaN) where a restart is not
    finite, params with the restart axis first, kept the restart selected (None: none)."""
    losses = losses.detach().to("cpu", torch.float64)
    finite = torch.isfinite(losses)
    for value in params.values():
        finite &= torch.isfinite(value.detach().cpu()).flatten(1).all(dim=1)
    values = losses[finite]
    n_finite = int(values.numel())
    quantiles = None
    within = 0
    if n_finite:
        levels = torch.tensor(list(QUANTILES.values()), dtype=torch.float64)
        found = torch.quantile(values, levels).tolist()
        quantiles = dict(zip(QUANTILES, found, strict=True))
        within = int((values <= (1 + NEAR_BEST) * values.min()).sum())
    counts = dict.fromkeys(measured.names, 0)
    kept_shows: set[str] | None = None
    for restart in torch.nonzero(finite).flatten().tolist():
        one = {name: value[restart].detach().cpu().double() for name, value in params.items()}
        shows = measured.shown(one)
        for name in shows:
            counts[name] += 1
        if restart == kept:
            kept_shows = shows
    return {
        "finite": n_finite,
        "loss_quantiles": quantiles,
        "within_1pct": within,
        "geometry": {
            name: {
                "restarts": counts[name],
                "of": n_finite,
                "kept": None if kept_shows is None else name in kept_shows,
            }
            for name in measured.names
        },
    }


def restart_stats(
    task: str,
    shape: Shape,
    phase: bool,
    params: dict[str, Annotated[Tensor, "instance ..."]],
    eval_loss: Annotated[Tensor, "level restart"],
    kept: list[int | None],
) -> list[dict[str, Any]]:
    """level_stats of every level: params of every instance (instance = level · restarts +
    restart), eval_loss +inf where a restart was frozen, kept the selected restart per level."""
    n_levels, restarts = eval_loss.shape
    measured = geometries(task, shape, phase)
    by_level = {k: v.view(n_levels, restarts, *v.shape[1:]) for k, v in params.items()}
    return [
        level_stats(
            eval_loss[level], {k: v[level] for k, v in by_level.items()}, kept[level], measured
        )
        for level in range(n_levels)
    ]


def shares_text(stats: dict[str, Any] | None) -> str:
    """One level's statistics in a line: "3 of 16 within 1 % of the best (median loss 0.0123);
    pentagon in 11 of 16, orthogonal_pair in 0 of 16; the kept restart shows: pentagon"."""
    if not stats or not stats.get("finite"):
        return "no finite restart"
    median = stats["loss_quantiles"]["median"]
    text = (
        f"{stats['within_1pct']} of {stats['finite']} within {NEAR_BEST:.0%} of the best "
        f"(median loss {median:.4g})"
    )
    entries = (stats.get("geometry") or {}).items()
    if not entries:
        return text
    shares = ", ".join(f"{name} in {e['restarts']} of {e['of']}" for name, e in entries)
    kept = [name for name, e in entries if e["kept"]]
    return f"{text}; {shares}; the kept restart shows: {', '.join(kept) or 'none of these'}"
