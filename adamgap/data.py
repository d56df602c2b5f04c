"""The synthetic data model of Definition 3.1, as a LightningDataModule.

Each example is ``x = (x_1, ..., x_P)`` with label ``y in {+1, -1}``: one patch (random or fixed
position) is the *feature patch* ``y v``; every other patch is a *noise patch*
``xi = xi' - alpha y v`` where ``xi'`` is ``N(0, sigma_p^2)`` on ``s`` coordinates drawn
uniformly outside the support of ``v`` and zero elsewhere. The paper uses P = 2 and v = e_1.

Every replica k of an ensemble draws its data from its own seed, so replica k of a K-replica
run sees exactly the data of a single run with that seed. Train and test sets come from
separate random streams: changing ``n_test`` does not change the training set.

Mini-batches (``data.batch_size`` < n) come in epochs (Tang et al. 2025, the follow-up on
stochastic Adam, trains for a number of passes over the data): each epoch draws, per replica,
an order of the examples from the stream (seed, epoch), a permutation (``sampling=shuffle``:
every example once) or uniform draws (``sampling=replace``), and cuts it into batches; a
remainder of n mod B examples is dropped or makes a smaller last batch (``last_batch``). The
batch of step t is a function of t alone, so a resumed run continues the order exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from adamgap.config import DataConfig, steps_per_epoch
from adamgap.patches import CSR, SparsePatches, stable_argsort, to_dense_patches

# batches of at least this share of the n examples take their backward product with the
# training set's transpose: below it a sort per epoch costs less (docs/benchmark.md)
SOURCE_SHARE = 0.25


def generator(seed: int, stream: str) -> torch.Generator:
    """An independent random stream per (seed, purpose): data and W(0) never share draws."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class PatchSet:
    """Examples of K replicas: every patch a list of (coordinate, value) pairs, labels
    ``y`` (K, N) in {+1., -1.} and ``feature_patch`` (K, N), the feature patch's position.

    The lists are held in one of two equivalent forms, the other one derived on first use:

    - ``rows``: a CSR matrix (K*N*P, d), row (k, i, p) holding patch p of example i of replica
      k with its own nonzeros only (Definition 3.1: the feature patch ``y v`` has |supp v|
      entries, a noise patch s + |supp v|): what :func:`make_patches` builds
      (:meth:`from_rows`);
    - ``index``/``value`` (K, N, P, L): L pairs per patch, zero-padded: what the real-image
      tasks build (the constructor), and what fixed-width code reads (``theory.convex``).
    """

    def __init__(self, index: Tensor | None, value: Tensor | None, y: Tensor,
                 feature_patch: Tensor, d: int, rows: CSR | None = None) -> None:
        self._index, self._value, self._rows = index, value, rows
        self.y, self.feature_patch, self.d = y, feature_patch, d

    @classmethod
    def from_rows(cls, rows: CSR, y: Tensor, feature_patch: Tensor, d: int) -> PatchSet:
        return cls(None, None, y, feature_patch, d, rows)

    @property
    def patches(self) -> int:
        return self._index.shape[2] if self._index is not None else \
            self.rows.shape[0] // self.y.numel()

    @property
    def rows(self) -> CSR:
        if self._rows is None:
            L = self._index.shape[-1]
            self._rows = CSR.from_padded(self._index.reshape(-1, L), self._value.reshape(-1, L),
                                         self.d)
        return self._rows

    @property
    def index(self) -> Tensor:
        if self._index is None:
            self._index, self._value = self._padded()
        return self._index

    @property
    def value(self) -> Tensor:
        if self._value is None:
            self._index, self._value = self._padded()
        return self._value

    def _padded(self) -> tuple[Tensor, Tensor]:
        """``rows`` as (K, N, P, L) lists, L the longest row, short rows padded with
        (coordinate 0, value 0)."""
        rows, (K, N), P = self._rows, self.y.shape, self.patches
        length = rows.crow.diff()
        L = int(length.max()) if len(length) else 0
        row = rows.row_ids()
        slot = torch.arange(len(rows.col)) - rows.crow[row]  # position within its row
        index = torch.zeros(K * N * P, L, dtype=torch.long)
        value = torch.zeros(K * N * P, L, dtype=rows.val.dtype)
        index[row, slot], value[row, slot] = rows.col, rows.val
        return index.view(K, N, P, L), value.view(K, N, P, L)

    def example_rows(self, examples: Tensor) -> Tensor:
        """The CSR rows of ``examples`` (K, B) (per replica, indices into its N), (K*B*P,)
        in (replica, example, patch) order."""
        (K, N), P = self.y.shape, self.patches
        first = (torch.arange(K, device=examples.device)[:, None] * N + examples) * P
        return (first[..., None] + torch.arange(P, device=examples.device)).reshape(-1)

    def inputs(self, sparse: bool, rows: Tensor | None = None) -> Tensor | SparsePatches:
        """Network input of all examples, or of ``rows`` (K, B) per replica."""
        K, P = self.y.shape[0], self.patches
        if not sparse:
            index, value = self.index, self.value
            if rows is not None:
                pick = rows[:, :, None, None].expand(-1, -1, *index.shape[2:])
                index, value = index.gather(1, pick), value.gather(1, pick)
            return to_dense_patches(index, value, self.d)
        picked = self.rows if rows is None else self.rows.gather_rows(self.example_rows(rows))
        return SparsePatches.from_rows(picked, K, P)

    def noise_patches(self, sparse: bool) -> Tensor | SparsePatches:
        """The noise patches ``xi_{i,p}`` of every example: (K, N, P-1, ...) in patch order."""
        (K, N), P = self.y.shape, self.patches
        order = torch.argsort((torch.arange(P) == self.feature_patch[..., None]).int(), dim=-1,
                              stable=True)[..., : P - 1]  # (K, N, P-1): non-feature patches
        if sparse:
            first = (torch.arange(K)[:, None] * N + torch.arange(N)) * P  # (K, N)
            picked = self.rows.gather_rows((first[..., None] + order).reshape(-1))
            return SparsePatches.from_rows(picked, K, P - 1)
        pick = order[..., None].expand(-1, -1, -1, self.index.shape[-1])
        return to_dense_patches(self.index.gather(2, pick), self.value.gather(2, pick), self.d)


