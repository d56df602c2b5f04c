"""The synthetic data model of Definition 3.1, as a LightningDataModule.

Each example is ``x = (x_1, ..., x_P)`` with label ``y in {+1, -1}``: one patch (random or fixed
position) is the *feature patch* ``y v``; every other patch is a *noise patch*
``xi = xi' - alpha y v`` where ``xi'`` is ``N(0, sigma_p^2)`` on ``s`` coordinates drawn
uniformly outside the support of ``v`` and zero elsewhere. The paper uses P = 2 and v = e_1.

Every replica k of an ensemble draws its data from its own seed, so replica k of a K-replica
run sees exactly the data of a single run with that seed. Train and test sets come from
separate random streams: changing ``n_test`` does not change the training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from adamgap.patches import SparsePatches, to_dense_patches


def generator(seed: int, stream: str) -> torch.Generator:
    """An independent random stream per (seed, purpose): data and W(0) never share draws."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


@dataclass
class PatchSet:
    """Examples of K replicas as per-patch coordinate lists (a compact sparse format).

    ``index``/``value`` (K, N, P, L): L (coordinate, value) pairs per patch, zero-padded;
    ``y`` (K, N) labels in {+1., -1.}; ``feature_patch`` (K, N) position of the feature patch.
    """

    index: Tensor
    value: Tensor
    y: Tensor
    feature_patch: Tensor
    d: int

    def inputs(self, sparse: bool, rows: Tensor | None = None) -> Tensor | SparsePatches:
        """Network input of all examples, or of ``rows`` (K, B) per replica."""
        index, value = self.index, self.value
        if rows is not None:
            pick = rows[:, :, None, None].expand(-1, -1, *index.shape[2:])
            index, value = index.gather(1, pick), value.gather(1, pick)
        if sparse:
            return SparsePatches.from_coordinates(index, value, self.d)
        return to_dense_patches(index, value, self.d)

    def noise_patches(self, sparse: bool) -> Tensor | SparsePatches:
        """The noise patches ``xi_{i,p}`` of every example: (K, N, P-1, ...) in patch order."""
        K, N, P, L = self.index.shape
        order = torch.argsort((torch.arange(P) == self.feature_patch[..., None]).int(), dim=-1,
                              stable=True)[..., : P - 1]  # (K, N, P-1): non-feature patches
        pick = order[..., None].expand(-1, -1, -1, L)
        sub = PatchSet(self.index.gather(2, pick), self.value.gather(2, pick), self.y,
                       self.feature_patch, self.d)
        return sub.inputs(sparse)


def make_patches(seed: int, n: int, d: int, s: int, sigma_p: float, alpha: float, v: Tensor,
                 labels: str, feature_position: str, patches: int, stream: str) -> PatchSet:
    """Draw ``n`` examples of Definition 3.1 for one replica (``PatchSet`` with K = 1)."""
    g = generator(seed, stream)
    y, where = labels_and_positions(n, labels, feature_position, patches, g)
    support = v.nonzero().flatten()
    free = (v == 0).nonzero().flatten()  # noise never touches the feature's coordinates
    feat = torch.arange(patches)[None, :] == where[:, None]  # (n, P): the feature patches
    noise_idx, noise_val = sparse_noise(n, patches, free, s, sigma_p, g, used=~feat)
    L = s + support.numel()
    index = torch.empty(n, patches, L, dtype=torch.long)
    value = torch.empty(n, patches, L)
    # noise patch: xi' on its s coordinates, - alpha y v on supp(v)
    index[..., :s] = noise_idx
    value[..., :s] = noise_val
    index[..., s:] = support
    value[..., s:] = -alpha * y[:, None, None] * v[support]
    # feature patch: y v on supp(v), nothing else
    index[feat] = torch.cat([support.new_zeros(s), support])
    value[feat] = torch.cat([torch.zeros(n, s), y[:, None] * v[support]], dim=1)
    return PatchSet(index[None], value[None], y[None], where[None], d)


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
    return PatchSet(*(torch.cat([getattr(p, f) for p in sets]) for f in
                      ("index", "value", "y", "feature_patch")), sets[0].d)


@dataclass
class StepChunk:
    """The batches of consecutive optimizer steps that one Lightning training step runs
    (``GapModule.training_step``), in step order."""

    batches: list


class StepBatches(Dataset):
    """Item c holds the training batches of steps ``start + c k`` to ``start + c k + k - 1``
    (k = ``steps_per_batch``): the full batch, or for mini-batches slices of a per-replica,
    per-epoch random permutation. A function of the step alone, so a resumed run sees the same
    data order as an uninterrupted one.

    The run is one epoch of ``steps / k`` items and the length says so even when resumed at
    ``start``: Lightning restores its in-epoch batch counter to ``start / k`` and ends the epoch
    when that counter reaches the length (a shorter length would end it early and replay the
    data). Items past ``(steps - start) / k`` are never fetched."""

    def __init__(self, dm: SyntheticDataModule, steps: int, start: int = 0, k: int = 1) -> None:
        self.dm, self.steps, self.start, self.k = dm, steps, start, k

    def __len__(self) -> int:
        return self.steps // self.k

    def __getitem__(self, c: int) -> StepChunk:
        first = self.start + c * self.k
        return StepChunk([self.dm.train_batch(t) for t in range(first, first + self.k)])


class SyntheticDataModule(L.LightningDataModule):
    """Definition 3.1 data for replicas ``seeds`` (arguments: the ``data.*`` settings of
    ``config.DataConfig``, null meaning what it says there); exposes what the alignment
    callback reads:
    ``features`` (K, 2, d) rows ``j v`` for j = +1, -1, ``train_noise`` (K, n, P-1, d) the
    noise patches ``xi_i`` and ``y_train`` (K, n)."""

    shards_for_ddp = True  # each DDP rank takes its own block of examples (``_shard``)

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
        self.v = torch.zeros(d) if v is None else torch.tensor(v, dtype=torch.float32)
        if v is None:
            self.v[0] = 1.0  # e_1
        nnz = (s + int((self.v != 0).sum())) / d
        self.sparse = nnz < 0.25 if sparse is None else sparse
        self._made = False
        self._device_cache: dict = {}

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
        if self.n % world or self.batch_size % world:
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

    def train_batch(self, step: int):
        """(inputs, labels) of training step ``step``."""
        if self.batch_size == self.n:
            return self.full_batch
        per_epoch = self.n // self.batch_size
        epoch, i = divmod(step, per_epoch)
        b = self.batch_size // self.world  # under DDP, this rank's part of the batch
        start = i * self.batch_size + self.rank * b
        rows = torch.stack([torch.randperm(self.n, generator=generator(k, f"epoch{epoch}"))
                            for k in self.seeds])[:, start:start + b]
        return self.train.inputs(self.sparse, rows), self.y_train.gather(1, rows)

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
        # the full batch is the same object every step: move it once, not every step
        x, y = batch
        if all(x is not fixed for fixed, _ in self.val_batches):
            return x.to(device), y.to(device)
        key = (id(x), str(device))
        if key not in self._device_cache:
            self._device_cache[key] = (x.to(device), y.to(device))
        return self._device_cache[key]
