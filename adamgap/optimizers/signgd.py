"""Sign gradient descent, the proof's proxy for Adam with a small step size (Section 5)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class SignGD(torch.optim.Optimizer):
    """Sign gradient descent: ``W <- W - lr * sign(grad)`` (Section 5's proxy for Adam)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-4) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss
