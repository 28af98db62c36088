"""results.json as a typed contract: write → read round-trips, today's (format 1) files still load,
a future format is refused in one line, and the phase sweep's layout is defined once."""

from __future__ import annotations

import json

import pytest
import torch

from superposition.grid import phase_cell, phase_level, phase_sweep_grid
from superposition.store.files import RESULTS, WEIGHTS, write_tensors
from superposition.store.outdir import OutputDirError, finished_results
from superposition.store.results import (
    FORMAT,
    DataPairs,
    Exclusion,
    LevelResult,
    ResultsError,
    RunResults,
    load_run,
    read_results,
    write_results,
)

# the keys of a format-1 results.json, as the job wrote them before the format was recorded
FORMAT_1 = {
    "config_fingerprint": "af3c4e6bc570a726",
    "task": "abs",
    "n_features": 2,
    "d_hidden": 2,
    "hidden_relu": False,
    "init": "course",
    "importance": [1.0, 0.9],
    "preset": None,
    "feature_probability": [1.0, 0.1],
    "relative_importance": [],
    "data": {"correlated_pairs": 0, "anticorrelated_pairs": 0},
    "restarts": 2,
    "steps": 200,
    "seed": 0,
    "device": "cpu",
    "eval_batch_size": 131072,
    "chunk_size": 4,
    "levels": [
        {
            "feature_probability": 1.0,
            "importance": [1.0, 0.9],
            "relative_importance": None,
            "best_restart": 1,
            "eval_loss": 0.059743624180555344,
            "restart_eval_losses": [0.060244619846343994, 0.059743624180555344],
            "excluded_restarts": [],
            "metrics": {"features_represented": 2, "mean_interference": None},
            "feature_loss_ratio": [0.35449835658073425, 0.33173346519470215],
            "one_sign_features": [],
            "baselines": {"constant": 0.0433452, "no_superposition": 0.0245952},
        },
        {
            "feature_probability": 0.1,
            "importance": [1.0, 0.9],
            "relative_importance": None,
            "best_restart": None,
            "eval_loss": None,
            "restart_eval_losses": [None, None],
            "excluded_restarts": [0, 1],
            "metrics": {"features_represented": None, "mean_interference": None},
            "feature_loss_ratio": [None, None],
            "one_sign_features": None,
            "baselines": {"constant": 0.0308333, "no_superposition": 0.0},
        },
    ],
    "excluded": [{"level": 1, "restart": 0}, {"level": 1, "restart": 1}],
    "levels_without_finite_restart": [1],
    "train_seconds": 6.300041229000271,
    "instance_steps_per_s": 444.44153589203114,
    "sampler_overflows": 0,
    "verdict": "FAIL",
    "files": {"weights.safetensors": "93f0", "history.safetensors": "1a2b"},
}


def write_payload(out_dir, payload) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS).write_text(json.dumps(payload, indent=2))


def test_a_format_1_file_loads_into_the_typed_results(tmp_path):
    write_payload(tmp_path, FORMAT_1)
    results = read_results(tmp_path)
    assert (results.task, results.n_features, results.d_hidden) == ("abs", 2, 2)
    assert (results.task_module, results.engine) == (None, None)  # keys added in format 2
    assert results.format == FORMAT
    assert results.data == DataPairs(correlated_pairs=0, anticorrelated_pairs=0)
    assert results.excluded == [Exclusion(1, 0), Exclusion(1, 1)]
    first, second = results.levels
    # format 1's baselines, read as the reference losses
    assert (first.loss_constant, first.loss_dedicated) == (0.0433452, 0.0245952)
    assert first.loss_closed_form is None and first.loss_closed_form_configs is None
    assert first.loss_ratios == {
        "constant": pytest.approx(0.059743624180555344 / 0.0433452),
        "dedicated": pytest.approx(0.059743624180555344 / 0.0245952),
    }
    # no kept restart, no ratio; a reference of 0 has none either
    assert (second.loss_dedicated, second.loss_ratios) == (0.0, {})
    assert first.eval_loss == 0.059743624180555344 and first.best_restart == 1
    assert first.metrics == {"features_represented": 2, "mean_interference": None}
    assert second.best_restart is None and second.restart_eval_losses == [None, None]
    assert (results.verdict, results.files["weights.safetensors"]) == ("FAIL", "93f0")


