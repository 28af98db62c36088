"""What a job leaves in its output directory, each file written atomically.

results.json is written last of the local files (W&B follows): a directory that has it holds a
finished run.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from superposition.config import ConfigError

RESULTS = "results.json"
WEIGHTS = "weights.safetensors"
HISTORY = "history.safetensors"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# below this much free space, a writer's failure is taken for a full disk (torch.save and
# safetensors report it as an I/O error without an errno)
NEARLY_FULL_BYTES = 2**20


class DiskFullError(ConfigError):
    """A write failed for lack of space; what was written before is intact."""


def _disk_full(err: BaseException, path: Path) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    try:
        return (
            isinstance(err, Exception) and shutil.disk_usage(path.parent).free < NEARLY_FULL_BYTES
        )
    except OSError:
        return False


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path) beside `path`, then rename it over `path`. On failure the
    temporary file is removed and `path` is as it was; a full disk raises DiskFullError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(err, path):
            raise DiskFullError(
                f"no space left on device: {path}; free some space and run the same command "
                "again (what was saved before is kept)"
            ) from err
        raise


def json_safe(value):
    """NaN and ±inf have no JSON spelling: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp)))


def read_tensors(path: Path) -> dict[str, Tensor]:
    return load_file(str(path))
