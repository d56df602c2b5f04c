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
from torch import Tensor


@dataclass
class SparsePatches:
    """K replicas x B examples x P patches in R^d, as a block-diagonal CSR matrix."""

    matrix: Tensor  # (K*B*P, K*d) sparse CSR
    matrix_t: Tensor  # its transpose, (K*d, K*B*P) sparse CSR, for the backward pass
    shape: tuple[int, int, int, int]  # (K, B, P, d)

    def to(self, device: torch.device | str) -> "SparsePatches":
        return SparsePatches(self.matrix.to(device), self.matrix_t.to(device), self.shape)

    def to_dense(self) -> Tensor:
        K, B, P, d = self.shape
        blocks = self.matrix.to_dense().view(K, B * P, K, d)
        return torch.stack([blocks[k, :, k] for k in range(K)]).view(K, B, P, d)

    @staticmethod
    def from_coordinates(index: Tensor, value: Tensor, d: int) -> "SparsePatches":
        """Build from per-patch coordinate lists: ``index`` and ``value`` of shape (K, B, P, L)
        give L (coordinate, value) pairs per patch; zero values are dropped, repeated
        coordinates are summed."""
        K, B, P, L = index.shape
        keep = value != 0
        row = torch.arange(K * B * P, device=index.device).view(K, B, P, 1).expand(K, B, P, L)
        col = index + (torch.arange(K, device=index.device) * d).view(K, 1, 1, 1)
        row, col, val = row[keep], col[keep], value[keep]
        size = (K * B * P, K * d)
        coo = torch.sparse_coo_tensor(torch.stack([row, col]), val, size).coalesce()
        coo_t = torch.sparse_coo_tensor(coo.indices().flip(0), coo.values(), size[::-1]).coalesce()
        return SparsePatches(coo.to_sparse_csr(), coo_t.to_sparse_csr(), (K, B, P, d))


def to_dense_patches(index: Tensor, value: Tensor, d: int) -> Tensor:
    """The dense (K, B, P, d) tensor of per-patch coordinate lists (see ``from_coordinates``)."""
    out = torch.zeros(*index.shape[:-1], d, dtype=value.dtype, device=value.device)
    return out.scatter_add_(-1, index, value)


class _SparseProject(torch.autograd.Function):
    """``X @ W`` for a sparse X whose transpose is precomputed (the backward is ``X^T @ dZ``)."""

    @staticmethod
    def forward(ctx, weight: Tensor, matrix: Tensor, matrix_t: Tensor) -> Tensor:
        ctx.matrix_t = matrix_t
        return matrix @ weight

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.matrix_t @ grad.contiguous(), None, None


def project(x: Tensor | SparsePatches, weight: Tensor) -> Tensor:
    """``<w_c, x_{k,b,p}>`` for every channel c: ``weight`` (K, d, C) -> (K, B, P, C)."""
    K, d, C = weight.shape
    if isinstance(x, SparsePatches):
        _, B, P, _ = x.shape
        z = _SparseProject.apply(weight.reshape(K * d, C), x.matrix, x.matrix_t)
        return z.view(K, B, P, C)
    return torch.einsum("kbpd,kdc->kbpc", x, weight)
