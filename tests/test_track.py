"""W&B tracking, with real wandb in offline mode: runs are read back from their .wandb log."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from base64 import b64encode
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from wandb_offline import offline_runs, quiet_wandb_env, read_offline_run

from superposition.config import WandbMode
from superposition.store.files import HISTORY, RESULTS, WEIGHTS, read_tensors
from superposition.store.results import LevelResult, RunResults, read_results
from superposition.track import (
    STEP_KEY,
    Tracker,
    artifact_name,
    history_rows,
    level_labels,
    level_summary,
    level_table,
    logged_indices,
    plain,
)

ROOT = Path(__file__).resolve().parents[1]
PROBABILITIES = [1.0, 0.1, 0.01]
STEPS, TRAIN_LOG_EVERY, WANDB_LOG_EVERY = 30, 5, 10
# recorded: 0, 5, ..., 25, 29; logged: the multiples of 10, and the last
LOGGED_STEPS = [0, 10, 20, 29]
LABELS = ["p=1", "p=0.1", "p=0.01"]


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        quiet_wandb_env(mp, home)
        yield home


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory, wandb_home) -> Path:
    """A real job output directory, made by the CLI at tiny settings (tracking off there)."""
    out = tmp_path_factory.mktemp("job")
    overrides = [
        "task=identity",
        f"sweep.feature_probability=[{','.join(map(str, PROBABILITIES))}]",
        f"train.steps={STEPS}",
        "train.restarts=2",
        "train.batch_size=64",
        f"train.log_every={TRAIN_LOG_EVERY}",
        "eval.batch_size=256",
        "device=cpu",
        "wandb.mode=disabled",
        f"hydra.run.dir={out}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "superposition.run", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    if not list(out.glob("plots/*.png")):
        # Stands in for the plotting stage where it has not landed yet.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        (out / "plots").mkdir(exist_ok=True)
        fig.savefig(out / "plots" / "loss.png")
        plt.close(fig)
    return out


def job_results(job_dir: Path) -> RunResults:
    results = read_results(job_dir)
    assert all(level.metrics for level in results.levels)
    return results


@pytest.fixture(scope="module")
def tracked(job_dir):
    """One offline run that tracked the job, finished and read back from disk."""
    results = job_results(job_dir)
    config = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "config.yaml"))
    tracker = Tracker.start(
        config=config,
        out_dir=job_dir,
        mode="offline",
        project="superposition-test",
        entity=None,
        group="tiny-sweep",
        name="identity,train.steps=30",
        job_type="train",
    )
    assert tracker.enabled and tracker.run_id
    history = read_tensors(job_dir / HISTORY)
    steps = history["steps"].tolist()
    for t in logged_indices(steps, WANDB_LOG_EVERY):  # the rows a job logs as it trains
        tracker.log_levels(steps[t], history["loss"][t], level_labels(PROBABILITIES))
    tracker.log_results(results, job_dir)
    run_id, run_dir = tracker.run_id, tracker.run_dir
    tracker.finish()
    assert not tracker.enabled and tracker.run_id is None
    return {
        "run_id": run_id,
        "run_dir": run_dir,
        "results": results,
        "config": config,
        "history": history,
        "read": read_offline_run(run_dir),
    }


def test_run_is_stored_under_the_job_dir(tracked, job_dir):
    assert offline_runs(job_dir) == [tracked["run_dir"]]
    assert tracked["run_dir"].name.endswith(tracked["run_id"])
    run = tracked["read"]["run"]
    assert run["run_id"] == tracked["run_id"]
    assert run["display_name"] == "identity,train.steps=30"
    assert run["run_group"] == "tiny-sweep"
    assert run["job_type"] == "train"
    assert run["project"] == "superposition-test"
    assert tracked["read"]["state"] == "finished"
    assert tracked["read"]["exit_code"] == 0


def test_config_is_the_resolved_config(tracked):
    config = dict(tracked["read"]["config"])
    config.pop("_wandb", None)
    assert config == tracked["config"]


def test_loss_history(tracked):
    history = tracked["read"]["history"]
    assert sorted(tracked["read"]["train"]) == LOGGED_STEPS
    assert [step for step, row in sorted(history.items()) if STEP_KEY in row] == LOGGED_STEPS
    steps = tracked["history"]["steps"].tolist()
    loss = tracked["history"]["loss"]
    assert loss.shape == (len(steps), len(PROBABILITIES), 2)
    assert torch.isfinite(loss).all()
    for step in LOGGED_STEPS:
        t = steps.index(step)
        row = history[step]
        assert row["_step"] == row[STEP_KEY] == step
        for level, label in enumerate(LABELS):
            assert row[f"train/loss_best/{label}"] == pytest.approx(loss[t, level].min().item())
            assert row[f"train/loss_mean/{label}"] == pytest.approx(loss[t, level].mean().item())


def test_figures(tracked, job_dir):
    summary, run_dir = tracked["read"]["summary"], tracked["run_dir"]
    pngs = sorted(job_dir.glob("plots/*.png"))
    images = {k: v for k, v in summary.items() if k.startswith("plots/")}
    assert sorted(images) == [f"plots/{png.stem}" for png in pngs]
    for png in pngs:
        image = images[f"plots/{png.stem}"]
        assert image["_type"] == "image-file"
        stored = run_dir / "files" / image["path"]
        assert stored.is_file() and image["path"] in tracked["read"]["files"]
        assert image["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    # logged in the row after the last training step's
    last = tracked["read"]["history"][LOGGED_STEPS[-1] + 1]
    assert STEP_KEY not in last
    assert all(last[f"{key}._type"] == "image-file" for key in images)


def test_levels_table(tracked):
    results, summary = tracked["results"], tracked["read"]["summary"]
    table_ref = summary["levels"]
    assert table_ref["_type"] == "table-file"
    table = json.loads((tracked["run_dir"] / "files" / table_ref["path"]).read_text())
    metrics = list(results.levels[0].metrics)
    evaluation = ["eval_loss", "eval_loss_se", "near_best_restarts"]
    # identity: the constant and dedicated reference losses, and the kept loss over each
    references = ["loss_constant", "loss_dedicated", "loss_ratio/constant", "loss_ratio/dedicated"]
    # identity 5 -> 2: the pentagon and the orthogonal pair are the geometries counted
    restarts = ["restarts_within_1pct", "restart_loss_median"]
    restarts += ["restarts_pentagon", "restarts_orthogonal_pair"]
    columns = ["feature_probability", "best_restart", *evaluation, *references, *metrics]
    assert table["columns"] == [*columns, *restarts]
    assert len(table["data"]) == len(PROBABILITIES)
    for row, level in zip(table["data"], results.levels, strict=True):
        assert level.eval_loss_se > 0 and level.best_restart in level.near_best_restarts
        expected = [level.feature_probability, level.best_restart, level.eval_loss]
        expected += [level.eval_loss_se, len(level.near_best_restarts)]
        expected += [level.loss_constant, level.loss_dedicated]
        expected += [level.eval_loss / level.loss_constant, level.eval_loss / level.loss_dedicated]
        expected += [level.metrics[name] for name in metrics]
        stats = level.restart_stats
        expected += [stats["within_1pct"], stats["loss_quantiles"]["median"]]
        for name in ("pentagon", "orthogonal_pair"):
            entry = stats["geometry"][name]
            expected.append(entry["restarts"] / entry["of"])
        assert row == pytest.approx(expected, nan_ok=True)
        assert 1 <= stats["within_1pct"] <= stats["finite"] == 2


def test_summary_per_level(tracked):
    summary = tracked["read"]["summary"]
    for label, level in zip(LABELS, tracked["results"].levels, strict=True):
        assert summary[f"level/{label}/eval_loss"] == pytest.approx(level.eval_loss)
        assert summary[f"level/{label}/eval_loss_se"] == pytest.approx(level.eval_loss_se)
        assert summary[f"level/{label}/loss_constant"] == pytest.approx(level.loss_constant)
        assert summary[f"level/{label}/loss_dedicated"] == pytest.approx(level.loss_dedicated)
        assert summary[f"level/{label}/loss_ratio/constant"] == pytest.approx(
            level.eval_loss / level.loss_constant
        )
        assert f"level/{label}/loss_closed_form" not in summary
        for name, value in level.metrics.items():
            if value is None:
                assert f"level/{label}/{name}" not in summary
            else:
                assert summary[f"level/{label}/{name}"] == pytest.approx(value)
        stats = level.restart_stats
        assert summary[f"level/{label}/restarts_within_1pct"] == stats["within_1pct"]
        median = stats["loss_quantiles"]["median"]
        assert summary[f"level/{label}/restart_loss_median"] == pytest.approx(median)
        entry = stats["geometry"]["pentagon"]
        share = entry["restarts"] / entry["of"]
        assert summary[f"level/{label}/restarts_pentagon"] == pytest.approx(share)


def test_weights_artifact(tracked, job_dir):
    artifacts = [a for a in tracked["read"]["artifacts"] if a["type"] == "model"]
    assert len(artifacts) == 1
    artifact = artifacts[0]
    assert artifact["name"] == "identity_train.steps_30-weights"
    assert artifact["metadata"]["task"] == "identity"
    assert sorted(artifact["files"]) == sorted([RESULTS, WEIGHTS])
    for name, entry in artifact["files"].items():
        data = (job_dir / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["digest"] == b64encode(hashlib.md5(data).digest()).decode()
        # the staged copy that `wandb sync` uploads
        assert Path(entry["local_path"]).read_bytes() == data


# --- failure paths: a warning line, a disabled tracker, no exception -------------------------


def start_args(out_dir: Path, **overrides) -> dict:
    args = dict(
        config={"seed": 0},
        out_dir=out_dir,
        mode="offline",
        project="superposition-test",
        entity=None,
        group=None,
        name="failing",
        job_type="train",
    )
    return {**args, **overrides}


def assert_disabled(tracker: Tracker, out_dir: Path) -> None:
    assert not tracker.enabled and tracker.run_id is None and tracker.run_dir is None
    tracker.log_levels(0, torch.zeros(1, 1), ["p=1"])
    tracker.log_results(
        RunResults(task="identity", n_features=1, d_hidden=1, restarts=1, steps=1, levels=[]),
        out_dir,
    )
    tracker.finish()


def warning_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def test_disabled_mode_writes_nothing(tmp_path, capsys):
    tracker = Tracker.start(**start_args(tmp_path, mode=WandbMode.disabled))
    assert_disabled(tracker, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert warning_lines(capsys) == []


def test_unknown_mode_warns(tmp_path, capsys):
    tracker = Tracker.start(**start_args(tmp_path, mode="sometimes"))
    assert_disabled(tracker, tmp_path)
    assert warning_lines(capsys) == [
        "warning: W&B could not start: mode 'sometimes' is not one of offline, online, disabled; "
        "training and local outputs go on"
    ]
    assert list(tmp_path.iterdir()) == []


def test_online_without_login_warns(tmp_path):
    """A real failure of wandb.init, which needs no network: online mode with no API key. In a
    fresh process with no W&B login or WANDB_* variables, so that what it prints is all there is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    env.update(WANDB_CONFIG_DIR=str(tmp_path / "config"), WANDB_DATA_DIR=str(tmp_path / "data"))
    script = (
        "import sys, torch\n"
        "from superposition.track import Tracker\n"
        "t = Tracker.start(config={}, out_dir=sys.argv[1], mode='online', project='p',\n"
        "    entity=None, group=None, name='n', job_type='train')\n"
        "t.log_levels(0, torch.zeros(1, 1), ['p=1'])\n"
        "t.finish()\n"
        "print('enabled' if t.enabled else 'disabled')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "disabled\n"
    (line,) = done.stderr.splitlines()
    assert line.startswith("warning: W&B could not start (online): ")
    assert "API key" in line
    assert line.endswith("; training and local outputs go on")


def test_init_exception_warns(tmp_path, capsys, wandb_home, monkeypatch):
    # A network time-out cannot be produced here (no network, no server): wandb.init is replaced by
    # one that raises what wandb raises when the server does not answer within init_timeout.
    import wandb

    def timed_out(**kwargs):
        raise wandb.errors.CommError("Run initialization has timed out after 60.0 sec.\nretry")

    monkeypatch.setattr(wandb, "init", timed_out)
    tracker = Tracker.start(**start_args(tmp_path, mode="online"))
    assert_disabled(tracker, tmp_path)
    assert warning_lines(capsys) == [
        "warning: W&B could not start (online): CommError: Run initialization has timed out "
        "after 60.0 sec. retry; training and local outputs go on"
    ]


def test_failure_after_start_warns_once_and_goes_dark(tmp_path, capsys, wandb_home, monkeypatch):
    tracker = Tracker.start(**start_args(tmp_path))
    assert tracker.enabled
    run_dir = tracker.run_dir

    def full_disk(*args, **kwargs):
        # A full disk cannot be produced here: run.log is replaced by one that raises.
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracker._run, "log", full_disk)
    tracker.log_levels(0, torch.ones(1, 2), ["p=1"])
    assert_disabled(tracker, tmp_path)
    assert warning_lines(capsys) == [
        "warning: W&B log_history failed: OSError: [Errno 28] No space left on device; "
        "training and local outputs go on"
    ]
    read = read_offline_run(run_dir)
    assert read["exit_code"] == 1 and read["history"] == {}


