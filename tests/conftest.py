import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

# The devices of the numeric tests that take the `device` fixture: the CPU always, a CUDA GPU
# where there is one (`pytest -m gpu` runs those alone: scripts/gpu_check.py)
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]
# a GPU sums float32 in another order than the CPU, with atomic adds in a varying one
GPU_TOLERANCE_FACTOR = 10


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a numeric test runs on: once on the CPU, once (marked gpu) on CUDA."""
    return torch.device(request.param)


def tolerances(device: torch.device, rtol: float, atol: float) -> dict[str, float]:
    """torch.testing.assert_close's rtol and atol on `device`: as given on the CPU,
    GPU_TOLERANCE_FACTOR times looser on a GPU."""
    factor = 1 if device.type == "cpu" else GPU_TOLERANCE_FACTOR
    return {"rtol": rtol * factor, "atol": atol * factor}


def assert_reproduced(device: torch.device, again: torch.Tensor, first: torch.Tensor) -> None:
    """The same computation done twice agrees: bit for bit on the CPU; on a GPU up to the float
    rounding of atomic adds, whose order varies from run to run (README, "Resume")."""
    if device.type == "cpu":
        assert torch.equal(again, first)
    else:
        torch.testing.assert_close(again, first, rtol=1e-4, atol=1e-6)


def same_on_the_cpu(
    device: torch.device, make: Callable[[torch.device], torch.Tensor]
) -> torch.Tensor:
    """make(device); on a GPU also checked bit for bit against make(cpu): the counter-based random
    numbers (rng.py) do not depend on the device."""
    made = make(device)
    if device.type != "cpu":
        assert torch.equal(made.cpu(), make(torch.device("cpu")))
    return made


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m superposition.run ARGS` in a subprocess, W&B kept offline and quiet."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "superposition.run", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def compose_config():
    """Compose conf/config.yaml with overrides through Hydra's compose API."""
    from hydra import compose, initialize_config_dir

    from superposition.config import register_configs

    register_configs()

    def _compose(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose
