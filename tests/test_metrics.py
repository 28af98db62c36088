"""Metrics on hand-built weights whose answers can be worked out on paper."""

from __future__ import annotations

import json
import math

import pytest
import torch

from superposition.analysis import metrics
from superposition.tasks.model import ModelSpec, forward


def pentagon() -> torch.Tensor:
    """Five unit vectors in 2D at angles 2πk/5, as columns: (hidden 2, feature 5)."""
    angles = 2 * math.pi * torch.arange(5, dtype=torch.float64) / 5
    return torch.stack([angles.cos(), angles.sin()])


def test_orthogonal_pair_has_one_dimension_each_and_no_interference():
    W = torch.eye(2)
    assert metrics.dimensionality(W).tolist() == pytest.approx([1.0, 1.0])
    assert metrics.interference(W).tolist() == pytest.approx([0.0, 0.0])
    assert float(metrics.dimensions_per_feature(W)) == pytest.approx(1.0)


def test_antipodal_pair_shares_one_dimension():
    W = torch.tensor([[1.0, -1.0]])
    assert metrics.dimensionality(W).tolist() == pytest.approx([0.5, 0.5])
    assert metrics.interference(W).tolist() == pytest.approx([1.0, 1.0])
    assert float(metrics.dimensions_per_feature(W)) == pytest.approx(0.5)


def test_pentagon_gives_two_fifths():
    # Σ_j cos²(θ_i - θ_j) over five evenly spaced angles is 5/2, so D_i = 1 / (5/2)
    W = pentagon()
    assert metrics.dimensionality(W).tolist() == pytest.approx([0.4] * 5)
    assert metrics.interference(W).tolist() == pytest.approx([math.sqrt(1.5)] * 5)
    assert float(metrics.dimensions_per_feature(W)) == pytest.approx(0.4)


def test_dimensionality_is_scale_free_and_weights_short_features_down():
    W = torch.tensor([[1.0, 0.3]])
    # D_0 = 1 / (1 + 0.09), D_1 = 0.09 / (0.09 + 1)
    assert metrics.dimensionality(W).tolist() == pytest.approx([1 / 1.09, 0.09 / 1.09])
    assert metrics.dimensionality(7 * W).tolist() == pytest.approx([1 / 1.09, 0.09 / 1.09])
    assert metrics.interference(W).tolist() == pytest.approx([0.3, 1.0])


def test_dead_feature_has_zero_dimensionality_and_is_not_represented():
    W = torch.tensor([[1.0, 0.0, 0.0, 0.3], [0.0, 1.0, 0.0, 0.0]])
    dims = metrics.dimensionality(W)
    assert torch.isfinite(dims).all()
    assert dims[2] == 0
    assert metrics.interference(W)[2] == 0
    assert metrics.represented(W).tolist() == [True, True, False, False]


def test_leading_axes_are_levels():
    stacked = torch.stack([torch.eye(2, 5, dtype=torch.float64) * 0, pentagon()])
    stacked[0, :, :2] = torch.eye(2, dtype=torch.float64)
    dims = metrics.dimensionality(stacked)
    assert dims.shape == (2, 5)
    assert dims[0].tolist() == pytest.approx([1, 1, 0, 0, 0])
    assert dims[1].tolist() == pytest.approx([0.4] * 5)


def test_monosemantic_neurons_dead_ones_counted_out():
    W = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # one feature: monosemantic
            [0.6, 0.8, 0.0],  # two features: polysemantic
            [0.0, 0.0, 0.0],  # dead: in neither count
            [0.0, -0.995, 0.0999],  # largest |w| is 0.995 of a norm ≈ 1.0000025: monosemantic
            [0.0, 0.98, 0.199],  # 0.98 / 1.0000 < 0.99: polysemantic
        ]
    )
    assert metrics.neuron_alive(W).tolist() == [True, True, False, True, True]
    assert metrics.monosemantic(W).tolist() == [True, False, False, True, False]
    assert metrics.monosemantic_fraction(W) == pytest.approx(2 / 4)
    assert metrics.monosemantic_fraction(torch.zeros(3, 4)) is None


def test_level_metrics_identity_and_nan_level():
    W = torch.stack([pentagon(), torch.full((2, 5), torch.nan, dtype=torch.float64)]).float()
    weights = {"W": W, "b_final": torch.zeros(2, 5)}
    rows = metrics.level_metrics("identity", weights, hidden_relu=False)
    assert len(rows) == 2
    first, second = rows
    assert first["features_represented"] == 5
    assert isinstance(first["features_represented"], int)
    assert first["mean_dimensionality"] == pytest.approx(0.4, abs=1e-6)
    assert first["mean_interference"] == pytest.approx(math.sqrt(1.5), abs=1e-6)
    assert first["dimensions_per_feature"] == pytest.approx(0.4, abs=1e-6)
    assert first["monosemantic_fraction"] is None  # no privileged basis without a hidden ReLU
    assert all(value is None for value in second.values())
    assert set(first) == set(second)
    json.dumps(rows, allow_nan=False)


