"""Training batches of both engines: the rows of a batch that hold an active feature, packed.

A batch of `batch_size` rows is handed to an engine as a `Batch`: a dense block `x` of `rows` rows
that contains every row with an active feature (padded with all-zero rows), plus the number
`zero_rows` of all-zero rows that were left out. All all-zero rows give the same output, so an
engine adds their contribution once (fast/gradients.py in closed form, ReLU(b); autograd.py through
one forward of a zero row). Two samplers build batches:

- `DenseSampler` (dense feature probabilities) hashes one uniform per entry, like
  tasks/sampling.py: the entry is active when u < p, and its magnitude is then u / p (uniform
  given active). The block is the whole batch (zero_rows = 0). All work goes into preallocated
  buffers, in place: on a CPU a fresh tensor per operation costs more than the operation.
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
from superposition.rng import TRAIN_STREAM
from superposition.tasks.sampling import FeatureDistribution, pair_features

# A level is sampled sparsely when its expected active entries are at most this share of the batch.
SPARSE_MAX_DENSITY = 0.2
CAPACITY_SIGMAS = 10.0
CAPACITY_SLACK = 10
ENTRIES_PER_ROW_DIVISOR = 32
MERGE_MAX_PADDING = 200_000


@dataclass
class Entries:
    """The active entries of a packed batch, one per capacity slot, flattened over instances.

    row: index into the packed rows of all instances (instance * rows + packed row);
    feature: index into instance * n_features + feature; flat: row * n_features + feature;
    magnitude: the value (0 in a slot that holds no entry).
    """

    row: Annotated[Tensor, "slot"]
    feature: Annotated[Tensor, "slot"]
    flat: Annotated[Tensor, "slot"]
    magnitude: Annotated[Tensor, "slot"]


@dataclass
class Batch:
    """A batch of n_rows + zero_rows rows: n_rows packed rows that hold every active entry (padded
    with all-zero rows), and zero_rows all-zero rows that are only counted.

    The packed rows come as a dense block `x`, as a list of `entries`, or both.
    """

    n_instances: int
    n_rows: int
    zero_rows: int
    x: Annotated[Tensor, "instance row feature"] | None = None
    entries: Entries | None = None


def entries_pay(probability: float, n_features: int) -> bool:
    """Whether a sparse batch is better handed over as entries than as a dense block.

    With entries, the encoder's products become a gather and a scatter per entry instead of two
    matrix products over the packed rows; measured on a CPU (scripts/bench.py), that pays when a
    non-empty row holds at most n_features / 32 active entries on average.
    """
    row_active = -math.expm1(n_features * math.log1p(-probability))
    return probability * n_features / row_active <= n_features / ENTRIES_PER_ROW_DIVISOR


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


class DenseSampler:
    """Whole batches, one hashed uniform per entry, written into one reused block.

    With correlated or anticorrelated pairs, the uniforms of the pair block are kept aside and
    turned into features by sampling.pair_features (the reference sampler's function)."""

    def __init__(
        self,
        features: FeatureDistribution,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        probability: float,
        batch_size: int,
        n_features: int,
    ):
        n, device = instances.shape[0], instances.device
        features.check(n_features, probability)
        self.features, self.probability = features, probability
        self.pair_width = features.pair_width
        if self.pair_width:
            self.probabilities = torch.full((n,), probability, device=device)
        self.keys = rng.instance_keys(seed, TRAIN_STREAM, instances).view(n, 1, 1)
        positions = torch.arange(batch_size * n_features, device=device, dtype=torch.int32)
        self.hashed_positions = rng.hash32(positions).view(1, batch_size, n_features)
        self.bits = torch.empty(n, batch_size, n_features, dtype=torch.int32, device=device)
        self.scratch = torch.empty_like(self.bits)
        self.x = torch.empty(n, batch_size, n_features, device=device)
        self.overflows = torch.zeros(n, dtype=torch.int64, device=device)

    @property
    def max_rows(self) -> int:
        return self.x.shape[1]

    def __call__(self, step: int) -> Batch:
        bits, x, p = self.bits, self.x, self.probability
        step_keys = rng.hash32(self.keys ^ rng.step_key(step))
        rng.hash32_(torch.bitwise_xor(self.hashed_positions, step_keys, out=bits), self.scratch)
        # the top 24 bits, signed, to a uniform j / 2**24 in [0, 1) (float32 rounds the half
        # step away; u = 0 has probability 2**-24 and gives an active entry of magnitude 0)
        torch.bitwise_right_shift(bits, 8, out=self.scratch)
        x.copy_(self.scratch).mul_(2.0**-24).add_(0.5 + 2.0**-25)
        pair_uniforms = x[..., : self.pair_width].clone() if self.pair_width else None
        if p < 1:
            x.mul_(1 / p)  # u / p: below 1 exactly when the entry is active
            active = self.scratch.view(torch.float32)
            torch.mul(x, -1, out=active).add_(1).clamp_(min=0).ceil_()  # 1 if u/p < 1, else 0
        self.features.magnitude_(x)
        if p < 1:
            x.mul_(active)
        if pair_uniforms is not None:
            x[..., : self.pair_width] = pair_features(
                pair_uniforms, self.probabilities, self.features
            )
        return Batch(x.shape[0], x.shape[1], zero_rows=0, x=x)


class SparseDraws:
    """The active entries of the sparse instances of a chunk, drawn together: on tensors this small
    the number of operations, not their size, sets the cost.

    Instance i has slots 0 .. capacity_i (one past its entry capacity, so that its sampler sees an
    entry beyond the capacity), laid end to end in one flat array. Slot k holds the k-th active
    entry of the step: its row in the batch, its feature, its packed row (the rank of its row among
    the instance's non-empty rows) and its magnitude (0 past the end of the batch). An instance's
    slots depend on (seed, instance, step, k) alone, not on which instances are drawn with it.
    """

    def __init__(
        self,
        features: FeatureDistribution,
        seed: int,
        instances: Annotated[Tensor, "instance"],
        slots: list[int],
        log_stay: list[float],
        batch_size: int,
        n_features: int,
    ):
        device = instances.device
        self.features, self.batch_size, self.n_features = features, batch_size, n_features
        per_slot = torch.tensor(slots, device=device)
        self.log_stay = torch.tensor(log_stay, dtype=torch.float64, device=device)
        self.log_stay = self.log_stay.repeat_interleave(per_slot)
        self.slot_instance = torch.arange(len(slots), device=device).repeat_interleave(per_slot)
        starts = torch.cumsum(per_slot, dim=0) - per_slot
        self.segment_start = starts.repeat_interleave(per_slot)  # first slot of the slot's instance
        self.is_start = torch.zeros(int(per_slot.sum()), dtype=torch.bool, device=device)
        self.is_start[starts] = True
        counters = torch.arange(self.is_start.shape[0], device=device) - self.segment_start
        keys = torch.stack(
            [
                rng.instance_keys(seed, stream, instances)
                for stream in (rng.GAP_STREAM, rng.MAGNITUDE_STREAM)
            ]
        )
        # a key per (stream, slot), hashed once; a step hashes it with the step's key
        self.slot_keys = rng.hash32(
            keys[:, self.slot_instance] ^ rng.hash32(counters.to(torch.int32))
        )
        self.drawn_step: int | None = None
        self.drawn: tuple[Tensor, ...] | None = None

    def __call__(
        self, step: int
    ) -> tuple[
        Annotated[Tensor, "slot"],
        Annotated[Tensor, "slot"],
        Annotated[Tensor, "slot"],
        Annotated[Tensor, "slot"],
    ]:
        """(row, feature, packed row, magnitude) of every slot of step `step`, drawn once."""
        if step != self.drawn_step:
            self.drawn, self.drawn_step = self._draw(step), step
        return self.drawn

    def _running_sum(self, values: Tensor) -> Tensor:
        """Sum of values[start .. k] over the slots of k's own instance, for every slot k."""
        total = torch.cumsum(values, dim=0)
        return total.sub_((total - values).index_select(0, self.segment_start))

    def _draw(self, step: int) -> tuple[Tensor, ...]:
        bits = rng.hash32(self.slot_keys ^ rng.step_key(step))
        # the 32 bits read as signed, shifted to (k + 0.5) / 2**32 for k = 0 .. 2**32 - 1
        u = bits[0].to(torch.float64).add_(2.0**31 + 0.5).mul_(2.0**-32)
        n_trials = self.batch_size * self.n_features
        gaps = u.log_().div_(self.log_stay).floor_().clamp_(max=n_trials)
        position = self._running_sum(gaps.add_(1).to(torch.int64)).sub_(1)
        row = torch.div(position, self.n_features, rounding_mode="floor")
        feature = position.sub_(row * self.n_features)
        new_row = self.is_start.clone()
        new_row[1:] |= row[1:] != row[:-1]
        packed_row = self._running_sum(new_row.to(torch.int64)).sub_(1)
        magnitude = rng.to_unit_interval(bits[1])
        magnitude = self.features.magnitude_(magnitude)
        return row, feature, packed_row, magnitude.mul_(row < self.batch_size)


class SparseSampler:
    """One group's batches, packed into the rows that hold an entry.

    The group keeps the entries and packed rows of its capacities; a batch that needs more is cut
    there and counted in `overflows`. Unless sync_free (the default on a GPU), a batch has as many
    packed rows and entry slots as the instance with the most needs (on a CPU reading a count
    costs nothing); sync_free, it has the fixed capacities, so that no step waits for the
    device. The batch comes as entries when `entries_pay`, else as a dense block.
    """

    def __init__(
        self,
        draws: SparseDraws,
        first_slot: int,
        n_instances: int,
        n_slots: int,
        n_rows: int,
        sync_free: bool | None = None,
        as_entries: bool = False,
    ):
        device = draws.slot_keys.device
        self.draws, self.batch_size, self.n_features = draws, draws.batch_size, draws.n_features
        self.n_slots, self.n_rows = n_slots, n_rows
        self.slots = slice(first_slot, first_slot + n_instances * (self.n_slots + 1))
        self.sync_free = device.type != "cpu" if sync_free is None else sync_free
        self.as_entries = as_entries
        self.instance_index = torch.arange(n_instances, device=device).view(n_instances, 1)
        self.x_size = n_instances * self.n_rows * self.n_features
        self.storage = torch.empty(0 if self.as_entries else self.x_size, device=device)
        self.overflows = torch.zeros(n_instances, dtype=torch.int64, device=device)
        self.last_drawn: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def max_rows(self) -> int:
        return self.n_rows

    def __call__(self, step: int) -> Batch:
        n_instances, f = self.instance_index.shape[0], self.n_features
        row, feature, packed_row, magnitude = (
            t[self.slots].view(n_instances, -1) for t in self.draws(step)
        )
        in_batch = row < self.batch_size  # (an abs magnitude may be exactly 0)
        last_packed_row = (packed_row[:, :-1] * in_batch[:, :-1]).amax(dim=1)
        # an entry in the slot past the capacity, or a packed row past the row capacity
        self.overflows += in_batch[:, -1] | (last_packed_row >= self.n_rows)
        n_rows, n_slots = self.n_rows, self.n_slots
        if not self.sync_free:
            n_rows = max(1, min(n_rows, int(last_packed_row.max()) + 1))
            n_slots = max(1, min(n_slots, int(in_batch.sum(dim=1).max())))
        row, feature, packed_row = row[:, :n_slots], feature[:, :n_slots], packed_row[:, :n_slots]
        magnitude = magnitude[:, :n_slots] * (packed_row < self.n_rows)
        packed_row = packed_row.clamp(max=n_rows - 1)
        rows = (self.instance_index * n_rows + packed_row).view(-1)
        entries = Entries(
            row=rows,
            feature=(self.instance_index * f + feature).view(-1),
            flat=rows * f + feature.reshape(-1),
            magnitude=magnitude.reshape(-1),
        )
        self.last_drawn = (row, feature, magnitude)
        batch = Batch(n_instances, n_rows, self.batch_size - n_rows)
        if self.as_entries:
            batch.entries = entries
        else:
            x = self.storage[: n_instances * n_rows * f].zero_()
            x.index_put_((entries.flat,), entries.magnitude, accumulate=True)
            batch.x = x.view(n_instances, n_rows, f)
        return batch


def unpack(sampler: DenseSampler | SparseSampler, batch: Batch) -> Tensor:
    """The whole (instance, batch, feature) batch that `batch` stands for (for tests and checks)."""
    if isinstance(sampler, DenseSampler):
        return batch.x.clone()
    row, feature, magnitude = sampler.last_drawn
    full = torch.zeros(
        batch.n_instances, sampler.batch_size, sampler.n_features, device=magnitude.device
    )
    drawn = magnitude != 0
    instance = sampler.instance_index.expand_as(row)
    full[instance[drawn], row[drawn], feature[drawn]] = magnitude[drawn]
    return full


def _runs(probability: list[float]) -> list[slice]:
    """Maximal runs of consecutive instances with the same feature probability."""
    runs, start = [], 0
    for end in range(1, len(probability) + 1):
        if end == len(probability) or probability[end] != probability[start]:
            runs.append(slice(start, end))
            start = end
    return runs


def _sparse_groups(
    runs: list[slice],
    probability: list[float],
    batch_size: int,
    n_features: int,
    dense_blocks: bool = False,
) -> list[tuple[slice, int, int]]:
    """Adjacent sparse runs merged into groups, with each group's (entry, row) capacities.

    Every group costs a fixed number of operations per step, so adjacent runs share a group when
    they have the same row capacity (e.g. levels where every row may hold an entry), or when both
    are handed over as entries and padding the sparser one's packed rows to the group's adds at
    most MERGE_MAX_PADDING entries to the dense work. (For dense blocks, measured on a CPU, the
    padding cost more than the merge saved.)
    """
    groups: list[tuple[slice, int, int]] = []
    for part in runs:
        n_slots, n_rows = sparse_capacities(probability[part.start], batch_size, n_features)
        if groups and groups[-1][0].stop == part.start:
            previous, previous_slots, previous_rows = groups[-1]
            extra_rows = abs(previous_rows - n_rows) * (
                part.stop - part.start if n_rows < previous_rows else previous.stop - previous.start
            )
            entries = not dense_blocks and entries_pay(probability[previous.start], n_features)
            entries = entries and entries_pay(probability[part.start], n_features)
            if previous_rows == n_rows or (
                entries and extra_rows * n_features <= MERGE_MAX_PADDING
            ):
                merged = slice(previous.start, part.stop)
                groups[-1] = (merged, max(previous_slots, n_slots), max(previous_rows, n_rows))
                continue
        groups.append((part, n_slots, n_rows))
    return groups


def make_samplers(
    features: FeatureDistribution,
    seed: int,
    instances: Annotated[Tensor, "instance"],
    probability: list[float],
    batch_size: int,
    n_features: int,
    sync_free: bool | None = None,
    dense_blocks: bool = False,
) -> list[tuple[slice, DenseSampler | SparseSampler]]:
    """The samplers of a chunk, by slices of its instances: one dense sampler per run of a dense
    feature probability, one sparse sampler per group of sparse runs (all drawing from one
    SparseDraws). sync_free: see SparseSampler (default: on a GPU). dense_blocks: every batch as
    a dense block, never as entries (for the autograd engine). With correlated or anticorrelated
    pairs every run is sampled densely: the sparse draws know no pairs."""
    runs = _runs(probability)
    with_pairs = features.pair_width > 0
    dense = [
        part for part in runs if with_pairs or not is_sparse(probability[part.start], n_features)
    ]
    sparse_runs = [part for part in runs if part not in dense]
    sparse = _sparse_groups(sparse_runs, probability, batch_size, n_features, dense_blocks)
    slots, log_stay = [], []
    for part, n_slots, _ in sparse:
        for i in range(part.start, part.stop):
            slots.append(1 + n_slots)
            log_stay.append(math.log1p(-probability[i]))
    if sparse:
        sparse_instances = torch.cat([instances[part] for part, _, _ in sparse])
        draws = SparseDraws(
            features, seed, sparse_instances, slots, log_stay, batch_size, n_features
        )
    samplers, first_slot = [], 0
    for part, n_slots, n_rows in sparse:
        as_entries = not dense_blocks and entries_pay(max(probability[part]), n_features)
        size = part.stop - part.start
        sampler = SparseSampler(
            draws, first_slot, size, n_slots, n_rows, sync_free=sync_free, as_entries=as_entries
        )
        first_slot = sampler.slots.stop
        samplers.append((part, sampler))
    for part in dense:
        sampler = DenseSampler(
            features, seed, instances[part], probability[part.start], batch_size, n_features
        )
        samplers.append((part, sampler))
    return sorted(samplers, key=lambda pair: pair[0].start)


@dataclass
class Group:
    """Consecutive instances of a chunk that share one sampler (one feature probability, or
    merged sparse levels, see make_samplers), with views of the chunk's parameters, gradients and
    importance (taken once: they live as long)."""

    part: slice
    sampler: DenseSampler | SparseSampler
    params: dict[str, Tensor]
    grads: dict[str, Tensor]
    importance: Annotated[Tensor, "instance feature"]
    # the fast engine's buffers for this group (engine/fast/gradients.py Workspace)
    work: object | None = None


def groups_of(
    samplers: list[tuple[slice, DenseSampler | SparseSampler]],
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    importance: Annotated[Tensor, "instance feature"],
) -> list[Group]:
    return [
        Group(
            part,
            sampler,
            {k: v[part] for k, v in params.items()},
            {k: v[part] for k, v in grads.items()},
            importance[part],
        )
        for part, sampler in samplers
    ]
