"""The verdicts of geometry.py on hand-built weights whose answers can be worked out on paper."""

from __future__ import annotations

import math

import pytest
import torch

from superposition.analysis import geometry
from superposition.store.files import WEIGHTS, write_tensors
from superposition.store.results import LevelResult, RunResults, load_run, write_results


def unit_vectors(degrees: list[float]) -> torch.Tensor:
    """Unit vectors at the given angles, as columns: (hidden 2, feature)."""
    angles = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    return torch.stack([angles.cos(), angles.sin()])


def pentagon() -> torch.Tensor:
    return unit_vectors([0.0, 72.0, 144.0, 216.0, 288.0])


# ----------------------------------------------------------------------------------- geometry


def test_pentagon_is_a_regular_five_gon():
    W = pentagon()
    assert torch.rad2deg(geometry.feature_angles(W)).tolist() == pytest.approx(
        [0, 72, 144, 216, 288]
    )
    gaps = geometry.angle_gaps(W)
    assert torch.rad2deg(gaps).tolist() == pytest.approx([72.0] * 5)
    assert float(gaps.sum()) == pytest.approx(2 * math.pi)
    n, smallest, largest, regular = geometry.regular_polygon(W)
    assert (n, regular) == (5, True)
    assert (smallest, largest) == pytest.approx((72.0, 72.0))


def test_dropped_feature_is_left_out_and_irregular_gaps_are_caught():
    # features at 0°, 90°, 180°, one at 270° too short to count, and a zero column
    W = torch.cat([unit_vectors([0.0, 90.0, 180.0]), 0.4 * unit_vectors([270.0])], dim=1)
    W = torch.cat([W, torch.zeros(2, 1, dtype=torch.float64)], dim=1)
    assert torch.rad2deg(geometry.feature_angles(W)).tolist() == pytest.approx([0, 90, 180])
    assert torch.rad2deg(geometry.angle_gaps(W)).tolist() == pytest.approx([90, 90, 180])
    polygon = geometry.regular_polygon(W)
    assert polygon.n_represented == 3
    assert polygon.min_gap_deg == pytest.approx(90.0)
    assert polygon.max_gap_deg == pytest.approx(180.0)
    assert polygon.is_regular is False
    # 180 is 60 away from 120: regular only with a tolerance that wide
    assert geometry.regular_polygon(W, tolerance_deg=60.0).is_regular is True


def test_angles_wrap_into_zero_to_two_pi():
    W = unit_vectors([-36.0, 36.0, 108.0, 180.0, 252.0])
    assert torch.rad2deg(geometry.feature_angles(W)).tolist() == pytest.approx(
        [36, 108, 180, 252, 324]
    )
    assert geometry.regular_polygon(W).is_regular is True
    # atan2 of a tiny negative y is -tiny, whose remainder mod 2π rounds up to 2π itself
    angles = geometry.feature_angles(torch.tensor([[1.0], [-1e-300]]))
    assert 0 <= float(angles[0]) < 2 * math.pi


def test_digon_single_feature_and_nothing():
    assert geometry.regular_polygon(torch.tensor([[1.0, -1.0], [0.0, 0.0]])) == (
        2,
        pytest.approx(180.0),
        pytest.approx(180.0),
        True,
    )
    assert geometry.regular_polygon(torch.tensor([[1.0, 0.0], [0.0, 0.0]])) == (
        1,
        pytest.approx(360.0),
        pytest.approx(360.0),
        False,
    )
    n, smallest, largest, regular = geometry.regular_polygon(torch.zeros(2, 3))
    assert (n, regular) == (0, False)
    assert math.isnan(smallest) and math.isnan(largest)


def test_geometry_needs_a_plane():
    with pytest.raises(ValueError, match=r"\(2, feature\)"):
        geometry.feature_angles(torch.eye(3))


def pairs_matrix() -> torch.Tensor:
    """f0 → 0°, f1 ≈ 177.1° (near-antipodal to f0), f2 → 90°, f3 short and opposite f0,
    f4 at 315°, f5 a zero column."""
    return torch.tensor(
        [
            [1.0, -1.0, 0.0, -0.3, 0.6, 0.0],
            [0.0, 0.05, 1.0, 0.0, -0.6, 0.0],
        ]
    )