def test_level_metrics_means_over_represented_features_only():
    W = torch.tensor([[[1.0, 0.0, 0.2], [0.0, 1.0, 0.0]]])
    rows = metrics.level_metrics("identity", {"W": W}, hidden_relu=True)
    (row,) = rows
    assert row["features_represented"] == 2
    # D_0 = 1 / (1 + 0.04), D_1 = 1; interference of feature 0 is 0.2, of feature 1 is 0
    assert row["mean_dimensionality"] == pytest.approx((1 / 1.04 + 1) / 2, abs=1e-6)
    assert row["mean_interference"] == pytest.approx(0.1, abs=1e-6)
    # rows (1, 0, 0.2) and (0, 1, 0): the first has 1 / sqrt(1.04) ≈ 0.98 of its norm
    assert row["monosemantic_fraction"] == pytest.approx(0.5)


def test_level_metrics_nothing_represented_gives_none_means():
    W = torch.full((1, 2, 3), 0.1)
    (row,) = metrics.level_metrics("identity", {"W": W}, hidden_relu=False)
    assert row["features_represented"] == 0
    assert row["mean_dimensionality"] is None
    assert row["mean_interference"] is None


def test_level_metrics_abs_reads_w1():
    W1 = torch.tensor([[[2.0, 0.0], [0.0, -2.0], [0.0, 0.0]]])  # neuron 2 dead
    W2 = torch.full((1, 2, 3), 5.0)  # only the sign metrics read it
    weights = {"W1": W1, "W2": W2, "b_final": torch.zeros(1, 2)}
    (row,) = metrics.level_metrics("abs", weights, hidden_relu=False)
    assert row == {
        "features_represented": 2,
        "mean_dimensionality": pytest.approx(1.0),
        "mean_interference": pytest.approx(0.0),
        "dimensions_per_feature": pytest.approx(3 / 8),
        "monosemantic_fraction": pytest.approx(1.0),
        # feature 0 has one neuron reading +x, feature 1 one reading -x: one sign each
        "features_computed_both_signs": 0,
        "features_computed_one_sign": 2,
    }
    assert type(row["monosemantic_fraction"]) is float


# ------------------------------------------------------------------------ abs: |x| by sign


def abs_weights(W1, W2, b):
    return {"W1": torch.tensor(W1), "W2": torch.tensor(W2), "b_final": torch.tensor(b)}


def test_computed_fraction_antipodal_pair_one_neuron_and_constant():
    # feature 0: antipodal pair (neurons 0, 1) -> |x|; feature 1: neuron 2 reads +x only;
    # feature 2: no neuron, a constant bias 0.3
    W1 = [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    W2 = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    share = metrics.computed_fraction(abs_weights(W1, W2, [0.0, 0.0, 0.3]))
    assert share.shape == (2, 3)  # (sign: x > 0, x < 0; feature)
    assert share[:, 0].tolist() == pytest.approx([1.0, 1.0])
    assert share[:, 1].tolist() == pytest.approx([1.0, 0.0])
    assert share[:, 2].tolist() == pytest.approx([0.0, 0.0])
    assert metrics.sign_counts(share) == (1, 1)


def test_computed_fraction_equals_the_model_fed_one_feature_at_a_time():
    """An independent computation: superposition.tasks.model.forward on x = ±m e_i."""
    torch.manual_seed(0)
    n_features, d_hidden = 6, 4
    weights = {
        "W1": torch.randn(d_hidden, n_features, dtype=torch.float64),
        "W2": torch.randn(n_features, d_hidden, dtype=torch.float64),
        "b_final": 0.3 * torch.randn(n_features, dtype=torch.float64),
    }
    share = metrics.computed_fraction(weights)
    spec = ModelSpec("abs", n_features, d_hidden)
    params = {k: v.unsqueeze(0) for k, v in weights.items()}
    m = torch.tensor(metrics.PROBE_MAGNITUDES, dtype=torch.float64)
    baseline = forward(spec, params, torch.zeros(1, 1, n_features, dtype=torch.float64))[0, 0]
    for sign_index, sign in enumerate((1.0, -1.0)):
        for i in range(n_features):
            x = torch.zeros(1, m.numel(), n_features, dtype=torch.float64)
            x[0, :, i] = sign * m
            out = forward(spec, params, x)[0, :, i]
            expected = float((out - baseline[i]).sum() / m.sum())
            assert float(share[sign_index, i]) == pytest.approx(expected, abs=1e-12)


def test_sign_counts_threshold():
    share = torch.tensor([[0.5, 0.49, 0.9, 0.1], [0.5, 0.9, 0.49, 0.1]])
    assert metrics.COMPUTED_SHARE == 0.5
    assert metrics.sign_counts(share) == (1, 2)
