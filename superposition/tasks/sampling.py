"""Batches of sparse features, drawn from counter-based uniforms: the reference sampler.

Feature i of a row is active with probability p and then has a magnitude uniform in the task's
(low, high]: [0, 1] for identity, [-1, 1] for abs. One uniform u decides both: the feature is
active when u < p, and given that, u / p is uniform in (0, 1]. This is exactly the distribution
of the course's two draws.

With the course's correlated and anticorrelated pairs (DataConfig), the features are laid out as
[correlated pairs | anticorrelated pairs | independent features]; `pair_features` turns the
uniforms of the pair block into features, for this sampler and the training samplers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from superposition import rng
from superposition.config import DataConfig
from superposition.rng import EVAL_AT_LEAST_TWO_STREAM, TRAIN_STREAM
from superposition.tasks.task import Task


@dataclass(frozen=True)
class FeatureDistribution:
    """How a row's features are drawn at a feature probability p: an active feature's value is
    uniform in (low, high] (`magnitudes`); the first correlated_pairs pairs are active together,
    the next anticorrelated_pairs pairs never are (see pair_features)."""

    magnitudes: tuple[float, float] = (0.0, 1.0)
    correlated_pairs: int = 0
    anticorrelated_pairs: int = 0

    @classmethod
    def of(cls, task: Task, data: DataConfig | None = None) -> FeatureDistribution:
        data = DataConfig() if data is None else data
        return cls(task.magnitudes, data.correlated_pairs, data.anticorrelated_pairs)

    @property
    def pair_width(self) -> int:
        """Columns of the pair block."""
        return 2 * (self.correlated_pairs + self.anticorrelated_pairs)

    @property
    def unit(self) -> bool:
        return tuple(self.magnitudes) == (0.0, 1.0)

    def magnitude(self, m: Tensor) -> Tensor:
        """A magnitude uniform in (0, 1] as the task's value, uniform in (low, high]."""
        if self.unit:
            return m
        low, high = self.magnitudes
        return m * (high - low) + low

    def magnitude_(self, m: Tensor) -> Tensor:
        """`magnitude`, in place."""
        if self.unit:
            return m
        low, high = self.magnitudes
        return m.mul_(high - low).add_(low)

    def check(self, n_features: int, max_probability: float) -> None:
        """Raise ValueError when the pairs do not fit the features or anticorrelated pairs meet
        p > 0.5 (config.validate reports both to a user first)."""
        c, a = self.correlated_pairs, self.anticorrelated_pairs
        pairs = f"{c} correlated and {a} anticorrelated pairs"
        if c < 0 or a < 0:
            raise ValueError(f"{pairs}: counts must be >= 0")
        if self.pair_width > n_features:
            raise ValueError(f"{pairs} do not fit {n_features} features")
        if a and max_probability > 0.5:
            raise ValueError(f"anticorrelated pairs need p <= 0.5, got {max_probability}")


def features_from_uniform(
    u: Annotated[Tensor, "instance batch feature"],
    probability: Annotated[Tensor, "instance"],
    features: FeatureDistribution,
) -> Annotated[Tensor, "instance batch feature"]:
    p = probability.view(-1, 1, 1)
    return torch.where(u < p, features.magnitude(u / p), 0.0)


