"""Patch inputs for the patch network, dense or sparse, for K replicas at once.

An input batch holds, for each of ``K`` replicas, ``B`` examples of ``P`` patches in ``R^d``.
Dense inputs are plain tensors of shape (K, B, P, d). The synthetic data (Definition 3.1) is
extremely sparse (a 1-sparse feature patch, (s+1)-sparse noise patches), so it travels as a
:class:`SparsePatches`: one block-diagonal CSR matrix of shape (K*B*P, K*d) whose block k holds
replica k's patches, and its transpose. ``<w_{j,r}, x_p>`` for every replica, example, patch and
filter is then one sparse-dense product with the weights laid out as (K*d, 2m), and the weight
gradient is one product with the transpose: both touch only the nonzeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SparsePatches:
    """K replicas x B examples x P patches in R^d, as a block-diagonal CSR matrix."""

    matrix: Tensor  # (K*B*P, K*d) sparse CSR
    matrix_t: Tensor | None  # its transpose (K*d, K*B*P) CSR for the backward pass; None until
    shape: tuple[int, int, int, int]  # (K, B, P, d)         ``transpose()`` first needs it

    def to(self, device: torch.device | str) -> SparsePatches:
        if self.matrix.device == torch.device(device):
            return self  # keeps a transpose already built
        t = None if self.matrix_t is None else self.matrix_t.to(device)
        return SparsePatches(self.matrix.to(device), t, self.shape)

    def to_dense(self) -> Tensor:
        K, B, P, d = self.shape
        blocks = self.matrix.to_dense().view(K, B * P, K, d)
        return torch.stack([blocks[k, :, k] for k in range(K)]).view(K, B, P, d)

    def transpose(self) -> Tensor:
        """The CSR transpose, built once on first use (evaluation and the test set never need
        it): a stable sort of the nonzeros by column keeps each column's rows in order."""
        if self.matrix_t is None:
            m = self.matrix
            rows = torch.repeat_interleave(torch.arange(m.shape[0], device=m.device),
                                           m.crow_indices().diff())
            order = torch.argsort(m.col_indices(), stable=True)
            crow_t = torch.zeros(m.shape[1] + 1, dtype=torch.long, device=m.device)
            crow_t[1:] = torch.bincount(m.col_indices(), minlength=m.shape[1]).cumsum(0)
            self.matrix_t = torch.sparse_csr_tensor(crow_t, rows[order], m.values()[order],
                                                    (m.shape[1], m.shape[0]))
        return self.matrix_t

    @staticmethod
    def from_coordinates(index: Tensor, value: Tensor, d: int) -> SparsePatches:
        """Build from per-patch coordinate lists: ``index`` and ``value`` of shape (K, B, P, L)
        give L (coordinate, value) pairs per patch; zero values are dropped, repeated
        coordinates are summed."""
        K, B, P, L = index.shape
        size = (K * B * P, K * d)
        col = (index + (torch.arange(K, device=index.device) * d).view(K, 1, 1, 1)).view(-1, L)
        col, order = col.sort(dim=1)  # CSR: columns ascending within a row
        val = value.reshape(-1, L).gather(1, order)
        keep = val != 0
        if (keep[:, 1:] & keep[:, :-1] & (col[:, 1:] == col[:, :-1])).any():
            # a repeated coordinate: let COO sum the duplicates (Definition 3.1 has none)
            row = torch.arange(size[0], device=index.device)[:, None].expand(-1, L)
            coo = torch.sparse_coo_tensor(torch.stack([row[keep], col[keep]]), val[keep], size)
            return SparsePatches(coo.coalesce().to_sparse_csr(), None, (K, B, P, d))
        # rows are already grouped and sorted: the CSR arrays directly, no COO round trip
        crow = torch.zeros(size[0] + 1, dtype=torch.long, device=index.device)
        crow[1:] = keep.sum(1).cumsum(0)
        matrix = torch.sparse_csr_tensor(crow, col[keep], val[keep], size)
        return SparsePatches(matrix, None, (K, B, P, d))


def to_dense_patches(index: Tensor, value: Tensor, d: int) -> Tensor:
    """The dense (K, B, P, d) tensor of per-patch coordinate lists (see ``from_coordinates``)."""
    out = torch.zeros(*index.shape[:-1], d, dtype=value.dtype, device=value.device)
    return out.scatter_add_(-1, index, value)


def csr_matmul(matrix: Tensor, dense: Tensor) -> Tensor:
    """``matrix @ dense`` for a CSR ``matrix``, as an ``embedding_bag``: row i is the sum of the
    rows of ``dense`` at row i's column indices, weighted by its values. On CPU this kernel
    (fbgemm) is about 2x faster than the CSR product for our few-column ``dense``."""
    return F.embedding_bag(matrix.col_indices(), dense, matrix.crow_indices(), mode="sum",
                           per_sample_weights=matrix.values(), include_last_offset=True)


def project(x: Tensor | SparsePatches, weight: Tensor) -> Tensor:
    """``<w_c, x_{k,b,p}>`` for every channel c: ``weight`` (K, d, C) -> (K, B, P, C)."""
    K, d, C = weight.shape
    if isinstance(x, SparsePatches):
        _, B, P, _ = x.shape
        return csr_matmul(x.matrix, weight.reshape(K * d, C)).view(K, B, P, C)
    return torch.einsum("kbpd,kdc->kbpc", x, weight)
