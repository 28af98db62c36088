"""Weights & Biases tracking of one job: the only module that imports wandb.

Tracking is a passenger: if W&B cannot start or any call fails, one warning line goes to stderr and
the tracker turns into a no-op, while training and the local outputs go on. Offline (the default)
stores the run under the job's output directory, in `<out_dir>/wandb/offline-run-*/`; upload it
later with `wandb sync <out_dir>/wandb/offline-run-*`. Artifact files are copied to W&B's staging
directory (`$WANDB_DATA_DIR`, default ~/.local/share/wandb) until then.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import Tensor

from superposition.store.files import RESULTS, WEIGHTS
from superposition.store.results import LevelResult, RunResults

MODES = ("offline", "online", "disabled")
# seconds wandb.init may take (online: reaching the server) before the job goes on without it
INIT_TIMEOUT_S = 60.0
ARTIFACT_NAME_MAXLEN = 128
# the training step of a history row: the x axis of every train/* key (W&B's own step counts
# chunk × train.steps + step, so that it only grows when chunks train one after another)
STEP_KEY = "train/step"


def warn(what: str, reason: BaseException | str) -> None:
    """The one line that says tracking stopped, and why."""
    if isinstance(reason, BaseException):
        text = " ".join(str(reason).split()).rstrip(".")
        reason = f"{type(reason).__name__}: {text}" if text else type(reason).__name__
    if len(reason) > 300:
        reason = reason[:297] + "..."
    print(f"warning: W&B {what}: {reason}; training and local outputs go on", file=sys.stderr)


def plain(value: Any) -> Any:
    """Config values as JSON-friendly Python: enums by value, paths as strings, tuples as lists."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def level_labels(feature_probability: Sequence[float]) -> list[str]:
    """Key of each level, 'p=0.1'; a probability that repeats gets its level index, 'p=0.1#3'."""
    labels = [f"p={p:g}" for p in feature_probability]
    return [
        label if labels.count(label) == 1 else f"{label}#{level}"
        for level, label in enumerate(labels)
    ]


def logged_indices(steps: Sequence[int], log_every: int) -> list[int]:
    """Indices of the recorded steps to log: the first recorded step in each window of log_every
    steps (the multiples of log_every, when log_every is a multiple of the recording interval),
    and the last recorded step."""
    chosen, window = [], -1
    for index, step in enumerate(steps):
        if step // log_every > window:
            chosen.append(index)
            window = step // log_every
    if steps and chosen[-1] != len(steps) - 1:
        chosen.append(len(steps) - 1)
    return chosen


def level_row(loss: Annotated[Tensor, "level restart"], labels: Sequence[str]) -> dict[str, float]:
    """{key: value} of one recorded step: per level the best and the mean training loss over the
    restarts whose loss is finite ('train/loss_best/p=0.1', 'train/loss_mean/p=0.1'); a level
    with none finite is left out."""
    loss = loss.detach().to("cpu", torch.float64)
    finite = torch.isfinite(loss)
    count = finite.sum(-1)
    best = torch.where(finite, loss, math.inf).amin(-1).tolist()
    mean = (torch.where(finite, loss, 0.0).sum(-1) / count.clamp(min=1)).tolist()
    row = {}
    for label, n, low, average in zip(labels, count.tolist(), best, mean, strict=True):
        if n:
            row[f"train/loss_best/{label}"] = low
            row[f"train/loss_mean/{label}"] = average
    return row


def history_rows(
    steps: Sequence[int],
    loss: Annotated[Tensor, "time level restart"],
    feature_probability: Sequence[float],
    log_every: int,
) -> list[tuple[int, dict[str, float]]]:
    """(step, level_row) for each step that logged_indices chooses: the W&B history of a loss
    record (the job logs the same rows while it trains, each with its STEP_KEY)."""
    labels = level_labels(feature_probability)
    return [(int(steps[t]), level_row(loss[t], labels)) for t in logged_indices(steps, log_every)]


def scalar_metrics(level: LevelResult) -> dict[str, float | int | bool | None]:
    """The level's metrics that are single numbers (or null), in their order."""
    return {k: v for k, v in level.metrics.items() if v is None or isinstance(v, int | float)}


