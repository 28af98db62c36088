"""Loss of every trained instance on a held-out batch drawn from its own random stream.

All restarts of a grid point see the same held-out rows (the stream is keyed by grid point), so
comparing restarts is a paired comparison: the noise of the batch cancels in the ranking.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from superposition.data import EVAL_STREAM, BatchSampler
from superposition.grid import InstanceGrid
from superposition.model import ModelSpec, forward, loss_per_instance, target_of

# rows × instances × features evaluated at once
EVAL_ELEMENTS_PER_PASS = 2**24


@torch.no_grad()
def evaluate_grid(
    spec: ModelSpec,
    params: dict[str, Tensor],
    grid: InstanceGrid,
    seed: int,
    rows: int,
    device: torch.device,
) -> Annotated[Tensor, "instance"]:
    """Mean held-out loss of every instance, computed in passes of bounded size."""
    n = grid.n_instances
    params = {k: v.to(device) for k, v in params.items()}
    instances = torch.arange(n, device=device)
    levels = grid.level_of(instances)
    probability = grid.instance_probability().to(device)
    importance = grid.instance_importance().to(device)
    rows_per_pass = max(1, EVAL_ELEMENTS_PER_PASS // (n * spec.n_features))
    total = torch.zeros(n, dtype=torch.float64, device=device)
    for row_start in range(0, rows, rows_per_pass):
        n_rows = min(rows_per_pass, rows - row_start)
        sampler = BatchSampler(
            spec.task, seed, levels, probability, n_rows, spec.n_features, EVAL_STREAM, row_start
        )
        x = sampler(0)
        loss = loss_per_instance(forward(spec, params, x), target_of(spec, x), importance)
        total += loss.double() * n_rows
    return (total / rows).float().cpu()
