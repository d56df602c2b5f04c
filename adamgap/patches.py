"""Patch inputs for the patch network, dense or sparse, for K replicas at once.

An input batch holds, for each of ``K`` replicas, ``B`` examples of ``P`` patches in ``R^d``.
Dense inputs are plain tensors of shape (K, B, P, d). The synthetic data (Definition 3.1) is
extremely sparse (a 1-sparse feature patch, (s+1)-sparse noise patches), so it travels as a
:class:`SparsePatches`: one block-diagonal CSR matrix of shape (K*B*P, K*d) whose block k holds
replica k's patches, and its transpose. ``<w_{j,r}, x_p>`` for every replica, example, patch and
filter is then one sparse-dense product with the weights laid out as (K*d, 2m), and the weight
gradient is one product with the transpose: both touch only the nonzeros.

Matrices are :class:`CSR`, the three arrays themselves: a mini-batch is a block of rows of an
epoch's matrix (``rows``), so taking one costs two slices and no kernel, where a torch sparse
tensor would cost a constructor and an accessor call per array on every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class CSR:
    """A compressed-sparse-row matrix: row i holds ``col[crow[i]:crow[i+1]]`` (ascending) with
    values ``val[crow[i]:crow[i+1]]``."""

    crow: Tensor  # (rows + 1,) int64, crow[0] = 0
    col: Tensor  # (nnz,) int64
    val: Tensor  # (nnz,)
    shape: tuple[int, int]

    def to(self, *args, **kwargs) -> CSR:
        """Indices to the device, values to the device and dtype of ``Tensor.to(*args)``."""
        val = self.val.to(*args, **kwargs)
        return CSR(self.crow.to(val.device), self.col.to(val.device), val, self.shape)

    def to_torch(self) -> Tensor:
        """The same matrix as a torch sparse CSR tensor."""
        return torch.sparse_csr_tensor(self.crow, self.col, self.val, self.shape,
                                       check_invariants=False)

    def row_ids(self) -> Tensor:
        """The row of every nonzero, (nnz,)."""
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.crow.device),
                                       self.crow.diff())

    def gather_rows(self, rows: Tensor, columns: int | None = None,
                    shift: Tensor | None = None) -> CSR:
        """The matrix of rows ``rows`` (R,) in that order; ``shift`` (R,) is added to the column
        indices of each picked row (``columns``: the new width)."""
        start, length = self.crow[rows], self.crow[rows + 1] - self.crow[rows]
        crow = torch.zeros(len(rows) + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(length, 0, out=crow[1:])
        nnz = int(crow[-1])
        # source position of every new nonzero: its row's start, plus its rank within the row
        pick = torch.repeat_interleave(start - crow[:-1], length, output_size=nnz)
        pick += torch.arange(nnz, device=rows.device)
        col = self.col[pick]
        if shift is not None:
            col += torch.repeat_interleave(shift, length, output_size=nnz)
        return CSR(crow, col, self.val[pick], (len(rows), columns or self.shape[1]))

    def transpose(self) -> CSR:
        """The transpose: a stable sort of the nonzeros by column keeps each column's rows in
        order."""
        order = torch.argsort(self.col, stable=True)
        crow = torch.zeros(self.shape[1] + 1, dtype=torch.long, device=self.col.device)
        crow[1:] = torch.bincount(self.col, minlength=self.shape[1]).cumsum(0)
        return CSR(crow, self.row_ids()[order], self.val[order], (self.shape[1], self.shape[0]))

    @staticmethod
    def from_padded(index: Tensor, value: Tensor, columns: int) -> CSR:
        """Rows given as L (column, value) pairs each, ``index``/``value`` (R, L): zero values
        are dropped, repeated columns summed."""
        R, L = index.shape
        col, order = index.sort(dim=1)  # CSR: columns ascending within a row
        val = value.gather(1, order)
        keep = val != 0
        if (keep[:, 1:] & keep[:, :-1] & (col[:, 1:] == col[:, :-1])).any():
            # a repeated coordinate: let COO sum the duplicates (Definition 3.1 has none)
            row = torch.arange(R, device=index.device)[:, None].expand(-1, L)
            coo = torch.sparse_coo_tensor(torch.stack([row[keep], col[keep]]), val[keep],
                                          (R, columns)).coalesce()
            crow = torch.zeros(R + 1, dtype=torch.long, device=index.device)
            crow[1:] = torch.bincount(coo.indices()[0], minlength=R).cumsum(0)
            return CSR(crow, coo.indices()[1].contiguous(), coo.values(), (R, columns))
        # rows are already grouped and sorted: the CSR arrays directly, no COO round trip
        crow = torch.zeros(R + 1, dtype=torch.long, device=index.device)
        crow[1:] = keep.sum(1).cumsum(0)
        return CSR(crow, col[keep], val[keep], (R, columns))


@dataclass
class SparsePatches:
    """K replicas x B examples x P patches in R^d, as a block-diagonal CSR matrix.

    A mini-batch may instead carry the transpose of the matrix its rows were taken from
    (``source_t``, the training set's) and which rows (``source_rows``): the backward product
    :meth:`transpose_matmul` then needs no transpose of its own (see there)."""

    matrix: CSR  # (K*B*P, K*d)
    matrix_t: CSR | None  # its transpose (K*d, K*B*P) for the backward pass; None until
    shape: tuple[int, int, int, int]  # (K, B, P, d)         ``transpose()`` first needs it
    source_t: CSR | None = None  # (K*d, K*N*P): the transpose of the rows' source matrix
    source_rows: Tensor | None = None  # (K*B*P,) distinct: row i is source row source_rows[i]

    def to(self, *args, **kwargs) -> SparsePatches:
        """On a device and/or in a dtype, as ``Tensor.to``; itself when that changes nothing."""
        val = self.matrix.val
        moved = val.to(*args, **kwargs)
        if moved is val:
            return self  # keeps a transpose already built
        t = None if self.matrix_t is None else self.matrix_t.to(*args, **kwargs)
        source_t = None if self.source_t is None else self.source_t.to(*args, **kwargs)
        rows = None if self.source_rows is None else self.source_rows.to(moved.device)
        return SparsePatches(self.matrix.to(*args, **kwargs), t, self.shape, source_t, rows)

    def to_dense(self) -> Tensor:
        K, B, P, d = self.shape
        blocks = self.matrix.to_torch().to_dense().view(K, B * P, K, d)
        return torch.stack([blocks[k, :, k] for k in range(K)]).view(K, B, P, d)

    def transpose(self) -> CSR:
        """The CSR transpose, built once on first use (evaluation and the test set never need
        it)."""
        if self.matrix_t is None:
            self.matrix_t = self.matrix.transpose()
        return self.matrix_t

    def transpose_matmul(self, dense: Tensor) -> Tensor:
        """``X^T dense`` (K*d, c) for ``dense`` (K*B*P, c), the weight gradient's product.

        With a source (``source_t``: a mini-batch of the training set) the rows of ``dense``
        go to their rows of the whole set, zeros elsewhere, and the product is one with the
        set's transpose, built once: it costs a full-batch product, where a transpose of the
        batch's own costs a sort per batch, more than that from about n/10 up (the datamodule
        chooses, ``data.SOURCE_SHARE``). The
        sums then run over the examples in the set's order, not the batch's: equal to
        round-off, not bit for bit."""
        if self.source_t is None:
            return csr_matmul(self.transpose(), dense)
        full = dense.new_zeros(self.source_t.shape[1], dense.shape[1])
        full.index_copy_(0, self.source_rows, dense)  # distinct rows: a copy, no sums
        return csr_matmul(self.source_t, full)

    @staticmethod
    def from_coordinates(index: Tensor, value: Tensor, d: int) -> SparsePatches:
        """Build from per-patch coordinate lists: ``index`` and ``value`` of shape (K, B, P, L)
        give L (coordinate, value) pairs per patch; zero values are dropped, repeated
        coordinates are summed."""
        K, B, P, L = index.shape
        col = index + (torch.arange(K, device=index.device) * d).view(K, 1, 1, 1)
        return SparsePatches(CSR.from_padded(col.view(-1, L), value.reshape(-1, L), K * d),
                             None, (K, B, P, d))

    @staticmethod
    def from_rows(rows: CSR, K: int, P: int) -> SparsePatches:
        """The block-diagonal matrix of ``rows`` (K*B*P, d): patch rows of K replicas in
        (replica, example, patch) order, each replica's columns 0..d-1."""
        R, d = rows.shape
        block = torch.arange(R, device=rows.col.device) // (R // K) * d  # replica k: k d
        col = rows.col + torch.repeat_interleave(block, rows.crow.diff(), output_size=len(rows.col))
        return SparsePatches(CSR(rows.crow, col, rows.val, (R, K * d)), None,
                             (K, R // (K * P), P, d))


def stable_argsort(keys: Tensor, bound: int) -> Tensor:
    """The stable sorting permutation of integer ``keys`` in [0, bound). On CPU, for bound
    <= 2^32, numpy's radix sort on 16-bit digits (two passes when bound > 2^16), about 5x
    faster here than ``torch.argsort(stable=True)``."""
    if keys.device.type != "cpu" or bound > 2**32:
        return torch.argsort(keys, stable=True)
    k = keys.numpy()
    if bound <= 2**16:
        return torch.from_numpy(np.argsort(k.astype(np.uint16), kind="stable"))
    low = np.argsort((k & 0xFFFF).astype(np.uint16), kind="stable")
    high = np.argsort((k[low] >> 16).astype(np.uint16), kind="stable")
    return torch.from_numpy(low[high])


def to_dense_patches(index: Tensor, value: Tensor, d: int) -> Tensor:
    """The dense (K, B, P, d) tensor of per-patch coordinate lists (see ``from_coordinates``)."""
    out = torch.zeros(*index.shape[:-1], d, dtype=value.dtype, device=value.device)
    return out.scatter_add_(-1, index, value)


def csr_matmul(matrix: CSR, dense: Tensor) -> Tensor:
    """``matrix @ dense`` for a CSR ``matrix``, as an ``embedding_bag``: row i is the sum of the
    rows of ``dense`` at row i's column indices, weighted by its values. On CPU this kernel
    (fbgemm) is about 2x faster than the CSR product for our few-column ``dense``."""
    return F.embedding_bag(matrix.col, dense, matrix.crow, mode="sum",
                           per_sample_weights=matrix.val, include_last_offset=True)


def project(x: Tensor | SparsePatches, weight: Tensor) -> Tensor:
    """``<w_c, x_{k,b,p}>`` for every channel c: ``weight`` (K, d, C) -> (K, B, P, C)."""
    K, d, C = weight.shape
    if isinstance(x, SparsePatches):
        _, B, P, _ = x.shape
        return csr_matmul(x.matrix, weight.reshape(K * d, C)).view(K, B, P, C)
    return torch.einsum("kbpd,kdc->kbpc", x, weight)
