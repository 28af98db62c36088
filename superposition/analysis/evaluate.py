"""Loss of every trained instance, estimated with its standard error.

The expected loss splits by the number of active features in a row (tasks/sampling.py
active_count_distribution gives each count's probability):
- no active feature and exactly one: computed exactly (analysis/strata.py);
- two or more: Monte Carlo on rows drawn given that at least two are active, three ways
  sharper than plain sampling:
  - stratified by where the row's first two active features are (SecondActiveStrata), with
    rows shared out by Neyman's allocation from a pilot of PILOT_ROWS rows per stratum;
  - each row's loss less the losses of its first two active features alone, plus their exact
    means (Control): the part of the loss that is additive in the features cancels;
  - at sparse levels the sampled part carries a small share of the probability (at p = 0.001
    and 5 features about 10⁻⁵), and its error is that share of the rows' spread.
At p = 1 this is Monte Carlo on rows with every feature active. Where the exact parts do not
apply (a task without an EncoderDecoder fast path, or correlated and anticorrelated pairs, which
are not independent) every row is sampled: plain Monte Carlo, with its standard error.

All restarts of a grid point see the same held-out rows (the stream is keyed by grid point), so
comparing restarts is a paired comparison: the noise of the batch cancels in the ranking. The
kept restart of every level is evaluated again on fresh rows (evaluate_kept): its reported loss
is not the minimum of noisy estimates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

import torch
from torch import Tensor

from superposition.analysis import strata
from superposition.config import DataConfig
from superposition.grid import InstanceGrid
from superposition.rng import EVAL_AT_LEAST_TWO_STREAM, EVAL_PILOT_STREAM, EVAL_STREAM
from superposition.tasks.model import ModelSpec, forward, target_of
from superposition.tasks.sampling import (
    AtLeastTwoActiveSampler,
    BatchSampler,
    FeatureDistribution,
    SecondActiveStrata,
    active_count_distribution,
)

# rows × instances × features evaluated at once; instances are split so that a pass has at least
# MIN_ROWS_PER_PASS rows
EVAL_ELEMENTS_PER_PASS = 2**24
MIN_ROWS_PER_PASS = 1024
# float64 temporaries of (instance, feature, feature) the exact strata hold at once: instances
# are split so that these too stay within EVAL_ELEMENTS_PER_PASS
SLOPE_COPIES = 16
# the sampled rows are split into strata (tasks/sampling.py SecondActiveStrata) no finer than
# STRATUM_ROWS rows each on average; PILOT_ROWS rows per stratum (a stream of their own) measure
# each stratum's spread, which sets its share of the rows (Neyman's allocation); every stratum
# gets at least MIN_STRATUM_ROWS, two, for its variance
STRATUM_ROWS = 16
PILOT_ROWS = 8
MIN_STRATUM_ROWS = 2
NEYMAN_GAIN = 2.0
PROPORTIONAL = 0.5

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
    f = spec.n_features
    per_instance = MIN_ROWS_PER_PASS * f
    if method == STRATIFIED:  # the exact strata hold (feature, feature) slopes per instance
        per_instance = max(per_instance, SLOPE_COPIES * f * f)
    instances_per_pass = max(1, min(n, EVAL_ELEMENTS_PER_PASS // per_instance))
    chunks = [slice(i, min(i + instances_per_pass, n)) for i in range(0, n, instances_per_pass)]

    def chunk_of(chunk: slice) -> Chunk:
        return Chunk(
            {k: v[chunk].to(device) for k, v in params.items()},
            levels[chunk].to(device),
            probability[chunk].to(device),
            importance[chunk].to(device),
            spec,
        )

    if method == MONTE_CARLO:
        parts = [_monte_carlo(spec, chunk_of(c), seed, rows, data, row_offset) for c in chunks]
    else:
        features = FeatureDistribution.of(spec.definition, data)
        sampled = SecondActiveStrata.choose(spec.n_features, rows, STRATUM_ROWS)
        on_device = [chunk_of(c) for c in chunks]  # the pilot's and the main rows' chunks
        counts = _allocation(
            spec, on_device, features, sampled, seed, row_offset, levels, probability, rows
        )
        parts = [
            _stratified(spec, chunk, features, sampled, counts[c], seed, row_offset)
            for chunk, c in zip(on_device, chunks, strict=True)
        ]
    loss, se = (torch.cat(part).cpu() for part in zip(*parts, strict=True))
    return LossEstimate(loss, se, method)


@dataclass
class Chunk:
    """Instances evaluated together, on the evaluation's device."""

    params: dict[str, Tensor]
    levels: Annotated[Tensor, "instance"]
    probability: Annotated[Tensor, "instance"]
    importance: Annotated[Tensor, "instance feature"]
    spec: ModelSpec | None = None

    @cached_property
    def control(self) -> Control:
        """The additive control variate of the sampled rows."""
        definition = self.spec.definition
        model = definition.fast_path(self.spec.shape)
        means = strata.one_active_losses(model, self.params, self.importance, definition.magnitudes)
        return Control(strata.SingleActiveLoss(model, self.params, self.importance), means)


