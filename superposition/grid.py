"""The sweep grid × restarts as one flat instance axis: instance = level * restarts + restart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor


@dataclass(frozen=True)
class InstanceGrid:
    """Float64 on the host, so results.json repeats the configured values exactly."""

    feature_probability: Annotated[Tensor, "level"]
    importance: Annotated[Tensor, "level feature"]
    restarts: int

    @property
    def n_levels(self) -> int:
        return self.feature_probability.shape[0]

    @property
    def n_instances(self) -> int:
        return self.n_levels * self.restarts

    def level_of(self, instances: Annotated[Tensor, "instance"]) -> Annotated[Tensor, "instance"]:
        return instances // self.restarts

    def instance_probability(self) -> Annotated[Tensor, "instance"]:
        return self.feature_probability.float().repeat_interleave(self.restarts)

    def instance_importance(self) -> Annotated[Tensor, "instance feature"]:
        return self.importance.float().repeat_interleave(self.restarts, dim=0)


def decaying_importance(n_features: int, decay: float) -> Annotated[Tensor, "feature"]:
    return decay ** torch.arange(n_features, dtype=torch.float64)


def sparsity_grid(
    feature_probability: list[float], n_features: int, decay: float, restarts: int
) -> InstanceGrid:
    """Every level shares the importance decay**i and differs in feature probability."""
    importance = decaying_importance(n_features, decay)
    return InstanceGrid(
        feature_probability=torch.tensor(feature_probability, dtype=torch.float64),
        importance=importance.expand(len(feature_probability), n_features).clone(),
        restarts=restarts,
    )


def phase_level(r_index: int, p_index: int, n_probabilities: int) -> int:
    """The level of a phase sweep's cell (relative_importance[r_index],
    feature_probability[p_index]): r outer, p inner. The one definition of the layout, which
    phase_sweep_grid builds and store.results.RunResults.level_at reads; phase_cell inverts it."""
    return r_index * n_probabilities + p_index


def phase_cell(level: int, n_probabilities: int) -> tuple[int, int]:
    """(r index, p index) of a phase sweep's level: the inverse of phase_level."""
    return divmod(level, n_probabilities)


def phase_sweep_grid(
    relative_importance: list[float],
    feature_probability: list[float],
    n_features: int,
    decay: float,
    restarts: int,
) -> InstanceGrid:
    """The phase diagram's grid, relative_importance × feature_probability laid out by
    phase_level (r outer): importance decay**i, except the last feature, whose importance is r
    times feature 0's."""
    base = decaying_importance(n_features, decay)
    n_levels = len(relative_importance) * len(feature_probability)
    importance, probability = [], []
    for level in range(n_levels):
        r_index, p_index = phase_cell(level, len(feature_probability))
        vector = base.clone()
        vector[-1] = relative_importance[r_index] * base[0]
        importance.append(vector)
        probability.append(feature_probability[p_index])
    return InstanceGrid(
        feature_probability=torch.tensor(probability, dtype=torch.float64),
        importance=torch.stack(importance),
        restarts=restarts,
    )
