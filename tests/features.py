"""The feature distribution of a built-in task, for tests that build samplers directly."""

from __future__ import annotations

from superposition import tasks
from superposition.config import DataConfig
from superposition.tasks.sampling import FeatureDistribution


def distribution(
    task: str, correlated_pairs: int = 0, anticorrelated_pairs: int = 0
) -> FeatureDistribution:
    data = DataConfig(correlated_pairs=correlated_pairs, anticorrelated_pairs=anticorrelated_pairs)
    return FeatureDistribution.of(tasks.get(task), data)