def test_failed_job_then_requeued_job_resumes_its_run(tmp_path, wandb_home, capsys):
    """The context manager marks the run failed when the job raises; the requeued job passes the
    same resume_id and continues that run (offline: a second run directory with the same id)."""
    with pytest.raises(RuntimeError), Tracker.start(**start_args(tmp_path)) as first:
        run_id = first.run_id
        raise RuntimeError("job killed")
    assert not first.enabled
    with Tracker.start(**start_args(tmp_path, resume_id=run_id)) as second:
        assert second.run_id == run_id
        second.log_levels(10, torch.ones(1, 1), ["p=1"])
    failed, resumed = (read_offline_run(run) for run in offline_runs(tmp_path))
    assert failed["run"]["run_id"] == resumed["run"]["run_id"] == run_id
    assert failed["exit_code"] == 1 and resumed["exit_code"] == 0
    assert resumed["run"]["resume"] is True
    assert resumed["history"][10]["train/loss_best/p=1"] == 1.0
    assert warning_lines(capsys) == []


# --- the pieces, without wandb ------------------------------------------------------------------


def test_logged_indices():
    assert logged_indices([0, 50, 100, 150, 199], 100) == [0, 2, 4]
    assert logged_indices([0, 50, 100, 150, 200], 100) == [0, 2, 4]
    # a recording interval that does not divide log_every: the first step of each window
    assert logged_indices([0, 30, 60, 90, 120, 150, 180, 209], 100) == [0, 4, 7]
    assert logged_indices([0], 100) == [0]


