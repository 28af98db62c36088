"""The configuration schema: dataclasses registered in Hydra's ConfigStore.

Types and key names are checked by OmegaConf when Hydra composes the YAML files against this
schema; ranges and cross-key rules are checked by `validate`, before any work starts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


class InitScheme(str, Enum):
    """Scale of the initial weights (tasks/model.py, init_scales)."""

    auto = "auto"  # course for abs, per_instance for identity (README, "Initialisation")
    course = "course"  # the course's effective scale: fan-in d_hidden · n_features
    per_instance = "per_instance"  # each matrix's own fan-in (and fan-out for Xavier)


class Engine(str, Enum):
    """How the trainer computes gradients (engine/__init__.py)."""

    auto = "auto"  # fast where the task has a fast path, else autograd
    fast = "fast"  # hand-written gradients on packed sparse batches
    autograd = "autograd"  # the task's reference forward through torch.autograd


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"


class LRSchedule(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class TaskConfig:
    # a registered task (superposition/tasks/): identity, abs, or one of task.module's
    name: str = "identity"
    # a module (importable from the current directory, or a .py path) that registers your own
    # tasks; README, "Add your own task"
    module: str | None = None


@dataclass
class ModelConfig:
    n_features: int = 5
    d_hidden: int = 2
    # tasks that allow it (identity): ReLU on the hidden layer, out = ReLU(Wᵀ ReLU(W x) + b)
    # (the privileged basis)
    hidden_relu: bool = False
    # scale of the initial weights: auto, course or per_instance (README, "Initialisation")
    init: InitScheme = InitScheme.auto


@dataclass
class ImportanceConfig:
    # importance of feature i is decay**i
    decay: float = 0.9


@dataclass
class SweepConfig:
    # feature probabilities p = 1 - S, one grid point each, in this order
    feature_probability: list[float] = field(
        default_factory=lambda: [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    )
    # when set, the grid is relative_importance × feature_probability (r outer): the last feature's
    # importance is r times feature 0's (the phase diagram); empty = importance decay**i only
    relative_importance: list[float] = field(default_factory=list)


@dataclass
class DataConfig:
    # the course's correlated features: features (0, 1), (2, 3), ... of the first
    # correlated_pairs pairs are active together (one draw, probability p) with independent
    # magnitudes; the next anticorrelated_pairs pairs never are: the pair is active with
    # probability 2p and then exactly one of its two features is (needs p <= 0.5)
    correlated_pairs: int = 0
    anticorrelated_pairs: int = 0


@dataclass
class TrainConfig:
    restarts: int = 8
    steps: int = 5000
    batch_size: int = 1024
    lr: float = 1e-3
    lr_schedule: LRSchedule = LRSchedule.constant
    # auto (fast where the task has a fast path), fast, or autograd (any task)
    engine: Engine = Engine.auto
    optimizer: Optimizer = Optimizer.adam
    weight_decay: float = 0.0
    # record the loss of every instance every this many steps (no host sync in between)
    log_every: int = 50
    # instances trained at once; 0 = as many as the memory budget allows
    chunk_size: int = 0
    # memory for one chunk of instances, in MiB; 0 = half of what the device has free
    memory_budget_mb: float = 0.0
    # steps between checkpoints in the output directory; 0 = only when the job is told to stop
    checkpoint_every: int = 1000
    # CPU threads of torch; 0 = auto: the CPUs the job was given less those busy at its start,
    # one for training steps too small to share (engine/threads.py)
    threads: int = 0


@dataclass
class EvalConfig:
    # sampled rows per grid point of the held-out loss; see README ("How the loss is estimated")
    batch_size: int = 131072


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    project: str = "superposition"
    entity: str | None = None
    group: str | None = None
    log_every: int = 100


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # set by a preset of conf/preset/: the run ends with that experiment's verdict (report.md)
    preset: str | None = None
    seed: int = 0
    device: Device = Device.auto


def register_configs() -> None:
    """Make the schema the base of conf/config.yaml (its defaults list names `base_config`), and
    register the resolver that names a multirun job's directory."""
    ConfigStore.instance().store(name="base_config", node=Config)
    OmegaConf.register_new_resolver("job_dir", job_dir_name, replace=True)


# longest job directory name kept as it is (file names end at 255 bytes on most systems)
JOB_DIR_MAX = 200


def job_dir_name(override_dirname: str) -> str:
    """A multirun job's directory: its overrides (Hydra's override_dirname), so that a job keeps
    its directory when the swept lists grow or are reordered. A slash becomes '_' (it would nest
    folders), a name too long is cut and ends in a hash of the whole, and no overrides at all is
    'default'."""
    name = override_dirname.replace("/", "_") or "default"
    if len(name.encode()) <= JOB_DIR_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[: JOB_DIR_MAX - 13].decode(errors="ignore") + "-" + digest


