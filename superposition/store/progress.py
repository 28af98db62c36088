"""progress.json: where a job stands, for `python -m superposition.sweep status`.

The job rewrites it (atomically) as it goes: when it starts, every few seconds while it trains,
when it analyses, and when it ends. A job that is killed outright (SIGKILL, out of memory) cannot
say so: its file keeps the last state it wrote, and the status reader tells a live job from a
dead one by the output directory's lock (store/outdir.py), which the OS drops with the process.

States: queued (written by nobody: no file yet), running, analysing, finished, interrupted
(stopped by a signal after saving a checkpoint), failed (with the error's one line).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from superposition.store.files import DiskFullError, write_json

PROGRESS = "progress.json"
STATES = ("running", "analysing", "finished", "interrupted", "failed")


@dataclass
class Progress:
    state: str
    step: int = 0
    total: int = 0
    steps_per_s: float | None = None
    # times SLURM requeued the job (SLURM_RESTART_COUNT), 0 elsewhere
    requeues: int = 0
    error: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    # seconds since the epoch when this was written
    updated: float = field(default_factory=time.time)


def requeue_count() -> int:
    """How many times SLURM has requeued this job (0 outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def write_progress(out_dir: Path, progress: Progress) -> None:
    if progress.state not in STATES:
        raise ValueError(f"progress state {progress.state!r} is not one of {', '.join(STATES)}")
    write_json(Path(out_dir) / PROGRESS, asdict(progress))


def read_progress(out_dir: Path) -> Progress | None:
    """The job's last written progress, or None when there is none or it cannot be read."""
    try:
        payload = json.loads((Path(out_dir) / PROGRESS).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("state") not in STATES:
        return None
    known = {f.name for f in fields(Progress)}
    try:
        return Progress(**{k: v for k, v in payload.items() if k in known})
    except TypeError:
        return None


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error as one line: its type and its message, whitespace folded, at most `limit` long."""
    text = " ".join(str(err).split())
    line = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class ProgressFile:
    """progress.json of the job that holds the output directory, written so that it never costs
    the job anything: a write that fails is ignored, with one warning line the first time (none for
    a full disk, which the job's own next write reports). `write` records the current step, total
    and speed under a state; once `finished` is written, the file stays so."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.step, self.total = 0, 0
        self.steps_per_s: float | None = None
        self.state: str | None = None
        self._warned = False

    def write(self, state: str, error: str | None = None) -> None:
        if self.state == "finished":
            return
        self.state = state
        progress = Progress(
            state, self.step, self.total, self.steps_per_s, requeue_count(), error=error
        )
        try:
            write_progress(self.out_dir, progress)
        except DiskFullError:
            pass
        except Exception as err:
            if not self._warned:
                self._warned = True
                print(
                    f"warning: {PROGRESS} could not be written ({one_line(err)}); the job goes "
                    "on without it",
                    file=sys.stderr,
                )
