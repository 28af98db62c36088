"""Batches of sparse features, sampled on the device every step.

Feature i of a row is active with probability p and then has a magnitude uniform in [0, 1]
(identity) or [-1, 1] (abs). One uniform u decides both: the feature is active when u < p, and
given that, u / p is uniform in (0, 1). This is exactly the distribution of the course's two draws.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from superposition import rng
from superposition.config import Task

TRAIN_STREAM = 1
EVAL_STREAM = 2


def features_from_uniform(
    u: Annotated[Tensor, "instance batch feature"],
    probability: Annotated[Tensor, "instance"],
    task: Task,
) -> Annotated[Tensor, "instance batch feature"]:
    p = probability.view(-1, 1, 1)
    magnitude = u / p
    if task == Task.abs:
        magnitude = 2 * magnitude - 1
    return torch.where(u < p, magnitude, 0.0)


class BatchSampler:
    """Training batches of a chunk of instances: block `step` is the same whatever the chunking."""

    def __init__(
        self,
        task: Task,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        probability: Annotated[Tensor, "instance"],
        batch_size: int,
        n_features: int,
        stream: int = TRAIN_STREAM,
        row_offset: int = 0,
    ):
        keys = rng.instance_keys(seed, stream, instances)
        self.uniforms = rng.UniformStream(keys, batch_size, n_features, row_offset)
        self.probability = probability
        self.task = task

    def __call__(self, step: int) -> Annotated[Tensor, "instance batch feature"]:
        return features_from_uniform(self.uniforms.block(step), self.probability, self.task)
