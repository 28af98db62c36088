"""Loss of every trained instance, estimated with its standard error.

The expected loss splits by the number of active features in a row (tasks/sampling.py
active_count_distribution gives each count's probability):
- no active feature and exactly one: computed exactly (analysis/strata.py);
- two or more: Monte Carlo on rows drawn given that at least two are active.
At sparse levels the sampled part carries a small share of the probability (at p = 0.001 and
5 features about 10⁻⁵), so its error is that share of the rows' spread; at p = 1 this is plain
Monte Carlo. Where the exact parts do not apply (a task without an EncoderDecoder fast path,
or correlated and anticorrelated pairs, which are not independent) every row is sampled: plain
Monte Carlo, with its standard error.

All restarts of a grid point see the same held-out rows (the stream is keyed by grid point), so
comparing restarts is a paired comparison: the noise of the batch cancels in the ranking. The
kept restart of every level is evaluated again on fresh rows (evaluate_kept): its reported loss
is not the minimum of noisy estimates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from superposition.analysis import strata
from superposition.config import DataConfig
from superposition.grid import InstanceGrid
from superposition.rng import EVAL_STREAM
from superposition.tasks.model import ModelSpec, forward, target_of
from superposition.tasks.sampling import (
    AtLeastTwoActiveSampler,
    BatchSampler,
    FeatureDistribution,
    active_count_distribution,
)

# rows × instances × features evaluated at once; instances are split so that a pass has at least
# MIN_ROWS_PER_PASS rows
EVAL_ELEMENTS_PER_PASS = 2**24
MIN_ROWS_PER_PASS = 1024

STRATIFIED = "stratified"
MONTE_CARLO = "monte_carlo"


@dataclass
class LossEstimate:
    """Estimated expected loss of every instance and its standard error (float64)."""

    loss: Annotated[Tensor, "instance"]
    se: Annotated[Tensor, "instance"]
    method: str  # STRATIFIED or MONTE_CARLO


def estimation_method(spec: ModelSpec, data: DataConfig | None = None) -> str:
    """STRATIFIED where the exact strata apply: a task with an EncoderDecoder fast path and
    independent features; MONTE_CARLO otherwise."""
    data = DataConfig() if data is None else data
    if data.correlated_pairs or data.anticorrelated_pairs:
        return MONTE_CARLO
    return STRATIFIED if spec.definition.fast_path(spec.shape) is not None else MONTE_CARLO


@torch.no_grad()
def evaluate_grid(
    spec: ModelSpec,
    params: dict[str, Tensor],
    grid: InstanceGrid,
    seed: int,
    rows: int,
    device: torch.device,
    data: DataConfig | None = None,
) -> LossEstimate:
    """Every instance's expected loss, `rows` sampled rows per grid point; `data` sets the
    course's correlated and anticorrelated pairs (default: none)."""
    n = grid.n_instances
    return evaluate_instances(
        spec,
        params,
        grid.level_of(torch.arange(n)),
        grid.instance_probability(),
        grid.instance_importance(),
        seed,
        rows,
        device,
        data,
    )


@torch.no_grad()
def evaluate_kept(
    spec: ModelSpec,
    kept: dict[str, Tensor],
    grid: InstanceGrid,
    seed: int,
    rows: int,
    device: torch.device,
    data: DataConfig | None = None,
) -> LossEstimate:
    """The kept instance of every level (level axis first) on fresh rows: the `rows` rows after
    those evaluate_grid drew, so the estimate is independent of the selection."""
    return evaluate_instances(
        spec,
        kept,
        torch.arange(grid.n_levels),
        grid.feature_probability.float(),
        grid.importance.float(),
        seed,
        rows,
        device,
        data,
        row_offset=rows,
    )


