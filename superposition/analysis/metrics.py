"""Numbers read off the learned weights, the ones the paper and the course plot.

W is (hidden, feature): column i is feature i's direction in the hidden space (W for identity, W1
for abs), row h is neuron h's exposure to every feature. Every function accepts leading batch
axes (e.g. the level axis of weights.safetensors) and computes in float64.

- dimensionality of feature i (paper, "Feature Dimensionality"):
  D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², in [0, 1]; a feature with W_i = 0 gets D_i = 0.
- dimensions per feature: d_hidden / ‖W‖_F², the paper's curve against 1 / p.
- interference of feature i: sqrt(Σ_{j≠i} (Ŵ_i·W_j)²), how much other features overlap it
  (the course's colour for "superposition"); 0 for a feature with W_i = 0.
- a feature is represented when ‖W_i‖ > REPRESENTED_NORM.
- a neuron (row h) is dead when ‖W_h‖ <= DEAD_NEURON_NORM: it carries no feature and is counted
  in neither the numerator nor the denominator of the monosemantic fraction. A live neuron is
  monosemantic when its largest |exposure| is at least MONOSEMANTIC_SHARE of its L2 norm, i.e.
  all other exposures together have norm at most sqrt(1 - 0.99²) ≈ 0.14 of it.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from superposition import tasks
from superposition.tasks.task import Shape

REPRESENTED_NORM = 0.5
MONOSEMANTIC_SHARE = 0.99
DEAD_NEURON_NORM = 1e-3


def feature_matrix(task: str, weights: dict[str, Tensor]) -> Tensor:
    """The (..., hidden, feature) matrix whose columns are the features: the task's
    feature_weights (W for identity, W1 for abs)."""
    return weights[tasks.get(task).feature_weights]


def feature_norms(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "... feature"]:
    return W.double().norm(dim=-2)


def overlaps(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "... feature other"]:
    """Ŵ_i·W_j for every pair (i, j); row i is zero where W_i = 0."""
    W = W.double()
    norms = W.norm(dim=-2, keepdim=True)
    unit = torch.where(norms > 0, W / norms.clamp_min(torch.finfo(W.dtype).tiny), 0.0)
    return unit.transpose(-1, -2) @ W


def dimensionality(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "... feature"]:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²; 0 where W_i = 0."""
    squared_norm = feature_norms(W).pow(2)
    total = overlaps(W).pow(2).sum(dim=-1)
    return torch.where(total > 0, squared_norm / total.clamp_min(torch.finfo(total.dtype).tiny), 0)


def dimensions_per_feature(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "..."]:
    """d_hidden / ‖W‖_F² (inf where W = 0)."""
    W = W.double()
    return W.shape[-2] / W.pow(2).sum(dim=(-2, -1))


def interference(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "... feature"]:
    """sqrt(Σ_{j≠i} (Ŵ_i·W_j)²)."""
    o = overlaps(W)
    off_diagonal = o - torch.diag_embed(torch.diagonal(o, dim1=-2, dim2=-1))
    return off_diagonal.pow(2).sum(dim=-1).sqrt()


def represented(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "... feature"]:
    """True where ‖W_i‖ > REPRESENTED_NORM."""
    return feature_norms(W) > REPRESENTED_NORM


def neuron_alive(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "... hidden"]:
    return W.double().norm(dim=-1) > DEAD_NEURON_NORM


def monosemantic(W: Annotated[Tensor, "... hidden feature"]) -> Annotated[Tensor, "... hidden"]:
    """True for live neurons whose largest |exposure| >= MONOSEMANTIC_SHARE of the row's norm."""
    W = W.double()
    largest = W.abs().amax(dim=-1)
    return neuron_alive(W) & (largest >= MONOSEMANTIC_SHARE * W.norm(dim=-1))


def monosemantic_fraction(W: Annotated[Tensor, "hidden feature"]) -> float | None:
    """Monosemantic neurons over live neurons; None when every neuron is dead."""
    alive = int(neuron_alive(W).sum())
    if alive == 0:
        return None
    return int(monosemantic(W).sum()) / alive


def has_privileged_basis(task: str, shape: Shape) -> bool:
    """Neurons mean something only behind a ReLU (the task says where: abs always, identity with
    hidden_relu)."""
    return bool(tasks.get(task).privileged_basis(shape))


def _mean(values: Tensor) -> float | None:
    return float(values.mean()) if values.numel() > 0 else None


