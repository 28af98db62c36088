"""Counter-based random numbers: a uniform is a hash of (seed, stream, instance, step, position).

Every instance draws from its own stream, so its data and initial weights do not depend on how
many other instances are trained beside it (chunking), on the device, or on where a run resumed.
The hash is Wellons' `lowbias32` on int32 tensors; multiplication wraps modulo 2**32.
"""

from __future__ import annotations

import torch
from torch import Tensor

# every random stream of the package by its id (instance_keys' `stream`), in one place so that no
# two uses share one; the initial weights use INIT_STREAM · 1000 + the parameter's own stream
TRAIN_STREAM = 1  # training batches (tasks/sampling.py, engine/batches.py)
EVAL_STREAM = 2  # held-out rows, plain (analysis/evaluate.py)
INIT_STREAM = 3  # initial weights (tasks/model.py)
GAP_STREAM = 4  # the sparse training sampler's gaps between active entries (engine/batches.py)
MAGNITUDE_STREAM = 5  # ... and their magnitudes
EVAL_AT_LEAST_TWO_STREAM = 6  # held-out rows given two or more active features (tasks/sampling.py)
EVAL_PILOT_STREAM = 7  # ... the few rows per stratum that decide how many each gets
STREAMS = (
    TRAIN_STREAM,
    EVAL_STREAM,
    INIT_STREAM,
    GAP_STREAM,
    MAGNITUDE_STREAM,
    EVAL_AT_LEAST_TWO_STREAM,
    EVAL_PILOT_STREAM,
)

_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_MASK32 = 0xFFFFFFFF


def _signed32(value: int) -> int:
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def hash32_int(x: int) -> int:
    """`hash32` on one Python int, for keys computed on the host (no device sync)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * _M1) & _MASK32
    x ^= x >> 15
    x = (x * _M2) & _MASK32
    x ^= x >> 16
    return x


# The constants as 0-dim tensors: an operation with a Python number first wraps it in a tensor,
# which costs more than the operation on the small tensors of a sparse batch.
_SHIFT_15, _SHIFT_16 = torch.tensor(15, dtype=torch.int32), torch.tensor(16, dtype=torch.int32)
_LOW_16, _LOW_17 = torch.tensor(0xFFFF, dtype=torch.int32), torch.tensor(0x1FFFF, dtype=torch.int32)
_MULTIPLIER_1 = torch.tensor(_signed32(_M1), dtype=torch.int32)
_MULTIPLIER_2 = torch.tensor(_signed32(_M2), dtype=torch.int32)


def hash32(x: Tensor) -> Tensor:
    """lowbias32 on an int32 tensor (bits read as unsigned); a bijection of 32-bit words.

    The right shifts are arithmetic on int32, so the bits shifted in are masked off."""
    x = x ^ ((x >> _SHIFT_16) & _LOW_16)
    x = x * _MULTIPLIER_1
    x = x ^ ((x >> _SHIFT_15) & _LOW_17)
    x = x * _MULTIPLIER_2
    return x ^ ((x >> _SHIFT_16) & _LOW_16)


def hash32_(x: Tensor, scratch: Tensor) -> Tensor:
    """hash32 in place, for large blocks (scratch: a tensor of x's shape and dtype)."""
    for shift, mask, multiplier in (
        (_SHIFT_16, _LOW_16, _MULTIPLIER_1),
        (_SHIFT_15, _LOW_17, _MULTIPLIER_2),
        (_SHIFT_16, _LOW_16, None),
    ):
        torch.bitwise_right_shift(x, shift, out=scratch)
        x.bitwise_xor_(scratch.bitwise_and_(mask))
        if multiplier is not None:
            x.mul_(multiplier)
    return x


def step_key(step: int) -> int:
    """The signed 32-bit key of training step `step`, mixed into every per-step hash."""
    return _signed32(hash32_int(step * 2 + 1))


def combine(*parts: int) -> int:
    """One 32-bit key from several ints (seed, stream id, step, ...)."""
    key = 0x9E3779B9
    for part in parts:
        key = hash32_int(key ^ hash32_int(part & _MASK32) ^ (part >> 32))
    return key


def instance_keys(seed: int, stream: int, instances: Tensor) -> Tensor:
    """Int32 key per instance (global instance indices), for one seed and one named stream."""
    base = _signed32(combine(seed, stream))
    return hash32(hash32(instances.to(torch.int32)) ^ base)


def to_unit_interval(bits: Tensor) -> Tensor:
    """24 random bits to a float32 in the open interval (0, 1)."""
    return ((bits & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)


class UniformStream:
    """Uniforms of shape (instance, rows, cols) for a chunk of instances, one block per step.

    The position counter of an entry is row * cols + col, hashed once and kept; a block of step t
    xors it with the per-instance key of step t and hashes again.
    """

    def __init__(self, keys: Tensor, rows: int, cols: int, row_offset: int = 0):
        positions = torch.arange(rows * cols, device=keys.device, dtype=torch.int64)
        positions = positions + row_offset * cols
        self.hashed_positions = hash32(positions.to(torch.int32)).view(1, rows, cols)
        self.keys = keys.view(-1, 1, 1)

    def block(self, step: int) -> Tensor:
        step_keys = hash32(self.keys ^ step_key(step))
        return to_unit_interval(hash32(self.hashed_positions ^ step_keys))