def test_history_rows_use_finite_restarts():
    nan, inf = math.nan, math.inf
    loss = torch.tensor([[[1.0, 3.0], [nan, 2.0], [nan, inf]]])
    assert history_rows([7], loss, [1.0, 0.5, 0.1], 1) == [
        (
            7,
            {
                "train/loss_best/p=1": 1.0,
                "train/loss_mean/p=1": 2.0,
                "train/loss_best/p=0.5": 2.0,
                "train/loss_mean/p=0.5": 2.0,
            },
        )
    ]


def test_level_labels_and_artifact_name():
    assert level_labels([1.0, 0.3, 0.001]) == ["p=1", "p=0.3", "p=0.001"]
    assert level_labels([0.1, 0.1, 0.2]) == ["p=0.1#0", "p=0.1#1", "p=0.2"]
    assert artifact_name("3_task=abs,sweep=sparsity") == "3_task_abs_sweep_sparsity-weights"
    assert len(artifact_name("x" * 500)) == 128


def test_level_table_and_summary_keep_scalar_metrics():
    levels = [
        LevelResult(
            feature_probability=1.0,
            importance=[1.0],
            best_restart=0,
            eval_loss=None,
            metrics={"a": 1.0, "per_feature": [1, 2]},
        ),
        LevelResult(
            feature_probability=0.1,
            importance=[1.0],
            best_restart=2,
            eval_loss=0.5,
            eval_loss_se=0.01,
            near_best_restarts=[0, 2],
        ),
    ]
    results = RunResults(
        task="identity", n_features=1, d_hidden=1, restarts=3, steps=1, levels=levels
    )
    columns, rows = level_table(results)
    evaluation = ["eval_loss", "eval_loss_se", "near_best_restarts"]
    assert columns == ["feature_probability", "best_restart", *evaluation, "a"]
    assert rows == [[1.0, 0, None, None, None, 1.0], [0.1, 2, 0.5, 0.01, 2, None]]
    assert level_summary(results) == {
        "level/p=1/a": 1.0,
        "level/p=0.1/eval_loss": 0.5,
        "level/p=0.1/eval_loss_se": 0.01,
        "level/p=0.1/near_best_restarts": 2,
    }


