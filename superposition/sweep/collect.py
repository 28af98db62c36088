"""`python -m superposition.sweep collect SWEEP_DIR`: a sweep's finished jobs as one result.

Reads every job the sweep's manifest lists (sweep/manifest.py) that holds a finished run
(store/outdir.finished_results) and writes into the sweep directory, each file atomically:

- sweep.csv and sweep.json, the same rows: one per job × level; the job's directory, its value of
  each swept key, the level's p, r, held-out loss and every scalar metric (track.scalar_metrics;
  empty where a job lacks one), and the job's task, sizes, preset and verdict.
- plots/metrics.png, plots/features_2d.png (figures/sweep_figures.py).
- sweep.md: the table of jobs (state, best losses, verdict), the figures, what is missing.
- a W&B run of job type 'sweep' in the sweep's group with the table and the figures
  (track.log_sweep), offline in SWEEP/wandb/.

A job without a finished run is listed as missing with its state (progress.json, else "not
started"); a job whose results cannot be read is reported in one line and skipped. Collecting
again gives the same files and replaces the W&B offline run, so collect can run as jobs finish.
"""

from __future__ import annotations

import csv
import fcntl
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from superposition import tasks
from superposition.config import WandbConfig
from superposition.figures.sweep_figures import (
    MAX_GRID_LEVELS,
    SWEEP_FIGURES,
    SweepJob,
    draw_sweep,
    grid_jobs,
)
from superposition.store.files import RESULTS, write_atomically, write_json
from superposition.store.results import RunResults, load_run
from superposition.sweep.manifest import Job, Manifest, ManifestError, sweep_manifest
from superposition.sweep.status import JobState, loss_summary, sweep_status
from superposition.track import log_sweep, scalar_metrics

CSV = "sweep.csv"
JSON = "sweep.json"
MARKDOWN = "sweep.md"
PLOTS_DIR = "plots"
LOCK = ".collect.lock"
BROKEN = "unreadable: "  # the state of a job whose results cannot be read, before the reason
# the per-level columns after the swept keys, then the metrics, then the job's own
LEVEL_COLUMNS = [
    "feature_probability",
    "relative_importance",
    "eval_loss",
    "eval_loss_se",
    "best_restart",
]
JOB_COLUMNS = ["task", "n_features", "d_hidden", "preset", "verdict"]
FIGURE_TITLES = {
    "metrics": "Metrics against the feature probability",
    "features_2d": "Features in 2D",
}


class CollectError(Exception):
    """collect cannot start; the message is one line."""


@dataclass
class JobReport:
    """What collect found of one job of the manifest."""

    job: Job
    label: str  # its overrides of the swept keys
    state: str  # finished, a progress state with details, not started, or BROKEN + why
    results: RunResults | None = None
    sweep_job: SweepJob | None = None
    notes: list[str] = field(default_factory=list)  # one-line warnings about the job

    @property
    def finished(self) -> bool:
        return self.results is not None

    @property
    def broken(self) -> bool:
        return self.state.startswith(BROKEN)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if text else type(err).__name__


def read_job(sweep_dir: Path, status: JobState) -> JobReport:
    """The job's finished results (and its 2D model's features) as status found them, its state
    when it has none, or why its results.json is unusable; never raises."""
    job = status.job
    job_dir = sweep_dir / job.dir
    report = JobReport(job, status.label, f"{status.state}: {status.detail}")
    results = status.results
    if results is None:
        if status.state == "failed" and (job_dir / RESULTS).exists():
            # the job's own paths said relative to it: the line names the job already
            reason = status.detail.replace(f"{job_dir}/", "").replace(str(job_dir), "its directory")
            report.state = BROKEN + reason
        return report
    report.state, report.results = "finished", results
    features, feature_name = None, "W"
    if results.d_hidden == 2:
        try:
            run = load_run(job_dir)
            features = run.features.numpy()
            feature_name = tasks.get(run.task).feature_weights
        except Exception as err:
            report.notes.append(f"its weights are not drawn ({_one_line(err)})")
    report.sweep_job = SweepJob(report.label, results, features, feature_name)
    return report