def level_metrics(task: str, weights: dict[str, Tensor], hidden_relu: bool) -> list[dict]:
    """One dict of plain Python values per level (level axis first in `weights`).

    features_represented: count of features with ‖W_i‖ > REPRESENTED_NORM.
    mean_dimensionality, mean_interference: means over the represented features (None if none).
    dimensions_per_feature: d_hidden / ‖W‖_F² (None where W = 0).
    monosemantic_fraction: for abs and identity with hidden_relu (None otherwise, or when every
    neuron is dead).
    features_computed_both_signs, features_computed_one_sign (abs only, None otherwise): features
    for which the model returns at least COMPUTED_SHARE of |x| for both signs, for one sign only
    (computed_fraction).
    A level whose weights are not all finite (no restart stayed finite) gets None everywhere.
    """
    W_all = feature_matrix(task, weights)
    d_hidden, n_features = W_all.shape[-2:]
    shape = Shape(n_features, d_hidden, bool(hidden_relu))
    # the monosemantic fraction: where the hidden units are neurons, for tasks that ask for it
    privileged = has_privileged_basis(task, shape) and "neurons" in tasks.get(task).metrics
    rows = []
    for level in range(W_all.shape[0]):
        W = W_all[level]
        finite = all(bool(torch.isfinite(v[level]).all()) for v in weights.values())
        if not finite:
            rows.append(
                {
                    "features_represented": None,
                    "mean_dimensionality": None,
                    "mean_interference": None,
                    "dimensions_per_feature": None,
                    "monosemantic_fraction": None,
                    "features_computed_both_signs": None,
                    "features_computed_one_sign": None,
                }
            )
            continue
        keep = represented(W)
        per_feature = float(dimensions_per_feature(W))
        rows.append(
            {
                "features_represented": int(keep.sum()),
                "mean_dimensionality": _mean(dimensionality(W)[keep]),
                "mean_interference": _mean(interference(W)[keep]),
                "dimensions_per_feature": per_feature if per_feature != float("inf") else None,
                "monosemantic_fraction": monosemantic_fraction(W) if privileged else None,
                **_sign_metrics(task, weights, level),
            }
        )
    return rows


def computes_signs(task: str) -> bool:
    """Whether the task's metrics include which signs of x it computes (abs)."""
    return "signs" in tasks.get(task).metrics


def _sign_metrics(task: str, weights: dict[str, Tensor], level: int) -> dict[str, int | None]:
    if not computes_signs(task):
        return {"features_computed_both_signs": None, "features_computed_one_sign": None}
    both, one = sign_counts(computed_fraction({k: v[level] for k, v in weights.items()}))
    return {"features_computed_both_signs": both, "features_computed_one_sign": one}


# ------------------------------------------------------------------------ abs: |x| by sign

# a feature's sign is computed when the model returns at least this share of |x| for it
COMPUTED_SHARE = 0.5
# magnitudes at which a feature is fed alone: midpoints of 8 equal bins of (0, 1], the
# magnitude distribution of abs
PROBE_MAGNITUDES = tuple((k + 0.5) / 8 for k in range(8))


def computed_fraction(
    weights: dict[str, Tensor],
) -> Annotated[Tensor, "... sign feature"]:
    """What share of |x| the abs model computes for each feature fed alone, by sign.

    For feature i and sign s (index 0: x > 0, index 1: x < 0) the input is x = s·m·e_i at each of
    PROBE_MAGNITUDES; the share is Σ_m (out_i(x) − out_i(0)) / Σ_m m, so 1 for |x| computed
    exactly, 0 for a constant output (a dropped feature, or the wrong sign of a one-neuron
    feature). out_i(0) = ReLU(b_i) is taken off so that a constant bias does not count.
    """
    W1, W2 = weights["W1"].double(), weights["W2"].double()
    b = weights["b_final"].double()
    magnitudes = torch.tensor(PROBE_MAGNITUDES, dtype=torch.float64)
    shares = []
    for sign in (1.0, -1.0):
        # feature i alone at magnitude m reaches its own output as m · Σ_h W2[i, h] ReLU(s W1[h, i])
        gain = (W2 * torch.relu(sign * W1).transpose(-1, -2)).sum(dim=-1)  # (..., feature)
        out = torch.relu(gain.unsqueeze(-1) * magnitudes + b.unsqueeze(-1))  # (..., feature, m)
        computed = (out - torch.relu(b).unsqueeze(-1)).sum(dim=-1) / magnitudes.sum()
        shares.append(computed)
    return torch.stack(shares, dim=-2)


def sign_counts(share: Annotated[Tensor, "sign feature"]) -> tuple[int, int]:
    """(features computed for both signs, features computed for one sign only)."""
    computed = share >= COMPUTED_SHARE
    both = computed.all(dim=-2)
    one = computed.any(dim=-2) & ~both
    return int(both.sum()), int(one.sum())


def one_sign_features(task: str, weights: dict[str, Tensor]) -> list[list[int] | None]:
    """abs, per level (level axis first): the features computed for one sign of x only; None
    for a level whose weights are not all finite, and for tasks without sign metrics."""
    if not computes_signs(task):
        return [None] * next(iter(weights.values())).shape[0]
    rows = []
    for level in range(weights["W1"].shape[0]):
        params = {k: v[level] for k, v in weights.items()}
        if not all(bool(torch.isfinite(v).all()) for v in params.values()):
            rows.append(None)
            continue
        computed = computed_fraction(params) >= COMPUTED_SHARE
        one = computed.any(dim=-2) & ~computed.all(dim=-2)
        rows.append(torch.nonzero(one).flatten().tolist())
    return rows
