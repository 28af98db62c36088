"""Train every instance of a grid: chunks of the instance axis, one optimiser step per batch."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor
from tqdm.auto import tqdm

from superposition.config import DataConfig, TrainConfig
from superposition.engine import GRADIENTS, bytes_per_instance, resolve_engine
from superposition.engine.batches import groups_of, make_samplers
from superposition.engine.device import plan_chunk_size, release_freed_memory
from superposition.engine.optim import InstanceAdam, learning_rate
from superposition.grid import InstanceGrid
from superposition.store.checkpoint import Checkpointer, CheckpointError, StopSignals
from superposition.tasks.model import ModelSpec, init_params
from superposition.tasks.sampling import FeatureDistribution


@dataclass
class TrainResult:
    """Trained parameters (instance axis first, on the CPU) and the training-loss record.

    finite is False where an instance's loss or gradient turned non-finite and the instance froze.
    sampler_overflows counts the batches that a sparse sampler cut at its capacity
    (engine/batches.py).
    """

    params: dict[str, Tensor]
    history_steps: list[int]
    loss_history: Annotated[Tensor, "log instance"]
    finite: Annotated[Tensor, "instance"]
    sampler_overflows: Annotated[Tensor, "instance"]
    seconds: float
    chunk_size: int

    @property
    def instance_steps_per_s(self) -> float:
        n_instances = self.finite.shape[0]
        return n_instances * (self.history_steps[-1] + 1) / self.seconds


def history_steps(steps: int, log_every: int) -> list[int]:
    """Steps at which every instance's loss is recorded: every log_every, and the last."""
    logged = list(range(0, steps, log_every))
    if logged[-1] != steps - 1:
        logged.append(steps - 1)
    return logged


