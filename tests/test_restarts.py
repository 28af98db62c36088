"""Statistics over a level's restarts (analysis/restarts.py) on hand-built restarts whose shares
are known, quantiles against numpy; the notes they give a preset's report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from superposition.analysis import geometry, restarts, verdicts
from superposition.store.results import LevelResult, RunResults
from superposition.tasks.task import Shape

IDENTITY_2D = Shape(5, 2)


def unit_vectors(degrees: list[float]) -> torch.Tensor:
    angles = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    return torch.stack([angles.cos(), angles.sin()])


def pentagon(rotation: float) -> torch.Tensor:
    return unit_vectors([rotation + 72 * k for k in range(5)])


def orthogonal_pair() -> torch.Tensor:
    W = torch.zeros(2, 5, dtype=torch.float64)
    W[0, 0], W[1, 1] = 1.0, 1.0
    return W


def identity_params(Ws: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    W = torch.stack(Ws).float()
    return {"W": W, "b_final": torch.zeros(W.shape[0], W.shape[-1])}


# 6 restarts of one level: 3 exact pentagons (rotated), an orthogonal pair, 5 features crowded
# into a half plane, and one frozen (loss +inf, NaN weights)
LOSSES = [0.100, 0.1005, 0.2, 0.1009, 0.15, math.inf]
FINITE = [0.100, 0.1005, 0.2, 0.1009, 0.15]


def pentagon_level() -> dict[str, torch.Tensor]:
    Ws = [pentagon(0), pentagon(17), pentagon(-40), orthogonal_pair()]
    Ws += [unit_vectors([0, 30, 60, 90, 120]), torch.full((2, 5), math.nan)]
    params = identity_params(Ws)
    params["b_final"][5] = math.nan
    return params


def test_quantiles_within_1pct_and_pentagon_shares_of_hand_built_restarts():
    measured = restarts.geometries("identity", IDENTITY_2D, phase=False)
    assert measured.names == ("pentagon", "orthogonal_pair")
    stats = restarts.level_stats(torch.tensor(LOSSES), pentagon_level(), kept=0, measured=measured)
    assert stats["finite"] == 5
    expected = np.quantile(FINITE, [0, 0.25, 0.5, 0.75, 1])
    assert list(stats["loss_quantiles"]) == ["min", "q25", "median", "q75", "max"]
    assert list(stats["loss_quantiles"].values()) == pytest.approx(expected.tolist())
    # ≤ 1.01 × 0.100: restarts 0 (the best), 1 and 3
    assert stats["within_1pct"] == 3
    assert stats["geometry"] == {
        "pentagon": {"restarts": 3, "of": 5, "kept": True},
        "orthogonal_pair": {"restarts": 1, "of": 5, "kept": False},
    }


def test_restart_stats_reads_the_instance_axis_as_level_then_restart():
    # level 0: the pentagon level above; level 1: every restart an orthogonal pair, kept 2
    level0 = pentagon_level()
    level1 = identity_params([orthogonal_pair()] * 6)
    params = {k: torch.cat([level0[k], level1[k]]) for k in level0}
    eval_loss = torch.tensor([LOSSES, [0.3, 0.2, 0.1, 0.5, 0.4, 0.6]], dtype=torch.float64)
    found = restarts.restart_stats("identity", IDENTITY_2D, False, params, eval_loss, [0, 2])
    assert found[0]["geometry"]["pentagon"] == {"restarts": 3, "of": 5, "kept": True}
    assert found[1]["finite"] == 6 and found[1]["within_1pct"] == 1
    assert found[1]["geometry"] == {
        "pentagon": {"restarts": 0, "of": 6, "kept": False},
        "orthogonal_pair": {"restarts": 6, "of": 6, "kept": True},
    }
    medians = [s["loss_quantiles"]["median"] for s in found]
    assert medians == pytest.approx([np.median(FINITE), np.median(eval_loss[1].tolist())])


def test_a_level_without_finite_restart():
    params = identity_params([torch.full((2, 5), math.nan)] * 2)
    measured = restarts.geometries("identity", IDENTITY_2D, phase=False)
    stats = restarts.level_stats(torch.full((2,), math.inf), params, None, measured)
    assert stats == {
        "finite": 0,
        "loss_quantiles": None,
        "within_1pct": 0,
        "geometry": {
            "pentagon": {"restarts": 0, "of": 0, "kept": None},
            "orthogonal_pair": {"restarts": 0, "of": 0, "kept": None},
        },
    }
    assert restarts.shares_text(stats) == "no finite restart"


def test_phase_cells_count_each_class():
    # 2 -> 1: the extra feature (the last) dropped, dedicated, superposed twice
    Ws = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, -1.0]])]
    Ws.append(torch.tensor([[-0.9, 1.0]]))
    measured = restarts.geometries("identity", Shape(2, 1), phase=True)
    assert measured.names == geometry.PHASES
    stats = restarts.level_stats(torch.ones(4), identity_params(Ws), 2, measured)
    assert stats["within_1pct"] == 4
    assert stats["geometry"] == {
        "not_represented": {"restarts": 1, "of": 4, "kept": False},
        "dedicated": {"restarts": 1, "of": 4, "kept": False},
        "superposition": {"restarts": 2, "of": 4, "kept": True},
    }


def abs_params(n_features: int = 4) -> dict[str, torch.Tensor]:
    """Two abs restarts: each feature computed by an antipodal neuron pair (monosemantic), and
    every neuron reading every feature alike (polysemantic, no pair)."""
    d_hidden = 2 * n_features
    W1 = torch.zeros(2, d_hidden, n_features)
    W2 = torch.zeros(2, n_features, d_hidden)
    for i in range(n_features):
        W1[0, 2 * i, i], W1[0, 2 * i + 1, i] = 1.0, -1.0
        W2[0, i, 2 * i], W2[0, i, 2 * i + 1] = 1.0, 1.0
    W1[1] = 0.7
    W2[1] = 0.1
    return {"W1": W1, "W2": W2, "b_final": torch.zeros(2, n_features)}


def test_neuron_geometries_of_abs():
    shape = Shape(4, 8)
    measured = restarts.geometries("abs", shape, phase=False)
    assert measured.names == ("monosemantic", "polysemantic", "antipodal_pairs")
    stats = restarts.level_stats(torch.tensor([0.2, 0.1]), abs_params(), 1, measured)
    assert stats["geometry"] == {
        "monosemantic": {"restarts": 1, "of": 2, "kept": False},
        "polysemantic": {"restarts": 1, "of": 2, "kept": True},
        "antipodal_pairs": {"restarts": 1, "of": 2, "kept": False},
    }
    text = restarts.shares_text(stats)
    assert text.startswith("1 of 2 within 1% of the best (median loss 0.15); monosemantic in 1")
    assert text.endswith("the kept restart shows: polysemantic")


def test_which_geometries_apply():
    assert restarts.geometries("identity", Shape(10, 5), False).names == ()
    relu = restarts.geometries("identity", Shape(10, 5, True), False).names
    assert relu == ("monosemantic", "polysemantic")
    assert restarts.geometries("identity", Shape(3, 2), False).names[0] == "triangle"
    assert restarts.geometries("abs", Shape(3, 2), False).names[0] == "triangle"


def test_predicates_agree_with_the_checks_they_come_from():
    assert verdicts.shows_polygon(pentagon(5))
    assert not verdicts.shows_polygon(unit_vectors([0, 72, 144, 216, 300]))  # 12° off
    assert verdicts.shows_orthogonal_pair(orthogonal_pair())
    assert not verdicts.shows_orthogonal_pair(pentagon(0))
    params = abs_params()
    assert verdicts.shows_antipodal_pairs(params["W1"][0], params["W2"][0])
    assert not verdicts.shows_antipodal_pairs(params["W1"][1], params["W2"][1])


def test_report_states_the_share_of_restarts():
    dense = orthogonal_pair()
    Ws = [dense, pentagon(0)]
    stats = [
        {
            "finite": 16,
            "loss_quantiles": None,
            "within_1pct": 2,
            "geometry": {
                "pentagon": {"restarts": 0, "of": 16, "kept": False},
                "orthogonal_pair": {"restarts": 15, "of": 16, "kept": True},
            },
        },
        {
            "finite": 16,
            "loss_quantiles": None,
            "within_1pct": 1,
            "geometry": {
                "pentagon": {"restarts": 11, "of": 16, "kept": True},
                "orthogonal_pair": {"restarts": 0, "of": 16, "kept": False},
            },
        },
    ]
    levels = [
        LevelResult(
            feature_probability=p,
            importance=[1.0] * 5,
            best_restart=0,
            eval_loss=0.01,
            restart_stats=s,
        )
        for p, s in zip([1.0, 0.01], stats, strict=True)
    ]
    results = RunResults(
        task="identity",
        n_features=5,
        d_hidden=2,
        feature_probability=[1.0, 0.01],
        restarts=16,
        steps=1,
        levels=levels,
    )
    weights = {"W": torch.stack(Ws).float(), "b_final": torch.zeros(2, 5)}
    report = verdicts.judge("intro_pentagon", results, weights)
    assert report.passed
    notes = "\n".join(report.notes)
    assert "orthogonal_pair (as dense_orthogonal_pair) in 15 of 16 restarts at p = 1" in notes
    assert "pentagon (as sparse_polygon) in 11 of 16 restarts at p = 0.01" in notes
    # without the statistics (results before format 3) the report has no such note
    for level in results.levels:
        level.restart_stats = None
    assert not verdicts.judge("intro_pentagon", results, weights).notes


def test_a_long_list_of_near_best_restarts_is_counted_not_printed():
    """With 1 000 restarts hundreds can tie with the kept one: the line gives their count."""
    from superposition.job import LISTED_RESTARTS, _restart_list

    assert _restart_list([0, 3, 7]) == "restarts 0, 3, 7"
    many = list(range(LISTED_RESTARTS + 1))
    assert (
        _restart_list(many) == f"{len(many)} restarts (listed in results.json, near_best_restarts)"
    )