def test_antipodal_pairs_need_both_features_represented():
    W = pairs_matrix()
    assert geometry.antipodal_pairs(W) == [(0, 1)]  # (0, 3) is antipodal but f3 is too short
    assert geometry.antipodal_pairs(W, tolerance_deg=2.0) == []  # 180 - 177.14 = 2.86
    assert geometry.pair_angle(W, 0, 1) == pytest.approx(180 - math.degrees(math.atan(0.05)))
    assert geometry.pair_angle(W, 0, 3) == pytest.approx(180.0)
    assert geometry.pair_angle(W, 0, 4) == pytest.approx(45.0)
    assert math.isnan(geometry.pair_angle(W, 0, 5))


def test_orthogonal_pairs_all_or_among_given_pairs():
    W = pairs_matrix()
    assert geometry.orthogonal_pairs(W) == [(0, 2), (1, 2)]  # 90° and 87.1°
    assert geometry.orthogonal_pairs(W, tolerance_deg=1.0) == [(0, 2)]
    # (2, 3) is 90° apart but f3 is not represented; (0, 1) is antipodal
    assert geometry.orthogonal_pairs(W, pairs=[(2, 0), (0, 1), (2, 3)]) == [(2, 0)]
    # two antipodal pairs at right angles: the square
    square = unit_vectors([0.0, 180.0, 90.0, 270.0])
    assert geometry.antipodal_pairs(square) == [(0, 1), (2, 3)]
    assert geometry.orthogonal_pairs(square) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert geometry.regular_polygon(square) == (4, pytest.approx(90), pytest.approx(90), True)


def test_pair_angles_matrix_in_any_dimension():
    W = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, math.sqrt(2)]])
    angles = geometry.pair_angles(W)
    assert angles.dtype == torch.float64
    assert angles[0].tolist() == pytest.approx([0.0, 90.0, 60.0])
    assert angles[1, 2] == pytest.approx(60.0)


# ------------------------------------------------------------------------------ phase diagram


def test_analytic_losses_values():
    losses = geometry.analytic_losses(0.5, 0.4)
    left_to_bias = 0.4 / 3 - 0.04
    assert losses == pytest.approx(
        {
            "not_represented": 0.5 * left_to_bias,
            "dedicated": left_to_bias,
            "superposition": 1.5 * 0.16 / 6,
        }
    )
    assert set(losses) == set(geometry.PHASES)


@pytest.mark.parametrize(
    ("r", "s", "phase"),
    [
        (0.5, 0.05, "superposition"),
        (0.5, 0.9, "not_represented"),
        (0.1, 0.5, "not_represented"),
        (2.0, 0.9, "dedicated"),
        (10.0, 0.5, "dedicated"),
        (2.0, 0.05, "superposition"),
        (1.0, 0.3, "superposition"),
    ],
)
def test_analytic_phase_inside_each_region(r, s, phase):
    assert geometry.analytic_phase(r, s) == phase


def crossing(r: float) -> float:
    """Bisect for the s where superposition stops having the least closed-form loss."""

    def superposition_lead(s: float) -> float:
        losses = geometry.analytic_losses(r, s)
        return losses["superposition"] - min(losses["not_represented"], losses["dedicated"])

    low, high = 1e-9, 1.0
    assert superposition_lead(low) < 0 < superposition_lead(high)
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if superposition_lead(mid) < 0 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("r", [0.1, 0.3, 0.7, 0.999, 1.0, 1.001, 1.5, 3.0, 10.0])
def test_boundary_formulas_are_where_the_closed_form_losses_cross(r):
    expected = 4 * r / (2 + 5 * r) if r < 1 else 4 / (5 + 2 * r)
    assert geometry.phase_boundary(r) == pytest.approx(expected, rel=1e-12)
    assert crossing(r) == pytest.approx(expected, rel=1e-9)
    other = "not_represented" if r < 1 else "dedicated"
    assert geometry.analytic_phase(r, expected * 0.999) == "superposition"
    assert geometry.analytic_phase(r, min(expected * 1.001, 1.0)) == (
        other if r != 1.0 else "not_represented"  # r = 1: a tie, won by the first in PHASES
    )


def test_boundary_branches_meet_at_r_one():
    assert geometry.phase_boundary(1.0) == pytest.approx(4 / 7)
    assert geometry.phase_boundary(1 + 1e-9) == pytest.approx(4 / 7)
    assert geometry.phase_boundary(1 - 1e-9) == pytest.approx(4 / 7)


