"""The task registry and the two engines: registration checks every part of a task, `task.name=`
choices are the registry's, and the autograd engine trains the built-in tasks to the weights of
the fast one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import CONF_DIR

from superposition import tasks
from superposition.config import ConfigError, Engine, TrainConfig
from superposition.engine import resolve_engine
from superposition.engine.train import train_grid
from superposition.grid import InstanceGrid, sparsity_grid
from superposition.tasks import EncoderDecoder, Param, Shape, Task
from superposition.tasks import identity as identity_task
from superposition.tasks.model import ModelSpec

CPU = torch.device("cpu")


def test_task_choices_are_the_registry_and_each_has_its_yaml():
    assert tasks.names() == ["abs", "identity"]
    assert sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")) == tasks.names()
    for name in tasks.names():
        assert f"name: {name}" in (CONF_DIR / "task" / f"{name}.yaml").read_text()


def test_an_unknown_task_is_one_line_with_the_choices():
    with pytest.raises(ConfigError, match=r"task.name=nope is not a registered task; allowed: abs"):
        tasks.get("nope")


def broken(**change) -> Task:
    return dataclasses.replace(identity_task.IDENTITY, **{"name": "broken", **change})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"forward": lambda params, x, shape: x.sum(-1)}, "forward must return"),
        ({"target": lambda x: x[..., :1]}, "target(x) must return"),
        ({"params": lambda shape: {"W": Param((2, 3), "xavier_normal")}}, "forward fails"),
        (
            {
                "forward": lambda params, x, shape: x * params["W"].sum(),
                "params": lambda shape: {"W": Param((2, 3), "xavier_normal")},
            },
            "fast path trains",
        ),
        (
            {"params": lambda shape: {**identity_task.params(shape), "extra": Param((3,))}},
            "parameter extra does not take part in forward",
        ),
        ({"feature_weights": "W1"}, "feature_weights 'W1' must be a parameter"),
        ({"magnitudes": (1.0, 0.0)}, "magnitudes must be finite"),
        ({"figures": ("nice",)}, "unknown figures ['nice']"),
        ({"metrics": ("signs",)}, "the signs metrics read"),
        ({"name": "no spaces"}, "name must be letters"),
        (
            {"fast_path": lambda shape: EncoderDecoder(tied=True, hidden_relu=True, abs_target=0)},
            "computes another model or target",
        ),
        ({"target": torch.abs, "magnitudes": (-1.0, 1.0)}, "computes another model or target"),
        ({"params": lambda shape: {"W": Param((2, 3, 4), "kaiming_uniform")}}, "a matrix shape"),
    ],
)
def test_a_task_missing_a_part_fails_when_registered(change, message):
    with pytest.raises(tasks.TaskDefinitionError) as err:
        tasks.register(broken(**change))
    assert message in str(err.value)
    assert "broken" not in tasks.names()


def test_a_name_of_another_module_is_refused():
    def forward(params, x, shape):
        return identity_task.forward(params, x, shape)

    with pytest.raises(tasks.TaskDefinitionError, match="the name is taken"):
        tasks.register(dataclasses.replace(identity_task.IDENTITY, forward=forward))
    assert tasks.get("identity") is identity_task.IDENTITY


def test_auto_picks_the_fast_engine_where_a_task_has_one():
    assert resolve_engine(ModelSpec("abs", 4, 2)) == Engine.fast
    assert resolve_engine(ModelSpec("abs", 4, 2), Engine.autograd) == Engine.autograd
    slow = tasks.register(broken(name="no_fast_path", fast_path=lambda shape: None))
    try:
        spec = ModelSpec("no_fast_path", 4, 2)
        assert resolve_engine(spec) == Engine.autograd
        with pytest.raises(ConfigError, match="train.engine=fast: task no_fast_path has no fast"):
            resolve_engine(spec, Engine.fast)
    finally:
        tasks._REGISTRY.pop(slow.name)


ENGINE_SPECS = [
    ModelSpec("identity", 5, 2),  # the fast engine's Gram-matrix path
    ModelSpec("identity", 12, 4, hidden_relu=True),
    ModelSpec("abs", 12, 4),
]


@pytest.mark.parametrize("spec", ENGINE_SPECS, ids=lambda s: f"{s.task}-relu{s.hidden_relu}")
def test_both_engines_train_to_the_same_weights(spec):
    """Same seed, same batches (dense, packed sparse and entry-list ones on the fast side), same
    Adam: after 300 steps the weights agree to float tolerance."""
    grid = sparsity_grid([1.0, 0.1, 0.01], spec.n_features, 0.9, restarts=1)
    trained = {
        engine: train_grid(
            spec,
            grid,
            TrainConfig(steps=300, batch_size=128, log_every=50, engine=engine),
            seed=0,
            device=CPU,
        )
        for engine in (Engine.fast, Engine.autograd)
    }
    fast, autograd = trained[Engine.fast], trained[Engine.autograd]
    moved = fast.params[next(iter(fast.params))]
    assert not torch.allclose(moved, train_grid_start(spec, grid), atol=1e-2)  # it trained
    for name in fast.params:
        torch.testing.assert_close(autograd.params[name], fast.params[name], rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(autograd.loss_history, fast.loss_history, rtol=1e-4, atol=1e-7)


def train_grid_start(spec: ModelSpec, grid: InstanceGrid) -> torch.Tensor:
    from superposition.tasks.model import init_params

    params = init_params(spec, 0, torch.arange(grid.n_instances))
    return params[next(iter(params))]


def test_the_autograd_engine_freezes_a_diverging_instance():
    spec = ModelSpec("abs", 6, 3)
    clean = sparsity_grid([1.0, 0.1], 6, 0.9, restarts=2)
    importance = clean.importance.clone()
    importance[1, 0] = float("inf")
    poisoned = InstanceGrid(clean.feature_probability, importance, clean.restarts)
    cfg = TrainConfig(steps=60, batch_size=64, log_every=20, engine=Engine.autograd)
    result = train_grid(spec, poisoned, cfg, seed=0, device=CPU)
    assert result.finite.tolist() == [True, True, False, False]
    reference = train_grid(spec, clean, cfg, seed=0, device=CPU)
    for name, value in reference.params.items():
        assert torch.equal(result.params[name][:2], value[:2])
        assert torch.isfinite(result.params[name]).all()  # the frozen keep their last values


def test_shape_is_what_a_task_sees():
    assert ModelSpec("identity", 7, 3, hidden_relu=True).shape == Shape(7, 3, True)


TINY_TASK = """
from superposition.tasks import abs as abs_task, register
from dataclasses import replace

