"""Adam / AdamW over instance-stacked parameters, with instances that can be frozen.

Adam is element-wise, so instances never influence each other. A frozen instance (its loss or
gradient turned non-finite) keeps the parameters it had before the bad step.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.adamw import adamw

from superposition.config import LRSchedule, Optimizer


def learning_rate(base_lr: float, schedule: LRSchedule, step: int, steps: int) -> float:
    """constant; linear from lr to 0; cosine from lr to 0 (half a cosine period)."""
    frac = step / steps
    if schedule == LRSchedule.linear:
        return base_lr * (1 - frac)
    if schedule == LRSchedule.cosine:
        return base_lr * 0.5 * (1 + math.cos(math.pi * frac))
    return base_lr


def _fused_available(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


class InstanceAdam:
    """Adam / AdamW through torch's functional update, fused into one kernel for all parameters
    where the device has one (on these small tensors the per-operation overhead of an unfused
    update, and the bookkeeping of torch.optim.Optimizer.step, cost more than the arithmetic);
    plus frozen instances: after the step, a frozen instance gets back its parameters."""

    def __init__(
        self,
        params: list[Tensor],
        kind: Optimizer = Optimizer.adam,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        sync_free: bool | None = None,
    ):
        self.params = params
        self.sync_free = params[0].device.type != "cpu" if sync_free is None else sync_free
        self.kind, self.weight_decay, self.betas, self.eps = kind, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), device=p.device) for p in params]
        self.fused = _fused_available(params[0].device)

    @property
    def t(self) -> int:
        return int(self.steps[0])

    @torch.no_grad()
    def step(
        self, lr: float, finite: Annotated[Tensor, "instance"], grads: list[Tensor] | None = None
    ) -> None:
        """One update with `grads` (default: each parameter's .grad); frozen where not finite.

        On a CPU the frozen parameters are only copied when an instance is frozen (reading
        `finite` costs nothing there); with sync_free (the default on a GPU) always, so that the
        step never waits for the device.
        """
        if grads is None:
            grads = [p.grad for p in self.params]
        restore = self.sync_free or not bool(finite.all())
        before = [p.detach().clone() for p in self.params] if restore else []
        update = adamw if self.kind == Optimizer.adamw else adam
        update(
            [p.detach() for p in self.params],
            grads,
            self.exp_avg,
            self.exp_avg_sq,
            [],
            self.steps,
            fused=self.fused,
            foreach=False if not self.fused else None,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )
        for p, old in zip(self.params, before, strict=False):
            p.copy_(torch.where(finite.view(-1, *([1] * (p.dim() - 1))), p, old))

    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "exp_avg": [m.detach().cpu() for m in self.exp_avg],
            "exp_avg_sq": [v.detach().cpu() for v in self.exp_avg_sq],
        }

    def load_state_dict(self, state: dict) -> None:
        for step in self.steps:
            step.fill_(float(state["t"]))
        for mine, saved in zip(
            self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"], strict=True
        ):
            mine.copy_(saved)
