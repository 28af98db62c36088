"""The task registry: `task.name=` choices are the names registered here.

Built-in tasks register when this package is imported; a researcher's module registers its own
when `task.module=` imports it (see README, "Add your own task"). `register` tries every part of a
task on a tiny model first, so a task missing a part fails there, never mid-run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from pathlib import Path

import torch

from superposition.config import Config, ConfigError
from superposition.tasks.task import (
    FIGURES,
    INITS,
    METRICS,
    EncoderDecoder,
    Param,
    Shape,
    Task,
)

__all__ = ["EncoderDecoder", "Param", "Shape", "Task", "get", "names", "register"]

_REGISTRY: dict[str, Task] = {}
# the file that registered each task
_ORIGINS: dict[str, str] = {}


class TaskDefinitionError(ValueError):
    """A task handed to `register` is incomplete or inconsistent; the message names the part."""


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Task:
    """The registered task `name`; ConfigError (one line, with the choices) when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"task.name={name} is not a registered task; allowed: {', '.join(names())} (a task of "
            "your own: task.module=YOUR_MODULE, README 'Add your own task')"
        ) from None


def register(task: Task) -> Task:
    """Check `task` on a tiny model and add it to the registry; return it.

    Registering a name again replaces the task only when it comes from the same file (a module
    imported twice, by name or by path); TaskDefinitionError otherwise, and for any part that is
    missing or wrong."""
    _check(task)
    origin = _caller_file()
    if task.name in _REGISTRY and _ORIGINS[task.name] != origin:
        raise TaskDefinitionError(
            f"task {task.name}: the name is taken by the task of {_ORIGINS[task.name]}"
        )
    _REGISTRY[task.name], _ORIGINS[task.name] = task, origin
    return task


def _caller_file() -> str:
    """The file of the module that called register (two frames up)."""
    caller = sys._getframe(2).f_globals
    path = caller.get("__file__")
    return str(Path(path).resolve()) if path else str(caller.get("__name__"))


def import_task_module(module: str) -> None:
    """Import the module that registers a researcher's tasks: a module name importable from the
    current directory or PYTHONPATH, or a path to a .py file. ConfigError when it cannot."""
    try:
        if module.endswith(".py"):
            path = Path(module).resolve()
            # one module per file, however it is named: two square.py files do not clash
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
            name = f"superposition_user_task_{path.stem}_{digest}"
            if name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[name] = loaded
            try:
                spec.loader.exec_module(loaded)
            except BaseException:
                del sys.modules[name]  # a second try runs it again, and fails the same way
                raise
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            importlib.import_module(module)
    except TaskDefinitionError as err:
        raise ConfigError(f"task.module={module}: {err}") from err
    except Exception as err:
        raise ConfigError(
            f"task.module={module} could not be imported ({type(err).__name__}: "
            f"{' '.join(str(err).split())}); give a module importable from the current directory "
            "or a path to a .py file"
        ) from err


def check_config(config: Config) -> Task:
    """The config's task, with task.module imported first; ConfigError (one line) when the task is
    unknown or refuses the config's options (model.hidden_relu)."""
    if config.task.module:
        import_task_module(config.task.module)
    task = get(config.task.name)
    if config.model.hidden_relu and not task.hidden_relu_option:
        allowed = [name for name in names() if _REGISTRY[name].hidden_relu_option]
        raise ConfigError(
            f"model.hidden_relu=true is not an option of task {task.name}; allowed with: "
            f"{', '.join(allowed)}"
        )
    return task


def module_file(module: str) -> str:
    """The file of an imported task module (import_task_module's argument), absolute."""
    if module.endswith(".py"):
        return str(Path(module).resolve())
    return str(Path(sys.modules[module].__file__).resolve())


# ----------------------------------------------------------------------------------- checks

PROBE = Shape(n_features=3, d_hidden=2)
PROBE_INSTANCES, PROBE_ROWS = 2, 4


def _require(ok: bool, task: Task, what: str) -> None:
    if not ok:
        raise TaskDefinitionError(f"task {getattr(task, 'name', '?')}: {what}")