class ConfigError(ValueError):
    """A value a user set is out of range; the message names the key and what is allowed."""


FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: a smaller p becomes 0
FLOAT32_MAX = 3.4028234663852886e38
# the loss history holds steps // log_every values per instance
MAX_RECORDED_STEPS = 1_000_000


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Check ranges and cross-key rules; raise ConfigError with a one-line message on the first.
    (What only the task registry or the presets know is checked by tasks.check_config and
    analysis.verdicts.check_preset.)"""
    _validate_model(cfg)
    _validate_sweep(cfg)
    _validate_data(cfg)
    _validate_train(cfg)
    _require(
        0 <= cfg.seed < 2**63,
        f"seed must be in [0, 2^63), got {cfg.seed} (seeds outside that range would repeat others)",
    )
    _require(cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}")
    _require(cfg.wandb.log_every >= 1, f"wandb.log_every must be >= 1, got {cfg.wandb.log_every}")


def _validate_model(cfg: Config) -> None:
    _require(
        cfg.model.n_features >= 1, f"model.n_features must be >= 1, got {cfg.model.n_features}"
    )
    _require(cfg.model.d_hidden >= 1, f"model.d_hidden must be >= 1, got {cfg.model.d_hidden}")
    decay = cfg.importance.decay
    _require(
        math.isfinite(decay) and decay > 0,
        f"importance.decay must be a finite number > 0, got {decay}",
    )


def _validate_sweep(cfg: Config) -> None:
    grid = cfg.sweep.feature_probability
    _require(len(grid) > 0, "sweep.feature_probability is empty; list probabilities in (0, 1]")
    for p in grid:
        _require(
            _is_number(p) and FLOAT32_TINY <= p <= 1,
            f"sweep.feature_probability must hold numbers in [{FLOAT32_TINY:.2g}, 1] (above 0 "
            f"in float32), got {p}",
        )
    for r in cfg.sweep.relative_importance:
        _require(
            _is_number(r) and 0 < r <= FLOAT32_MAX,
            f"sweep.relative_importance must hold numbers in (0, {FLOAT32_MAX:.3g}] (finite in "
            f"float32), got {r}",
        )
    _require(
        not cfg.sweep.relative_importance or cfg.model.n_features >= 2,
        "sweep.relative_importance needs model.n_features >= 2 (it sets the last feature's "
        "importance relative to feature 0's)",
    )


def _validate_data(cfg: Config) -> None:
    pairs, anti = cfg.data.correlated_pairs, cfg.data.anticorrelated_pairs
    _require(
        pairs >= 0 and anti >= 0,
        f"data.correlated_pairs and data.anticorrelated_pairs must be >= 0, got {pairs}, {anti}",
    )
    _require(
        2 * (pairs + anti) <= cfg.model.n_features,
        f"data.correlated_pairs + data.anticorrelated_pairs = {pairs + anti} pairs need "
        f"{2 * (pairs + anti)} features; model.n_features is {cfg.model.n_features}",
    )
    if anti:
        for p in cfg.sweep.feature_probability:
            _require(
                p <= 0.5,
                f"data.anticorrelated_pairs needs every feature probability <= 0.5 (a pair is "
                f"active with probability 2p), got {p}",
            )


def _validate_train(cfg: Config) -> None:
    for key in ("restarts", "steps", "batch_size", "log_every"):
        value = getattr(cfg.train, key)
        _require(value >= 1, f"train.{key} must be >= 1, got {value}")
    recorded = cfg.train.steps // cfg.train.log_every
    _require(
        recorded <= MAX_RECORDED_STEPS,
        f"train.steps / train.log_every = {recorded} recorded losses per instance; at most "
        f"{MAX_RECORDED_STEPS}: raise train.log_every",
    )
    _require(
        math.isfinite(cfg.train.lr) and cfg.train.lr > 0,
        f"train.lr must be a finite number > 0, got {cfg.train.lr}",
    )
    _require(
        cfg.train.weight_decay >= 0,
        f"train.weight_decay must be >= 0, got {cfg.train.weight_decay}",
    )
    _require(
        cfg.train.threads >= 0,
        f"train.threads must be >= 0 (0 = automatic), got {cfg.train.threads}",
    )
    _require(
        cfg.train.chunk_size >= 0,
        f"train.chunk_size must be >= 0 (0 = automatic), got {cfg.train.chunk_size}",
    )
    _require(
        math.isfinite(cfg.train.memory_budget_mb) and cfg.train.memory_budget_mb >= 0,
        "train.memory_budget_mb must be a finite number >= 0 (0 = automatic), got "
        f"{cfg.train.memory_budget_mb}",
    )
    every = cfg.train.checkpoint_every
    _require(
        every >= 0, f"train.checkpoint_every must be >= 0 (0 = only on a stop signal), got {every}"
    )