# keys that came after format 1, run-wide and per level, with the value a format-1 file reads as
ADDED_KEYS = {
    "format": FORMAT,
    "task_module": None,
    "engine": None,
    "eval_method": None,
    "threads": None,
}
ADDED_LEVEL_KEYS = {
    "eval_loss_se": None,
    "restart_eval_loss_se": [],
    "near_best_restarts": [],
    "restart_stats": None,
}
# format 1's "baselines" ({constant, no_superposition}) is written as these, in its place
REFERENCE_KEYS = [
    "loss_constant",
    "loss_dedicated",
    "loss_closed_form",
    "loss_closed_form_configs",
    "loss_ratios",
]


def references_of(level: dict) -> dict:
    """The reference keys a format-1 level is written with."""
    constant, dedicated = level["baselines"]["constant"], level["baselines"]["no_superposition"]
    loss = level["eval_loss"]
    ratios = {} if loss is None else {"constant": loss / constant, "dedicated": loss / dedicated}
    return dict(
        zip(REFERENCE_KEYS, [constant, dedicated, None, None, ratios], strict=True),
    )


def test_writing_keeps_every_format_1_key_and_value_in_order_and_adds_the_later_ones(tmp_path):
    write_payload(tmp_path, FORMAT_1)
    write_results(tmp_path, read_results(tmp_path))
    written = json.loads((tmp_path / RESULTS).read_text())
    assert {key: written.pop(key) for key in ADDED_KEYS} == ADDED_KEYS
    expected_levels = []
    for level, old in zip(written["levels"], FORMAT_1["levels"], strict=True):
        assert {key: level.pop(key) for key in ADDED_LEVEL_KEYS} == ADDED_LEVEL_KEYS
        assert list(level)[-len(REFERENCE_KEYS) :] == REFERENCE_KEYS  # where baselines was
        assert {key: level.pop(key) for key in REFERENCE_KEYS} == references_of(old)
        expected_levels.append({k: v for k, v in old.items() if k != "baselines"})
    assert written == {**FORMAT_1, "levels": expected_levels}
    assert list(written) == list(FORMAT_1)
    assert [list(level) for level in written["levels"]] == [
        list(level) for level in expected_levels
    ]


def test_references_round_trip_and_their_ratios_are_derived(tmp_path):
    results = RunResults.from_json(FORMAT_1)
    level = results.levels[0]
    level.loss_closed_form_configs = {"drop": 0.05, "dedicate": 0.07, "antipodal": 0.06}
    level.loss_closed_form = 0.05
    write_results(tmp_path, results)
    written = json.loads((tmp_path / RESULTS).read_text())["levels"][0]
    assert written["loss_ratios"]["closed_form"] == pytest.approx(0.059743624180555344 / 0.05)
    assert written["loss_closed_form_configs"] == level.loss_closed_form_configs
    assert read_results(tmp_path) == results
    # a stale ratio in a file is recomputed from the losses it was written with
    written["loss_ratios"] = {"constant": 99.0}
    assert LevelResult.from_json(written).loss_ratios == level.loss_ratios


def test_write_then_read_round_trips(tmp_path):
    results = RunResults.from_json(FORMAT_1)
    results.task_module = "superposition.tasks.abs"
    results.engine = "fast"
    write_results(tmp_path, results)
    again = read_results(tmp_path)
    assert again == results
    assert again.to_json() == results.to_json()
    assert json.loads((tmp_path / RESULTS).read_text())["format"] == FORMAT


def test_non_finite_values_are_written_as_null(tmp_path):
    results = RunResults.from_json(FORMAT_1)
    results.levels[0].restart_eval_losses = [float("inf"), 0.5]
    results.levels[0].metrics["mean_interference"] = float("nan")
    write_results(tmp_path, results)
    level = read_results(tmp_path).levels[0]
    assert level.restart_eval_losses == [None, 0.5]
    assert level.metrics["mean_interference"] is None


def test_keys_that_came_later_get_defaults_and_unset_ones_are_not_written():
    oldest = {
        "task": "identity",
        "n_features": 2,
        "d_hidden": 1,
        "restarts": 1,
        "steps": 10,
        "levels": [
            {"feature_probability": 1.0, "importance": [1, 1], "best_restart": 0, "eval_loss": 0.1}
        ],
    }
    results = RunResults.from_json(oldest)
    assert results.config_fingerprint is None and results.files is None
    assert results.relative_importance == [] and results.data == DataPairs()
    (level,) = results.levels
    assert level.metrics == {} and level.feature_loss_ratio is None
    assert (level.loss_constant, level.loss_dedicated, level.loss_closed_form) == (None,) * 3
    assert level.loss_ratios == {}
    payload = results.to_json()
    assert "verdict" not in payload and "files" not in payload  # as a job without a preset


