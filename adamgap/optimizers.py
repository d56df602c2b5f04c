"""Optimizers by name: the paper's GD and Adam, their relatives, and any torch optimizer.

``gd``      full-batch gradient descent, no momentum (Section 4: W <- W - eta grad L(W))
``sgd``     mini-batch SGD, optional (Nesterov) momentum
``adam``    Adam with the L2 term inside the gradient (the paper's setting)
``adamw``   Adam with decoupled weight decay (not covered by the theory; an extension)
``signgd``  W <- W - eta sign(grad L(W)), the proof's proxy for Adam with small eta (Section 5)
otherwise   a ``torch.optim`` class by name (``RMSprop``, ``NAdam``, ...) or ``module:Class``
            (e.g. ``lion_pytorch:Lion``), built with ``lr`` and ``optim.kwargs``.

None of these gets ``weight_decay`` except ``adamw``: the paper's lambda lives in the loss.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Named:
    """An optimizer with a short name: its class, and how tables and figures call it."""

    cls: type[torch.optim.Optimizer]
    label: str


# The short names, the one table of them (configs, validation, reports).
OPTIMIZERS = {
    "gd": Named(torch.optim.SGD, "GD"),  # built with momentum 0, full batch only
    "sgd": Named(torch.optim.SGD, "SGD"),
    "adam": Named(torch.optim.Adam, "Adam"),
    "adamw": Named(torch.optim.AdamW, "AdamW"),
    "signgd": Named(SignGD, "signGD"),
}


def resolve_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class for a name (see module docstring); ValueError if there is none."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name].cls
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import optimizer {name}: {err}") from None
    else:
        cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"{name} is not a torch.optim.Optimizer")
    return cls


def label(name: str) -> str:
    """How a report names optimizer ``name`` (a class name for ``module:Class``)."""
    return OPTIMIZERS[name].label if name in OPTIMIZERS else name.rpartition(":")[2]


def build_optimizer(params: Iterable[Tensor], name: str, lr: float, *, betas=(0.9, 0.999),
                    eps: float = 1e-8, momentum: float = 0.0, nesterov: bool = False,
                    weight_decay: float = 0.0, kwargs: dict[str, Any] | None = None
                    ) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params`` (see the module docstring for the names)."""
    cls = resolve_optimizer_class(name)
    extra = dict(kwargs or {})
    if name == "gd":
        extra = {"momentum": 0.0, **extra}
    elif name == "sgd":
        extra = {"momentum": momentum, "nesterov": nesterov, **extra}
    elif name in ("adam", "adamw"):
        extra = {"betas": tuple(betas), "eps": eps, **extra}
        if name == "adamw":
            extra["weight_decay"] = weight_decay
        # the fused kernel is one pass over the state (it exists on CPU and GPU)
        extra.setdefault("fused", True)
    return cls(params, lr=lr, **extra)