class _LossReadout:
    """Mean loss for the progress bar without stalling the device: on CUDA the value shown is the
    one whose copy to the host has already finished."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.zeros((), pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.pending = False
        self.shown: float | None = None

    def push(self, loss: Annotated[Tensor, "instance"]) -> float | None:
        mean = loss.detach().nan_to_num(nan=0.0, posinf=0.0).mean()
        if not self.cuda:
            self.shown = mean.item()
            return self.shown
        if self.pending and self.event.query():
            self.shown = self.host.item()
            self.pending = False
        if not self.pending:
            self.host.copy_(mean, non_blocking=True)
            self.event.record()
            self.pending = True
        return self.shown


class TrainObserver:
    """What train_grid tells while it trains; every method here does nothing.

    Counts are the progress bar's: `done` = chunk × train.steps + steps taken in that chunk, of
    `total` = train.steps × chunks. A recorded loss comes per level (a grid point's restarts, which
    chunks may split): a level's loss at a step is handed on by the chunk that holds its last
    restart, once the copy of it is on the host, in the order of training.
    """

    def started(self, done: int, total: int) -> None:
        """Training starts, or resumes with `done` steps behind it."""

    def stepped(self, done: int, total: int) -> None:
        """After every step: called at the step rate, it must be cheap and never wait on the
        device."""

    def wants_loss(self, step: int) -> bool:
        """Whether `recorded` is to get the losses recorded at this training step."""
        return False

    def recorded(
        self, step: int, done: int, levels: range, loss: Annotated[Tensor, "level restart"]
    ) -> None:
        """The training loss of every restart of these levels at training `step`, as the loss
        record holds it (float32, on the CPU); `done` is the count of that step."""


class _HostCopies:
    """Recorded losses on their way to the host, handed on in order once there.

    On CUDA each goes into a pinned host buffer by a copy that does not block, and is handed on
    once the event recorded after it has passed: `poll` never waits, `flush` does. Elsewhere each
    is handed on at once.
    """

    def __init__(self, device: torch.device, deliver: Callable[[int, Tensor], None]):
        self.cuda = device.type == "cuda"
        self.deliver = deliver
        self.pending: deque[tuple[int, Tensor, torch.cuda.Event]] = deque()

    def push(self, step: int, loss: Annotated[Tensor, "instance"]) -> None:
        if not self.cuda:
            self.deliver(step, loss.detach().to("cpu", copy=True))
            return
        host = torch.empty(loss.shape, dtype=loss.dtype, pin_memory=True)
        host.copy_(loss.detach(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((step, host, event))

    def poll(self) -> None:
        """Hand on the copies that have arrived, oldest first, up to the first still under way."""
        while self.pending and self.pending[0][2].query():
            step, host, _ = self.pending.popleft()
            self.deliver(step, host)

    def flush(self) -> None:
        """Wait for every copy under way and hand it on."""
        while self.pending:
            step, host, event = self.pending.popleft()
            event.synchronize()
            self.deliver(step, host)


class ChunkRun:
    """Training of one chunk of instances, one step at a time, with a state that can be saved.

    A step has the engine write every parameter's gradient into one buffer per parameter
    (engine/fast/step.py or engine/autograd.py), freezes instances whose gradient or loss is not
    finite, and takes an Adam step. With sync_free (the default on a GPU) nothing in a step reads
    from the device, so the host queues steps ahead of the GPU; on a CPU reading a count is free,
    and the sparse batches use it to size themselves exactly.
    """

    def __init__(
        self,
        spec: ModelSpec,
        cfg: TrainConfig,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        probability: list[float],
        importance: Annotated[Tensor, "instance feature"],
        saved: dict | None = None,
        sync_free: bool | None = None,
        *,
        features: FeatureDistribution | None = None,
    ):
        device = instances.device
        sync_free = device.type != "cpu" if sync_free is None else sync_free
        features = FeatureDistribution.of(spec.definition) if features is None else features
        self.spec, self.cfg, self.importance = spec, cfg, importance
        self.start = int(instances[0])
        self.logged = history_steps(cfg.steps, cfg.log_every)
        if saved is None:
            self.params = init_params(spec, seed, instances)
            self.finite = torch.ones(instances.shape[0], dtype=torch.bool, device=device)
            n_logs = len(self.logged)
            self.history = torch.full((n_logs, instances.shape[0]), torch.nan, device=device)
            self.step = 0
        else:
            self.params = {k: v.to(device) for k, v in saved["params"].items()}
            # "alive" in checkpoints of earlier versions
            self.finite = saved["finite" if "finite" in saved else "alive"].to(device)
            self.history = saved["history"].to(device)
            self.step = saved["step"]
        self.grads = {k: torch.zeros_like(v) for k, v in self.params.items()}
        engine = GRADIENTS[resolve_engine(spec, cfg.engine)]
        samplers = make_samplers(
            features,
            seed,
            instances,
            probability,
            cfg.batch_size,
            spec.n_features,
            sync_free,
            dense_blocks=engine.dense_blocks,
        )
        groups = groups_of(samplers, self.params, self.grads, importance)
        self.gradients = engine(spec, groups, self.params, self.grads)
        self.optimizer = InstanceAdam(
            list(self.params.values()), cfg.optimizer, cfg.weight_decay, sync_free=sync_free
        )
        if saved is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
            if "overflows" in saved:  # absent in checkpoints of earlier versions
                for group in self.gradients.groups:
                    group.sampler.overflows.copy_(saved["overflows"][group.part])
        self.next_log = sum(1 for s in self.logged if s < self.step)

    def advance(self) -> Annotated[Tensor, "instance"] | None:
        """One optimiser step; returns the losses when this step is one that is recorded."""
        step, cfg = self.step, self.cfg
        logging = step == self.logged[self.next_log]
        loss = self.gradients(step, want_loss=logging)
        self.finite &= self.gradients.finite()
        if loss is not None:
            self.finite &= torch.isfinite(loss)
        lr = learning_rate(cfg.lr, cfg.lr_schedule, step, cfg.steps)
        self.optimizer.step(lr, self.finite, list(self.grads.values()))
        self.step += 1
        if loss is not None:
            self.history[self.next_log] = loss
            self.next_log += 1
        return loss

    @property
    def overflows(self) -> Annotated[Tensor, "instance"]:
        return torch.cat([group.sampler.overflows for group in self.gradients.groups])

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.steps

    def state_dict(self) -> dict:
        return {
            "start": self.start,
            "step": self.step,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "finite": self.finite.cpu(),
            "history": self.history.cpu(),
            "overflows": self.overflows.cpu(),
        }

    def outcome(self) -> dict:
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "history": self.history.cpu(),
            "finite": self.finite.cpu(),
            "overflows": self.overflows.cpu(),
        }


def _join(outcomes: list[dict]) -> dict:
    return {
        "params": {k: torch.cat([o["params"][k] for o in outcomes]) for k in outcomes[0]["params"]},
        "history": torch.cat([o["history"] for o in outcomes], dim=1),
        "finite": torch.cat([o["finite"] for o in outcomes]),
        "overflows": torch.cat([o["overflows"] for o in outcomes]),
    }


def check_saved_state(saved: dict, spec: ModelSpec, n_instances: int, cfg: TrainConfig) -> None:
    """A checkpoint's state fits this run: chunk layout, step range, shapes and dtypes.
    Raises CheckpointError (one line) otherwise."""

    def require(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(
                f"checkpoint state does not fit this run: {what}; it is left as it is: delete "
                "the checkpoint to start this run over"
            )

    shapes = spec.param_shapes()

    def check_params(params: object, count: int, where: str) -> None:
        require(isinstance(params, dict) and set(params) == set(shapes), f"{where}: parameters")
        for name, shape in shapes.items():
            value = params[name]
            require(
                isinstance(value, Tensor)
                and tuple(value.shape) == (count, *shape)
                and value.dtype == torch.float32,
                f"{where}: {name} is not float32 of shape {(count, *shape)}",
            )

    n_logs = len(history_steps(cfg.steps, cfg.log_every))

    def check_history(history: object, count: int, where: str) -> None:
        require(
            isinstance(history, Tensor) and tuple(history.shape) == (n_logs, count),
            f"{where}: loss record is not of shape {(n_logs, count)}",
        )

    require(isinstance(saved, dict), "not a dict")
    chunk = saved.get("chunk_size")
    require(isinstance(chunk, int) and chunk >= 1, f"chunk_size {chunk!r}")
    finished, current = saved.get("finished"), saved.get("current")
    n_done = 0
    if finished is not None:
        require(isinstance(finished, dict), "finished chunks")
        finite = finished.get("finite")
        require(isinstance(finite, Tensor) and finite.dim() == 1, "finished chunks")
        n_done = finite.shape[0]
        require(
            n_done <= n_instances and (n_done % chunk == 0 or n_done == n_instances),
            f"{n_done} finished instances in chunks of {chunk}",
        )
        check_params(finished.get("params"), n_done, "finished chunks")
        check_history(finished.get("history"), n_done, "finished chunks")
    if current is not None:
        require(isinstance(current, dict), "current chunk")
        start, step = current.get("start"), current.get("step")
        require(
            start == n_done < n_instances,
            f"current chunk starts at {start!r}, after {n_done} of {n_instances} finished",
        )
        require(
            isinstance(step, int) and 0 <= step <= cfg.steps,
            f"step {step!r} outside 0 .. {cfg.steps}",
        )
        count = min(chunk, n_instances - n_done)
        check_params(current.get("params"), count, "current chunk")
        check_history(current.get("history"), count, "current chunk")


@dataclass
class _Progress:
    """Where training stands: the chunk size, the joined outcomes of finished chunks, the state
    of the chunk in progress (from a checkpoint), and the seconds trained before."""

    chunk: int
    finished: list[dict]
    current: dict | None
    seconds_before: float

    @property
    def n_done(self) -> int:
        return sum(o["finite"].shape[0] for o in self.finished)


def _progress_of(
    spec: ModelSpec,
    grid: InstanceGrid,
    cfg: TrainConfig,
    device: torch.device,
    saved: dict | None,
) -> _Progress:
    n = grid.n_instances
    if saved is not None:
        check_saved_state(saved, spec, n, cfg)
        finished = [saved["finished"]] if saved["finished"] is not None else []
        return _Progress(saved["chunk_size"], finished, saved["current"], saved["seconds"])
    probabilities = grid.feature_probability.float().tolist()
    per_instance = bytes_per_instance(spec, cfg.engine, cfg.batch_size, probabilities)
    chunk = plan_chunk_size(per_instance, n, device, cfg.chunk_size, cfg.memory_budget_mb)
    return _Progress(chunk, [], None, 0.0)


def _progress_bar(cfg: TrainConfig, n: int, progress: _Progress) -> tqdm:
    n_chunks = -(-n // progress.chunk)
    done = cfg.steps * (progress.n_done // progress.chunk)
    return tqdm(
        total=cfg.steps * n_chunks,
        initial=done + (progress.current["step"] if progress.current else 0),
        desc=f"train {n} instances" + (f" in {n_chunks} chunks" if n_chunks > 1 else ""),
        unit="step",
        mininterval=0.5,
        dynamic_ncols=True,
    )


def _columns(
    records: list[Annotated[Tensor, "log instance"]], first: int, stop: int, n_logs: int
) -> Annotated[Tensor, "log instance"]:
    """Instances first .. stop-1 of loss records joined along the instance axis."""
    parts, offset = [torch.empty(n_logs, 0)], 0
    for record in records:
        low, high = max(first - offset, 0), min(stop - offset, record.shape[1])
        if low < high:
            parts.append(record[:, low:high])
        offset += record.shape[1]
    return torch.cat(parts, dim=1)


class _Reporter:
    """train_grid's side of its observer: the counts, and the losses of whole levels.

    A chunk hands on the levels whose last restart it holds; their restarts in earlier chunks come
    from those chunks' loss records (on the host already).
    """

    def __init__(
        self,
        observer: TrainObserver,
        grid: InstanceGrid,
        cfg: TrainConfig,
        device: torch.device,
        total: int,
    ):
        self.observer, self.total = observer, total
        self.restarts, self.steps = grid.restarts, cfg.steps
        self.index = {step: i for i, step in enumerate(history_steps(cfg.steps, cfg.log_every))}
        self.copies = _HostCopies(device, self._deliver)
        self.offset, self.levels, self.count = 0, range(0), 0
        self.before = torch.empty(len(self.index), 0)

    def begin_chunk(self, index: int, start: int, end: int, finished: list[dict]) -> None:
        """Chunk `index`, of instances start .. end-1, starts; `finished` holds the ones before."""
        restarts = self.restarts
        self.offset = index * self.steps
        self.levels = range(start // restarts, end // restarts)
        first = self.levels.start * restarts
        self.count = self.levels.stop * restarts - start  # this chunk's instances in those levels
        histories = [outcome["history"] for outcome in finished]
        self.before = _columns(histories, first, start, len(self.index))

    def replay(self, chunk: int, finished: list[dict], current: dict | None) -> None:
        """A resumed run tells again the rows recorded before it stopped, from its checkpoint's
        loss records, so that the W&B run it writes holds the whole history (an offline one is a
        new directory; online, W&B keeps the rows it had)."""
        history = [outcome["history"] for outcome in finished]
        n_done = sum(record.shape[1] for record in history)
        n_logs = len(self.index)
        for index, start in enumerate(range(0, n_done, chunk)):
            end = min(start + chunk, n_done)
            self.begin_chunk(index, start, end, finished)
            records = _columns(history, start, start + self.count, n_logs)
            self._replay_steps(records, self.steps)
        if current is not None and current["step"] > 0:
            start = current["start"]
            self.begin_chunk(start // chunk, start, start + current["history"].shape[1], finished)
            self._replay_steps(current["history"][:, : self.count], current["step"])

    def _replay_steps(self, records: Annotated[Tensor, "log instance"], before: int) -> None:
        if not self.levels:
            return
        for step, row in self.index.items():
            if step < before and self.observer.wants_loss(step):
                self._deliver(step, records[row])

    def after_step(self, run: ChunkRun, loss: Annotated[Tensor, "instance"] | None) -> None:
        step = run.step - 1
        if loss is not None and self.levels and self.observer.wants_loss(step):
            self.copies.push(step, loss[: self.count])
        self.copies.poll()
        self.observer.stepped(self.offset + run.step, self.total)

    def flush(self) -> None:
        self.copies.flush()

    def _deliver(self, step: int, loss: Annotated[Tensor, "instance"]) -> None:
        joined = torch.cat([self.before[self.index[step]], loss])
        levels = joined.view(len(self.levels), self.restarts)
        self.observer.recorded(step, self.offset + step, self.levels, levels)


def train_grid(
    spec: ModelSpec,
    grid: InstanceGrid,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    saved: dict | None = None,
    data: DataConfig | None = None,
    observer: TrainObserver | None = None,
) -> TrainResult:
    """Train all instances of the grid, chunked over the instance axis when memory is short.

    Every instance's data and initial weights come from its own random stream, so the result does
    not depend on the chunk size. `saved` is a state from `checkpointer.load()` to go on from.
    With a checkpointer, a checkpoint is saved every `checkpointer.every` steps, and on SIGTERM,
    SIGUSR2 or SIGINT one is saved before training stops (see checkpoint.StopSignals).
    `data` sets the course's correlated and anticorrelated pairs (default: none). `observer` hears
    where training stands and gets the recorded losses it asks for (TrainObserver).
    """
    features = FeatureDistribution.of(spec.definition, data)
    n = grid.n_instances
    progress = _progress_of(spec, grid, cfg, device, saved)
    chunk, finished = progress.chunk, progress.finished
    probability = grid.instance_probability().tolist()
    importance = grid.instance_importance().to(device)
    start_time = time.perf_counter()

    def snapshot(run: ChunkRun | None) -> dict:
        return {
            "chunk_size": chunk,
            "seconds": progress.seconds_before + time.perf_counter() - start_time,
            "finished": _join(finished) if finished else None,
            "current": run.state_dict() if run is not None else None,
        }

    readout = _LossReadout(device)
    stop_signals = StopSignals() if checkpointer is not None else contextlib.nullcontext()
    n_done = progress.n_done
    observer = observer if observer is not None else TrainObserver()
    with stop_signals as stop, _progress_bar(cfg, n, progress) as bar:
        report = _Reporter(observer, grid, cfg, device, bar.total)
        observer.started(bar.n, bar.total)
        if saved is not None:
            report.replay(chunk, finished, progress.current)
        for start in range(n_done, n, chunk):
            end = min(start + chunk, n)
            instances = torch.arange(start, end, device=device)
            current = progress.current
            resume = current if current is not None and current["start"] == start else None
            run = ChunkRun(
                spec,
                cfg,
                seed,
                instances,
                probability[start:end],
                importance[instances],
                resume,
                features=features,
            )
            report.begin_chunk(start // chunk, start, end, finished)
            while not run.done:
                loss = run.advance()
                bar.update(1)
                if loss is not None:
                    shown = readout.push(loss)
                    if shown is not None:
                        bar.set_postfix(loss=f"{shown:.4g}", refresh=False)
                report.after_step(run, loss)
                if checkpointer is not None and (checkpointer.due(run.step) or stop.received):
                    checkpointer.save(snapshot(run))
                    if stop.received:
                        report.flush()
                        stop.stop(checkpointer.path)
            report.flush()
            finished.append(run.outcome())
            del run
            release_freed_memory(device)
        if checkpointer is not None and n_done < n:
            # the trained state, whatever checkpoint_every says: a stop during the job's later
            # stages then costs them, not the training
            checkpointer.save(snapshot(None))
            if stop.received:
                stop.stop(checkpointer.path)
    joined = _join(finished)
    return TrainResult(
        params=joined["params"],
        history_steps=history_steps(cfg.steps, cfg.log_every),
        loss_history=joined["history"],
        finite=joined["finite"],
        sampler_overflows=joined["overflows"],
        seconds=progress.seconds_before + time.perf_counter() - start_time,
        chunk_size=chunk,
    )
