"""The engines that train a grid's instances.

- fast: hand-written gradients on packed sparse batches (engine/fast/), for the tasks that have a
  fast path (their EncoderDecoder);
- autograd: the task's reference forward through torch.autograd (engine/autograd.py), any task.

Both draw the same counter-based batches and share the chunked, checkpointed training loop
(engine/train.py), the per-instance Adam (engine/optim.py) and its frozen instances.
"""

from __future__ import annotations

from superposition.config import ConfigError, Engine
from superposition.engine import autograd
from superposition.engine.fast import step as fast
from superposition.tasks.model import ModelSpec

GRADIENTS = {Engine.fast: fast.FastGradients, Engine.autograd: autograd.AutogradGradients}
MEMORY = {Engine.fast: fast.bytes_per_instance, Engine.autograd: autograd.bytes_per_instance}


def resolve_engine(spec: ModelSpec, choice: Engine = Engine.auto) -> Engine:
    """The engine `choice` stands for: auto is fast where the task has a fast path; ConfigError
    when fast is asked of a task without one."""
    has_fast = spec.definition.fast_path(spec.shape) is not None
    if choice == Engine.auto:
        return Engine.fast if has_fast else Engine.autograd
    if choice == Engine.fast and not has_fast:
        raise ConfigError(
            f"train.engine=fast: task {spec.task} has no fast path; allowed: auto, autograd"
        )
    return choice


def bytes_per_instance(
    spec: ModelSpec, engine: Engine, batch_rows: int, probabilities: list[float] | None = None
) -> int:
    """Peak memory one instance adds to a training step of `engine` (an upper estimate)."""
    return MEMORY[resolve_engine(spec, engine)](spec, batch_rows, probabilities)