def toy_loss(W: torch.Tensor, b: torch.Tensor, r: float, s: float, n: int = 400_000) -> float:
    """Monte Carlo loss per sample, summed over features, of ReLU(WᵀWx + b) on the sparse data."""
    generator = torch.Generator().manual_seed(0)
    f = W.shape[1]
    x = torch.rand(n, f, generator=generator, dtype=torch.float64)
    x = x * (torch.rand(n, f, generator=generator, dtype=torch.float64) < s)
    out = torch.relu(x @ W.T @ W + b)
    importance = torch.tensor([1.0] * (f - 1) + [r], dtype=torch.float64)
    return float(((x - out).pow(2) * importance).sum(dim=1).mean())


@pytest.mark.parametrize(("r", "s"), [(0.5, 0.3), (2.0, 0.6)])
def test_closed_forms_match_the_toy_model_and_the_classifier(r, s):
    solutions = {
        "not_represented": (torch.tensor([[1.0, 0.0]]), torch.tensor([0.0, s / 2])),
        "dedicated": (torch.tensor([[0.0, 1.0]]), torch.tensor([s / 2, 0.0])),
        "superposition": (torch.tensor([[1.0, -1.0]]), torch.tensor([0.0, 0.0])),
    }
    expected = geometry.analytic_losses(r, s)
    for phase, (W, b) in solutions.items():
        W, b = W.double(), b.double()
        assert toy_loss(W, b, r, s) == pytest.approx(expected[phase], rel=0.02)
        assert geometry.classify_cell(W) == phase


@pytest.mark.parametrize(
    ("W", "phase"),
    [
        ([[1.0, 0.0]], "not_represented"),
        ([[1.0, 0.4]], "not_represented"),  # ‖W_extra‖ = 0.4 <= 0.5
        ([[0.0, 1.0]], "dedicated"),
        ([[0.2, 1.0]], "dedicated"),  # the other feature is not represented
        ([[1.0, -1.0]], "superposition"),
        ([[0.7, 1.3]], "superposition"),  # same direction counts as shared too
    ],
)
def test_classify_cell_two_features_one_dimension(W, phase):
    assert geometry.classify_cell(torch.tensor(W)) == phase


@pytest.mark.parametrize(
    ("W", "phase"),
    [
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "not_represented"),
        ([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], "dedicated"),
        ([[1.0, 0.0, 0.05], [0.0, 0.0, 1.0]], "dedicated"),  # |cos| ≈ 0.05 < 0.1
        ([[1.0, 0.0, 0.15], [0.0, 0.0, 1.0]], "superposition"),  # |cos| ≈ 0.148
        ([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]], "superposition"),  # antipodal to feature 0
        ([[1.0, -0.5, -0.5], [0.0, 0.866, -0.866]], "superposition"),  # triangle
    ],
)
def test_classify_cell_three_features_two_dimensions(W, phase):
    assert geometry.classify_cell(torch.tensor(W)) == phase


def test_classify_cell_extra_feature_and_threshold_arguments():
    W = torch.tensor([[1.0, 0.0, 0.15], [0.0, 0.0, 1.0]])
    assert geometry.classify_cell(W, shared_cos=0.2) == "dedicated"
    assert geometry.classify_cell(torch.tensor([[0.0, 1.0]]), extra_feature=0) == "not_represented"
    assert geometry.classify_cell(torch.tensor([[1.0, 0.0]]), extra_feature=0) == "dedicated"
    with pytest.raises(ValueError):
        geometry.classify_cell(torch.zeros(2, 2, 3))


def test_clear_of_boundary_rule():
    # s*(0.25) = 1 / 3.25 ≈ 0.308; s*(1) = 4/7 ≈ 0.571
    assert geometry.clear_of_boundary(0.25, 0.5) is True  # ln(0.5 / 0.308) ≈ 0.49
    assert geometry.clear_of_boundary(0.25, 0.33) is False  # ln ≈ 0.07
    assert geometry.clear_of_boundary(1.0, 0.05) is True  # deep in superposition: r = 1 is fine
    assert geometry.clear_of_boundary(1.0, 0.95) is False  # on the line r = 1
    assert geometry.clear_of_boundary(1.1, 0.95) is False  # |ln 1.1| ≈ 0.095
    assert geometry.clear_of_boundary(1.5, 0.95) is True
    assert geometry.clear_of_boundary(1.5, 0.95, margin=0.5) is False


