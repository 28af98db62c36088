"""What a job tells while it trains: the loss per level as W&B history rows, and where training
stands in progress.json and in the W&B run's summary (job.py hands a LiveReport to train_grid)."""

from __future__ import annotations

import math
import time
from typing import Annotated

from torch import Tensor

from superposition.config import TrainConfig
from superposition.engine.train import TrainObserver, history_steps
from superposition.grid import InstanceGrid
from superposition.store.progress import ProgressFile
from superposition.track import Tracker, level_labels, logged_indices

# seconds between progress.json writes, and between W&B summary updates, while training
PROGRESS_EVERY_S = 2.0
SUMMARY_EVERY_S = 5.0


class LiveReport(TrainObserver):
    """What the job tells while it trains: the loss per level as W&B history rows (at the steps
    logged_indices chooses, with the training step under STEP_KEY and W&B's step counting
    chunk × train.steps + step), and where training stands in progress.json (state running) and
    in W&B's summary ('progress/step', 'progress/total', 'progress/steps_per_s'), throttled."""

    def __init__(
        self,
        tracker: Tracker,
        progress: ProgressFile,
        grid: InstanceGrid,
        train: TrainConfig,
        log_every: int,
    ):
        self.tracker, self.progress = tracker, progress
        self.labels = level_labels(grid.feature_probability.tolist())
        steps = history_steps(train.steps, train.log_every)
        self.logged = {steps[t] for t in logged_indices(steps, log_every)}
        self.first_done, self.first_time = 0, time.monotonic()
        self.next_progress = self.next_summary = -math.inf

    def started(self, done: int, total: int) -> None:
        self.first_done, self.first_time = done, time.monotonic()
        self.progress.step, self.progress.total = done, total
        self._report(self.first_time)

    def stepped(self, done: int, total: int) -> None:
        self.progress.step = done
        now = time.monotonic()
        if now >= self.next_progress or now >= self.next_summary:
            self._report(now)

    def wants_loss(self, step: int) -> bool:
        return step in self.logged and self.tracker.enabled

    def recorded(
        self, step: int, done: int, levels: range, loss: Annotated[Tensor, "level restart"]
    ) -> None:
        labels = self.labels[levels.start : levels.stop]
        self.tracker.log_levels(step, loss, labels, wandb_step=done)

    def ended(self) -> None:
        """Training is over (the job goes on to analyse): the last counts, unthrottled."""
        self._report(time.monotonic(), state="analysing")

    def _report(self, now: float, state: str = "running") -> None:
        progress = self.progress
        if now > self.first_time and progress.step > self.first_done:
            progress.steps_per_s = (progress.step - self.first_done) / (now - self.first_time)
        if now >= self.next_progress or state != "running":
            progress.write(state)
            self.next_progress = now + PROGRESS_EVERY_S
        if now >= self.next_summary or state != "running":
            summary = {"progress/step": progress.step, "progress/total": progress.total}
            if progress.steps_per_s is not None:
                summary["progress/steps_per_s"] = progress.steps_per_s
            self.tracker.update_summary(summary)
            self.next_summary = now + SUMMARY_EVERY_S
