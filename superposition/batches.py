"""Training batches for the fast trainer: the rows of a batch that hold an active feature, packed.

A batch of `batch_size` rows is handed to the gradient code as a `Batch`: a dense block `x` of
`rows` rows that contains every row with an active feature (padded with all-zero rows), plus the
number `zero_rows` of all-zero rows that were left out. An all-zero row needs no data: its output is
ReLU(b), so gradients.py adds its contribution in closed form. Two samplers build batches:

- `DenseSampler` (dense feature probabilities) hashes one uniform per entry, like data.py: the
  entry is active when u < p, and its magnitude is then u / p (uniform given active). The block is
  the whole batch (zero_rows = 0). All work goes into preallocated buffers, in place: on a CPU a
  fresh tensor per operation costs more than the operation.
- `SparseSampler` (sparse ones) draws only the active entries. Flatten the batch row-major into
  batch_size * n_features Bernoulli(p) trials: the gaps between successive active entries are
  independent Geometric(p) draws, floor(log u / log(1 - p)), so cumulative sums of gaps give the
  active positions in order, with exactly the distribution of independent trials. Each active entry
  gets its own uniform magnitude. The cost follows the number of active entries, not the batch.

Both are counter-based (see rng.py): instance i's batch of step t depends on (seed, i, t) alone.
The sparse sampler works with fixed capacities (entries and rows, ten standard deviations above
the mean), so it never needs to ask the device how many entries it drew; the rare batch that would
need more (probability below 1e-15 per instance-step) is cut at the capacity and counted in
`overflows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from superposition import rng
from superposition.config import Task

TRAIN_STREAM = 1  # the stream data.py's dense sampler used for training batches
GAP_STREAM = 4
MAGNITUDE_STREAM = 5
# A level is sampled sparsely when its expected active entries are at most this share of the batch.
SPARSE_MAX_DENSITY = 0.2
CAPACITY_SIGMAS = 10.0
CAPACITY_SLACK = 10


@dataclass
class Batch:
    """x holds every row with an active feature; the other zero_rows rows of the batch are all zero.

    For the sparse sampler, rows of x past the ones that were drawn are all-zero padding.
    """

    x: Annotated[Tensor, "instance row feature"]
    zero_rows: int


def is_sparse(probability: float, n_features: int) -> bool:
    return probability <= SPARSE_MAX_DENSITY and n_features > 1


def _capacity(trials: int, probability: float) -> int:
    mean = trials * probability
    sigma = math.sqrt(trials * probability * (1 - probability))
    return min(trials, math.ceil(mean + CAPACITY_SIGMAS * sigma + CAPACITY_SLACK))


def sparse_capacities(probability: float, batch_size: int, n_features: int) -> tuple[int, int]:
    """(entries, rows) that a sparse batch of this probability holds: mean + 10 sigma + 10."""
    entries = _capacity(batch_size * n_features, probability)
    row_active = -math.expm1(n_features * math.log1p(-probability))
    rows = min(entries, _capacity(batch_size, row_active))
    return entries, rows


def _step_keys(keys: Annotated[Tensor, "instance"], step: int) -> Annotated[Tensor, "instance"]:
    return rng.hash32(keys ^ rng._signed32(rng.hash32_int(step * 2 + 1)))


def _hash_(x: Tensor, tmp: Tensor) -> Tensor:
    """rng.hash32 in place (tmp: scratch of x's shape and dtype)."""
    for shift, mask, multiplier in ((16, 0xFFFF, rng._M1), (15, 0x1FFFF, rng._M2), (16, 0xFFFF, 0)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_(mask))
        if multiplier:
            x.mul_(rng._signed32(multiplier))
    return x


class DenseSampler:
    """Whole batches, one hashed uniform per entry, written into one reused block."""

    def __init__(
        self,
        task: Task,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        probability: float,
        batch_size: int,
        n_features: int,
    ):
        n, device = instances.shape[0], instances.device
        self.task, self.probability = task, probability
        self.keys = rng.instance_keys(seed, TRAIN_STREAM, instances).view(n, 1, 1)
        positions = torch.arange(batch_size * n_features, device=device, dtype=torch.int32)
        self.hashed_positions = rng.hash32(positions).view(1, batch_size, n_features)
        self.bits = torch.empty(n, batch_size, n_features, dtype=torch.int32, device=device)
        self.scratch = torch.empty_like(self.bits)
        self.x = torch.empty(n, batch_size, n_features, device=device)
        self.overflows = torch.zeros(n, dtype=torch.int64, device=device)

    def __call__(self, step: int) -> Batch:
        bits, x, p = self.bits, self.x, self.probability
        torch.bitwise_xor(self.hashed_positions, _step_keys(self.keys, step), out=bits)
        _hash_(bits, self.scratch)
        # the top 24 bits, signed, to a uniform in (0, 1): (k + 0.5) / 2**24
        torch.bitwise_right_shift(bits, 8, out=self.scratch)
        x.copy_(self.scratch).mul_(2.0**-24).add_(0.5 + 2.0**-25)
        if p < 1:
            x.mul_(1 / p)  # u / p: below 1 exactly when the entry is active
            active = self.scratch.view(torch.float32)
            torch.mul(x, -1, out=active).add_(1).clamp_(min=0).ceil_()  # 1 if u/p < 1, else 0
        if self.task == Task.abs:
            x.mul_(2).sub_(1)
        if p < 1:
            x.mul_(active)
        return Batch(x, zero_rows=0)


class SparseDraws:
    """The active entries of the sparse instances of a chunk, drawn together (one pass of the hash
    for all of them: on small tensors the number of operations, not their size, sets the cost).

    Capacity slot k of instance i holds its k-th active entry; the slots run to the largest
    entry capacity among the instances, so instance i's entries do not depend on which instances
    are drawn with it.
    """

    def __init__(
        self,
        task: Task,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        probability: list[float],
        batch_size: int,
        n_features: int,
    ):
        n, device = instances.shape[0], instances.device
        self.task, self.batch_size, self.n_features = task, batch_size, n_features
        capacities = [sparse_capacities(p, batch_size, n_features) for p in probability]
        self.n_slots = max(entries for entries, _ in capacities)
        self.row_capacity = torch.tensor([rows for _, rows in capacities], device=device)
        self.log_stay = torch.tensor(
            [math.log1p(-p) for p in probability], dtype=torch.float64, device=device
        ).view(n, 1)
        self.keys = torch.stack(
            [
                rng.instance_keys(seed, stream, instances)
                for stream in (GAP_STREAM, MAGNITUDE_STREAM)
            ]
        ).view(2, n, 1)
        counters = torch.arange(self.n_slots, device=device, dtype=torch.int32)
        self.hashed_counters = rng.hash32(counters).view(1, 1, -1)
        self.overflows = torch.zeros(n, dtype=torch.int64, device=device)
        self.drawn_step: int | None = None
        self.drawn: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def __call__(
        self, step: int
    ) -> tuple[
        Annotated[Tensor, "instance slot"],
        Annotated[Tensor, "instance slot"],
        Annotated[Tensor, "instance slot"],
        Annotated[Tensor, "instance slot"],
    ]:
        """(row in the batch, packed row, feature, magnitude) of every slot of step `step`;
        magnitude 0 marks a slot that holds no entry. Drawn once per step."""
        if step != self.drawn_step:
            self.drawn, self.drawn_step = self._draw(step), step
        return self.drawn

    def _draw(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n_trials = self.batch_size * self.n_features
        bits = rng.hash32(self.hashed_counters ^ _step_keys(self.keys, step))
        u = ((bits[0].to(torch.int64) & 0xFFFFFFFF).to(torch.float64) + 0.5) * 2.0**-32
        gaps = torch.floor(torch.log(u) / self.log_stay).clamp_(max=n_trials).to(torch.int64)
        position = torch.cumsum(gaps + 1, dim=1) - 1
        in_batch = position < n_trials
        row = torch.div(position, self.n_features, rounding_mode="floor")
        feature = position - row * self.n_features
        new_row = torch.ones_like(in_batch)
        torch.ne(row[:, 1:], row[:, :-1], out=new_row[:, 1:])
        packed_row = torch.cumsum(new_row & in_batch, dim=1) - 1
        row_capacity = self.row_capacity.view(-1, 1)
        kept = in_batch & (packed_row < row_capacity)
        # drawn entries beyond a capacity: a batch that needed more than it holds
        self.overflows += (position[:, -1] < n_trials) | (packed_row[:, -1:] >= row_capacity)[:, 0]
        magnitude = rng.to_unit_interval(bits[1])
        if self.task == Task.abs:
            magnitude = 2 * magnitude - 1
        return row, packed_row, feature, magnitude * kept


class SparseSampler:
    """One group's batches from the chunk's SparseDraws, packed into the rows that hold an entry.

    With exact_rows (the default on a CPU, where reading a count from the tensor costs nothing),
    the packed block has as many rows as the instance with the most non-zero rows needs; on a GPU
    it has the fixed row capacity, so that no step waits for the device.
    """

    def __init__(self, draws: SparseDraws, part: slice, exact_rows: bool | None = None):
        self.draws, self.part = draws, part
        self.batch_size, self.n_features = draws.batch_size, draws.n_features
        n, device = part.stop - part.start, draws.keys.device
        self.n_rows = int(draws.row_capacity[part].max())
        self.exact_rows = device.type == "cpu" if exact_rows is None else exact_rows
        self.instance_index = torch.arange(n, device=device).view(n, 1)
        self.storage = torch.empty(n * self.n_rows * self.n_features, device=device)
        self.last_rows: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def x(self) -> Annotated[Tensor, "instance row feature"]:
        """The packed block at full row capacity (the memory the sampler holds)."""
        return self.storage.view(-1, self.n_rows, self.n_features)

    @property
    def overflows(self) -> Annotated[Tensor, "instance"]:
        return self.draws.overflows[self.part]

    def __call__(self, step: int) -> Batch:
        row, packed_row, feature, magnitude = (t[self.part] for t in self.draws(step))
        n_rows = self.n_rows
        if self.exact_rows:
            n_rows = max(1, min(n_rows, int(packed_row[:, -1].max()) + 1))
        packed_row = packed_row.clamp(0, n_rows - 1)
        index = ((self.instance_index * n_rows + packed_row) * self.n_features + feature).view(-1)
        x = self.storage[: self.instance_index.shape[0] * n_rows * self.n_features]
        x.zero_().index_put_((index,), magnitude.view(-1), accumulate=True)
        self.last_rows = (row, packed_row, magnitude)
        return Batch(x.view(-1, n_rows, self.n_features), zero_rows=self.batch_size - n_rows)


def unpack(sampler: DenseSampler | SparseSampler, batch: Batch) -> Tensor:
    """The whole (instance, batch, feature) batch that `batch` stands for (for tests and checks)."""
    if isinstance(sampler, DenseSampler):
        return batch.x.clone()
    row, packed_row, magnitude = sampler.last_rows
    n = batch.x.shape[0]
    full = torch.zeros(n, sampler.batch_size, sampler.n_features, device=batch.x.device)
    drawn = magnitude != 0
    instance = torch.arange(n, device=row.device).view(n, 1).expand_as(row)
    full[instance[drawn], row[drawn]] = batch.x[instance[drawn], packed_row[drawn]]
    return full


def make_samplers(
    task: Task,
    seed: int,
    instances: Annotated[Tensor, "instance"],
    probability: list[float],
    batch_size: int,
    n_features: int,
) -> list[tuple[slice, DenseSampler | SparseSampler]]:
    """A sampler per run of consecutive instances with the same feature probability; the sparse
    ones share one SparseDraws."""
    runs, start = [], 0
    for end in range(1, len(probability) + 1):
        if end == len(probability) or probability[end] != probability[start]:
            runs.append(slice(start, end))
            start = end
    sparse = [part for part in runs if is_sparse(probability[part.start], n_features)]
    draws = None
    if sparse:
        sparse_instances = torch.cat([instances[part] for part in sparse])
        sparse_probability = [p for part in sparse for p in probability[part]]
        draws = SparseDraws(
            task, seed, sparse_instances, sparse_probability, batch_size, n_features
        )
    samplers, sparse_start = [], 0
    for part in runs:
        if part in sparse:
            size = part.stop - part.start
            sampler = SparseSampler(draws, slice(sparse_start, sparse_start + size))
            sparse_start += size
        else:
            sampler = DenseSampler(
                task, seed, instances[part], probability[part.start], batch_size, n_features
            )
        samplers.append((part, sampler))
    return samplers