def test_level_table_and_summary_keep_the_reference_losses_and_ratios():
    levels = [
        LevelResult(
            feature_probability=0.1,
            importance=[1.0, 3.0],
            best_restart=0,
            eval_loss=0.02,
            loss_constant=0.04,
            loss_dedicated=0.0,
            loss_closed_form=0.025,
            loss_closed_form_configs={"drop": 0.05, "dedicate": 0.025, "antipodal": 0.03},
        ),
        LevelResult(
            feature_probability=1.0, importance=[1.0, 3.0], best_restart=None, eval_loss=None
        ),
    ]
    results = RunResults(
        task="identity", n_features=2, d_hidden=1, restarts=1, steps=1, levels=levels
    )
    columns, rows = level_table(results)
    references = ["loss_constant", "loss_dedicated", "loss_closed_form"]
    ratios = ["loss_ratio/constant", "loss_ratio/closed_form"]  # none over a reference of 0
    evaluation = ["eval_loss", "eval_loss_se", "near_best_restarts"]
    assert columns == ["feature_probability", "best_restart", *evaluation, *references, *ratios]
    assert rows == [
        pytest.approx([0.1, 0, 0.02, None, None, 0.04, 0.0, 0.025, 0.5, 0.8]),
        [1.0, None, None, None, None, None, None, None, None, None],
    ]
    assert level_summary(results) == pytest.approx(
        {
            "level/p=0.1/eval_loss": 0.02,
            "level/p=0.1/loss_constant": 0.04,
            "level/p=0.1/loss_dedicated": 0.0,
            "level/p=0.1/loss_closed_form": 0.025,
            "level/p=0.1/loss_ratio/constant": 0.5,
            "level/p=0.1/loss_ratio/closed_form": 0.8,
        }
    )


