"""`python -m superposition.sweep collect`: a real multirun (identity and abs, 6 -> 2) collected
into one result; collected again; collected with a job missing and one unreadable."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import matplotlib.style
import numpy as np
import pytest
import yaml
from wandb_offline import offline_runs, quiet_wandb_env, read_offline_run

from superposition.figures import style
from superposition.figures.sweep_figures import SweepJob, features_2d_grid_figure, metrics_figure
from superposition.store.results import LevelResult, RunResults, read_results
from superposition.sweep.__main__ import main as sweep_command
from superposition.sweep.collect import collect

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.n_features=6",
    "sweep.feature_probability=[1.0,0.05]",
    "train.steps=30",
    "train.restarts=2",
    "train.batch_size=128",
    "train.log_every=10",
    "wandb.log_every=10",
    "eval.batch_size=1024",
]
FILES = ("sweep.csv", "sweep.json", "sweep.md")


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory):
    """W&B's settings, cache and staging in the test's folder, for the module's processes."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        quiet_wandb_env(mp, home)
        mp.setenv("WANDB_SILENT", "true")
        yield home


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, wandb_home) -> dict:
    """One real multirun of two jobs (W&B offline), collected once by the command's main."""
    sweep_dir = tmp_path_factory.mktemp("collect") / "multirun" / "tiny"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "superposition.run",
            "-m",
            "task=identity,abs",
            "model.d_hidden=2",
            *TINY,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = sweep_command(["collect", str(sweep_dir)])
    job_dirs = sorted(p.parent for p in sweep_dir.glob("*/results.json"))
    assert len(job_dirs) == 2
    return {
        "dir": sweep_dir,
        "status": status,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "jobs": job_dirs,
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def task_of(job_dir: Path) -> str:
    return read_results(job_dir).task


def test_collect_writes_a_row_per_job_and_level(sweep):
    sweep_dir = sweep["dir"]
    assert sweep["status"] == 0, sweep["err"]
    assert sweep["out"].splitlines()[0] == f"{sweep_dir}: 2 of 2 jobs finished"
    for name in (*FILES, "plots/metrics.png", "plots/features_2d.png"):
        assert f"wrote {sweep_dir / name}" in sweep["out"]
    assert sweep["err"] == ""

    rows = read_csv(sweep_dir / "sweep.csv")
    assert len(rows) == 2 * 2  # jobs × levels
    columns = list(rows[0])
    assert columns[:2] == ["job", "task"]  # the swept key is a column, named once
    assert {"feature_probability", "relative_importance", "eval_loss"} <= set(columns)
    assert {"features_represented", "dimensions_per_feature", "monosemantic_fraction"} <= set(
        columns
    )
    assert {"n_features", "d_hidden", "preset", "verdict"} <= set(columns)
    for job_dir in sweep["jobs"]:
        results = read_results(job_dir)
        mine = [row for row in rows if row["job"] == job_dir.name]
        assert [row["task"] for row in mine] == [results.task] * 2
        for row, level in zip(mine, results.levels, strict=True):
            assert float(row["feature_probability"]) == level.feature_probability
            assert float(row["eval_loss"]) == level.eval_loss
            assert float(row["eval_loss_se"]) == level.eval_loss_se
            assert int(row["features_represented"]) == level.metrics["features_represented"]
            assert row["relative_importance"] == ""
    by_task = {row["task"]: row for row in rows}
    assert by_task["identity"]["monosemantic_fraction"] == ""  # no privileged basis
    assert by_task["abs"]["monosemantic_fraction"] != ""

    payload = json.loads((sweep_dir / "sweep.json").read_text())
    assert payload["columns"] == columns
    assert [
        {k: "" if v is None else str(v) for k, v in row.items()} for row in payload["rows"]
    ] == (rows)


def test_sweep_md_names_every_job_and_links_its_figures(sweep):
    sweep_dir = sweep["dir"]
    text = (sweep_dir / "sweep.md").read_text()
    for job_dir in sweep["jobs"]:
        assert f"`{job_dir.name}` | task={task_of(job_dir)} | finished |" in text
    assert "2 jobs: 2 finished, 0 missing." in text
    assert "Missing" not in text
    for name in ("metrics", "features_2d"):
        assert f"](plots/{name}.png)" in text
        png = sweep_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sweep_run_sits_in_the_jobs_group_with_the_table(sweep):
    sweep_dir = sweep["dir"]
    (run_dir,) = offline_runs(sweep_dir)
    run = read_offline_run(run_dir)
    job_runs = [read_offline_run(offline_runs(job)[0])["run"] for job in sweep["jobs"]]
    job_run = job_runs[0]
    # the jobs' own runs: one group, their own ids, named by job number, task and sizes
    assert job_runs[0]["run_group"] == job_runs[1]["run_group"]
    assert job_runs[0]["run_id"] != job_runs[1]["run_id"]
    assert {r["display_name"] for r in job_runs} == {"0_identity_6to2", "1_abs_6to2"}

    assert run["state"] == "finished"
    assert run["run"]["job_type"] == "sweep"
    assert run["run"]["run_group"] == job_run["run_group"] == "multirun_tiny"
    assert run["run"]["project"] == job_run["project"]
    assert run["config"]["swept_keys"] == ["task"]
    summary = run["summary"]
    assert summary["jobs_finished"] == 2 and summary["jobs_missing"] == 0
    assert summary["sweep"]["_type"] == "table-file" and summary["sweep"]["nrows"] == 4
    assert {summary[f"plots/{n}"]["_type"] for n in ("metrics", "features_2d")} == {"image-file"}
    table = json.loads((run_dir / "files" / summary["sweep"]["path"]).read_text())
    assert table["columns"] == list(read_csv(sweep_dir / "sweep.csv")[0])
    assert len(table["data"]) == 4


def test_collect_again_gives_the_same_files_and_one_sweep_run(sweep, capsys):
    sweep_dir = sweep["dir"]
    before = {name: (sweep_dir / name).read_bytes() for name in FILES}
    (first_run,) = offline_runs(sweep_dir)

    assert collect(sweep_dir) == 0

    assert {name: (sweep_dir / name).read_bytes() for name in FILES} == before
    (second_run,) = offline_runs(sweep_dir)  # the earlier one replaced by this one
    assert second_run.name.rsplit("-", 2)[1:] == first_run.name.rsplit("-", 2)[1:]  # same id
    assert sorted(p.name for p in (sweep_dir / "wandb").iterdir() if p.name.startswith(".")) == []
    assert f"W&B: offline sweep run {second_run}" in capsys.readouterr().out


def test_collect_reports_missing_and_unreadable_jobs_and_writes_the_rest(sweep, tmp_path, capsys):
    copy = tmp_path / "multirun" / "partial"
    # without its manifest: the jobs are found from their directories, as in a sweep of an
    # earlier version
    ignored = shutil.ignore_patterns("wandb", "plots", "sweep.*", "manifest.json")
    shutil.copytree(sweep["dir"], copy, ignore=ignored)
    kept, lost = (copy / job.name for job in sweep["jobs"])
    (lost / "results.json").unlink()
    broken = copy / "2_broken"
    shutil.copytree(kept, broken)
    (broken / "results.json").write_text("{not json")
    overrides = broken / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + "- seed=7\n")  # a job of a later submission
    for config in copy.glob("*/.hydra/config.yaml"):  # and W&B off, as the jobs had it
        settings = yaml.safe_load(config.read_text())
        settings["wandb"]["mode"] = "disabled"
        config.write_text(yaml.safe_dump(settings))

    assert collect(copy) == 1  # the unreadable job, reported; the rest written
    out, err = capsys.readouterr()

    assert f"missing: {lost.name}: not started: the command that launched it has ended" in (
        out.splitlines()
    )
    (warning,) = err.splitlines()
    assert warning.startswith("warning: skipped 2_broken: ") and "results.json" in warning
    assert "W&B: no sweep run (wandb.mode=disabled)" in out
    assert not (copy / "wandb").exists()
    rows = read_csv(copy / "sweep.csv")
    assert {row["job"] for row in rows} == {kept.name} and len(rows) == 2
    assert list(rows[0])[:3] == ["job", "task", "seed"]  # seed: swept by the later job
    text = (copy / "sweep.md").read_text()
    assert "3 jobs: 1 finished, 1 missing, 1 unreadable." in text
    missing = text.split("## Missing")[1]
    assert f"`{lost.name}`: not started" in missing and "`2_broken`: unreadable: " in missing
    assert (copy / "plots" / "metrics.png").is_file()


