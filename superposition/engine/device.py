"""Where a job runs and how many instances fit in memory at once."""

from __future__ import annotations

import ctypes
import os
import platform

import torch

from superposition.config import ConfigError, Device

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


def plan_chunk_size(
    bytes_per_instance: int,
    n_instances: int,
    device: torch.device,
    chunk_size: int = 0,
    memory_budget_mb: float = 0.0,
) -> int:
    """Instances trained at once: chunk_size if set, else what the budget (or half the device's
    free memory) holds at bytes_per_instance each (the engine's estimate)."""
    if chunk_size > 0:
        return min(chunk_size, n_instances)
    if memory_budget_mb > 0:
        budget = int(memory_budget_mb * 2**20)
    else:
        budget = int(FREE_MEMORY_SHARE * free_memory_bytes(device))
    fits = budget // bytes_per_instance
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
