"""The paper's objective (Section 4), per replica, and its gradient in closed form.

    L(W) = (1/n) sum_i log(1 + exp(-y_i f(W, x_i))) + (lam / 2) ||W||_F^2

For K replicas every function returns one value per replica, (K,): the loss a run minimises
is their sum, so every replica receives exactly its own gradient. The L2 term is inside the
loss (and so inside Adam's gradient) for every optimizer but ``adamw``, whose decay is
decoupled (``lam`` is then 0 here). With C > 2 classes (images as patches, ResNets) the
logistic loss becomes its multi-class form, the cross-entropy.

The binary patch CNN on sparse patches takes its gradient in closed form
(:func:`objective_and_gradient`): the same formulas as the custom autograd nodes below, without
autograd, whose bookkeeping costs more than the arithmetic at the paper's sizes.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamgap.network import PatchCNN
from adamgap.patches import SparsePatches


class _SquaredNorm(torch.autograd.Function):
    """``||w_k||^2`` per row k of a (K, N) tensor, and its gradient ``2 w_k``, in one pass each
    way: autograd's ``square().sum()`` makes four passes over W, a large share of a CPU step."""

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return torch.linalg.vecdot(w, w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return w * (2 * grad)[:, None]


def l2_penalty(params: list[Tensor], lam: float, K: int) -> Tensor:
    """(lam / 2) ||W||_F^2 per replica, (K,), W being every tensor of ``params`` (each with the
    replica dimension first); differentiable."""
    return 0.5 * lam * sum(_SquaredNorm.apply(p.reshape(K, -1)) for p in params)


def logistic_l2(f: Tensor, y: Tensor, lam: float, params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Section 4's objective per replica k, ``(1/B) sum_i log(1 + exp(-y_i f_i)) + (lam/2)
    ||W||_F^2`` (K,), and the margins ``y f`` (K, B) that :func:`logistic_l2_grad` needs."""
    K = f.shape[0]
    margin = y * f
    objective = F.softplus(-margin).mean(dim=1)
    if lam:
        objective += (0.5 * lam) * functools.reduce(
            torch.add, [torch.linalg.vecdot(w, w) for w in (p.reshape(K, -1) for p in params)])
    return objective, margin


def logistic_l2_grad(margin: Tensor, y: Tensor, lam: float, params: list[Tensor],
                     grad: Tensor | None = None) -> tuple[Tensor, list[Tensor | None]]:
    """The gradient of ``<grad, logistic_l2(f, y, lam, params)>`` (``grad`` None: ones) in f,
    ``-grad_k y_i sigmoid(-y_i f_i) / B``, and in each parameter, ``lam grad_k W`` (None when
    lam = 0)."""
    scale = -1.0 / margin.shape[1]
    df = torch.sigmoid(-margin).mul_(y).mul_(scale if grad is None else grad[:, None] * scale)
    if not lam:
        return df, [None] * len(params)
    if grad is None:
        return df, [lam * p for p in params]
    return df, [p * (lam * grad).view(-1, *[1] * (p.dim() - 1)) for p in params]


class _LogisticL2(torch.autograd.Function):
    """:func:`logistic_l2` with :func:`logistic_l2_grad` as its backward: one autograd node
    instead of a dozen whose bookkeeping costs more than their arithmetic at these sizes."""

    @staticmethod
    def forward(ctx, f: Tensor, y: Tensor, lam: float, *params: Tensor) -> Tensor:
        objective, margin = logistic_l2(f, y, lam, list(params))
        ctx.save_for_backward(margin, y, *params)
        ctx.lam = lam
        return objective

    @staticmethod
    def backward(ctx, grad: Tensor):
        margin, y, *params = ctx.saved_tensors
        df, dparams = logistic_l2_grad(margin, y, ctx.lam, params, grad)
        return df, None, None, *dparams


def data_loss(f: Tensor, y: Tensor, classes: int) -> Tensor:
    """The loss of every example, (K, B): logistic ``log(1 + exp(-y f))`` for two classes (f
    (K, B), y in {+1, -1}); the cross-entropy for C > 2 (logits (K, B, C), y in 0..C-1)."""
    if classes == 2:
        return F.softplus(-y * f)
    return F.cross_entropy(f.transpose(1, 2), y.long(), reduction="none")


def errors(f: Tensor, y: Tensor, classes: int) -> Tensor:
    """Misclassified examples (K, B): sign(f) != y, or argmax_j F_j != y with C > 2."""
    if classes == 2:
        return (f > 0) != (y > 0)
    return f.argmax(-1) != y.long()


def objective(net: nn.Module, x, y: Tensor, lam: float, params: list[Tensor]
              ) -> tuple[Tensor, Tensor]:
    """The per-replica objective L_k(W) (K,) of ``net`` on a batch, differentiable, and the
    network output f. ``params``: the network's parameters (W), listed once by the caller."""
    f = net(x)
    if net.classes == 2:
        return _LogisticL2.apply(f, y, lam, *params), f
    return data_loss(f, y, net.classes).mean(dim=1) + l2_penalty(params, lam, net.replicas), f


@torch.no_grad()
def objective_and_gradient(net: nn.Module, x, y: Tensor, lam: float, params: list[Tensor]
                           ) -> tuple[Tensor, Tensor, list[Tensor]] | None:
    """L_k(W) (K,), f and the gradient of sum_k L_k in each parameter, in closed form: the
    forward pass and the backward formulas of the autograd nodes (``network._SparsePatchSum``,
    ``_LogisticL2``) without autograd. For the binary patch CNN on sparse patches (Definition
    3.1); None otherwise (then autograd it is)."""
    if not isinstance(net, PatchCNN) or net.classes != 2 or not isinstance(x, SparsePatches):
        return None
    f, vjp = net.forward_with_vjp(x, params[0])  # params: [W], W as (K, d, C, m)
    value, margin = logistic_l2(f, y, lam, params)
    df, (dw,) = logistic_l2_grad(margin, y, lam, params)
    grad = vjp(df)
    return value, f, [grad if dw is None else grad.add_(dw)]


def replica_sums(tensors: list[Tensor], K: int) -> Tensor:
    """(K,): the sum of every element of replica k in ``tensors``, each of which carries the
    replica dimension first. Not finite when one element is not, and also (harmlessly: such a
    run has diverged) when |values| near 1e33 overflow."""
    sums = [x.detach().reshape(K, -1).sum(1) for x in tensors]
    return functools.reduce(torch.add, sums)  # (``sum()`` would add a 0 tensor first)
