"""Checkpoints of a training job, and stopping cleanly when the job is told to.

A checkpoint holds everything the trainer needs to go on exactly where it stopped: parameters,
optimiser moments, the step, the loss record, the finished chunks. The random numbers need no state:
they are a function of the step (see rng.py). A checkpoint carries the fingerprint of the config
that wrote it and is refused by any other config.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from superposition.config import ConfigError
from superposition.store.files import write_atomically

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
# SIGUSR2: what submitit asks SLURM to send before the time limit; SIGTERM: preemption, `kill`
STOP_SIGNALS = ("SIGTERM", "SIGUSR2", "SIGINT")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary after saving a checkpoint."""

    def __init__(self, signum: int, path: Path):
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name}; checkpoint saved to {path}; run the same command with the same "
            "output directory to resume"
        )


def state_digest(value: Any) -> str:
    """sha256 over a checkpoint state: every key, and every tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()

    def visit(item: Any) -> None:
        if isinstance(item, dict):
            for key in sorted(item, key=str):
                digest.update(f"<{key}>".encode())
                visit(item[key])
        elif isinstance(item, list | tuple):
            digest.update(f"[{len(item)}]".encode())
            for element in item:
                visit(element)
        elif isinstance(item, torch.Tensor):
            tensor = item.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(item).encode())

    visit(value)
    return digest.hexdigest()


def fingerprint(payload: dict) -> str:
    """A short stable hash of the config values that decide the training result."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpointer:
    """Saves and loads `out_dir/checkpoint.pt` for one config."""

    def __init__(self, out_dir: Path, config_fingerprint: str, every: int):
        self.path = Path(out_dir) / CHECKPOINT
        self.fingerprint = config_fingerprint
        self.every = every

    def load(self) -> dict | None:
        """The saved state, None if there is none; CheckpointError if it is not ours or broken."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            ok = isinstance(saved, dict) and saved.get("format") == FORMAT and "state" in saved
        except Exception as err:  # any unreadable file: report, never use
            raise CheckpointError(
                f"checkpoint {self.path} is unreadable ({type(err).__name__}); "
                "delete it to start this run over"
            ) from err
        if not ok:
            raise CheckpointError(
                f"checkpoint {self.path} is not a superposition checkpoint of format {FORMAT}; "
                "delete it to start this run over"
            )
        if saved.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"checkpoint {self.path} was written by another config "
                f"(fingerprint {saved.get('fingerprint')}, this config {self.fingerprint}); "
                "use another output directory or delete the checkpoint"
            )
        if "digest" not in saved:
            raise CheckpointError(
                f"checkpoint {self.path} was written by an earlier version, without a digest; "
                "delete it to start this run over"
            )
        if saved["digest"] != state_digest(saved["state"]):
            raise CheckpointError(
                f"checkpoint {self.path} does not match the digest it was written with (changed "
                "since); it is left as it is: delete it to start this run over"
            )
        return saved["state"]

    def save(self, state: dict) -> None:
        payload = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "state": state,
            "digest": state_digest(state),
        }
        write_atomically(self.path, lambda tmp: torch.save(payload, tmp))

    def due(self, steps_done: int) -> bool:
        return self.every > 0 and steps_done % self.every == 0

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class StopSignals:
    """While active, SIGTERM, SIGUSR2 and SIGINT only raise a flag; the trainer checks it at every
    step boundary, saves a checkpoint and calls `stop`.

    `stop` hands the signal to the handler that was there before (submitit's, which requeues the
    job on SLURM); where that was the default action, it raises TrainingInterrupted instead.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._raise_flag)
        # a signal the StopSignals this one is nested in has not acted on yet is this one's now
        for handler in self._previous.values():
            outer = getattr(handler, "__self__", None)
            if isinstance(outer, StopSignals) and outer.received is not None:
                self.received, outer.received = outer.received, None
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        # nested in another StopSignals (the job's, around training): a signal received after
        # the last check is handed to it rather than lost
        outer = getattr(self._previous.get(self.received), "__self__", None)
        if isinstance(outer, StopSignals):
            outer._raise_flag(self.received, None)
        self._previous.clear()

    def _raise_flag(self, signum: int, frame: object) -> None:
        self.received = signum

    def _handler_before(self, signum: int) -> Any:
        """The handler that was there before this StopSignals and any it is nested in."""
        previous = self._previous.get(signum)
        while isinstance(getattr(previous, "__self__", None), StopSignals):
            previous = previous.__self__._previous.get(signum)
        return previous

    def stop(self, checkpoint_path: Path) -> None:
        """Act on the received signal, now that a checkpoint is saved."""
        signum, self.received = self.received, None
        previous = self._handler_before(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            handler: Callable[[int, Any], Any] = previous
            handler(signum, None)  # submitit: requeue and exit; if it returns, training goes on
            return
        raise TrainingInterrupted(signum, checkpoint_path)