register(replace(abs_task.ABS, name="{name}", forward=lambda p, x, s: abs_task.forward(p, x, s),
                 fast_path=lambda shape: None))
"""


def test_a_task_module_imports_by_name_or_path_and_registers_once(tmp_path, monkeypatch):
    (tmp_path / "tiny_tasks.py").write_text(TINY_TASK.format(name="tiny"))
    monkeypatch.chdir(tmp_path)
    try:
        tasks.import_task_module("tiny_tasks")
        tasks.import_task_module(str(tmp_path / "tiny_tasks.py"))  # the same file: no clash
        assert "tiny" in tasks.names()
        assert tasks.module_file("tiny_tasks") == str(tmp_path / "tiny_tasks.py")
        assert resolve_engine(ModelSpec("tiny", 4, 2)) == Engine.autograd
    finally:
        tasks._REGISTRY.pop("tiny", None)


@pytest.mark.parametrize(
    "source, message",
    [
        (None, "could not be imported (FileNotFoundError"),
        ("raise RuntimeError('boom')", "could not be imported (RuntimeError: boom)"),
        (TINY_TASK.format(name="a b"), "task a b: name must be letters"),
    ],
)
def test_a_broken_task_module_is_one_line(tmp_path, source, message):
    path = tmp_path / "broken_tasks.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(ConfigError) as err:
        tasks.import_task_module(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)