def make_patches(seed: int, n: int, d: int, s: int, sigma_p: float, alpha: float, v: Tensor,
                 labels: str, feature_position: str, patches: int, stream: str) -> PatchSet:
    """Draw ``n`` examples of Definition 3.1 for one replica (``PatchSet`` with K = 1), each
    patch stored with its own nonzeros."""
    g = generator(seed, stream)
    y, where = labels_and_positions(n, labels, feature_position, patches, g)
    support = v.nonzero().flatten()
    free = (v == 0).nonzero().flatten()  # noise never touches the feature's coordinates
    feat = torch.arange(patches)[None, :] == where[:, None]  # (n, P): the feature patches
    noise_idx, noise_val = sparse_noise(n, patches, free, s, sigma_p, g, used=~feat)
    S = support.numel()
    # noise patch: xi' on its s coordinates, - alpha y v on supp(v); columns ascending
    y_patch = y[:, None].expand(n, patches)
    index = torch.cat([noise_idx[~feat], support.expand(n * (patches - 1), S)], dim=1)
    value = torch.cat([noise_val[~feat], -alpha * y_patch[~feat][:, None] * v[support]], dim=1)
    index, order = index.sort(dim=1)
    value = value.gather(1, order)
    # every row as s + S slots, a feature patch (y v on supp(v), nothing else) in its first S
    width = s + S
    col = torch.zeros(n, patches, width, dtype=torch.long)
    val = torch.zeros(n, patches, width)
    keep = torch.zeros(n, patches, width, dtype=torch.bool)
    col[~feat], val[~feat] = index, value
    keep[~feat] = value != 0  # as the padded lists did: an exact zero is no entry
    col[..., :S][feat] = support
    val[..., :S][feat] = y_patch[feat][:, None] * v[support]
    keep[..., :S][feat] = True
    crow = torch.zeros(n * patches + 1, dtype=torch.long)
    crow[1:] = keep.view(-1, width).sum(1).cumsum(0)
    rows = CSR(crow, col[keep], val[keep], (n * patches, d))
    return PatchSet.from_rows(rows, y[None], where[None], d)