def test_phase_agreement_on_a_small_grid():
    r_grid = [0.25, 1.0, 4.0]
    s_grid = torch.tensor([0.05, 0.5, 0.95])
    classes = [
        ["superposition", "not_represented", "not_represented"],
        ["superposition", "dedicated", "dedicated"],  # the last two are too near a boundary
        ["superposition", "superposition", "dedicated"],  # the middle one is wrong
    ]
    fraction, n_cells = geometry.phase_agreement(classes, r_grid, s_grid)
    assert n_cells == 7
    assert fraction == pytest.approx(6 / 7)
    assert geometry.phase_agreement(classes, r_grid, s_grid, margin=5.0) == (None, 0)
    with pytest.raises(ValueError):
        geometry.phase_agreement(classes[:2], r_grid, s_grid)


# ----------------------------------------------------------------------------- dimensionality


def mixed_geometry() -> torch.Tensor:
    """A pentagon in dims 0-1, an antipodal pair on dim 2, a lone feature on dim 3, and a
    dropped feature: (hidden 4, feature 9)."""
    W = torch.zeros(4, 9, dtype=torch.float64)
    W[:2, :5] = pentagon()
    W[2, 5], W[2, 6] = 1.0, -1.0
    W[3, 7] = 1.0
    return W


def test_dimensionality_summary_and_sticky_fractions():
    summary = geometry.dimensionality_summary(mixed_geometry())
    assert summary.dimensionality.tolist() == pytest.approx([0.4] * 5 + [0.5, 0.5, 1.0, 0.0])
    assert summary.represented.tolist() == [True] * 8 + [False]
    assert float(summary.dimensions_per_feature) == pytest.approx(4 / 8)
    shares = geometry.sticky_fractions(summary.dimensionality[summary.represented])
    assert list(shares) == list(geometry.STICKY_VALUES)
    assert shares == pytest.approx(
        {1.0: 1 / 8, 3 / 4: 0, 2 / 3: 0, 1 / 2: 2 / 8, 2 / 5: 5 / 8, 3 / 8: 0}
    )


def test_sticky_fractions_count_each_feature_once_at_its_nearest_value():
    # 0.39 is within 0.03 of both 2/5 and 3/8 and goes to the nearer 2/5; 0.531 and 0.7 miss
    shares = geometry.sticky_fractions(torch.tensor([0.39, 0.38, 0.531, 0.7]))
    assert shares == pytest.approx({1.0: 0, 3 / 4: 0, 2 / 3: 0, 1 / 2: 0, 2 / 5: 0.25, 3 / 8: 0.25})
    wide = geometry.sticky_fractions(torch.tensor([0.531, 0.7]), values=(0.5,), tolerance=0.05)
    assert wide == pytest.approx({0.5: 0.5})
    assert geometry.sticky_fractions(torch.tensor([])) == {v: None for v in geometry.STICKY_VALUES}


def test_dimensionality_summary_keeps_the_level_axis():
    stacked = torch.stack([mixed_geometry(), 2 * mixed_geometry()])
    summary = geometry.dimensionality_summary(stacked)
    assert summary.dimensionality.shape == (2, 9)
    assert summary.dimensions_per_feature.tolist() == pytest.approx([0.5, 0.125])


# ------------------------------------------------------------------------------------ neurons


def test_monosemantic_fraction_per_level():
    W = torch.tensor(
        [
            [[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]],  # one monosemantic, one not, one dead
            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # all dead
        ]
    )
    assert geometry.monosemantic_fraction_per_level(W) == [pytest.approx(0.5), None]


