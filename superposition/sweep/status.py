"""Where every job of a sweep stands: finished, running, queued, stopped or failed.

Read from the sweep directory (the manifest, each job's results.json, progress.json, lock and
log) and, for jobs with a SLURM id, from squeue and sacct when they answer. Correct without SLURM:
an in-process or cluster=local job is running while its process holds the job directory's lock.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from superposition.config import ConfigError
from superposition.store.outdir import finished_results, lock_holder
from superposition.store.progress import Progress, read_progress
from superposition.store.results import LevelResult, RunResults
from superposition.sweep.manifest import Job, Manifest
from superposition.sweep.scheduler import ENDED_BADLY, SchedulerState, slurm_states

JOB_STATES = ("finished", "running", "queued", "stopped", "failed", "not started")
SUMMARY_LEVELS = 4
# a job on another host whose progress.json is older than this is not taken for running
QUIET_LIMIT_S = 600


@dataclass
class JobState:
    job: Job
    label: str  # the job's swept overrides
    state: str  # one of JOB_STATES
    detail: str  # one line: the loss summary, the step, the error
    results: RunResults | None = None
    requeues: int = 0

    def line(self, label_width: int) -> str:
        requeued = f" (requeued {self.requeues}×)" if self.requeues else ""
        return f"{self.state:<11}  {self.label:<{label_width}}  {self.detail}{requeued}".rstrip()


def job_label(job: Job, keys: list[str]) -> str:
    values = job.override_values
    return " ".join(f"{key}={values[key]}" for key in keys if key in values) or job.dir


def _where(level: LevelResult) -> str:
    where = f"p={level.feature_probability:g}"
    if level.relative_importance is not None:
        where += f" r={level.relative_importance:g}"
    return where


def loss_summary(results: RunResults) -> str:
    """Each level's held-out loss (best restart); for many levels the first and the last in
    grid order (the densest and the sparsest of a sparsity sweep)."""

    def loss(level: LevelResult) -> str:
        return f"{_where(level)}: " + (
            "none finite" if level.eval_loss is None else f"{level.eval_loss:.4g}"
        )

    levels = results.levels
    if len(levels) <= SUMMARY_LEVELS:
        return "loss " + ", ".join(loss(level) for level in levels)
    lost = sum(level.eval_loss is None for level in levels)
    without = f", {lost} without a finite loss" if lost else ""
    return f"loss {loss(levels[0])} … {loss(levels[-1])} ({len(levels)} levels{without})"


def runs_here(job_dir: Path, progress: Progress | None) -> bool:
    """The job is training or analysing in a process on this host: the process recorded in the
    directory's lock is alive and is the one whose progress.json says so (an in-process sweep's
    later jobs share its pid). The lock is read, never taken: taking it, even for a moment, could
    turn away the job itself as it starts."""
    holder = lock_holder(job_dir)
    if holder is None or holder[1] != socket.gethostname() or not pid_alive(holder[0]):
        return False
    return progress is None or (
        progress.pid == holder[0] and progress.state in ("running", "analysing")
    )


def runs_elsewhere(progress: Progress | None) -> bool:
    """progress.json was written lately by a running job on another host (no scheduler said so:
    e.g. an in-process sweep inside an allocation)."""
    return (
        progress is not None
        and progress.host != socket.gethostname()
        and progress.state in ("running", "analysing")
        and time.time() - progress.updated < QUIET_LIMIT_S
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def step_detail(progress: Progress | None) -> str:
    if progress is None:
        return "starting"
    if progress.state == "analysing":
        return f"training done ({progress.total} steps), evaluating and writing"
    rate = f" ({progress.steps_per_s:.0f} steps/s)" if progress.steps_per_s else ""
    return f"step {progress.step}/{progress.total}{rate}"


# a progress bar's drawing: "train 4 instances:  1%|▏   | 32/3000 [00:01<02:52, 17.23step/s]"
PROGRESS_BAR = re.compile(r"^.*?\|[^|]*\|\s*\d+/\d+ \[[^\]]*\]")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def last_error_line(text: str) -> str | None:
    """The line that says why a job failed: our one-line 'error:' or 'interrupted:', else the
    last exception line of a traceback, else the last line (a progress bar's drawing left out)."""
    # a progress bar redraws its line with carriage returns, and its last drawing has no newline
    lines = [PROGRESS_BAR.sub("", line.split("\r")[-1]).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if line.startswith(("error:", "interrupted:")):
            return line
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else None


def log_error(sweep_dir: Path, scheduler_id: str | None) -> str | None:
    """The error line of a submitit job's stderr log (SWEEP/.submitit/<id>/<id>_0_log.err)."""
    if scheduler_id is None:
        return None
    for log in sorted((sweep_dir / ".submitit" / scheduler_id).glob("*_log.err")):
        try:
            line = last_error_line(log.read_text(errors="replace"))
        except OSError:
            continue
        if line:
            return f"{line} (log {log.relative_to(sweep_dir)})"
    return None


def submitter_alive(manifest: Manifest, job: Job) -> bool:
    """The process that launched the job still runs (on this host; elsewhere: assumed so)."""
    submission = manifest.submissions[job.submission] if manifest.submissions else None
    if submission is None:
        return False
    return submission.host != socket.gethostname() or pid_alive(submission.pid)


def job_status(
    sweep_dir: Path,
    manifest: Manifest,
    job: Job,
    label: str,
    scheduler: SchedulerState | None,
) -> JobState:
    job_dir = sweep_dir / job.dir

    def status(state: str, detail: str, **more) -> JobState:
        requeues = progress.requeues if progress is not None else 0
        return JobState(job, label, state, detail, requeues=requeues, **more)

    progress = read_progress(job_dir)
    try:
        results = finished_results(job_dir) if job_dir.is_dir() else None
    except ConfigError as err:
        return status("failed", str(err))
    if results is not None and job.fingerprint not in (None, results.config_fingerprint):
        return status(
            "failed",
            f"{job.dir} holds a finished run of another config; move it away and run the sweep "
            "again for this job",
        )
    if results is not None:
        verdict = f"verdict {results.verdict}; " if results.verdict else ""
        return status("finished", verdict + loss_summary(results), results=results)
    if runs_here(job_dir, progress):
        return status("running", step_detail(progress))
    if scheduler is not None:
        if scheduler.state in ("PENDING", "REQUEUED", "CONFIGURING"):
            why = f" ({scheduler.reason})" if scheduler.reason else ""
            return status("queued", f"SLURM {job.scheduler_id} {scheduler.state.lower()}{why}")
        if scheduler.state in ("RUNNING", "COMPLETING", "SUSPENDED"):
            return status("running", step_detail(progress))
        if scheduler.state in ENDED_BADLY or scheduler.state == "COMPLETED":
            error = (progress.error if progress and progress.state == "failed" else None) or (
                log_error(sweep_dir, job.scheduler_id)
            )
            # submitit ends a job whose function raised with exit 0: COMPLETED says nothing
            ended = (
                f" (SLURM {scheduler.state}, exit {scheduler.reason})"
                if scheduler.state != "COMPLETED"
                else ""
            )
            return status("failed", f"{error or 'ended without results or an error line'}{ended}")
    if runs_elsewhere(progress):
        ago = time.time() - progress.updated
        return status("running", f"{step_detail(progress)} on {progress.host} ({ago:.0f} s ago)")
    if progress is not None:
        if progress.state == "failed":
            return status("failed", progress.error or "failed without an error line")
        if progress.state == "interrupted":
            return status(
                "stopped",
                f"interrupted at step {progress.step}/{progress.total}, checkpoint saved; "
                "run the sweep's command again to resume",
            )
        if progress.state in ("running", "analysing"):
            error = log_error(sweep_dir, job.scheduler_id)
            return status(
                "stopped",
                f"ended at step {progress.step}/{progress.total} without a word (killed?)"
                + (f": {error}" if error else "")
                + "; run the sweep's command again to resume",
            )
    error = log_error(sweep_dir, job.scheduler_id)
    if error is not None:
        return status("failed", error)
    if submitter_alive(manifest, job):
        return status("queued", "waits for its turn in the submitting process")
    return status("not started", "the command that launched it has ended")


def sweep_status(sweep_dir: Path, manifest: Manifest) -> list[JobState]:
    sweep_dir = Path(sweep_dir)
    on_slurm = [
        job
        for job in manifest.jobs
        if job.scheduler_id and manifest.submissions[job.submission].launcher == "slurm"
    ]
    arrays = sorted({job.scheduler_id.partition("_")[0] for job in on_slurm})
    states = slurm_states(arrays)
    keys = manifest.swept_keys()
    return [
        job_status(
            sweep_dir,
            manifest,
            job,
            job_label(job, keys),
            states.get(job.scheduler_id) if job in on_slurm else None,
        )
        for job in manifest.jobs
    ]


def total_line(statuses: list[JobState]) -> str:
    counts = [(state, sum(s.state == state for s in statuses)) for state in JOB_STATES]
    parts = ", ".join(f"{n} {state}" for state, n in counts if n)
    return f"{len(statuses)} job{'s' if len(statuses) != 1 else ''}: {parts}"