def labels_and_positions(n: int, labels: str, feature_position: str, patches: int,
                         g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Labels y (n,) in {+1., -1.} and the feature patch's position (n,) of n examples."""
    if labels == "balanced":
        y = torch.ones(n)
        y[n // 2:] = -1.0  # n/2 of each class (ceil for +1 when n is odd)
        y[: n - n // 2] = 1.0
        y = y[torch.randperm(n, generator=g)]
    else:
        y = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    if feature_position == "random":
        where = torch.randint(patches, (n,), generator=g)
    else:
        where = torch.zeros(n, dtype=torch.long)
    return y, where


def sparse_noise(n: int, patches: int, free: Tensor, s: int, sigma_p: float,
                 g: torch.Generator, used: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """xi' of Definition 3.1 for n x P patches: s coordinates, uniform without replacement among
    ``free``, each N(0, sigma_p^2). Returns coordinates and values, (n, P, s) each.

    ``used`` (n, P): the patches whose noise is kept. Every patch's random keys are drawn (the
    random stream stays that of the whole draw), but only the used ones are ranked; the others'
    coordinates are left as the first s free ones (the caller overwrites them)."""
    keys = torch.rand(n, patches, free.numel(), generator=g)
    if used is None:
        index = free[keys.topk(s, dim=-1, sorted=False).indices.sort(dim=-1).values]
    else:
        index = free[:s].expand(n, patches, s).clone()
        top = keys[used].topk(s, dim=-1, sorted=False).indices  # the same set, in any order
        index[used] = free[top.sort(dim=-1).values]
    return index, torch.randn(n, patches, s, generator=g) * sigma_p


def stack(sets: list[PatchSet]) -> PatchSet:
    """Stack single-replica sets along the replica dimension."""
    y = torch.cat([p.y for p in sets])
    where = torch.cat([p.feature_patch for p in sets])
    if all(p._index is None for p in sets):  # per-patch nonzeros: concatenate the rows
        parts = [p.rows for p in sets]
        ends = torch.tensor([0, *(len(r.col) for r in parts)]).cumsum(0)
        crow = torch.cat([parts[0].crow[:1],
                          *(r.crow[1:] + e for r, e in zip(parts, ends[:-1], strict=True))])
        rows = CSR(crow, torch.cat([r.col for r in parts]), torch.cat([r.val for r in parts]),
                   (sum(r.shape[0] for r in parts), sets[0].d))
        return PatchSet.from_rows(rows, y, where, sets[0].d)
    return PatchSet(torch.cat([p.index for p in sets]), torch.cat([p.value for p in sets]), y,
                    where, sets[0].d)


@dataclass
class StepChunk:
    """The batches of consecutive optimizer steps that one Lightning training step runs
    (``GapModule.training_step``), in step order."""

    batches: list


class StepBatches(Dataset):
    """Item c holds the training batches of steps ``start + c k`` to ``start + c k + k - 1``
    (k = ``steps_per_batch``): the full batch, or an epoch's mini-batches
    (``SyntheticDataModule.train_batch``). A function of the step alone, so a resumed run sees
    the same data order as an uninterrupted one.

    The run is one Lightning epoch of ``steps / k`` items and the length says so even when
    resumed at ``start``: Lightning restores its in-epoch batch counter to ``start / k`` and
    ends the epoch when that counter reaches the length (a shorter length would end it early
    and replay the data). Items past ``(steps - start) / k`` are never fetched."""

    def __init__(self, dm: SyntheticDataModule, steps: int, start: int = 0, k: int = 1) -> None:
        self.dm, self.steps, self.start, self.k = dm, steps, start, k

    def __len__(self) -> int:
        return self.steps // self.k

    def __getitem__(self, c: int) -> StepChunk:
        first = self.start + c * self.k
        return StepChunk([self.dm.train_batch(t) for t in range(first, first + self.k)])


@dataclass
class Epoch:
    """The mini-batches of one or more consecutive epochs, in step order: inputs and labels
    (K, b)."""

    x: list
    y: list[Tensor]


@dataclass
class ExampleBlocks:
    """A block-diagonal patch matrix (K*N*P rows, ``SparsePatches``) in which every example
    has the same number E of nonzeros (Definition 3.1: |supp v| in its feature patch, s +
    |supp v| in each noise patch), as fixed-width arrays: an order of the examples is then a
    plain row gather (a copy of contiguous blocks) instead of a ragged one."""

    col: Tensor  # (K*N, E) block-diagonal columns, the example's patches in order
    val: Tensor  # (K*N, E)
    length: Tensor  # (K*N, P) nonzeros of each patch row
    shape: tuple[int, int, int, int]  # (K, N, P, d)

    @staticmethod
    def of(x: SparsePatches) -> ExampleBlocks | None:
        """``x`` as blocks, or None when its examples differ in their number of nonzeros."""
        K, N, P, d = x.shape
        per = x.matrix.crow[::P].diff()  # nonzeros of each example, (K*N,)
        if len(per) == 0 or bool((per != per[0]).any()):
            return None
        E = int(per[0])
        m = x.matrix
        return ExampleBlocks(m.col.view(K * N, E), m.val.view(K * N, E),
                             m.crow.diff().view(K * N, P), x.shape)


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """``sizes`` as (size, count) runs of equal consecutive values."""
    out: list[tuple[int, int]] = []
    for size in sizes:
        if out and out[-1][0] == size:
            out[-1] = (size, out[-1][1] + 1)
        else:
            out.append((size, 1))
    return out


def sparse_epoch(train: SparsePatches, examples: ExampleBlocks | None, y: Tensor,
                 blocks: list[Tensor], source: bool = False) -> Epoch:
    """The epoch whose batch i holds the examples ``blocks[i]`` (K, b) of each replica (indices
    into its N), built at once: the epoch's examples as one matrix with rows ordered (batch,
    replica, example, patch), so that batch i is a block of consecutive rows, and the labels.
    The backward product of a batch needs its transpose: with ``source`` (batches of distinct
    examples) each batch carries the training set's transpose and its rows in the set
    (``SparsePatches.transpose_matmul``); else the transposes of all batches come from one
    stable sort of the nonzeros by (batch, column), which keeps each column's rows in order
    (as ``CSR.transpose`` of the batch alone would). A batch is then a handful of views: no
    kernel runs for it at its step. ``examples``: the fixed-width form of ``train``
    (``ExampleBlocks.of``), or None (a ragged gather)."""
    K, N, P, d = train.shape
    D, device = K * d, y.device
    sizes = [b.shape[1] for b in blocks]
    first = torch.arange(K, device=device)[:, None] * N
    ids = torch.cat([(first + b).reshape(-1) for b in blocks])  # (batch, replica, example)
    rows = (ids[:, None] * P + torch.arange(P, device=device)).view(-1)  # their patch rows
    if examples is not None:
        E = examples.col.shape[1]
        # index_select: a copy of whole rows, several times faster than advanced indexing
        col = examples.col.index_select(0, ids).view(-1)
        val = examples.val.index_select(0, ids).view(-1)
        length = examples.length.index_select(0, ids).view(-1)  # (rows,)
        nnz = [K * b * E for b in sizes]
    else:
        x = train.matrix.gather_rows(rows)
        col, val, length = x.col, x.val, x.crow.diff()
        ends = x.crow[[0, *np.cumsum([K * b * P for b in sizes]).tolist()]].tolist()
        nnz = np.diff(ends).tolist()
    n_rows = [K * b * P for b in sizes]
    crows, row_pos = [], 0
    for R, count in _runs(n_rows):
        # each batch's own row pointers, from 0 (embedding_bag's offsets must start there)
        crow = torch.zeros(count, R + 1, dtype=torch.long, device=device)
        torch.cumsum(length[row_pos:row_pos + R * count].view(count, R), 1, out=crow[:, 1:])
        crows += list(crow.unbind(0))
        row_pos += R * count
    shapes = [(K, b, P, d) for b in sizes]
    cols, vals = col.split(nnz), val.split(nnz)
    labels = [y.gather(1, b) for b in blocks]
    if source:
        train_t = train.transpose()
        return Epoch([SparsePatches(CSR(c, col, val, (R, D)), None, shape, train_t, r)
                      for c, col, val, r, R, shape in zip(crows, cols, vals, rows.split(n_rows),
                                                          n_rows, shapes, strict=True)], labels)
    batch_ids, first_batch = [], 0
    for size, count in _runs(nnz):
        batch_ids.append(torch.arange(first_batch, first_batch + count, device=device)
                         .repeat_interleave(size))
        first_batch += count
    batch = torch.cat(batch_ids)  # (nnz,) the batch of every nonzero
    local_rows = [torch.arange(R, device=device).repeat(count) for R, count in _runs(n_rows)]
    local_row = torch.repeat_interleave(torch.cat(local_rows), length, output_size=len(col))
    key = batch * D + col
    order = stable_argsort(key, len(blocks) * D)
    crow_t = torch.zeros(len(blocks), D + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.bincount(key, minlength=len(blocks) * D).view(-1, D), 1,
                 out=crow_t[:, 1:])
    rows_t = local_row.index_select(0, order).split(nnz)
    vals_t = val.index_select(0, order).split(nnz)
    return Epoch([SparsePatches(CSR(c, col, val, (R, D)), CSR(ct, rt, vt, (D, R)), shape)
                  for c, col, val, ct, rt, vt, R, shape in zip(crows, cols, vals, crow_t, rows_t,
                                                               vals_t, n_rows, shapes,
                                                               strict=True)], labels)


def dense_epoch(train: Tensor, y: Tensor, blocks: list[Tensor]) -> Epoch:
    """:func:`sparse_epoch` for dense inputs ``train`` (K, N, P, d)."""
    return Epoch([train.gather(1, b[:, :, None, None].expand(-1, -1, *train.shape[2:]))
                  for b in blocks], [y.gather(1, b) for b in blocks])


class SyntheticDataModule(L.LightningDataModule):
    """Definition 3.1 data for replicas ``seeds`` (arguments: the ``data.*`` settings of
    ``config.DataConfig``, null meaning what it says there); exposes what the alignment
    callback reads:
    ``features`` (K, 2, d) rows ``j v`` for j = +1, -1, ``train_noise`` (K, n, P-1, d) the
    noise patches ``xi_i`` and ``y_train`` (K, n).

    How mini-batches are drawn (``sampling``, ``last_batch``) is the schema's default here; the
    datamodule of ``data.task=synthetic`` (:class:`Definition31DataModule`) takes it from the
    config (the real-image tasks built on this class do not read those keys)."""

    shards_for_ddp = True  # each DDP rank takes its own block of examples (``_shard``)
    sampling: str = DataConfig.sampling
    last_batch: str = DataConfig.last_batch

    def __init__(self, seeds: list[int], *, d: int, n: int, n_test: int, s: int,
                 sigma_p: float | None, alpha: float, v: list[float] | None, labels: str,
                 feature_position: str, patches: int, batch_size: int | None,
                 sparse: bool | None, max_steps: int, steps_per_batch: int) -> None:
        super().__init__()
        self.seeds, self.d, self.n, self.n_test, self.s = list(seeds), d, n, n_test, s
        self.sigma_p = 1.0 / math.sqrt(s) if sigma_p is None else sigma_p
        self.alpha, self.labels, self.feature_position = alpha, labels, feature_position
        self.patches, self.max_steps, self.steps_per_batch = patches, max_steps, steps_per_batch
        self.batch_size = n if batch_size is None else batch_size
        self.steps_per_epoch = steps_per_epoch(n, self.batch_size, self.last_batch)
        self.v = torch.zeros(d) if v is None else torch.tensor(v, dtype=torch.float32)
        if v is None:
            self.v[0] = 1.0  # e_1
        nnz = (s + int((self.v != 0).sum())) / d
        self.sparse = nnz < 0.25 if sparse is None else sparse
        self._made = False
        self._device_cache: dict = {}
        self._epochs: dict[int, Epoch] = {}  # group of epochs -> its batches
        self._examples: dict[torch.device, ExampleBlocks | None] = {}

    # -- data ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._made:
            return
        self.train = stack([self.make_set(k, self.n, "train") for k in self.seeds])
        self.test = stack([self.make_set(k, self.n_test, "test") for k in self.seeds])
        self.x_train = self.train.inputs(self.sparse)
        self.x_test = self.test.inputs(self.sparse)
        self.y_train, self.y_test = self.train.y, self.test.y
        self.features = self.class_features()
        self.train_noise = self.train.noise_patches(self.sparse)
        self.rank, self.world = self._rank_world()
        self.full_batch = self._shard(self.train, self.x_train, self.y_train)
        self.val_batches = [self.full_batch, self._shard(self.test, self.x_test, self.y_test)]
        self._made = True

    def _rank_world(self) -> tuple[int, int]:
        """(rank, number of ranks) under DDP; (0, 1) in a single process or without a Trainer.
        Training batches must split evenly: each rank's loss is the mean over its shard and DDP
        averages the ranks' gradients, which equals the full mean only for equal shards."""
        if self.trainer is None or self.trainer.world_size == 1:
            return 0, 1
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if self.n % world or self.batch_size % world:  # then n mod B (a kept last batch) too
            raise ValueError(f"data.n={self.n} and the batch size {self.batch_size} must be "
                             f"divisible by the number of DDP processes ({world})")
        return rank, world

    def _shard(self, patches: PatchSet, x, y: Tensor):
        """This rank's contiguous block of examples as (inputs, labels); everything when alone.
        (Evaluation blocks may differ in size: the metrics sum counts over ranks.)"""
        if self.world == 1:
            return x, y
        rows = torch.tensor_split(torch.arange(y.shape[1]), self.world)[self.rank]
        rows = rows.expand(y.shape[0], -1)  # (K, N / world)
        return patches.inputs(self.sparse, rows), y.gather(1, rows)

    def make_set(self, seed: int, n: int, stream: str) -> PatchSet:
        """``n`` examples of replica ``seed`` from random stream ``stream`` (train | test)."""
        return make_patches(seed, n, self.d, self.s, self.sigma_p, self.alpha, self.v,
                            self.labels, self.feature_position, self.patches, stream)

    def class_features(self) -> Tensor:
        """The direction of class j in row j, (K, 2, d): here ``j v``."""
        return torch.stack([self.v, -self.v])[None].expand(len(self.seeds), 2, self.d)

    # -- epochs -------------------------------------------------------------------------------
    def order(self, epoch: int) -> Tensor:
        """The examples of epoch ``epoch`` in the order they are used, (K, S) per replica:
        a permutation of the n examples (shuffle) or S uniform draws (replace), seeded by
        (seed, epoch)."""
        S = self.steps_per_epoch * self.batch_size if self.last_batch == "drop" else self.n
        draws = []
        for k in self.seeds:
            g = generator(k, f"epoch{epoch}")
            draws.append(torch.randperm(self.n, generator=g)[:S] if self.sampling == "shuffle"
                         else torch.randint(self.n, (S,), generator=g))
        return torch.stack(draws)

    def blocks(self, epoch: int) -> list[Tensor]:
        """Per batch of the epoch, this rank's examples (K, b) of each replica (under DDP each
        rank takes its b = B / world of every batch)."""
        out = []
        for part in self.order(epoch).split(self.batch_size, dim=1):
            b = part.shape[1] // self.world
            out.append(part[:, self.rank * b:(self.rank + 1) * b])
        return out

    @functools.cached_property
    def epochs_per_build(self) -> int:
        """Epochs whose batches are built at once (``Epoch``): enough for some 32 steps, so that
        building costs per nonzero, not per call, as long as they hold at most ~4M nonzeros."""
        nnz = len(self.x_train.matrix.col) if self.sparse else self.x_train.numel()
        return max(1, min(-(-32 // self.steps_per_epoch), 4_000_000 // max(nnz, 1)))

    @functools.cached_property
    def source_transpose(self) -> bool:
        """Whether sparse batches take their backward product with the training set's transpose
        (``SparsePatches.transpose_matmul``) rather than with their own: for batches of
        distinct examples (``shuffle``) of at least ``n * SOURCE_SHARE``, where it is the
        cheaper (docs/benchmark.md)."""
        return self.sampling == "shuffle" and self.batch_size >= self.n * SOURCE_SHARE

    def epochs(self, group: int) -> Epoch:
        """The mini-batches of epochs ``group G .. group G + G - 1`` (G = ``epochs_per_build``),
        in step order, built on first use on the device that trains (the current and the
        previous group are kept)."""
        if group not in self._epochs:
            device = (self.trainer.strategy.root_device if self.trainer is not None
                      else torch.device("cpu"))
            x, y = self.on_device(self.x_train, self.y_train, device)
            G = self.epochs_per_build
            blocks = [b.to(device) for e in range(group * G, group * G + G)
                      for b in self.blocks(e)]
            if self.sparse:
                if device not in self._examples:
                    self._examples[device] = ExampleBlocks.of(x)
                self._epochs[group] = sparse_epoch(x, self._examples[device], y, blocks,
                                                   source=self.source_transpose)
            else:
                self._epochs[group] = dense_epoch(x, y, blocks)
            for old in [g for g in self._epochs if g < group - 1]:
                del self._epochs[old]
        return self._epochs[group]

    def train_batch(self, step: int):
        """(inputs, labels) of training step ``step``: batch ``step mod S`` of epoch
        ``step // S`` (S steps per epoch), or the full batch."""
        if self.batch_size == self.n and self.sampling == "shuffle":
            return self.full_batch  # every step the whole set (its order changes nothing)
        group, i = divmod(step, self.steps_per_epoch * self.epochs_per_build)
        batches = self.epochs(group)
        return batches.x[i], batches.y[i]

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(StepBatches(self, self.max_steps, start, self.steps_per_batch),
                          batch_size=None)

    def val_dataloader(self) -> list[DataLoader]:
        """Full training set (train error and loss) and test set, one batch each (under DDP,
        this rank's block of each)."""
        return [DataLoader([batch], batch_size=None) for batch in self.val_batches]

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        if isinstance(batch, StepChunk):
            return StepChunk([self.transfer_batch_to_device(b, device, dataloader_idx)
                              for b in batch.batches])
        x, y = batch
        if y.device == device:  # an epoch's batches are built where they train
            return batch
        if all(x is not fixed for fixed, _ in self.val_batches):
            return x.to(device), y.to(device)
        # the full batch is the same object every step: move it once, not every step
        return self.on_device(x, y, device)

    def on_device(self, x, y: Tensor, device: torch.device):
        """(x, y) moved to ``device`` once, then from a cache."""
        key = (id(x), str(device))
        if key not in self._device_cache:
            self._device_cache[key] = (x.to(device), y.to(device))
        return self._device_cache[key]


class Definition31DataModule(SyntheticDataModule):
    """``data.task=synthetic``: :class:`SyntheticDataModule` with the epochs' sampling
    (``data.sampling``: shuffle | replace) and last partial batch (``data.last_batch``: drop |
    keep) from the config."""

    def __init__(self, seeds: list[int], *, d: int, n: int, n_test: int, s: int,
                 sigma_p: float | None, alpha: float, v: list[float] | None, labels: str,
                 feature_position: str, patches: int, batch_size: int | None,
                 sparse: bool | None, sampling: str, last_batch: str, max_steps: int,
                 steps_per_batch: int) -> None:
        self.sampling, self.last_batch = sampling, last_batch  # read by the base's __init__
        super().__init__(seeds, d=d, n=n, n_test=n_test, s=s, sigma_p=sigma_p, alpha=alpha,
                         v=v, labels=labels, feature_position=feature_position,
                         patches=patches, batch_size=batch_size, sparse=sparse,
                         max_steps=max_steps, steps_per_batch=steps_per_batch)
