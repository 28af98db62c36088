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