def test_level_table_and_summary_take_the_statistics_over_restarts():
    stats = {
        "finite": 4,
        "loss_quantiles": {"min": 0.1, "q25": 0.2, "median": 0.25, "q75": 0.3, "max": 0.4},
        "within_1pct": 1,
        "geometry": {"pentagon": {"restarts": 3, "of": 4, "kept": True}},
    }
    none_finite = {
        "finite": 0,
        "loss_quantiles": None,
        "within_1pct": 0,
        "geometry": {"pentagon": {"restarts": 0, "of": 0, "kept": None}},
    }
    levels = [
        LevelResult(
            feature_probability=p, importance=[1.0], best_restart=0, eval_loss=0.1, restart_stats=s
        )
        for p, s in ((0.1, stats), (0.01, none_finite), (0.001, None))
    ]
    results = RunResults(
        task="identity", n_features=1, d_hidden=1, restarts=4, steps=1, levels=levels
    )
    columns, rows = level_table(results)
    assert columns[5:] == ["restarts_within_1pct", "restart_loss_median", "restarts_pentagon"]
    assert [row[5:] for row in rows] == [[1, 0.25, 0.75], [0, None, None], [None, None, None]]
    summary = level_summary(results)
    assert {k: v for k, v in summary.items() if "restart" in k} == {
        "level/p=0.1/restarts_within_1pct": 1,
        "level/p=0.1/restart_loss_median": 0.25,
        "level/p=0.1/restarts_pentagon": 0.75,
        "level/p=0.01/restarts_within_1pct": 0,
    }


def test_plain_config():
    assert plain({"mode": WandbMode.offline, "dir": Path("/x"), "p": (1, 2)}) == {
        "mode": "offline",
        "dir": "/x",
        "p": [1, 2],
    }
