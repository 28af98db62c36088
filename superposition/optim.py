"""Adam / AdamW over instance-stacked parameters, with instances that can be frozen.

Adam is element-wise, so instances never influence each other. A frozen instance (its loss or
gradient turned non-finite) keeps the parameters it had before the bad step.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from superposition.config import LRSchedule, Optimizer


def learning_rate(base_lr: float, schedule: LRSchedule, step: int, steps: int) -> float:
    """constant; linear from lr to 0; cosine from lr to 0 (half a cosine period)."""
    frac = step / steps
    if schedule == LRSchedule.linear:
        return base_lr * (1 - frac)
    if schedule == LRSchedule.cosine:
        return base_lr * 0.5 * (1 + math.cos(math.pi * frac))
    return base_lr


class InstanceAdam:
    """torch's fused Adam / AdamW (one kernel for all parameters: on these small tensors the
    per-operation overhead of an unfused update costs more than its arithmetic), plus frozen
    instances: after the step, a frozen instance gets back the parameters it had before it."""

    def __init__(
        self,
        params: list[Tensor],
        kind: Optimizer = Optimizer.adam,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = params
        kinds = {Optimizer.adam: torch.optim.Adam, Optimizer.adamw: torch.optim.AdamW}
        options = dict(lr=1e-3, betas=betas, eps=eps, weight_decay=weight_decay)
        try:
            self.torch_optimizer = kinds[kind](params, fused=True, **options)
        except RuntimeError:  # a device without a fused kernel
            self.torch_optimizer = kinds[kind](params, **options)

    @property
    def t(self) -> int:
        state = self.torch_optimizer.state.get(self.params[0], {})
        return int(state["step"]) if "step" in state else 0

    @torch.no_grad()
    def step(
        self, lr: float, alive: Annotated[Tensor, "instance"], grads: list[Tensor] | None = None
    ) -> None:
        """One update with `grads` (default: each parameter's .grad); frozen where not alive.

        On a CPU the frozen parameters are only copied when an instance is frozen (reading
        `alive` costs nothing there); on a GPU always, so that the step never waits for it.
        """
        if grads is not None:
            for p, grad in zip(self.params, grads, strict=True):
                p.grad = grad
        restore = alive.device.type != "cpu" or not bool(alive.all())
        before = [p.detach().clone() for p in self.params] if restore else []
        self.torch_optimizer.param_groups[0]["lr"] = lr
        self.torch_optimizer.step()
        for p, old in zip(self.params, before, strict=False):
            p.copy_(torch.where(alive.view(-1, *([1] * (p.dim() - 1))), p, old))

    def state_dict(self) -> dict:
        states = [self.torch_optimizer.state.get(p, {}) for p in self.params]
        zeros = [torch.zeros_like(p, device="cpu") for p in self.params]
        return {
            "t": self.t,
            "exp_avg": [s["exp_avg"].cpu() if s else z for s, z in zip(states, zeros, strict=True)],
            "exp_avg_sq": [
                s["exp_avg_sq"].cpu() if s else z for s, z in zip(states, zeros, strict=True)
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["t"] == 0:
            return
        for p, m, v in zip(self.params, state["exp_avg"], state["exp_avg_sq"], strict=True):
            self.torch_optimizer.state[p] = {
                "step": torch.tensor(float(state["t"]), dtype=torch.float32, device=p.device),
                "exp_avg": m.to(p.device).clone(),
                "exp_avg_sq": v.to(p.device).clone(),
            }
