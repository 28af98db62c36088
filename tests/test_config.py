import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from superposition.config import Config, ConfigError, LRSchedule, Optimizer, validate
from superposition.run import describe_user_error, to_config


def test_default_is_abs_sparsity(compose_config):
    config = to_config(compose_config())
    assert isinstance(config, Config)
    assert config.task.name == "abs"
    assert (config.model.n_features, config.model.d_hidden) == (100, 40)
    assert config.importance.decay == 0.8
    assert config.sweep.feature_probability == [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    assert config.train.batch_size == 1024 and config.train.lr == 1e-3
    assert config.wandb.mode.value == "offline"


def test_identity_task_defaults(compose_config):
    config = to_config(compose_config("task=identity"))
    assert config.task.name == "identity"
    assert (config.model.n_features, config.model.d_hidden) == (5, 2)
    assert config.importance.decay == 0.9
    assert config.model.hidden_relu is False


def test_overrides_reach_the_schema(compose_config):
    config = to_config(
        compose_config(
            "task=identity",
            "sweep=sparsity",
            "train.restarts=64",
            "model.n_features=20",
            "model.d_hidden=5",
            "model.hidden_relu=true",
            "train.optimizer=adamw",
            "train.weight_decay=0.01",
            "train.lr_schedule=cosine",
            "sweep.feature_probability=[0.5,0.05]",
        )
    )
    assert config.train.restarts == 64
    assert (config.model.n_features, config.model.d_hidden) == (20, 5)
    assert config.train.optimizer == Optimizer.adamw
    assert config.train.lr_schedule == LRSchedule.cosine
    assert config.sweep.feature_probability == [0.5, 0.05]


def test_unknown_task_lists_choices(compose_config):
    with pytest.raises(MissingConfigException) as err:
        compose_config("task=foo")
    assert (
        describe_user_error(err.value) == "task=foo is not a known choice; allowed: abs, identity"
    )


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.foo=1", "model.foo"),
        ("model.n_features=abc", "model.n_features"),
        ("train.optimizer=sgd", "train.optimizer"),
        ("train.lr_schedule=step", "train.lr_schedule"),
        ("device=tpu", "device"),
    ],
)
def test_schema_rejects_at_composition(compose_config, override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(override)
    line = describe_user_error(err.value)
    assert line.startswith(f"{key}: ") and "\n" not in line


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "sweep.feature_probability=[0.5,1.5]",
            "sweep.feature_probability must hold numbers in [1.2e-38, 1]",
        ),
        (
            "sweep.feature_probability=[0]",
            "sweep.feature_probability must hold numbers in [1.2e-38, 1]",
        ),
        ("sweep.feature_probability=[]", "sweep.feature_probability is empty"),
        ("model.n_features=0", "model.n_features must be >= 1"),
        ("model.d_hidden=0", "model.d_hidden must be >= 1"),
        ("train.restarts=0", "train.restarts must be >= 1"),
        ("train.steps=0", "train.steps must be >= 1"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("importance.decay=0", "importance.decay must be a finite number > 0"),
        ("importance.decay=-0.5", "importance.decay must be a finite number > 0"),
        ("train.lr=0", "train.lr must be a finite number > 0"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
        ("model.hidden_relu=true", "model.hidden_relu=true is not an option of task abs"),
    ],
)
def test_range_errors_name_the_key(compose_config, override, message):
    with pytest.raises(ConfigError) as err:
        to_config(compose_config(override))
    assert str(err.value).startswith(message)


def test_validate_accepts_the_structured_defaults():
    validate(OmegaConf.to_object(OmegaConf.structured(Config)))
