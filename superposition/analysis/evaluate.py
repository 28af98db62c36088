"""Loss of every trained instance on a held-out batch drawn from its own random stream.

All restarts of a grid point see the same held-out rows (the stream is keyed by grid point), so
comparing restarts is a paired comparison: the noise of the batch cancels in the ranking.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import torch
from torch import Tensor

from superposition.config import DataConfig
from superposition.grid import InstanceGrid
from superposition.tasks.model import ModelSpec, forward, loss_per_instance, target_of
from superposition.tasks.sampling import EVAL_STREAM, BatchSampler, FeatureDistribution

# rows × instances × features evaluated at once; instances are split so that a pass has at least
# MIN_ROWS_PER_PASS rows
EVAL_ELEMENTS_PER_PASS = 2**24
MIN_ROWS_PER_PASS = 1024


@torch.no_grad()
def evaluate_grid(
    spec: ModelSpec,
    params: dict[str, Tensor],
    grid: InstanceGrid,
    seed: int,
    rows: int,
    device: torch.device,
    data: DataConfig | None = None,
) -> Annotated[Tensor, "instance"]:
    """Mean held-out loss of every instance, computed in passes of bounded size; `data` sets the
    course's correlated and anticorrelated pairs (default: none)."""
    data = DataConfig() if data is None else data
    n = grid.n_instances
    instances_per_pass = max(
        1, min(n, EVAL_ELEMENTS_PER_PASS // (MIN_ROWS_PER_PASS * spec.n_features))
    )
    probability = grid.instance_probability()
    importance = grid.instance_importance()
    losses = []
    for start in range(0, n, instances_per_pass):
        chunk = slice(start, min(start + instances_per_pass, n))
        losses.append(
            _evaluate_chunk(
                spec,
                {k: v[chunk].to(device) for k, v in params.items()},
                grid.level_of(torch.arange(n)[chunk]).to(device),
                probability[chunk].to(device),
                importance[chunk].to(device),
                seed,
                rows,
                data,
            )
        )
    return torch.cat(losses)


def _evaluate_chunk(
    spec: ModelSpec,
    params: dict[str, Tensor],
    levels: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    importance: Annotated[Tensor, "instance feature"],
    seed: int,
    rows: int,
    data: DataConfig,
) -> Annotated[Tensor, "instance"]:
    n = levels.shape[0]
    total = torch.zeros(n, dtype=torch.float64, device=levels.device)
    for x in held_out_rows(spec, seed, levels, probability, rows, data):
        loss = loss_per_instance(forward(spec, params, x), target_of(spec, x), importance)
        total += loss.double() * x.shape[1]
    return (total / rows).float().cpu()


def held_out_rows(
    spec: ModelSpec,
    seed: int,
    levels: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    rows: int,
    data: DataConfig,
) -> Iterator[Annotated[Tensor, "instance batch feature"]]:
    """The held-out rows of each instance's grid point (the eval stream keyed by `levels`), in
    passes of at most EVAL_ELEMENTS_PER_PASS elements."""
    rows_per_pass = max(1, EVAL_ELEMENTS_PER_PASS // (levels.shape[0] * spec.n_features))
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
            row_start,
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