def abs_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """f0: a clean ±1 neuron pair writing back +1; f1: a pair with one negative write-back;
    f2: a pair whose positive neuron also reads f4; f3: a clean pair too short to be represented
    (‖W1_3‖ = 0.32·√2 ≈ 0.45); f4: read by one polysemantic neuron only."""
    W1 = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [-1.0, 0.1, 0.0, 0.0, 0.0],  # 1 / ‖(1, 0.1)‖ ≈ 0.995 of its norm: dominated by f0
            [0.0, 0.8, 0.0, 0.0, 0.0],
            [0.0, -0.8, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.7, 0.0, 0.7],
            [0.0, 0.0, -0.7, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.32, 0.0],
            [0.0, 0.0, 0.0, -0.32, 0.0],
        ]
    )
    W2 = torch.zeros(5, 8)
    W2[0, 0] = W2[0, 1] = 1.0
    W2[1, 2], W2[1, 3] = 1.0, -1.0
    W2[2, 4] = W2[2, 5] = 1.0
    W2[3, 6] = W2[3, 7] = 1.0
    W2[4, 4] = 1.0
    return W1, W2


def test_antipodal_neuron_pairs():
    W1, W2 = abs_weights()
    found = geometry.antipodal_neuron_pairs(W1, W2)
    assert found.tolist() == [True, False, False, False, False]
    assert int(found.sum()) == 1
    W2[1, 3] = 1.0
    assert geometry.antipodal_neuron_pairs(W1, W2).tolist() == [True, True, False, False, False]
    # with a loose share, neuron 4 (0.707 of its norm on f2) counts as f2's positive half
    loose = geometry.antipodal_neuron_pairs(W1, W2, share=0.7)
    assert loose.tolist() == [True, True, True, False, False]
    # a floor above 0.8 leaves only f0's ±1 pair
    strict = geometry.antipodal_neuron_pairs(W1, W2, floor=0.9)
    assert strict.tolist() == [True, False, False, False, False]


def test_asymmetric_neurons():
    W1 = torch.tensor(
        [
            [1.0, -0.4, 0.0, 0.0],  # ratio 2.5: found
            [0.5, 0.5, 0.0, 0.0],  # equal magnitudes
            [0.0, 0.0, 0.9, 0.1],  # the smaller is below the floor
            [0.9, 0.4, 0.35, 0.0],  # a third strong read: rest 0.35 > 0.5 · 0.4
            [0.05, 0.0, -0.35, 1.2],  # ratio 1.2 / 0.35, rest 0.05 <= 0.175: found
            [0.0, 0.0, 0.0, 0.0],  # dead
        ]
    )
    found = geometry.asymmetric_neurons(W1)
    assert [row[:3] for row in found] == [(0, 0, 1), (4, 3, 2)]
    assert [row[3] for row in found] == pytest.approx([2.5, 1.2 / 0.35])
    assert [row[0] for row in geometry.asymmetric_neurons(W1, ratio=3.0)] == [4]
    assert [row[0] for row in geometry.asymmetric_neurons(W1, rest_share=1.0)] == [0, 3, 4]
    assert geometry.asymmetric_neurons(torch.ones(3, 1)) == []


# -------------------------------------------------------------------------------------- files


def run_results(task: str, probabilities: tuple[float, ...], n_features: int) -> RunResults:
    levels = [
        LevelResult(
            feature_probability=p, importance=[1.0] * n_features, best_restart=0, eval_loss=0.1
        )
        for p in probabilities
    ]
    return RunResults(
        task=task, n_features=n_features, d_hidden=2, restarts=1, steps=1, levels=levels
    )


def test_load_run_reads_an_output_directory(tmp_path):
    W = torch.stack([torch.zeros(2, 5), pentagon().float()])
    results = run_results("identity", (0.9, 0.1), 5)
    write_results(tmp_path, results)
    write_tensors(tmp_path / WEIGHTS, {"W": W, "b_final": torch.zeros(2, 5)})
    run = load_run(str(tmp_path))
    assert run.results == results
    assert set(run.weights) == {"W", "b_final"}
    assert run.features.dtype == torch.float64
    assert torch.equal(run.features, W.double())
    assert geometry.regular_polygon(run.features[1]).n_represented == 5
    assert geometry.regular_polygon(run.features[0]).n_represented == 0


def test_load_run_features_of_abs_are_w1(tmp_path):
    W1, W2 = abs_weights()
    write_results(tmp_path, run_results("abs", (0.1,), 5))
    write_tensors(
        tmp_path / WEIGHTS, {"W1": W1[None], "W2": W2[None], "b_final": torch.zeros(1, 5)}
    )
    run = load_run(tmp_path)
    assert torch.equal(run.features[0], W1.double())
    assert geometry.antipodal_neuron_pairs(run.features[0], run.weights["W2"][0])[0]
