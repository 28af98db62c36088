"""Train every instance of a grid: chunks of the instance axis, one optimiser step per batch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor
from tqdm.auto import tqdm

from superposition.config import TrainConfig
from superposition.data import BatchSampler
from superposition.device import plan_chunk_size
from superposition.grid import InstanceGrid
from superposition.model import ModelSpec, forward, init_params, loss_per_instance, target_of
from superposition.optim import InstanceAdam, learning_rate


@dataclass
class TrainResult:
    """Trained parameters (instance axis first, on the CPU) and the training-loss record.

    finite is False where an instance's loss turned non-finite and the instance froze.
    """

    params: dict[str, Tensor]
    history_steps: list[int]
    loss_history: Annotated[Tensor, "log instance"]
    finite: Annotated[Tensor, "instance"]
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


def train_chunk(
    spec: ModelSpec,
    cfg: TrainConfig,
    seed: int,
    instances: Annotated[Tensor, "instance"],
    probability: Annotated[Tensor, "instance"],
    importance: Annotated[Tensor, "instance feature"],
    progress: tqdm | None = None,
) -> tuple[dict[str, Tensor], Annotated[Tensor, "log instance"], Annotated[Tensor, "instance"]]:
    """Train the given global instances from their initial weights for cfg.steps steps."""
    device = instances.device
    params = init_params(spec, seed, instances)
    for p in params.values():
        p.requires_grad_(True)
    sampler = BatchSampler(spec.task, seed, instances, probability, cfg.batch_size, spec.n_features)
    optimizer = InstanceAdam(list(params.values()), cfg.optimizer, cfg.weight_decay)
    alive = torch.ones(instances.shape[0], dtype=torch.bool, device=device)
    logged = history_steps(cfg.steps, cfg.log_every)
    history = torch.empty(len(logged), instances.shape[0], device=device)
    readout = _LossReadout(device)
    next_log = 0
    for step in range(cfg.steps):
        x = sampler(step)
        loss = loss_per_instance(forward(spec, params, x), target_of(spec, x), importance)
        alive &= torch.isfinite(loss)
        for p in params.values():
            p.grad = None
        torch.where(alive, loss, 0.0).sum().backward()
        optimizer.step(learning_rate(cfg.lr, cfg.lr_schedule, step, cfg.steps), alive)
        if step == logged[next_log]:
            history[next_log] = loss.detach()
            next_log += 1
            if progress is not None:
                shown = readout.push(loss)
                if shown is not None:
                    progress.set_postfix(loss=f"{shown:.4g}", refresh=False)
        if progress is not None:
            progress.update(1)
    trained = {name: p.detach() for name, p in params.items()}
    return trained, history, alive


def train_grid(
    spec: ModelSpec, grid: InstanceGrid, cfg: TrainConfig, seed: int, device: torch.device
) -> TrainResult:
    """Train all instances of the grid, chunked over the instance axis when memory is short.

    Every instance's data and initial weights come from its own random stream, so the result does
    not depend on the chunk size.
    """
    n = grid.n_instances
    chunk = plan_chunk_size(spec, n, cfg.batch_size, device, cfg.chunk_size, cfg.memory_budget_mb)
    probability = grid.instance_probability().to(device)
    importance = grid.instance_importance().to(device)
    n_chunks = -(-n // chunk)
    pieces: list[dict[str, Tensor]] = []
    histories, finite = [], []
    start_time = time.perf_counter()
    with tqdm(
        total=cfg.steps * n_chunks,
        desc=f"train {n} instances" + (f" in {n_chunks} chunks" if n_chunks > 1 else ""),
        unit="step",
        mininterval=0.5,
        dynamic_ncols=True,
    ) as progress:
        for start in range(0, n, chunk):
            instances = torch.arange(start, min(start + chunk, n), device=device)
            params, history, alive = train_chunk(
                spec, cfg, seed, instances, probability[instances], importance[instances], progress
            )
            pieces.append({k: v.cpu() for k, v in params.items()})
            histories.append(history.cpu())
            finite.append(alive.cpu())
    seconds = time.perf_counter() - start_time
    return TrainResult(
        params={k: torch.cat([piece[k] for piece in pieces]) for k in pieces[0]},
        history_steps=history_steps(cfg.steps, cfg.log_every),
        loss_history=torch.cat(histories, dim=1),
        finite=torch.cat(finite),
        seconds=seconds,
        chunk_size=chunk,
    )
