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


def phase_grid(
    relative_importance: list[float],
    feature_probability: list[float],
    n_features: int,
    decay: float,
    restarts: int,
) -> InstanceGrid:
    """The phase diagram's grid, relative_importance × feature_probability with r outer (level =
    r index · len(feature_probability) + p index): importance decay**i, except the last feature,
    whose importance is r times feature 0's."""
    base = decaying_importance(n_features, decay)
    importance, probability = [], []
    for r in relative_importance:
        for p in feature_probability:
            vector = base.clone()
            vector[-1] = r * base[0]
            importance.append(vector)
            probability.append(p)
    return InstanceGrid(
        feature_probability=torch.tensor(probability, dtype=torch.float64),
        importance=torch.stack(importance),
        restarts=restarts,
    )
