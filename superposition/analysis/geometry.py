"""The verdicts of the paper's experiments, as plain functions of learned weights.

Everything works on a single level's tensors (the functions named *_per_level, and
dimensionality_summary, also take the level axis first), so a notebook can call them on
hand-built weights or on store.results.load_run(out_dir).features. W is (hidden, feature) as in
metrics.py: column i is feature i's direction, row h is neuron h's exposure to every feature. All
arithmetic is float64.

Geometry (a 2-D hidden space, W of shape (2, feature)):
- a feature is represented when ‖W_i‖ > REPRESENTED_NORM (metrics.py);
- its angle is atan2(W_1i, W_0i) in [0, 2π); the gaps are the cyclic differences of the sorted
  angles of the represented features, so they sum to 2π;
- the represented features form a regular polygon when there are at least two of them and every
  gap is within POLYGON_TOLERANCE_DEG of 360° / n (two antipodal features are a regular digon);
- two represented features are antipodal when the angle between them is within
  ANTIPODAL_TOLERANCE_DEG of 180°, orthogonal when within ORTHOGONAL_TOLERANCE_DEG of 90°
  (these two work in any hidden dimension).

Phase diagram (paper, "Phase Changes"): n features of which the last, the "extra" one, has
importance r relative to the others' 1; every feature is active with probability s and then
uniform on [0, 1]. For n = 2, m = 1 the expected loss per sample, summed over features, of each
candidate solution is (a feature left to its bias costs E[(x - s/2)²] = s/3 - s²/4):
- "not_represented", the extra feature dropped, the other one kept:  r (s/3 - s²/4);
- "dedicated", the extra feature kept, the other one dropped:        s/3 - s²/4;
- "superposition", both on one antipodal direction (W = [1, -1]):   (1 + r) s² / 6
  (when both are active, each output loses min(x_0, x_1), and E[min²] = 1/6).
Solving for the crossings, superposition wins below s*(r) = 4r / (2 + 5r) for r <= 1 and below
s*(r) = 4 / (5 + 2r) for r >= 1 (both 4/7 at r = 1); above s*, r = 1 separates the other two.
Trained weights are classified by the extra feature: "not_represented" when ‖W_extra‖ <=
REPRESENTED_NORM, else "superposition" when |cos| with some other represented feature is at
least SHARED_DIRECTION_COS, else "dedicated" (it has a direction of its own). The same rule
serves 2 -> 1 and 3 -> 2. A grid cell is compared with the analytic phase only when it is clear
of the boundaries: |ln(s / s*(r))| > margin, and, on the side where superposition loses
(s >= s*), also |ln r| > margin.

Dimensionality: D_i from metrics.dimensionality. The paper's sticky values are STICKY_VALUES
(1 dedicated, 3/4 tetrahedron, 2/3 triangle, 1/2 digon, 2/5 pentagon, 3/8 square antiprism); a
represented feature counts for the nearest one when within STICKY_TOLERANCE of it. 2/5 and 3/8
are only 0.025 apart, less than twice the tolerance, hence "nearest": each feature counts once.

(The abs baselines, closed forms of the abs task, are in tasks/abs.py.)

Neurons (abs task, W1 (hidden, feature), W2 (feature, hidden)):
- a weight is strong when its magnitude exceeds STRONG_WEIGHT (a represented feature split
  evenly over two neurons has |W1| > REPRESENTED_NORM / √2 ≈ 0.35 on each);
- neuron h is dominated by feature i when |W1[h, i]| >= DOMINANT_SHARE of the row's norm, looser
  than metrics.MONOSEMANTIC_SHARE since such neurons pick up small reads of other features;
- feature i has an antipodal neuron pair (|x| = ReLU(x) + ReLU(-x)) when two neurons dominated by
  i read it strongly with opposite signs and both write it back with W2[i, h] > STRONG_WEIGHT;
- neuron h shows asymmetric superposition when its two largest |W1[h, :]| exceed STRONG_WEIGHT,
  the larger is at least ASYMMETRIC_RATIO times the smaller, and the norm of all its other
  exposures is at most ASYMMETRIC_REST_SHARE of the smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, NamedTuple

import torch
from torch import Tensor

from superposition.analysis import metrics

POLYGON_TOLERANCE_DEG = 5.0
ANTIPODAL_TOLERANCE_DEG = 10.0
ORTHOGONAL_TOLERANCE_DEG = 10.0

NOT_REPRESENTED = "not_represented"
DEDICATED = "dedicated"
SUPERPOSITION = "superposition"
PHASES = (NOT_REPRESENTED, DEDICATED, SUPERPOSITION)
SHARED_DIRECTION_COS = 0.1
PHASE_MARGIN = 0.2

STICKY_VALUES = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)
STICKY_TOLERANCE = 0.03

STRONG_WEIGHT = 0.3
DOMINANT_SHARE = 0.9
ASYMMETRIC_RATIO = 2.0
ASYMMETRIC_REST_SHARE = 0.5

# ----------------------------------------------------------------------------------- geometry


def _plane(W: Annotated[Tensor, "hidden feature"]) -> Annotated[Tensor, "2 feature"]:
    if W.dim() != 2 or W.shape[0] != 2:
        raise ValueError(f"expected W of shape (2, feature), got {tuple(W.shape)}")
    return W.double()


def feature_angles(W: Annotated[Tensor, "2 feature"]) -> Annotated[Tensor, "represented"]:
    """Angles in [0, 2π) of the represented features, sorted."""
    W = _plane(W)
    kept = W[:, metrics.represented(W)]
    angles = torch.remainder(torch.atan2(kept[1], kept[0]), 2 * math.pi)
    # the remainder of a tiny negative angle rounds to exactly 2π
    angles = torch.where(angles >= 2 * math.pi, 0.0, angles)
    return angles.sort().values


def angle_gaps(W: Annotated[Tensor, "2 feature"]) -> Annotated[Tensor, "represented"]:
    """Cyclic gaps (radians) between consecutive represented features; they sum to 2π."""
    angles = feature_angles(W)
    if angles.numel() == 0:
        return angles
    wrap = angles[:1] + 2 * math.pi - angles[-1:]
    return torch.cat([angles.diff(), wrap])


class Polygon(NamedTuple):
    n_represented: int
    min_gap_deg: float
    max_gap_deg: float
    is_regular: bool


def regular_polygon(
    W: Annotated[Tensor, "2 feature"], tolerance_deg: float = POLYGON_TOLERANCE_DEG
) -> Polygon:
    """Do the represented features sit at the corners of a regular n-gon? (NaN gaps when n = 0)"""
    gaps = torch.rad2deg(angle_gaps(W))
    n = gaps.numel()
    if n == 0:
        return Polygon(0, math.nan, math.nan, False)
    regular = n >= 2 and bool(((gaps - 360 / n).abs() <= tolerance_deg).all())
    return Polygon(n, float(gaps.min()), float(gaps.max()), regular)


POLYGON_NAMES = {3: "triangle", 4: "square", 5: "pentagon", 6: "hexagon", 8: "octagon"}


def polygon_name(n: int) -> str:
    """The name of a regular polygon with n corners: "pentagon" for 5, "7_gon" for 7."""
    return POLYGON_NAMES.get(n, f"{n}_gon")


def pair_angles(W: Annotated[Tensor, "hidden feature"]) -> Annotated[Tensor, "feature other"]:
    """Angle in degrees, in [0, 180], between every two feature directions; NaN for W_i = 0."""
    W = W.double()
    norms = W.norm(dim=0)
    cos = (W.T @ W) / (norms[:, None] * norms[None, :])
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def pair_angle(W: Annotated[Tensor, "hidden feature"], i: int, j: int) -> float:
    """Angle in degrees between features i and j."""
    return float(pair_angles(W[:, [i, j]])[0, 1])


def _pairs_at(
    W: Annotated[Tensor, "hidden feature"],
    target_deg: float,
    tolerance_deg: float,
    pairs: Sequence[tuple[int, int]] | None,
) -> list[tuple[int, int]]:
    """The pairs (i < j unless given) of represented features at target_deg ± tolerance_deg."""
    keep = metrics.represented(W)
    near = (pair_angles(W) - target_deg).abs() <= tolerance_deg
    near &= keep[:, None] & keep[None, :]
    if pairs is None:
        rows, cols = torch.nonzero(near.triu(diagonal=1), as_tuple=True)
        return list(zip(rows.tolist(), cols.tolist(), strict=True))
    return [(i, j) for i, j in pairs if bool(near[i, j])]


def antipodal_pairs(
    W: Annotated[Tensor, "hidden feature"], tolerance_deg: float = ANTIPODAL_TOLERANCE_DEG
) -> list[tuple[int, int]]:
    """Pairs (i < j) of represented features within tolerance_deg of opposite directions."""
    return _pairs_at(W, 180.0, tolerance_deg, None)


def orthogonal_pairs(
    W: Annotated[Tensor, "hidden feature"],
    pairs: Sequence[tuple[int, int]] | None = None,
    tolerance_deg: float = ORTHOGONAL_TOLERANCE_DEG,
) -> list[tuple[int, int]]:
    """Those of `pairs` (default: every i < j) whose represented features are within
    tolerance_deg of 90° apart."""
    return _pairs_at(W, 90.0, tolerance_deg, pairs)


# ------------------------------------------------------------------------------ phase diagram


def analytic_losses(r: float, s: float) -> dict[str, float]:
    """Expected loss of each candidate 2 -> 1 solution, keyed by phase (see the module doc)."""
    left_to_bias = s / 3 - s**2 / 4
    return {
        NOT_REPRESENTED: r * left_to_bias,
        DEDICATED: left_to_bias,
        SUPERPOSITION: (1 + r) * s**2 / 6,
    }


def analytic_phase(r: float, s: float) -> str:
    """The phase of least analytic loss (on an exact tie, the earlier one in PHASES)."""
    losses = analytic_losses(r, s)
    return min(PHASES, key=losses.__getitem__)


def phase_boundary(r: float) -> float:
    """s*(r): superposition has the least analytic loss for s < s*(r)."""
    return 4 * r / (2 + 5 * r) if r <= 1 else 4 / (5 + 2 * r)


def classify_cell(
    W: Annotated[Tensor, "hidden feature"],
    extra_feature: int = -1,
    shared_cos: float = SHARED_DIRECTION_COS,
) -> str:
    """The phase of trained weights, read off the extra feature (see the module doc)."""
    W = W.double()
    if W.dim() != 2:
        raise ValueError(f"expected W of shape (hidden, feature), got {tuple(W.shape)}")
    extra = extra_feature % W.shape[1]
    keep = metrics.represented(W)
    if not keep[extra]:
        return NOT_REPRESENTED
    unit = W / W.norm(dim=0).clamp_min(torch.finfo(W.dtype).tiny)
    cos = (unit.T @ unit[:, extra]).abs()
    others = keep.clone()
    others[extra] = False
    return SUPERPOSITION if bool((cos[others] >= shared_cos).any()) else DEDICATED


def clear_of_boundary(r: float, s: float, margin: float = PHASE_MARGIN) -> bool:
    """Is (r, s) more than `margin` (in ln) from every analytic phase boundary?"""
    boundary = phase_boundary(r)
    if abs(math.log(s / boundary)) <= margin:
        return False
    # the line r = 1 separates not_represented from dedicated only where superposition loses
    return s < boundary or abs(math.log(r)) > margin


class Agreement(NamedTuple):
    fraction: float | None  # None when no cell is clear of the boundaries
    n_cells: int


def phase_agreement(
    classes: Sequence[Sequence[str]],
    r_grid: Sequence[float],
    s_grid: Sequence[float],
    margin: float = PHASE_MARGIN,
) -> Agreement:
    """Share of the cells clear of the boundaries whose class is the analytic phase.

    classes[a][b] is the class of the cell (r_grid[a], s_grid[b]).
    """
    r_values = [float(r) for r in r_grid]
    s_values = [float(s) for s in s_grid]
    if len(classes) != len(r_values) or any(len(row) != len(s_values) for row in classes):
        raise ValueError("classes must be a (len(r_grid), len(s_grid)) grid")
    agree = considered = 0
    for r, row in zip(r_values, classes, strict=True):
        for s, cls in zip(s_values, row, strict=True):
            if clear_of_boundary(r, s, margin):
                considered += 1
                agree += cls == analytic_phase(r, s)
    return Agreement(agree / considered if considered else None, considered)


# ----------------------------------------------------------------------------- dimensionality


def sticky_fractions(
    D: Annotated[Tensor, "represented"],
    values: Sequence[float] = STICKY_VALUES,
    tolerance: float = STICKY_TOLERANCE,
) -> dict[float, float | None]:
    """For each sticky value, the share of D (dimensionalities of the represented features)
    whose nearest sticky value it is, within tolerance. None for every value when D is empty."""
    D = torch.as_tensor(D, dtype=torch.float64).flatten()
    if D.numel() == 0:
        return {v: None for v in values}
    distance = (D[:, None] - torch.tensor(values, dtype=torch.float64)[None, :]).abs()
    closest, nearest = distance.min(dim=1)
    hit = closest <= tolerance
    return {v: float(((nearest == k) & hit).double().mean()) for k, v in enumerate(values)}


class DimensionalitySummary(NamedTuple):
    dimensionality: Annotated[Tensor, "... feature"]
    represented: Annotated[Tensor, "... feature"]
    dimensions_per_feature: Annotated[Tensor, "..."]


def dimensionality_summary(W: Annotated[Tensor, "... hidden feature"]) -> DimensionalitySummary:
    """Per-feature D_i and the represented mask (index one with the other for sticky_fractions),
    and d_hidden / ‖W‖_F²."""
    return DimensionalitySummary(
        metrics.dimensionality(W), metrics.represented(W), metrics.dimensions_per_feature(W)
    )


# ------------------------------------------------------------------------------------ neurons


def monosemantic_fraction_per_level(
    W: Annotated[Tensor, "level hidden feature"],
) -> list[float | None]:
    """metrics.monosemantic_fraction of each level (None where every neuron is dead)."""
    return [metrics.monosemantic_fraction(W[level]) for level in range(W.shape[0])]


def antipodal_neuron_pairs(
    W1: Annotated[Tensor, "hidden feature"],
    W2: Annotated[Tensor, "feature hidden"],
    floor: float = STRONG_WEIGHT,
    share: float = DOMINANT_SHARE,
) -> Annotated[Tensor, "feature"]:
    """True for each represented feature computed as ReLU(x) + ReLU(-x) by two neurons it
    dominates; `.sum()` counts them."""
    W1, W2 = W1.double(), W2.double()
    strong = W1.abs() > floor
    dominated = W1.abs() >= share * W1.norm(dim=1, keepdim=True)
    writes_back = W2.T > floor
    carries = strong & dominated & writes_back
    has_positive = (carries & (W1 > 0)).any(dim=0)
    has_negative = (carries & (W1 < 0)).any(dim=0)
    return metrics.represented(W1) & has_positive & has_negative


def asymmetric_neurons(
    W1: Annotated[Tensor, "hidden feature"],
    ratio: float = ASYMMETRIC_RATIO,
    floor: float = STRONG_WEIGHT,
    rest_share: float = ASYMMETRIC_REST_SHARE,
) -> list[tuple[int, int, int, float]]:
    """(neuron, feature_big, feature_small, |big| / |small|) for each neuron that reads two
    features strongly with very different magnitudes and little else."""
    magnitude = W1.double().abs()
    if magnitude.shape[1] < 2:
        return []
    top = magnitude.topk(2, dim=1)
    big, small = top.values[:, 0], top.values[:, 1]
    rest = magnitude.scatter(1, top.indices, 0.0).norm(dim=1)
    found = (small > floor) & (big >= ratio * small) & (rest <= rest_share * small)
    return [
        (h, int(top.indices[h, 0]), int(top.indices[h, 1]), float(big[h] / small[h]))
        for h in torch.nonzero(found).flatten().tolist()
    ]


# ------------------------------------------------------------------------------ abs features


def important_feature_count(d_hidden: int) -> int:
    """How many of the most important abs features a model should compute for both signs:
    d_hidden // 4, half of the d_hidden // 2 antipodal pairs its neurons make (at least 1)."""
    return max(1, d_hidden // 4)


def important_features(importance: Sequence[float], count: int) -> list[int]:
    """The `count` most important features (ties: the lower index first)."""
    return sorted(range(len(importance)), key=lambda i: (-importance[i], i))[:count]
