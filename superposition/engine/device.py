"""Where a job runs and how many instances fit in memory at once."""

from __future__ import annotations

import ctypes
import os
import platform

import torch

from superposition.config import ConfigError, Device
from superposition.engine.fast.gradients import gram_pays
from superposition.engine.fast.packed_batches import is_sparse, sparse_capacities
from superposition.tasks.model import ModelSpec

BYTES_PER_FLOAT = 4
# Buffers of batch size per instance that a training step keeps (batches.py, gradients.py): the
# dense sampler's bits and scratch and its block x, the output and its scratch, one for abs's
# target at log steps; hidden and its gradient. Sparse batches need fewer.
ACTIVATIONS_PER_FEATURE = 6
ACTIVATIONS_PER_HIDDEN = 2
# A sparse batch: its packed block, the output and its scratch; and the integer and float
# temporaries of drawing one entry slot (batches.SparseDraws and SparseSampler), measured.
PACKED_PER_FEATURE = 3
BYTES_PER_SLOT = 256
# parameter, gradient, two Adam moments, the copy that restores frozen instances, one spare
COPIES_PER_PARAMETER = 6
FREE_MEMORY_SHARE = 0.5


def resolve_device(choice: Device) -> torch.device:
    if choice == Device.cuda:
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is visible to torch; allowed: auto, cpu")
        return torch.device("cuda")
    if choice == Device.auto and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def bytes_per_instance(
    spec: ModelSpec, batch_rows: int, probabilities: list[float] | None = None
) -> int:
    """Peak memory one instance adds to a training step (an upper estimate): the worst of a
    dense batch and the sparse batches of the given feature probabilities (a level may be dense
    after all, e.g. with correlated pairs)."""
    n_params = sum(torch.Size(shape).numel() for shape in spec.param_shapes().values())
    gram = 2 * spec.n_features**2 if gram_pays(spec) else 0  # G = WᵀW and its gradient
    dense = batch_rows * (
        ACTIVATIONS_PER_FEATURE * spec.n_features + ACTIVATIONS_PER_HIDDEN * spec.d_hidden
    )
    batch_floats = [dense]
    for p in probabilities or []:
        if is_sparse(p, spec.n_features):
            slots, rows = sparse_capacities(p, batch_rows, spec.n_features)
            packed = rows * (
                PACKED_PER_FEATURE * spec.n_features + ACTIVATIONS_PER_HIDDEN * spec.d_hidden
            )
            batch_floats.append(packed + (slots + 1) * BYTES_PER_SLOT // BYTES_PER_FLOAT)
    worst = max(batch_floats) if probabilities else dense
    return BYTES_PER_FLOAT * (worst + gram + COPIES_PER_PARAMETER * n_params)


def plan_chunk_size(
    spec: ModelSpec,
    n_instances: int,
    batch_rows: int,
    device: torch.device,
    chunk_size: int = 0,
    memory_budget_mb: float = 0.0,
    probabilities: list[float] | None = None,
) -> int:
    """Instances trained at once: chunk_size if set, else what the budget (or free memory) holds."""
    if chunk_size > 0:
        return min(chunk_size, n_instances)
    if memory_budget_mb > 0:
        budget = int(memory_budget_mb * 2**20)
    else:
        budget = int(FREE_MEMORY_SHARE * free_memory_bytes(device))
    fits = budget // bytes_per_instance(spec, batch_rows, probabilities)
    return max(1, min(n_instances, fits))


def release_freed_memory(device: torch.device) -> None:
    """Hand the memory a finished chunk freed back to the system (glibc's malloc_trim, on a CPU).

    glibc keeps freed heap blocks for reuse; without this, the resident size of a chunked run
    grows with the number of chunks. (Lowering glibc's mmap threshold instead would also do it,
    but for the whole process: every large temporary of any later computation would then be
    mapped and unmapped anew.) Elsewhere (other C libraries; GPUs, whose caching allocator keeps
    blocks for the next chunk) nothing is done.
    """
    if device.type != "cpu" or platform.system() != "Linux":
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
