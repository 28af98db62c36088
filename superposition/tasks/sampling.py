"""Batches of sparse features, sampled on the device every step.

Feature i of a row is active with probability p and then has a magnitude uniform in [0, 1]
(identity) or [-1, 1] (abs). One uniform u decides both: the feature is active when u < p, and
given that, u / p is uniform in (0, 1). This is exactly the distribution of the course's two draws.

With the course's correlated and anticorrelated pairs (DataConfig), the features are laid out as
[correlated pairs | anticorrelated pairs | independent features]; `pair_features` turns the
uniforms of the pair block into features, for this sampler and the fast trainer's alike.
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


def _magnitude(m: Tensor, task: Task) -> Tensor:
    """A magnitude uniform in (0, 1] as the task's value: itself, or uniform in (-1, 1] (abs)."""
    return 2 * m - 1 if task == Task.abs else m


def pair_features(
    u: Annotated[Tensor, "instance batch pair_feature"],
    probability: Annotated[Tensor, "instance"],
    task: Task,
    correlated_pairs: int,
    anticorrelated_pairs: int,
) -> Annotated[Tensor, "instance batch pair_feature"]:
    """The features of the pair block (2 * (correlated + anticorrelated) columns) from one
    independent uniform per entry; pair k is columns (2k, 2k + 1), the correlated pairs first.

    Each pair's first uniform u (the lead) decides its presence; the first feature is always
    active when u < p, with magnitude u / p, as an independent feature.
    - Correlated pair: the second feature is active exactly when the first is (one draw, P = p),
      with its own uniform as magnitude: independent of u, so of the first magnitude.
    - Anticorrelated pair: the pair is active when u < 2p (P = 2p). Given that, u is uniform on
      (0, 2p): the first feature (u < p) or the second (p <= u < 2p) each with probability 1/2,
      and given which, u / p or (2p - u) / p is uniform in (0, 1]. So each feature has marginal
      p, the two are never active together, and the magnitude is independent of which one: the
      course's three draws. (2p - u, not u - p: both are exact in floating point for u in
      [p, 2p), but 2p - u is never 0, so an active feature never reads as an inactive one.) The
      second uniform of the pair is not used. Needs p <= 0.5.
    """
    c = correlated_pairs
    p = probability.view(-1, 1, 1)
    lead, partner = u[..., 0::2], u[..., 1::2]
    first = torch.where(lead < p, _magnitude(lead / p, task), 0.0)
    correlated = torch.where(lead[..., :c] < p, _magnitude(partner[..., :c], task), 0.0)
    anti_lead = lead[..., c:]
    second_active = (anti_lead >= p) & (anti_lead < 2 * p)
    anticorrelated = torch.where(second_active, _magnitude((2 * p - anti_lead) / p, task), 0.0)
    second = torch.cat([correlated, anticorrelated], dim=-1)
    return torch.stack([first, second], dim=-1).flatten(-2)


def features_with_pairs(
    u: Annotated[Tensor, "instance batch feature"],
    probability: Annotated[Tensor, "instance"],
    task: Task,
    correlated_pairs: int = 0,
    anticorrelated_pairs: int = 0,
) -> Annotated[Tensor, "instance batch feature"]:
    """Features from one uniform per entry: the pair block (`pair_features`), then independent
    features (`features_from_uniform`)."""
    x = features_from_uniform(u, probability, task)
    width = 2 * (correlated_pairs + anticorrelated_pairs)
    if width:
        x[..., :width] = pair_features(
            u[..., :width], probability, task, correlated_pairs, anticorrelated_pairs
        )
    return x


def check_pairs(
    n_features: int, max_probability: float, correlated_pairs: int, anticorrelated_pairs: int
) -> None:
    """Raise ValueError when the pairs do not fit the features or anticorrelated pairs meet
    p > 0.5 (config.validate reports both to a user first)."""
    pairs = f"{correlated_pairs} correlated and {anticorrelated_pairs} anticorrelated pairs"
    if correlated_pairs < 0 or anticorrelated_pairs < 0:
        raise ValueError(f"{pairs}: counts must be >= 0")
    if 2 * (correlated_pairs + anticorrelated_pairs) > n_features:
        raise ValueError(f"{pairs} do not fit {n_features} features")
    if anticorrelated_pairs and max_probability > 0.5:
        raise ValueError(f"anticorrelated pairs need p <= 0.5, got {max_probability}")


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
        *,
        correlated_pairs: int = 0,
        anticorrelated_pairs: int = 0,
    ):
        if correlated_pairs or anticorrelated_pairs:
            max_probability = float(probability.max()) if anticorrelated_pairs else 0.0
            check_pairs(n_features, max_probability, correlated_pairs, anticorrelated_pairs)
        keys = rng.instance_keys(seed, stream, instances)
        self.uniforms = rng.UniformStream(keys, batch_size, n_features, row_offset)
        self.probability = probability
        self.task = task
        self.pairs = (correlated_pairs, anticorrelated_pairs)

    def __call__(self, step: int) -> Annotated[Tensor, "instance batch feature"]:
        u = self.uniforms.block(step)
        return features_with_pairs(u, self.probability, self.task, *self.pairs)
