"""An output directory has one writer at a time, and a finished run in it is trusted only when
its files belong together.

- `exclusive(out_dir)`: an exclusive `flock` on OUT_DIR/.lock for the life of the job. The OS
  drops it when the process ends, however it ends (a kill included), so no stale lock survives a
  crash; a second job on the directory is refused with one line naming the holder.
- `remove_stale_temporaries(out_dir)`: a kill during `outputs.write_atomically` leaves its
  temporary file (`.NAME.*.tmp`); with the lock held, nobody else can be writing them.
- `finished_results(out_dir)`: results.json, checked to be a run's results (store.results) whose
  recorded digests (`files`: sha256 of weights.safetensors and history.safetensors as they were
  written) match the files beside it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from superposition.config import ConfigError
from superposition.store.files import DISK_FULL_ERRNOS, HISTORY, RESULTS, WEIGHTS
from superposition.store.results import ResultsError, RunResults

LOCK = ".lock"
# refuse to start with less free space than this where the run writes
MIN_FREE_BYTES = 16 * 2**20
# the files whose digests results.json records; written before it
DIGESTED = (WEIGHTS, HISTORY)
# the folders write_atomically writes into (the job's own; W&B's folder is W&B's)
TEMPORARY_DIRS = (".", "plots")


class OutputDirError(ConfigError):
    """The output directory cannot be used as it is; the message says why and what to do."""


def check_not_busy(out_dir: Path) -> None:
    """OutputDirError if another process holds OUT_DIR/.lock now (the lock is not kept)."""
    if (Path(out_dir) / LOCK).exists():
        with exclusive(out_dir, record=False):
            pass


@contextmanager
def exclusive(out_dir: Path, record: bool = True) -> Iterator[None]:
    """Hold OUT_DIR/.lock exclusively until the block ends (or the process does); with record,
    write who holds it into the file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise OutputDirError(
                f"{out_dir} is in use by another run ({holder}); wait for it to end or choose "
                "another output directory (hydra.run.dir=...)"
            ) from None
        if record:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            holder = f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def lock_holder(out_dir: Path) -> tuple[int, str] | None:
    """(pid, host) that `exclusive` last recorded in OUT_DIR/.lock, or None. The record stays
    after the holder ends: whether it still holds the lock is the pid's question on that host."""
    try:
        text = (Path(out_dir) / LOCK).read_text(errors="replace")
    except OSError:
        return None
    match = re.match(r"pid (\d+) on (\S+),", text)
    return None if match is None else (int(match.group(1)), match.group(2))


def check_usable(path: Path) -> None:
    """Make `path` (a directory) if needed and prove a file can be written there with room to
    spare; OutputDirError with one line otherwise, leaving no folder it made. Runs before Hydra
    writes anything."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise OutputDirError(
                f"output directory {path} cannot be used: {part} is not a directory"
            )
    missing = [part for part in [path, *path.parents] if not part.exists()]
    try:
        _probe(path)
    except OutputDirError:
        for part in missing:  # innermost first
            try:
                part.rmdir()
            except OSError:
                break
        raise


def _probe(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.", suffix=".tmp")
        try:
            os.write(fd, b"\0" * 65536)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise OutputDirError(f"no space left on device: {path}") from None
        raise OutputDirError(
            f"output directory {path} cannot be used: {err.strerror or type(err).__name__}"
        ) from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise OutputDirError(
            f"no space left on device: {path} ({free / 2**20:.1f} MiB free; a run needs at least "
            f"{MIN_FREE_BYTES // 2**20} MiB)"
        )


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporary files killed writers left behind; return them. Call with the lock."""
    removed = []
    for folder in TEMPORARY_DIRS:
        for path in (Path(out_dir) / folder).glob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digests(out_dir: Path) -> dict[str, str]:
    """sha256 of the files results.json vouches for, by file name."""
    return {name: file_digest(Path(out_dir) / name) for name in DIGESTED}


def finished_results(out_dir: Path) -> RunResults | None:
    """What results.json holds when out_dir holds a finished run, None when it holds none.

    Raises OutputDirError when results.json cannot be read as a run's results (in a format this
    version reads), or when the files it was written with are missing or changed since.
    """
    path = Path(out_dir) / RESULTS
    if not path.exists():
        return None
    start_over = f"move {out_dir} away or delete {path.name} in it to train again"
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise OutputDirError(f"{path} cannot be read ({reason}); {start_over}") from None
    try:
        results = RunResults.from_json(payload)
    except ResultsError as err:
        raise OutputDirError(f"{path} {err}; {start_over}") from None
    recorded = results.files
    if recorded is None:
        return results  # written before results.json recorded digests
    for name in DIGESTED:
        file = Path(out_dir) / name
        if not file.is_file() or file_digest(file) != recorded.get(name):
            raise OutputDirError(
                f"{file} is missing or is not the file {path.name} was written with; {start_over}"
            )
    return results