@dataclass
class Control:
    """A sampled row's loss is close to the sum of the losses of its first two active features
    alone, whose means are known exactly (strata.one_active_losses): the estimate takes
    loss − g_first(v) − g_second(v) + G_first + G_second, unbiased for every row, with much of
    the spread of the magnitudes gone."""

    alone: strata.SingleActiveLoss
    feature_means: Annotated[Tensor, "instance feature"]

    def adjust(
        self,
        x: Annotated[Tensor, "instance row feature"],
        loss: Annotated[Tensor, "instance row"],
        first: Annotated[Tensor, "instance row"],
        second: Annotated[Tensor, "instance row"],
    ) -> Annotated[Tensor, "instance row"]:
        for feature in (first, second):
            value = x.gather(-1, feature.unsqueeze(-1)).squeeze(-1)
            alone = self.alone(feature, value)
            loss = loss - alone.double() + self.feature_means.gather(1, feature)
        return loss


def _stratified(
    spec: ModelSpec,
    chunk: Chunk,
    features: FeatureDistribution,
    sampled: SecondActiveStrata,
    counts: Annotated[Tensor, "instance stratum"],
    seed: int,
    row_offset: int,
) -> tuple[Tensor, Tensor]:
    """Rows with no and one active feature exactly; rows with two or more by stratum, `counts`
    rows each."""
    count = active_count_distribution(chunk.probability, spec.n_features)
    none, one = count[:, 0], count[:, 1]
    several = count[:, 2:].sum(dim=1)
    loss = none * strata.no_active_loss(spec, chunk.params, chunk.importance)
    loss += one * chunk.control.feature_means.mean(dim=1)
    if spec.n_features < 2:
        return loss, torch.zeros_like(loss)
    counts = counts.to(loss.device)
    mean, variance = _stratum_moments(
        spec, chunk, features, sampled, counts, seed, row_offset, EVAL_AT_LEAST_TWO_STREAM
    )
    weights = sampled.weights(chunk.probability)
    sampled_mean = (weights * mean).sum(dim=1)
    sampled_se = ((weights.pow(2) * variance / counts).sum(dim=1)).sqrt()
    # a share that underflowed to 0 weighs a sample it never needed
    loss += torch.where(several > 0, several * sampled_mean, 0.0)
    return loss, torch.where(several > 0, several * sampled_se, 0.0)