def test_collect_refuses_what_is_not_a_sweep(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    for target in ("nothing", "file", "empty"):
        assert collect(tmp_path / target) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert list((tmp_path / "empty").iterdir()) == []


def synthetic_job(index: int, label: str, phase: bool) -> SweepJob:
    """A job of made-up numbers: 5 levels of p, or 3 r × 4 p in a phase sweep."""
    rng = np.random.default_rng(index)
    p_values = [1.0, 0.1, 0.03, 0.01] if phase else [1.0, 0.3, 0.1, 0.03, 0.01]
    r_values = [0.1, 1.0, 10.0] if phase else [None]
    levels = [
        LevelResult(
            feature_probability=p,
            relative_importance=r,
            importance=[1.0, 1.0, r] if phase else [0.9**i for i in range(6)],
            best_restart=0,
            eval_loss=0.1 * p * (1 + 0.1 * index),
            metrics={"features_represented": 2 + index % 3, "dimensions_per_feature": p / 2},
        )
        for r in r_values
        for p in p_values
    ]
    n_features = 3 if phase else 6
    results = RunResults(
        task="identity",
        n_features=n_features,
        d_hidden=2,
        restarts=2,
        steps=10,
        levels=levels,
        feature_probability=p_values,
        relative_importance=r_values if phase else [],
    )
    return SweepJob(label, results, rng.normal(size=(len(levels), 2, n_features)))


@pytest.mark.parametrize("phase", [False, True])
def test_sweep_figures_hold_eight_jobs_without_overlap(phase):
    labels = [
        f"task=identity, importance.decay={0.7 + 0.05 * i:g}, seed={i}, train.lr=0.001"
        for i in range(8)
    ]
    jobs = [synthetic_job(i, label, phase) for i, label in enumerate(labels)]
    with matplotlib.style.context(["default", style.STYLE]):
        fig = metrics_figure(jobs)
        renderer = fig.canvas.get_renderer()
        page = fig.bbox
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0
        for ax in fig.axes:
            if ax.axison:
                assert not box.overlaps(ax.get_tightbbox(renderer)), ax.get_title()
        texts = [t.get_text() for t in legend.get_texts()]
        assert [text.replace(",\n", ", ") for text in texts] == labels
        assert any("\n" in text for text in texts)  # long labels broken, not cut
        if phase:
            return
        grid = features_2d_grid_figure(jobs[:2])
        renderer = grid.canvas.get_renderer()
        panels = [ax for ax in grid.axes if ax.get_title()]
        assert len(panels) == 2 * len(jobs[0].results.levels)
        row_labels = [t.get_window_extent(renderer) for t in grid.texts if t is not grid._suptitle]
        assert len(row_labels) == 2
        for label in row_labels:
            assert grid.bbox.x0 <= label.x0 and label.x1 <= grid.bbox.x1
            assert not any(label.overlaps(ax.get_tightbbox(renderer)) for ax in panels)


def test_a_failed_sweep_run_keeps_the_earlier_one(tmp_path, wandb_home, monkeypatch, capsys):
    import wandb

    from superposition.track import log_sweep, sweep_run_id

    earlier = tmp_path / "wandb" / f"offline-run-20260101_000000-{sweep_run_id(tmp_path)}"
    earlier.mkdir(parents=True)

    def refuse(**kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", refuse)
    logged = log_sweep(
        sweep_dir=tmp_path,
        mode="offline",
        project="superposition",
        entity=None,
        group="g",
        config={},
        columns=["job"],
        rows=[["a"]],
        figures={},
        summary={},
    )
    assert logged is None
    assert offline_runs(tmp_path) == [earlier]
    (warning,) = capsys.readouterr().err.splitlines()
    assert "no W&B today" in warning
