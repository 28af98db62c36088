"""What a task is: one toy model and its data, defined in one place.

A task module (tasks/identity.py, tasks/abs.py, or a researcher's own) builds a `Task` and hands
it to `tasks.register`, which checks every part on a tiny model before accepting it. The engines,
the evaluation, the metrics and the figures read everything task-specific from it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from torch import Tensor

# initial distributions a parameter can have (tasks/model.py, init_scales)
INITS = ("kaiming_uniform", "xavier_normal", "zeros")
# figures of figures/run_figures.py a task may ask for (features_2d needs d_hidden = 2, the phase
# diagram replaces the per-level figures of a relative-importance sweep)
FIGURES = ("features_2d", "wtw", "neurons", "dimensionality", "feature_loss", "loss", "restarts")
# metric groups of analysis/metrics.py a task may ask for beyond the geometry of its feature
# directions (every task gets that): the monosemantic fraction of its neurons (where
# privileged_basis holds), and which signs of x the abs architecture computes of |x|
METRICS = ("neurons", "signs")


@dataclass(frozen=True)
class Param:
    """One parameter of one instance: its shape and how it starts.

    init: kaiming_uniform (uniform in ±sqrt(6 / fan_in)), xavier_normal (normal with std
    sqrt(2 / (fan_in + fan_out))) or zeros; `stream` is its random stream (default: from its name).
    """

    shape: tuple[int, ...]
    init: str = "zeros"
    stream: int | None = None

    def stream_of(self, name: str) -> int:
        return self.stream if self.stream is not None else 100 + zlib.crc32(name.encode()) % 10**6


@dataclass(frozen=True)
class Shape:
    """The sizes a task's parameters are built from (a ModelSpec without the task)."""

    n_features: int
    d_hidden: int
    hidden_relu: bool = False


@dataclass(frozen=True)
class EncoderDecoder:
    """The fast engine's model family (engine/fast/gradients.py), out = ReLU(decode(h) + b_final)
    with h = encode(x) and an optional ReLU on h:

    - tied: one matrix W (hidden, feature), encoder W and decoder Wᵀ (identity);
    - untied: W1 (hidden, feature) and W2 (feature, hidden) (abs);
    target x, or |x| with abs_target.
    """

    tied: bool
    hidden_relu: bool
    abs_target: bool

    @property
    def encoder(self) -> str:
        return "W" if self.tied else "W1"

    def forward(
        self, params: dict[str, Tensor], x: Annotated[Tensor, "instance batch feature"]
    ) -> Annotated[Tensor, "instance batch feature"]:
        """The model the fast engine computes, written plainly (register compares it with the
        task's own forward)."""
        return self.preactivation(params, x).relu()

    def preactivation(
        self, params: dict[str, Tensor], x: Annotated[Tensor, "instance batch feature"]
    ) -> Annotated[Tensor, "instance batch feature"]:
        """decode(h) + b_final, the output before its ReLU."""
        encoder = params["W"] if self.tied else params["W1"]
        decoder = params["W"] if self.tied else params["W2"].transpose(-1, -2)
        hidden = x @ encoder.transpose(-1, -2)
        if self.hidden_relu:
            hidden = hidden.relu()
        return hidden @ decoder + params["b_final"].unsqueeze(1)

    def target(self, x: Tensor) -> Tensor:
        return x.abs() if self.abs_target else x


Forward = Callable[
    [dict[str, Tensor], Annotated[Tensor, "instance batch feature"], Shape],
    Annotated[Tensor, "instance batch feature"],
]


@dataclass(frozen=True)
class Task:
    """One toy model and its data.

    name: the `task.name=` choice. summary: one line for help and docs.
    params(shape): every parameter of one instance by name (the names of weights.safetensors).
    forward(params, x, shape): the reference forward, (instance, batch, feature) in and out,
        params stacked with the instance axis first; the autograd engine trains it as written.
    target(x): what the model should output for input x.
    magnitudes: an active feature's value is uniform in (low, high].
    feature_weights: the (hidden, feature) parameter whose columns are the features' directions
        (metrics and figures); decoder_weights: the (feature, hidden) one that reads hidden units
        back out, None when tied to feature_weights.
    default_init: what model.init=auto stands for ("course" or "per_instance").
    privileged_basis(shape): whether the hidden units are neurons (a ReLU acts on them).
    hidden_relu_option: whether model.hidden_relu=true is allowed.
    figures, metrics: the names (FIGURES, METRICS) that apply.
    fast_path(shape): the fast engine's description of the model, None when it has none.
    baselines(importance, p, d_hidden): the closed-form reference losses of a level, by name:
        "constant" (the best model that represents nothing: weights 0, best bias) and
        "dedicated" (no superposition: the most important features that fit represented exactly,
        the rest constant); None when the task has none.
    closed_forms(importance, p, shape): the closed-form losses of named configurations of a
        phase-diagram cell (identity 2 -> 1: drop, dedicate, antipodal), None where none apply.
    """

    name: str
    summary: str
    params: Callable[[Shape], dict[str, Param]]
    forward: Forward
    target: Callable[[Tensor], Tensor]
    magnitudes: tuple[float, float] = (0.0, 1.0)
    feature_weights: str = "W"
    decoder_weights: str | None = None
    default_init: str = "per_instance"
    privileged_basis: Callable[[Shape], bool] = lambda shape: False
    hidden_relu_option: bool = False
    figures: tuple[str, ...] = FIGURES
    metrics: tuple[str, ...] = ()
    fast_path: Callable[[Shape], EncoderDecoder | None] = field(default=lambda shape: None)
    baselines: Callable[[Sequence[float], float, int], dict[str, float]] | None = None
    closed_forms: Callable[[Sequence[float], float, Shape], dict[str, float] | None] | None = None


def constant_output_loss(importance: Sequence[float], p: float, exact: int = 0) -> float:
    """The loss (the mean over features of importance_i · E[(target_i − out_i)²]) of a model whose
    `exact` most important outputs are exact and whose others are the constant p / 2, for a target
    that is uniform on [0, 1] when active (probability p) and 0 otherwise: E[t] = p / 2 and
    E[t²] = p / 3, so a constant output costs at best I_i · (p/3 − p²/4) (identity: t = x; abs:
    t = |x|). Ties in importance: any `exact` of them (the loss is the same)."""
    rest = sorted(importance, reverse=True)[exact:]
    return sum(rest) * (p / 3 - p**2 / 4) / len(importance)