def test_a_future_format_is_refused_in_one_line(tmp_path):
    write_payload(tmp_path, {**FORMAT_1, "format": FORMAT + 1})
    with pytest.raises(ResultsError) as error:
        read_results(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / RESULTS} is in results format {FORMAT + 1}")
    assert "cannot read" in message and "\n" not in message
    assert isinstance(error.value, ValueError)


def test_a_finished_run_of_a_future_format_is_refused_by_the_output_directory(tmp_path):
    write_payload(tmp_path, {**FORMAT_1, "format": FORMAT + 1})
    with pytest.raises(OutputDirError) as error:
        finished_results(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / RESULTS} is in results format {FORMAT + 1}")
    assert message.endswith(f"delete {RESULTS} in it to train again") and "\n" not in message


@pytest.mark.parametrize(
    "payload, reason",
    [
        ([1, 2], "does not hold a run's results"),
        ({"levels": "x"}, "does not hold a run's results"),
        (
            {k: v for k, v in FORMAT_1.items() if k != "task"},
            "does not hold a run's results (no 'task')",
        ),
        ({**FORMAT_1, "excluded": [1]}, "does not hold a run's results"),
        (
            {**FORMAT_1, "levels": [{"feature_probability": 1.0}]},
            "does not hold a run's results (no 'importance')",
        ),
    ],
)
def test_what_is_not_a_run_is_refused_in_one_line(payload, reason):
    with pytest.raises(ResultsError) as error:
        RunResults.from_json(payload)
    assert str(error.value).startswith(reason) and "\n" not in str(error.value)


def test_finished_results_are_typed(tmp_path):
    write_payload(tmp_path, {k: v for k, v in FORMAT_1.items() if k != "files"})
    results = finished_results(tmp_path)
    assert isinstance(results, RunResults) and results.config_fingerprint == "af3c4e6bc570a726"


def test_load_run_reads_results_weights_and_the_missing_history(tmp_path):
    write_payload(tmp_path, FORMAT_1)
    W1 = torch.arange(8.0).view(2, 2, 2)
    write_tensors(tmp_path / WEIGHTS, {"W1": W1, "W2": W1.clone(), "b_final": torch.zeros(2, 2)})
    run = load_run(tmp_path)
    assert run.results == RunResults.from_json(FORMAT_1)
    assert run.history is None and run.n_levels == 2 and run.task == "abs"
    assert run.features.dtype == torch.float64 and torch.equal(run.features, W1.double())


# -------------------------------------------------------------------------- phase layout


def phase_results(r_values: list[float], p_values: list[float]) -> RunResults:
    grid = phase_sweep_grid(r_values, p_values, n_features=2, decay=1.0, restarts=1)
    levels = [
        LevelResult(
            feature_probability=float(grid.feature_probability[level]),
            importance=grid.importance[level].tolist(),
            relative_importance=grid.importance[level, -1].item(),
            best_restart=0,
            eval_loss=0.1,
        )
        for level in range(grid.n_levels)
    ]
    return RunResults(
        task="identity",
        n_features=2,
        d_hidden=1,
        restarts=1,
        steps=1,
        feature_probability=p_values,
        relative_importance=r_values,
        levels=levels,
    )


def test_the_phase_layout_is_r_outer_p_inner_everywhere():
    r_values, p_values = [0.5, 2.0], [1.0, 0.1, 0.01]
    results = phase_results(r_values, p_values)
    assert results.phase_axes() == (r_values, p_values)
    for a, r in enumerate(r_values):
        for b, p in enumerate(p_values):
            level = results.level_at(a, b)
            assert level == a * len(p_values) + b == phase_level(a, b, len(p_values))
            assert phase_cell(level, len(p_values)) == (a, b)
            # the grid the job trains puts the same cell at that level
            assert results.levels[level].feature_probability == p
            assert results.levels[level].relative_importance == r


def test_phase_axes_refuse_results_without_a_matching_grid():
    results = phase_results([0.5, 2.0], [1.0, 0.1])
    results.relative_importance = [0.5]
    with pytest.raises(ValueError, match="1 r × 2 p values do not match 4 levels"):
        results.phase_axes()
    results.relative_importance = []
    with pytest.raises(ValueError, match="no relative_importance × feature_probability grid"):
        results.phase_axes()