def evaluate_instances(
    spec: ModelSpec,
    params: dict[str, Tensor],
    levels: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    importance: Annotated[Tensor, "instance feature"],
    seed: int,
    rows: int,
    device: torch.device,
    data: DataConfig | None = None,
    row_offset: int = 0,
) -> LossEstimate:
    """The estimate of every instance, in passes of bounded size (instances of one level share
    their rows: the stream is keyed by `levels`)."""
    data = DataConfig() if data is None else data
    method = estimation_method(spec, data)
    n = levels.shape[0]
    instances_per_pass = max(
        1, min(n, EVAL_ELEMENTS_PER_PASS // (MIN_ROWS_PER_PASS * spec.n_features))
    )
    estimates = []
    for start in range(0, n, instances_per_pass):
        chunk = slice(start, min(start + instances_per_pass, n))
        evaluate = _stratified if method == STRATIFIED else _monte_carlo
        estimates.append(
            evaluate(
                spec,
                {k: v[chunk].to(device) for k, v in params.items()},
                levels[chunk].to(device),
                probability[chunk].to(device),
                importance[chunk].to(device),
                seed,
                rows,
                data,
                row_offset,
            )
        )
    loss, se = (torch.cat(parts).cpu() for parts in zip(*estimates, strict=True))
    return LossEstimate(loss, se, method)


def _stratified(
    spec: ModelSpec,
    params: dict[str, Tensor],
    levels: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    importance: Annotated[Tensor, "instance feature"],
    seed: int,
    rows: int,
    data: DataConfig,
    row_offset: int,
) -> tuple[Tensor, Tensor]:
    count = active_count_distribution(probability, spec.n_features)
    none, one = count[:, 0], count[:, 1]
    several = count[:, 2:].sum(dim=1)
    model = spec.definition.fast_path(spec.shape)
    loss = none * strata.no_active_loss(spec, params, importance)
    loss += one * strata.one_active_loss(model, params, importance, spec.definition.magnitudes)
    if spec.n_features < 2:
        return loss, torch.zeros_like(loss)
    features = FeatureDistribution.of(spec.definition, data)
    rows_per_pass = _rows_per_pass(levels.shape[0], spec.n_features)
    samplers = (
        AtLeastTwoActiveSampler(
            features,
            seed,
            levels,
            probability,
            min(rows_per_pass, rows - start),
            spec.n_features,
            row_offset + start,
        )()
        for start in range(0, rows, rows_per_pass)
    )
    mean, se = _sample_mean(spec, params, importance, samplers)
    # a share that underflowed to 0 weighs a sample it never needed
    loss += torch.where(several > 0, several * mean, 0.0)
    return loss, torch.where(several > 0, several * se, 0.0)


def _monte_carlo(
    spec: ModelSpec,
    params: dict[str, Tensor],
    levels: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    importance: Annotated[Tensor, "instance feature"],
    seed: int,
    rows: int,
    data: DataConfig,
    row_offset: int,
) -> tuple[Tensor, Tensor]:
    held_out = held_out_rows(spec, seed, levels, probability, rows, data, row_offset)
    return _sample_mean(spec, params, importance, held_out)


def _sample_mean(
    spec: ModelSpec,
    params: dict[str, Tensor],
    importance: Annotated[Tensor, "instance feature"],
    batches: Iterator[Annotated[Tensor, "instance batch feature"]],
) -> tuple[Tensor, Tensor]:
    """Mean per-row loss of every instance over the batches, and its standard error (the
    batches' means and sums of squared deviations pooled as Chan et al. do: no cancellation)."""
    count, mean, squares = 0, None, None
    for x in batches:
        error = (target_of(spec, x) - forward(spec, params, x)).pow(2)
        per_row = (importance.unsqueeze(1) * error).mean(dim=2).double()
        rows = per_row.shape[1]
        batch_mean = per_row.mean(dim=1)
        batch_squares = (per_row - batch_mean.unsqueeze(1)).pow(2).sum(dim=1)
        if mean is None:
            count, mean, squares = rows, batch_mean, batch_squares
            continue
        delta = batch_mean - mean
        total = count + rows
        squares = squares + batch_squares + delta.pow(2) * count * rows / total
        mean = mean + delta * rows / total
        count = total
    variance = squares / max(count - 1, 1)
    return mean, (variance / count).sqrt()


def _rows_per_pass(n_instances: int, n_features: int) -> int:
    return max(1, EVAL_ELEMENTS_PER_PASS // (n_instances * n_features))


def held_out_rows(
    spec: ModelSpec,
    seed: int,
    levels: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    rows: int,
    data: DataConfig,
    row_offset: int = 0,
) -> Iterator[Annotated[Tensor, "instance batch feature"]]:
    """The held-out rows of each instance's grid point (the eval stream keyed by `levels`) from
    `row_offset` on, in passes of at most EVAL_ELEMENTS_PER_PASS elements."""
    rows_per_pass = _rows_per_pass(levels.shape[0], spec.n_features)
    features = FeatureDistribution.of(spec.definition, data)
    for row_start in range(0, rows, rows_per_pass):
        sampler = BatchSampler(
            features,
            seed,
            levels,
            probability,
            min(rows_per_pass, rows - row_start),
            spec.n_features,
            EVAL_STREAM,
            row_offset + row_start,
        )
        yield sampler(0)


@torch.no_grad()
def feature_loss_ratio(
    spec: ModelSpec,
    kept: dict[str, Tensor],
    grid: InstanceGrid,
    seed: int,
    rows: int,
    device: torch.device,
    data: DataConfig | None = None,
) -> Annotated[Tensor, "level feature"]:
    """Each feature's loss over its loss when dropped (output 0), for the kept instance of every
    level, on that level's held-out rows: Σ_rows (target_i − out_i)² / Σ_rows target_i².

    1 for a dropped feature, 0 for one computed exactly; about 0.5 for an abs feature computed
    for one sign only. NaN where feature i is never active in the rows (or the level's weights
    are not finite). Importance cancels in the ratio.
    """
    data = DataConfig() if data is None else data
    n_levels = grid.n_levels
    levels = torch.arange(n_levels, device=device)
    probability = grid.feature_probability.float().to(device)
    params = {k: v.to(device) for k, v in kept.items()}
    error = torch.zeros(n_levels, spec.n_features, dtype=torch.float64, device=device)
    dropped = torch.zeros_like(error)
    for x in held_out_rows(spec, seed, levels, probability, rows, data):
        target = target_of(spec, x)
        error += (target - forward(spec, params, x)).pow(2).sum(dim=1).double()
        dropped += target.pow(2).sum(dim=1).double()
    ratio = torch.where(dropped > 0, error / dropped.clamp_min(1e-300), torch.nan)
    return ratio.float().cpu()