def _check(task: Task) -> None:
    _require(isinstance(task, Task), task, "register takes a superposition.tasks.Task")
    _require(
        isinstance(task.name, str) and task.name.replace("_", "").isalnum(),
        task,
        "name must be letters, digits and underscores",
    )
    for part in ("params", "forward", "target", "privileged_basis", "fast_path"):
        _require(callable(getattr(task, part)), task, f"{part} must be a function")
    low, high = task.magnitudes
    _require(
        math.isfinite(low) and math.isfinite(high) and low < high,
        task,
        f"magnitudes must be finite (low, high) with low < high, got {task.magnitudes}",
    )
    _require(
        task.default_init in ("course", "per_instance"),
        task,
        f"default_init must be course or per_instance, got {task.default_init}",
    )
    _require(
        set(task.figures) <= set(FIGURES),
        task,
        f"unknown figures {sorted(set(task.figures) - set(FIGURES))}; known: {', '.join(FIGURES)}",
    )
    _require(
        set(task.metrics) <= set(METRICS),
        task,
        f"unknown metrics {sorted(set(task.metrics) - set(METRICS))}; known: {', '.join(METRICS)}",
    )
    shapes = [PROBE, Shape(PROBE.n_features, PROBE.d_hidden, True)]
    for shape in shapes if task.hidden_relu_option else shapes[:1]:
        _check_shape(task, shape)


def _check_shape(task: Task, shape: Shape) -> None:
    params = task.params(shape)
    _require(isinstance(params, dict) and params, task, "params(shape) must return a dict")
    for name, param in params.items():
        _require(isinstance(param, Param), task, f"parameter {name} is not a Param")
        _require(param.init in INITS, task, f"parameter {name}: init must be one of {INITS}")
        _require(
            param.init == "zeros" or len(param.shape) == 2,
            task,
            f"parameter {name}: a random init needs a matrix shape, got {param.shape}",
        )
    f, h = shape.n_features, shape.d_hidden
    _require(
        task.feature_weights in params and params[task.feature_weights].shape == (h, f),
        task,
        f"feature_weights {task.feature_weights!r} must be a parameter of shape (d_hidden, "
        "n_features)",
    )
    _require(
        task.decoder_weights is None
        or (task.decoder_weights in params and params[task.decoder_weights].shape == (f, h)),
        task,
        f"decoder_weights {task.decoder_weights!r} must be a parameter of shape (n_features, "
        "d_hidden)",
    )
    _require(
        "signs" not in task.metrics or {"W1", "W2", "b_final"} <= set(params),
        task,
        "the signs metrics read the abs architecture's W1, W2 and b_final",
    )
    tensors, x = _check_forward(task, shape, params)
    fast = task.fast_path(shape)
    if fast is not None:
        _require(isinstance(fast, EncoderDecoder), task, "fast_path must give an EncoderDecoder")
        expected = {"W", "b_final"} if fast.tied else {"W1", "W2", "b_final"}
        _require(
            set(params) == expected,
            task,
            f"its fast path trains the parameters {sorted(expected)}, not {sorted(params)}",
        )
        with torch.no_grad():
            same = torch.allclose(fast.forward(tensors, x), task.forward(tensors, x, shape))
            same = same and torch.allclose(fast.target(x), task.target(x))
        _require(
            same,
            task,
            f"its fast path ({fast}) computes another model or target than its forward and target",
        )


def _check_forward(
    task: Task, shape: Shape, params: dict[str, Param]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run forward and target on random parameters and inputs in the task's magnitude range, and
    backward through them; return the parameters and inputs."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        name: torch.randn(PROBE_INSTANCES, *p.shape, generator=generator).requires_grad_()
        for name, p in params.items()
    }
    low, high = task.magnitudes
    x = low + (high - low) * torch.rand(
        PROBE_INSTANCES, PROBE_ROWS, shape.n_features, generator=generator
    )
    expected = (PROBE_INSTANCES, PROBE_ROWS, shape.n_features)
    try:
        out = task.forward(tensors, x, shape)
    except Exception as err:
        raise TaskDefinitionError(
            f"task {task.name}: forward fails on {PROBE_INSTANCES} instances of {shape} with its "
            f"parameters {sorted(params)} ({type(err).__name__}: {err})"
        ) from err
    _require(
        isinstance(out, torch.Tensor) and tuple(out.shape) == expected,
        task,
        f"forward must return an (instance, batch, feature) tensor of shape {expected}",
    )
    target = task.target(x)
    _require(
        isinstance(target, torch.Tensor) and tuple(target.shape) == expected,
        task,
        "target(x) must return a tensor of x's shape",
    )
    (out - target).pow(2).sum().backward()
    for name, tensor in tensors.items():
        _require(
            tensor.grad is not None,
            task,
            f"parameter {name} does not take part in forward (it would never train)",
        )
    return {name: tensor.detach() for name, tensor in tensors.items()}, x


# the built-in tasks register themselves on import
from superposition.tasks import abs as _abs  # noqa: E402, F401
from superposition.tasks import identity as _identity  # noqa: E402, F401