def evaluation_values(level: LevelResult) -> dict[str, float | int | None]:
    """The kept loss, its standard error and the number of restarts near it."""
    return {
        "eval_loss": level.eval_loss,
        "eval_loss_se": level.eval_loss_se,
        "near_best_restarts": len(level.near_best_restarts) or None,
    }


def reference_values(level: LevelResult) -> dict[str, float]:
    """The level's reference losses ('loss_constant', 'loss_dedicated', 'loss_closed_form') and
    the kept loss over each ('loss_ratio/constant', ...), those that apply."""
    values = {f"loss_{name}": value for name, value in level.references().items()}
    values.update({f"loss_ratio/{name}": ratio for name, ratio in level.loss_ratios.items()})
    return values


def restart_values(level: LevelResult) -> dict[str, float | int | None]:
    """The level's statistics over restarts as single numbers: restarts_within_1pct,
    restart_loss_median and, per geometry, restarts_<name>: the share of finite restarts that
    show it (None when none is finite); {} for results without them."""
    stats = level.restart_stats
    if not stats:
        return {}
    quantiles = stats.get("loss_quantiles") or {}
    values = {
        "restarts_within_1pct": stats.get("within_1pct"),
        "restart_loss_median": quantiles.get("median"),
    }
    for name, entry in (stats.get("geometry") or {}).items():
        values[f"restarts_{name}"] = entry["restarts"] / entry["of"] if entry["of"] else None
    return values


def level_values(level: LevelResult) -> dict[str, float | int | bool | None]:
    """Every single number of a level: evaluation, references, metrics, restart statistics."""
    return {
        **evaluation_values(level),
        **reference_values(level),
        **scalar_metrics(level),
        **restart_values(level),
    }


def level_table(results: RunResults) -> tuple[list[str], list[list]]:
    """Columns and one row per level: feature_probability, best_restart, eval_loss (± its
    standard error), how many restarts are near the best (select.NEAR_BEST_SE), then the
    reference losses and ratios, the metrics and the statistics over restarts that any level
    has."""
    names = list(evaluation_values(results.levels[0]))
    for part in (reference_values, scalar_metrics, restart_values):
        for level in results.levels:
            names += [name for name in part(level) if name not in names]
    columns = ["feature_probability", "best_restart", *names]
    rows = []
    for level in results.levels:
        values = level_values(level)
        rows.append(
            [level.feature_probability, level.best_restart] + [values.get(n) for n in names]
        )
    return columns, rows


def level_summary(results: RunResults) -> dict[str, float | int | bool]:
    """'level/p=0.1/<name>' for every single number of every level (level_values); nulls left
    out."""
    labels = level_labels([level.feature_probability for level in results.levels])
    summary = {}
    for label, level in zip(labels, results.levels, strict=True):
        for key, value in level_values(level).items():
            if value is not None:
                summary[f"level/{label}/{key}"] = value
    return summary


def artifact_metadata(results: RunResults) -> dict[str, Any]:
    """results.json's top-level single values (no lists or objects), for the weights artifact."""
    return {k: v for k, v in results.to_json().items() if not isinstance(v, list | dict)}


def artifact_name(run_name: str) -> str:
    """'<run name>-weights' in the characters every W&B server accepts in an artifact name."""
    suffix = "-weights"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_name).strip("_") or "run"
    return stem[: ARTIFACT_NAME_MAXLEN - len(suffix)] + suffix


