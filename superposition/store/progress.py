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
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from superposition.store.files import write_json

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