def _allocation(
    spec: ModelSpec,
    chunks: list[Chunk],
    features: FeatureDistribution,
    sampled: SecondActiveStrata,
    seed: int,
    row_offset: int,
    levels: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    rows: int,
) -> Annotated[Tensor, "instance stratum"]:
    """Rows per stratum, `rows` in all, the same for every instance of a level (its restarts
    share their rows): Neyman's allocation, ∝ P(stratum) × its spread, the spread measured on
    PILOT_ROWS rows per stratum (their own stream) and pooled over the level's restarts; at
    least MIN_STRATUM_ROWS each."""
    n_strata = sampled.n_strata
    if n_strata == 1:
        return torch.full((levels.shape[0], 1), rows, dtype=torch.long)
    spread = []
    for chunk in chunks:
        counts = torch.full(
            (chunk.levels.shape[0], n_strata), PILOT_ROWS, device=chunk.levels.device
        )
        _, variance = _stratum_moments(
            spec, chunk, features, sampled, counts, seed, row_offset, EVAL_PILOT_STREAM
        )
        spread.append(variance.cpu())
    variance = torch.cat(spread)
    finite = torch.isfinite(variance).all(dim=1)
    level_ids, level_of = torch.unique(levels, return_inverse=True)
    pooled = torch.zeros(level_ids.shape[0], n_strata, dtype=torch.float64)
    pooled.index_add_(0, level_of[finite], variance[finite])
    restarts = torch.zeros(level_ids.shape[0], dtype=torch.float64)
    restarts.index_add_(0, level_of[finite], torch.ones(int(finite.sum()), dtype=torch.float64))
    variance = pooled / restarts.clamp_min(1).unsqueeze(1)
    first = torch.zeros(level_ids.shape[0], dtype=torch.long)
    first.scatter_(0, level_of, torch.arange(levels.shape[0]))  # an instance of each level
    weights = sampled.weights(probability[first].cpu())
    score = weights * variance.sqrt()
    total = score.sum(dim=1, keepdim=True)
    # Neyman's allocation over proportional cuts the variance by Σ W s² / (Σ W s)²; the spreads
    # of a few pilot rows are noisy, which alone makes that look like about 1.3: below
    # NEYMAN_GAIN, share the rows in proportion to the strata's probabilities
    gain = (weights * variance).sum(dim=1, keepdim=True) / total.pow(2).clamp_min(1e-300)
    neyman = (total > 0) & (gain > NEYMAN_GAIN)
    # half the rows in proportion all the same: a stratum whose pilot saw no spread (a rare
    # event, e.g. one more active feature) still gets enough rows to see it, and so an honest
    # variance; the other half where the pilot saw the spread
    optimal = score / total.clamp_min(1e-300)
    share = torch.where(neyman, PROPORTIONAL * weights + (1 - PROPORTIONAL) * optimal, weights)
    free = rows - MIN_STRATUM_ROWS * n_strata
    counts = MIN_STRATUM_ROWS + (share * free).floor().long()
    counts[torch.arange(counts.shape[0]), share.argmax(dim=1)] += rows - counts.sum(dim=1)
    return counts[level_of]


def _stratum_moments(
    spec: ModelSpec,
    chunk: Chunk,
    features: FeatureDistribution,
    sampled: SecondActiveStrata,
    counts: Annotated[Tensor, "instance stratum"],
    seed: int,
    row_offset: int,
    stream: int,
) -> tuple[Tensor, Tensor]:
    """Mean and variance (float64) of the per-row loss in every stratum, on counts[i, h] rows of
    stratum h for instance i (every instance the same number of rows in all)."""
    n_instances, n_strata = counts.shape
    ends = counts.cumsum(dim=1).contiguous()
    total_rows = int(ends[0, -1])
    sums = torch.zeros(n_instances, n_strata, dtype=torch.float64, device=counts.device)
    squares = torch.zeros_like(sums)
    rows_per_pass = _rows_per_pass(n_instances, spec.n_features)
    for start in range(0, total_rows, rows_per_pass):
        row = torch.arange(start, min(start + rows_per_pass, total_rows), device=counts.device)
        stratum = torch.searchsorted(ends, row.expand(n_instances, -1).contiguous(), right=True)
        x, first, second = AtLeastTwoActiveSampler(
            features,
            seed,
            chunk.levels,
            chunk.probability,
            sampled,
            stratum,
            row_offset + start,
            stream,
        ).draw()
        loss = _row_losses(spec, chunk.params, chunk.importance, x)
        loss = chunk.control.adjust(x, loss, first, second)
        sums.scatter_add_(1, stratum, loss)
        squares.scatter_add_(1, stratum, loss.pow(2))
    n = counts.double()
    mean = sums / n
    # sums of squares cancel only where the spread is below 1e-8 of the mean (a model additive in
    # its features, which the control variate leaves nearly constant): 0 there, near enough.
    # One row has no variance to tell: NaN, not a claim of exactness
    variance = ((squares - sums * mean) / (n - 1).clamp_min(1)).clamp_min(0)
    return mean, torch.where(n >= 2, variance, torch.nan)


def _row_losses(
    spec: ModelSpec,
    params: dict[str, Tensor],
    importance: Annotated[Tensor, "instance feature"],
    x: Annotated[Tensor, "instance batch feature"],
) -> Annotated[Tensor, "instance batch"]:
    error = (target_of(spec, x) - forward(spec, params, x)).pow(2)
    return (importance.unsqueeze(1) * error).mean(dim=2).double()


def _monte_carlo(
    spec: ModelSpec, chunk: Chunk, seed: int, rows: int, data: DataConfig, row_offset: int
) -> tuple[Tensor, Tensor]:
    held_out = held_out_rows(spec, seed, chunk.levels, chunk.probability, rows, data, row_offset)
    return _sample_mean(spec, chunk.params, chunk.importance, held_out)


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
        per_row = _row_losses(spec, params, importance, x)
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