class Tracker:
    """One W&B run, or nothing: every method of a disabled tracker is a no-op.

    Use as a context manager to finish the run with exit code 1 when the job raises.
    """

    def __init__(self, run: Any = None):
        self._run = run

    @classmethod
    def start(
        cls,
        *,
        config: dict,
        out_dir: Path,
        mode: str,
        project: str,
        entity: str | None,
        group: str | None,
        name: str,
        job_type: str,
        resume_id: str | None = None,
    ) -> Tracker:
        """Start a run; never raises. Where W&B cannot start, print one warning line to stderr and
        return a disabled tracker. mode 'disabled' gives a disabled tracker without a word.
        resume_id continues that run (resume='allow': a new run of that id if none exists)."""
        mode = getattr(mode, "value", mode)
        # wandb.mode decides, whatever the environment says: W&B would otherwise let WANDB_MODE
        # override some settings and fail on others
        environment_mode = os.environ.pop("WANDB_MODE", None)
        if environment_mode is not None and environment_mode != mode:
            print(
                f"warning: W&B: WANDB_MODE={environment_mode} in the environment is ignored; "
                f"wandb.mode={mode} decides (set wandb.mode= to change it)",
                file=sys.stderr,
            )
        if mode == "disabled":
            return cls()
        if mode not in MODES:
            warn("could not start", f"mode {mode!r} is not one of {', '.join(MODES)}")
            return cls()
        # W&B's own terminal lines (e.g. where it found credentials) are not the runner's to show
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            resume = {"id": resume_id, "resume": "allow"} if resume_id else {}
            run = wandb.init(
                mode=mode,
                dir=str(out_dir),
                project=project,
                entity=entity,
                group=group,
                name=name,
                job_type=job_type,
                config=plain(config),
                settings=wandb.Settings(
                    console="off",
                    silent=True,
                    save_code=False,
                    # W&B's own variable, which an explicit setting would otherwise override
                    init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S)),
                    # a job that ended without finishing its run must not hand it to the next job
                    reinit="finish_previous",
                ),
                **resume,
            )
        except Exception as err:
            warn(f"could not start ({mode})", err)
            return cls()
        tracker = cls(run)

        def define(run):
            run.define_metric(STEP_KEY)
            run.define_metric("train/*", step_metric=STEP_KEY)

        tracker._guarded("define_metric", define)
        return tracker

    @property
    def enabled(self) -> bool:
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        return self._run.id if self._run is not None else None

    @property
    def run_dir(self) -> Path | None:
        """The run's local directory (offline: <out_dir>/wandb/offline-run-<time>-<id>)."""
        return Path(self._run.dir).parent if self._run is not None else None

    def _guarded(self, what: str, call: Callable[[Any], None]) -> None:
        """call(run); on any exception warn once, finish the run as failed, and go dark."""
        if self._run is None:
            return
        try:
            call(self._run)
        except Exception as err:
            run, self._run = self._run, None
            warn(f"{what} failed", err)
            if what != "finish":
                try:
                    run.finish(exit_code=1)
                except Exception:
                    pass

    def log_levels(
        self,
        step: int,
        loss: Annotated[Tensor, "level restart"],
        labels: Sequence[str],
        wandb_step: int | None = None,
    ) -> None:
        """One history row as training records it: level_row of these levels (labels: theirs)
        and STEP_KEY: step, committed at W&B's step wandb_step (default: step), which must grow
        from row to row (W&B drops a row at a step below its last one)."""
        row = {STEP_KEY: step, **level_row(loss, labels)}
        at = step if wandb_step is None else wandb_step
        self._guarded("log_history", lambda run: run.log(row, step=at, commit=True))

    def update_summary(self, values: dict[str, Any]) -> None:
        """Set these run summary values (e.g. where training stands)."""
        self._guarded("update_summary", lambda run: run.summary.update(values))

    def log_results(self, results: RunResults, out_dir: Path) -> None:
        """Figures out_dir/plots/*.png (key 'plots/<stem>'), the table 'levels', per-level summary
        values, and the artifact '<run name>-weights' (type 'model': weights and results)."""
        out_dir = Path(out_dir)

        def log(run):
            import wandb

            columns, rows = level_table(results)
            media = {
                f"plots/{png.stem}": wandb.Image(str(png))
                for png in sorted(out_dir.glob("plots/*.png"))
            }
            # no step: the row after the last history row
            run.log({**media, "levels": wandb.Table(columns=columns, data=rows)})
            run.summary.update(level_summary(results))
            artifact = wandb.Artifact(
                artifact_name(run.name or run.id),
                type="model",
                metadata=artifact_metadata(results),
            )
            artifact.add_file(str(out_dir / WEIGHTS))
            artifact.add_file(str(out_dir / RESULTS))
            run.log_artifact(artifact)

        self._guarded("log_results", log)

    def log_report(self, markdown: str, summary: dict[str, Any]) -> None:
        """A preset's verdict: summary values ('verdict', 'verdict/<check>') and the report as a
        text panel (key 'report')."""

        def log(run):
            import html

            import wandb

            panel = wandb.Html(f"<pre>{html.escape(markdown)}</pre>", inject=False)
            run.log({"report": panel})
            run.summary.update(summary)

        self._guarded("log_report", log)

    def finish(self, exit_code: int = 0) -> None:
        """End the run (offline: close its file). Later calls do nothing."""
        self._guarded("finish", lambda run: run.finish(exit_code=exit_code))
        self._run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish(exit_code=0 if exc_type is None else 1)
        return False