def pair_features(
    u: Annotated[Tensor, "instance batch pair_feature"],
    probability: Annotated[Tensor, "instance"],
    features: FeatureDistribution,
) -> Annotated[Tensor, "instance batch pair_feature"]:
    """The features of the pair block (features.pair_width columns) from one independent uniform
    per entry; pair k is columns (2k, 2k + 1), the correlated pairs first.

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
    c = features.correlated_pairs
    p = probability.view(-1, 1, 1)
    lead, partner = u[..., 0::2], u[..., 1::2]
    first = torch.where(lead < p, features.magnitude(lead / p), 0.0)
    correlated = torch.where(lead[..., :c] < p, features.magnitude(partner[..., :c]), 0.0)
    anti_lead = lead[..., c:]
    second_active = (anti_lead >= p) & (anti_lead < 2 * p)
    anticorrelated = torch.where(second_active, features.magnitude((2 * p - anti_lead) / p), 0.0)
    second = torch.cat([correlated, anticorrelated], dim=-1)
    return torch.stack([first, second], dim=-1).flatten(-2)


def features_with_pairs(
    u: Annotated[Tensor, "instance batch feature"],
    probability: Annotated[Tensor, "instance"],
    features: FeatureDistribution,
) -> Annotated[Tensor, "instance batch feature"]:
    """Features from one uniform per entry: the pair block (`pair_features`), then independent
    features (`features_from_uniform`)."""
    x = features_from_uniform(u, probability, features)
    width = features.pair_width
    if width:
        x[..., :width] = pair_features(u[..., :width], probability, features)
    return x


class BatchSampler:
    """Batches of a chunk of instances: block `step` is the same whatever the chunking."""

    def __init__(
        self,
        features: FeatureDistribution,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        probability: Annotated[Tensor, "instance"],
        batch_size: int,
        n_features: int,
        stream: int = TRAIN_STREAM,
        row_offset: int = 0,
    ):
        if features.pair_width:
            anti = features.anticorrelated_pairs
            features.check(n_features, float(probability.max()) if anti else 0.0)
        keys = rng.instance_keys(seed, stream, instances)
        self.uniforms = rng.UniformStream(keys, batch_size, n_features, row_offset)
        self.probability = probability
        self.features = features

    def __call__(self, step: int) -> Annotated[Tensor, "instance batch feature"]:
        u = self.uniforms.block(step)
        return features_with_pairs(u, self.probability, self.features)


def active_count_distribution(
    probability: Annotated[Tensor, "instance"], n_features: int
) -> Annotated[Tensor, "instance count"]:
    """P(exactly k features active), k = 0 .. n_features, for independent features each active
    with probability p: Binomial(n_features, p), in float64 (the tail k >= 2 is summed, never
    computed as 1 - P(0) - P(1), which cancels at small p)."""
    k = torch.arange(n_features + 1, dtype=torch.float64, device=probability.device)
    p = probability.double().view(-1, 1)
    log_choose = (
        torch.lgamma(torch.tensor(n_features + 1.0, dtype=torch.float64))
        - torch.lgamma(k + 1)
        - torch.lgamma(n_features - k + 1)
    )
    # 0 · log 0 is 0: at p = 1 every feature is active
    active = torch.where(k == 0, 0.0, k * torch.log(p))
    inactive = torch.where(k == n_features, 0.0, (n_features - k) * torch.log1p(-p))
    return torch.exp(log_choose + active + inactive)


class SecondActiveStrata:
    """Strata of the rows with two or more active features, by where their first two active
    features are (in feature order).

    Given K >= 2, the second active feature is at position b and the first at a < b with
    probability p² (1 − p)^(b − 1) / P(K >= 2): every feature before b but a is inactive, the
    features after b are independent as ever. So the rows split exactly by (a, b):
    - "pairs": one stratum per pair a < b (F (F − 1) / 2 strata);
    - "second": one per b, the first uniform below it (F − 1 strata);
    - "one": a single stratum, b drawn from its distribution (∝ b (1 − p)^(b − 1)).
    """

    def __init__(self, n_features: int, kind: str):
        self.n_features, self.kind = n_features, kind
        second = torch.arange(1, n_features)
        if kind == "pairs":
            self.second = second.repeat_interleave(second)
            self.first = torch.cat([torch.arange(b) for b in range(1, n_features)])
        elif kind == "second":
            self.second, self.first = second, None
        else:
            self.second = self.first = None

    @classmethod
    def choose(cls, n_features: int, rows: int, rows_per_stratum: int) -> SecondActiveStrata:
        """The finest kind of which every stratum gets at least `rows_per_stratum` rows (one
        stratum for fewer than two features, which never have two active)."""
        if n_features < 2:
            return cls(n_features, "one")
        if n_features * (n_features - 1) // 2 * rows_per_stratum <= rows:
            return cls(n_features, "pairs")
        if (n_features - 1) * rows_per_stratum <= rows:
            return cls(n_features, "second")
        return cls(n_features, "one")

    @property
    def n_strata(self) -> int:
        return 1 if self.second is None else self.second.numel()

    def weights(
        self, probability: Annotated[Tensor, "instance"]
    ) -> Annotated[Tensor, "instance stratum"]:
        """P(stratum | K >= 2), float64."""
        if self.second is None:
            return torch.ones(
                probability.shape[0], 1, dtype=torch.float64, device=probability.device
            )
        if self.first is None:
            return self._second_weights(probability)
        p = probability.double().view(-1, 1)
        b = self.second.to(probability.device).double()
        weight = (1 - p).pow(b - 1)  # 0⁰ = 1 at p = 1
        return weight / weight.sum(dim=1, keepdim=True)

    def _second_weights(
        self, probability: Annotated[Tensor, "instance"]
    ) -> Annotated[Tensor, "instance second"]:
        """P(the second active feature is at b | K >= 2), b = 1 .. F − 1: ∝ b (1 − p)^(b − 1),
        the b positions of the first (0⁰ = 1 at p = 1)."""
        b = torch.arange(1, self.n_features, dtype=torch.float64, device=probability.device)
        weight = b * (1 - probability.double().view(-1, 1)).pow(b - 1)
        return weight / weight.sum(dim=1, keepdim=True)

    def positions(
        self,
        stratum: Annotated[Tensor, "instance row"],
        u_second: Annotated[Tensor, "instance row"],
        u_first: Annotated[Tensor, "instance row"],
        probability: Annotated[Tensor, "instance"],
    ) -> tuple[Tensor, Tensor]:
        """(second, first) positions of each row in its stratum (u_*: uniforms in (0, 1))."""
        if self.second is None:
            cdf = self._second_weights(probability).cumsum(dim=1).contiguous()
            second = 1 + torch.searchsorted(cdf, u_second.double().contiguous())
            second = second.clamp_max(self.n_features - 1)
        else:
            second = self.second.to(stratum.device)[stratum]
        if self.first is not None:
            return second, self.first.to(stratum.device)[stratum]
        return second, (u_first * second).long().clamp_max(second - 1)


class AtLeastTwoActiveSampler:
    """Rows of independent features given two or more active, each row in a stratum of
    SecondActiveStrata: its first two active features where the stratum puts them (uniform
    magnitudes), the features after the second active when u < p, with magnitude u / p.

    Rows at `row_offset` onwards are fresh rows, independent of the rows before them.
    """

    def __init__(
        self,
        features: FeatureDistribution,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        probability: Annotated[Tensor, "instance"],
        strata: SecondActiveStrata,
        stratum: Annotated[Tensor, "instance row"],
        row_offset: int = 0,
        stream: int = EVAL_AT_LEAST_TWO_STREAM,
    ):
        if features.pair_width:
            raise ValueError("feature pairs are not independent: sample them with BatchSampler")
        keys = rng.instance_keys(seed, stream, instances)
        f = strata.n_features
        # one uniform per feature, then one for the second active position, one for the first
        self.uniforms = rng.UniformStream(keys, stratum.shape[1], f + 2, row_offset)
        self.probability, self.features = probability, features
        self.strata, self.stratum = strata, stratum

    def __call__(self) -> Annotated[Tensor, "instance batch feature"]:
        return self.draw()[0]

    def draw(self) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, the first active feature of each row, the second)."""
        f = self.strata.n_features
        u = self.uniforms.block(0)
        second, first = self.strata.positions(
            self.stratum, u[..., f], u[..., f + 1], self.probability
        )
        u = u[..., :f]
        p = self.probability.view(-1, 1, 1)
        position = torch.arange(f, device=u.device)
        later = (position > second.unsqueeze(-1)) & (u < p)
        x = torch.where(later, self.features.magnitude(u / p), 0.0)
        chosen = (position == second.unsqueeze(-1)) | (position == first.unsqueeze(-1))
        return torch.where(chosen, self.features.magnitude(u), x), first, second