# ----------------------------------------------------------------------------------- the table


def table(reports: list[JobReport], swept_keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Columns and one row per finished job × level (in manifest order, then level order)."""
    finished = [r for r in reports if r.finished]
    metric_names: list[str] = []
    for report in finished:
        for level in report.results.levels:
            metric_names += [n for n in scalar_metrics(level) if n not in metric_names]
    columns: list[str] = []
    for name in ["job", *swept_keys, *LEVEL_COLUMNS, *metric_names, *JOB_COLUMNS]:
        if name not in columns:  # a swept key named like a column (task, preset) is that column
            columns.append(name)
    rows = []
    for report in finished:
        results, values = report.results, report.job.override_values
        job_values = {
            "job": report.job.dir,
            "task": results.task,
            "n_features": results.n_features,
            "d_hidden": results.d_hidden,
            "preset": results.preset,
            "verdict": results.verdict,
        }
        for key in swept_keys:
            job_values.setdefault(key, values.get(key))
        for level in results.levels:
            cells = {
                **job_values,
                "feature_probability": level.feature_probability,
                "relative_importance": level.relative_importance,
                "eval_loss": level.eval_loss,
                "eval_loss_se": level.eval_loss_se,
                "best_restart": level.best_restart,
                **scalar_metrics(level),
            }
            rows.append([_finite(cells.get(name)) for name in columns])
    return columns, rows


def _finite(value: Any) -> Any:
    """NaN and ±inf as None: an empty cell, like a metric the job lacks."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _csv_cell(value: Any) -> str:
    return "" if value is None else str(value)


def write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([_csv_cell(v) for v in row] for row in rows)

    write_atomically(path, write)


# ------------------------------------------------------------------------------------ sweep.md


def _md(text: str) -> str:
    """Text for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def common_overrides(manifest: Manifest, swept_keys: list[str]) -> list[str]:
    """The overrides every job shares (the keys not swept), in the first job's order."""
    if not manifest.jobs:
        return []
    shared = set(manifest.jobs[0].overrides)
    for job in manifest.jobs[1:]:
        shared &= set(job.overrides)
    return [
        o
        for o in manifest.jobs[0].overrides
        if o in shared and o.lstrip("+~").partition("=")[0] not in swept_keys
    ]


def markdown(
    title: str,
    manifest: Manifest,
    reports: list[JobReport],
    swept_keys: list[str],
    figures: list[Path],
    n_rows: int,
) -> str:
    finished = sum(r.finished for r in reports)
    broken = sum(r.broken for r in reports)
    missing = len(reports) - finished - broken
    lines = [f"# Sweep {title}", ""]
    count = f"{len(reports)} jobs: {finished} finished, {missing} missing"
    lines.append(count + (f", {broken} unreadable" if broken else "") + ".")
    if swept_keys:
        lines.append("Swept: " + ", ".join(f"`{key}`" for key in swept_keys) + ".")
    shared = common_overrides(manifest, swept_keys)
    if shared:
        lines.append("Every job: " + " ".join(f"`{o}`" for o in shared) + ".")
    lines += [
        "",
        f"Every level of every finished job ({n_rows} rows): [{CSV}]({CSV}), [{JSON}]({JSON}).",
        "",
    ]
    judged = any(r.results is not None and r.results.preset for r in reports)
    header = ["job", "overrides", "state", "held-out loss (best restart)"]
    header += ["verdict"] if judged else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for report in reports:
        results = report.results
        cells = [
            f"`{report.job.dir}`",
            report.label,
            report.state,
            loss_summary(results) if results is not None else "",
        ]
        if judged:
            verdict = results.verdict if results is not None else None
            cells.append(verdict or "")
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    if figures:
        lines += ["", "## Figures"]
        for path in figures:
            heading = FIGURE_TITLES.get(path.stem, path.stem)
            lines += ["", f"### {heading}", "", f"![{heading}]({PLOTS_DIR}/{path.name})"]
    unfinished = [r for r in reports if not r.finished]
    if unfinished:
        lines += ["", "## Missing", ""]
        lines += [f"- `{r.job.dir}`: {r.state}" for r in unfinished]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- W&B


def _job_yaml(sweep_dir: Path, jobs: list[Job], name: str) -> dict:
    """The first job's .hydra/<name> that reads as a mapping; {} when none does."""
    for job in jobs:
        path = sweep_dir / job.dir / ".hydra" / name
        try:
            payload = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(payload, dict):
            return payload
    return {}


def wandb_settings(sweep_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """mode, project, entity and group of the sweep's W&B run: the manifest's, else the jobs'
    (wandb: of .hydra/config.yaml), and the group as run.py names a multirun's:
    wandb.group, or the last two parts of hydra.sweep.dir."""
    defaults = WandbConfig()
    configured = _job_yaml(sweep_dir, manifest.jobs, "config.yaml").get("wandb") or {}
    settings = {
        "mode": getattr(defaults.mode, "value", defaults.mode),
        "project": defaults.project,
        "entity": defaults.entity,
        "group": None,
    }
    for key in settings:
        for source in (manifest.wandb, configured):
            value = source.get(key) if isinstance(source, dict) else None
            if value is not None and "${" not in str(value):  # not an unresolved interpolation
                settings[key] = value
                break
    if settings["group"] is None:
        hydra = _job_yaml(sweep_dir, manifest.jobs, "hydra.yaml").get("hydra") or {}
        given = (hydra.get("sweep") or {}).get("dir")
        where = Path(given) if isinstance(given, str) and "${" not in given else sweep_dir.resolve()
        settings["group"] = "_".join(where.parts[-2:])
    return settings


def track_sweep(
    sweep_dir: Path,
    manifest: Manifest,
    reports: list[JobReport],
    swept_keys: list[str],
    columns: list[str],
    rows: list[list[Any]],
    figures: list[Path],
) -> str:
    """Log the sweep's W&B run; return the line that says where it went."""
    settings = wandb_settings(sweep_dir, manifest)
    mode = str(settings["mode"])
    if mode == "disabled":
        return "W&B: no sweep run (wandb.mode=disabled)"
    finished = sum(r.finished for r in reports)
    broken = sum(r.broken for r in reports)
    logged = log_sweep(
        sweep_dir=sweep_dir,
        mode=mode,
        project=settings["project"],
        entity=settings["entity"],
        group=settings["group"],
        config={
            "sweep_dir": str(sweep_dir.resolve()),
            "swept_keys": swept_keys,
            "jobs": {job.dir: job.overrides for job in manifest.jobs},
        },
        columns=columns,
        rows=rows,
        figures={path.stem: path for path in figures},
        summary={
            "jobs": len(reports),
            "jobs_finished": finished,
            "jobs_missing": len(reports) - finished - broken,
            "jobs_unreadable": broken,
        },
    )
    if logged is None:
        return "W&B: no sweep run (see the warning above)"
    if logged.url:
        return f"W&B: sweep run {logged.url} (group {settings['group']})"
    where = logged.run_dir
    return f"W&B: {mode} sweep run {where} (group {settings['group']}; upload: wandb sync {where})"


# ----------------------------------------------------------------------------------- collect


@contextmanager
def collecting(sweep_dir: Path) -> Iterator[None]:
    """One collect at a time per sweep directory (SWEEP/.collect.lock, dropped by the OS when the
    process ends)."""
    fd = os.open(sweep_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CollectError(
                f"another collect is writing {sweep_dir}; run this one when it is done"
            ) from None
        yield
    finally:
        os.close(fd)


def open_sweep(sweep_dir: Path) -> Manifest:
    """The sweep's manifest; CollectError with one line when SWEEP_DIR is not a sweep."""
    if not sweep_dir.exists():
        raise CollectError(f"{sweep_dir} does not exist; expected a sweep directory")
    if not sweep_dir.is_dir():
        raise CollectError(f"{sweep_dir} is not a directory; expected a sweep directory")
    try:
        return sweep_manifest(sweep_dir)
    except ManifestError as err:
        raise CollectError(_one_line(err)) from None


def collect(sweep_dir: Path) -> int:
    """Collect the sweep's finished jobs into SWEEP_DIR (see the module's docstring); print a line
    per file written and per job missing or unreadable. Exit status: 0, 1 when a job's results
    could not be read (the rest is written), 2 when SWEEP_DIR is not a sweep."""
    sweep_dir = Path(sweep_dir)
    try:
        manifest = open_sweep(sweep_dir)
        with collecting(sweep_dir):
            return _collect(sweep_dir, manifest)
    except CollectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _collect(sweep_dir: Path, manifest: Manifest) -> int:
    swept_keys = manifest.swept_keys()
    reports = [read_job(sweep_dir, status) for status in sweep_status(sweep_dir, manifest)]
    finished = [r for r in reports if r.finished]
    print(f"{sweep_dir}: {len(finished)} of {len(reports)} jobs finished")
    for report in reports:
        if report.broken:
            reason = report.state.removeprefix(BROKEN)
            print(f"warning: skipped {report.job.dir}: {reason}", file=sys.stderr)
        elif not report.finished:
            print(f"missing: {report.job.dir}: {report.state}")
        for note in report.notes:
            print(f"warning: {report.job.dir}: {note}", file=sys.stderr)

    columns, rows = table(reports, swept_keys)
    write_csv(sweep_dir / CSV, columns, rows)
    jobs = f"{len(finished)} job × its" if len(finished) == 1 else f"{len(finished)} jobs × their"
    print(f"wrote {sweep_dir / CSV} ({len(rows)} rows: {jobs} levels)")
    write_json(
        sweep_dir / JSON,
        {"columns": columns, "rows": [dict(zip(columns, row, strict=True)) for row in rows]},
    )
    print(f"wrote {sweep_dir / JSON}")

    figures = draw_figures(sweep_dir, [r.sweep_job for r in finished if r.sweep_job is not None])
    title = "_".join(sweep_dir.resolve().parts[-2:])
    text = markdown(title, manifest, reports, swept_keys, figures, len(rows))
    write_atomically(sweep_dir / MARKDOWN, lambda tmp: tmp.write_text(text))
    print(f"wrote {sweep_dir / MARKDOWN}")

    print(track_sweep(sweep_dir, manifest, reports, swept_keys, columns, rows, figures))
    return 1 if any(r.broken for r in reports) else 0


def draw_figures(sweep_dir: Path, jobs: list[SweepJob]) -> list[Path]:
    """The sweep's figures in SWEEP/plots/; a figure that no longer applies is removed."""
    plots_dir = sweep_dir / PLOTS_DIR

    def failed(name: str, err: Exception) -> None:
        print(f"warning: {PLOTS_DIR}/{name}.png not drawn ({_one_line(err)})", file=sys.stderr)

    paths = draw_sweep(jobs, plots_dir, on_error=failed)
    for path in paths:
        print(f"wrote {path}")
    drawn = {path.stem for path in paths}
    for stem in SWEEP_FIGURES:
        if stem not in drawn:
            (plots_dir / f"{stem}.png").unlink(missing_ok=True)
    drawn_2d = {id(job) for job in grid_jobs(jobs)}
    left_out = [
        job.label
        for job in jobs
        if job.results.d_hidden == 2 and job.features is not None and id(job) not in drawn_2d
    ]
    if left_out:
        print(
            f"{PLOTS_DIR}/features_2d.png leaves out the jobs with more than {MAX_GRID_LEVELS} "
            f"levels: {'; '.join(left_out)}"
        )
    return paths