# ------------------------------------------------------------------ a sweep's collected results

SWEEP_JOB_TYPE = "sweep"
SWEEP_RUN_NAME = "sweep"
# where an offline sweep run's earlier directory waits while its replacement is written
SUPERSEDED_PREFIX = ".superseded-"


def sweep_run_id(sweep_dir: Path) -> str:
    """The W&B run id of a sweep directory's collected results, fixed per directory: collected
    again, online it updates the same run, offline it replaces the same run's directory."""
    import hashlib

    return "sweep-" + hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]


class SweepRun:
    """Where log_sweep put the sweep's run: its id, its local directory (offline:
    SWEEP/wandb/offline-run-<time>-<id>) and, online, its page."""

    def __init__(self, run_id: str, run_dir: Path | None, url: str | None):
        self.run_id, self.run_dir, self.url = run_id, run_dir, url


def _set_aside_offline_runs(wandb_dir: Path, run_id: str) -> list[tuple[Path, Path]]:
    """Rename the sweep run's earlier offline directories out of `wandb sync`'s glob; return
    (original, renamed) pairs."""
    moved = []
    for old in sorted(wandb_dir.glob(f"offline-run-*-{run_id}")):
        aside = old.with_name(SUPERSEDED_PREFIX + old.name)
        old.rename(aside)
        moved.append((old, aside))
    return moved


def log_sweep(
    *,
    sweep_dir: Path,
    mode: str,
    project: str,
    entity: str | None,
    group: str | None,
    config: dict,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    figures: dict[str, Path],
    summary: dict[str, Any],
) -> SweepRun | None:
    """The sweep as one W&B run beside its jobs: job type 'sweep' in the sweep's group, the table
    'sweep' (columns × rows), the figures (key 'plots/<name>') and summary values. Its id is
    sweep_run_id(sweep_dir); offline it lives in SWEEP/wandb/ and replaces the directory of the
    previous collect's run of that id (kept instead if this one fails). Never raises: where W&B
    fails, one warning line (Tracker); None then, and with mode 'disabled'."""
    import shutil

    sweep_dir = Path(sweep_dir)
    mode = getattr(mode, "value", mode)
    run_id = sweep_run_id(sweep_dir)
    superseded = []
    if mode == "offline":
        try:
            superseded = _set_aside_offline_runs(sweep_dir / "wandb", run_id)
        except OSError as err:
            warn("could not replace the sweep's earlier offline run", err)
    tracker = Tracker.start(
        config=config,
        out_dir=sweep_dir,
        mode=mode,
        project=project,
        entity=entity,
        group=group,
        name=SWEEP_RUN_NAME,
        job_type=SWEEP_JOB_TYPE,
        resume_id=run_id,
    )
    started_dir = tracker.run_dir

    def log(run):
        import wandb

        media = {f"plots/{name}": wandb.Image(str(path)) for name, path in figures.items()}
        table = wandb.Table(
            columns=list(columns), data=[list(row) for row in rows], allow_mixed_types=True
        )
        run.log({**media, "sweep": table})
        run.summary.update(summary)

    tracker._guarded("log_sweep", log)
    logged = None
    if tracker.enabled:
        url = getattr(tracker._run, "url", None) if mode == "online" else None
        logged = SweepRun(tracker.run_id, tracker.run_dir, url)
    tracker.finish()
    if logged is None and superseded and started_dir is not None:
        shutil.rmtree(started_dir, ignore_errors=True)  # a failed run does not replace a good one
    for original, aside in superseded:
        if logged is None and not original.exists():
            aside.rename(original)  # this collect wrote no run: the earlier one stands
        else:
            shutil.rmtree(aside, ignore_errors=True)
    return logged
