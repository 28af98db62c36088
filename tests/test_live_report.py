"""What training tells while it runs: train_grid's observer gets every level's recorded loss once,
in the order of training, from chunked and resumed runs (the W&B history rows of a job); the
progress file never costs the job a thing, and says how a job ended."""

from __future__ import annotations

import json

import pytest
import torch

from superposition.config import TrainConfig
from superposition.engine.train import TrainObserver, _HostCopies, history_steps, train_grid
from superposition.grid import sparsity_grid
from superposition.job import run_job
from superposition.run import to_config
from superposition.store.checkpoint import Checkpointer, CheckpointError
from superposition.store.progress import PROGRESS, ProgressFile, read_progress
from superposition.tasks.model import ModelSpec

CPU = torch.device("cpu")
SPEC = ModelSpec("identity", n_features=5, d_hidden=2)
# 3 levels × 3 restarts in chunks of 2: instances 0-1 | 2-3 | 4-5 | 6-7 | 8; the first and the
# fourth chunk complete no level, the third level spans three chunks
GRID = sparsity_grid([1.0, 0.3, 0.05], n_features=5, decay=0.9, restarts=3)
CFG = TrainConfig(steps=30, batch_size=64, log_every=5, chunk_size=2, checkpoint_every=10)
WANTED = {0, 10, 25, 29}  # recorded steps asked for (29: the last, recorded too)


class Stop(Exception):
    pass


class Recorder(TrainObserver):
    """Everything train_grid tells; raises Stop after the step counted stop_at."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.started_at: tuple[int, int] | None = None
        self.counts: list[int] = []
        self.rows: list[tuple[int, int, list[int], torch.Tensor]] = []

    def started(self, done: int, total: int) -> None:
        self.started_at = (done, total)

    def stepped(self, done: int, total: int) -> None:
        self.counts.append(done)
        if done == self.stop_at:
            raise Stop

    def wants_loss(self, step: int) -> bool:
        return step in WANTED

    def recorded(self, step: int, done: int, levels: range, loss: torch.Tensor) -> None:
        self.rows.append((done, step, list(levels), loss.clone()))


@pytest.fixture(scope="module")
def uninterrupted():
    observer = Recorder()
    result = train_grid(SPEC, GRID, CFG, seed=0, device=CPU, observer=observer)
    return observer, result


def test_every_level_comes_once_per_wanted_step_in_training_order(uninterrupted):
    observer, result = uninterrupted
    total = CFG.steps * 5
    assert observer.started_at == (0, total)
    assert observer.counts == list(range(1, total + 1))
    # (chunk, levels it completes): chunks 0 and 3 complete none
    completing = {1: [0], 2: [1], 4: [2]}
    expected = [
        (chunk * CFG.steps + step, step, levels)
        for chunk, levels in completing.items()
        for step in sorted(WANTED)
    ]
    assert [row[:3] for row in observer.rows] == expected
    steps = history_steps(CFG.steps, CFG.log_every)
    record = result.loss_history.view(len(steps), GRID.n_levels, GRID.restarts)
    for _, step, levels, loss in observer.rows:
        assert loss.dtype == torch.float32 and loss.device == CPU
        assert torch.equal(loss, record[steps.index(step), levels])


def test_a_resumed_run_tells_every_row_again_then_the_rest(uninterrupted, tmp_path):
    """The rows before the checkpoint come again from its loss records (so that the resumed
    run's W&B history is whole), then the trained ones: the uninterrupted run's rows exactly."""
    full, _ = uninterrupted
    checkpointer = Checkpointer(tmp_path, "fp", CFG.checkpoint_every)
    # stops in the fifth chunk at step 17 (before the level it completes was recorded at step 25)
    with pytest.raises(Stop):
        train_grid(
            SPEC, GRID, CFG, 0, CPU, checkpointer, observer=Recorder(stop_at=4 * CFG.steps + 17)
        )
    saved = checkpointer.load()
    assert saved["current"]["step"] == 10  # the last checkpoint
    resumed = Recorder()
    train_grid(SPEC, GRID, CFG, 0, CPU, checkpointer, saved, observer=resumed)
    assert resumed.started_at == (4 * CFG.steps + 10, 5 * CFG.steps)
    assert resumed.counts == list(range(4 * CFG.steps + 11, 5 * CFG.steps + 1))
    assert [row[:3] for row in resumed.rows] == [row[:3] for row in full.rows]
    for (*_, loss), (*_, reference) in zip(resumed.rows, full.rows, strict=True):
        assert torch.equal(loss, reference)


def test_host_copies_on_the_cpu_are_handed_on_at_once_in_order():
    got = []
    copies = _HostCopies(CPU, lambda step, loss: got.append((step, loss)))
    source = torch.zeros(3)
    for step in range(4):
        source.fill_(step)
        copies.push(step, source)
        assert [s for s, _ in got] == list(range(step + 1))  # nothing waits
    assert not copies.pending
    copies.poll()
    copies.flush()
    assert [loss.tolist() for _, loss in got] == [[float(s)] * 3 for s in range(4)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_host_copies_on_cuda_go_through_pinned_buffers_in_order():
    got = []
    copies = _HostCopies(torch.device("cuda"), lambda step, loss: got.append((step, loss)))
    for step in range(5):
        copies.push(step, torch.full((3,), float(step), device="cuda"))
    copies.poll()  # hands on what has arrived, never waits
    assert [s for s, _ in got] == list(range(len(got)))
    copies.flush()
    assert not copies.pending
    assert [s for s, _ in got] == list(range(5))
    assert all(loss.is_pinned() and loss.tolist() == [float(s)] * 3 for s, loss in got)


def test_a_progress_file_that_cannot_be_written_costs_one_warning(tmp_path, capsys):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    progress = ProgressFile(blocked)
    progress.step, progress.total = 3, 10
    progress.write("running")
    progress.write("failed", error="x")
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"warning: {PROGRESS} could not be written (FileExistsError")
    assert line.endswith("; the job goes on without it")


def test_a_finished_progress_stays_finished(tmp_path):
    progress = ProgressFile(tmp_path)
    progress.step = progress.total = 60
    progress.write("finished")
    progress.write("interrupted")
    assert read_progress(tmp_path).state == "finished"
    assert json.loads((tmp_path / PROGRESS).read_text())["step"] == 60


def test_a_job_that_fails_says_so_in_one_line(compose_config, tmp_path):
    config = to_config(compose_config("task=identity", "train.steps=40", "wandb.mode=disabled"))
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        run_job(config, tmp_path, run_name="broken")
    progress = read_progress(tmp_path)
    assert progress.state == "failed"
    assert progress.error.startswith(f"CheckpointError: checkpoint {tmp_path / 'checkpoint.pt'} ")
    assert "\n" not in progress.error
