"""``build_optimizer``: THE way an optimizer is built (runs, the preflight check, the atlas).

The suite's settings go in on top of the class's own defaults:

- ``gd`` is SGD with momentum 0; ``sgd`` takes ``momentum`` / ``nesterov``; ``adam`` and
  ``adamw`` take ``betas`` / ``eps`` (and ``adamw`` its decoupled ``weight_decay``), with
  torch's fused kernel;
- every other optimizer's own weight decay is off (``weight_decay=0``: the paper's lambda is in
  the loss) unless ``kwargs`` sets it;
- constructor arguments the class requires and the run knows are given: ``num_iterations``
  (Ranger21's schedule) = the run's T, ``num_data`` (BSAM's prior) = the training-set size n,
  ``base_optimizer`` (the SAM family) = torch's SGD with momentum 0 (sharpness-aware GD, as
  Foret et al. 2021 state it), or the optimizer ``kwargs.base_optimizer`` names; heavyball's
  SAMWrapper wraps ``kwargs.wrapped_optimizer`` (default heavyball's AdamW) built with the
  step size; AliG's step size is its ``max_lr``;
- the Muon family's parameter groups carry ``use_muon`` (matrices: True, others: False).

``suite_settings`` says what the suite set for a class (the atlas records it in each row).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from adamgap.optimizers.contract import contract_of
from adamgap.optimizers.sources import resolve

WRAPPED_DEFAULT = "heavyball:AdamW"  # what heavyball's SAMWrapper wraps unless told otherwise
DECOUPLED = ("adamw",)  # decay is the optimizer's optim.weight_decay; no lambda in the loss


def loss_lambda(name: str, lam: float) -> float:
    """The lambda of the loss's L2 term for optimizer ``name``: ``lam`` (``optim.lam``), or 0
    for the suite's decoupled optimizers (``DECOUPLED``), which decay the weights themselves."""
    return 0.0 if name in DECOUPLED else float(lam)


def build_optimizer(params: Iterable[Tensor] | Iterable[dict], name: str, lr: float, *,
                    betas=(0.9, 0.999), eps: float = 1e-8, momentum: float = 0.0,
                    nesterov: bool = False, weight_decay: float = 0.0,
                    kwargs: dict[str, Any] | None = None, max_steps: int | None = None,
                    n: int | None = None) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (``optimizers.sources``) over ``params`` (tensors or parameter
    groups) with step size ``lr``; ``max_steps`` and ``n`` (the run's T and training-set size)
    fill the arguments some classes require (1 when not given: a build check)."""
    cls = resolve(name).cls
    extra = dict(kwargs or {})
    if name == "gd":
        extra = {"momentum": 0.0, **extra}
    elif name == "sgd":
        extra = {"momentum": momentum, "nesterov": nesterov, **extra}
    elif name in ("adam", "adamw"):
        extra = {"betas": tuple(betas), "eps": eps, **extra}
        if name in DECOUPLED:
            extra["weight_decay"] = weight_decay
        # the fused kernel is one pass over the state (it exists on CPU and GPU)
        extra.setdefault("fused", True)
    else:
        extra = suite_settings(cls, extra, max_steps, n) | extra
        if isinstance(extra.get("base_optimizer"), str):
            extra["base_optimizer"] = resolve(extra["base_optimizer"]).cls
    groups = _groups(params, contract_of(cls).muon_groups)
    takes = inspect.signature(cls.__init__).parameters
    if "wrapped_optimizer" in takes:  # heavyball's SAMWrapper: the step size is its inner's
        inner = build_optimizer(groups, extra.pop("wrapped_optimizer", WRAPPED_DEFAULT), lr,
                                kwargs={"weight_decay": extra.pop("weight_decay", 0.0)})
        return cls(groups, wrapped_optimizer=inner, **extra)
    if "lr" not in takes and "max_lr" in takes:
        return cls(groups, max_lr=lr, **extra)  # AliG: its step size is capped at max_lr
    return cls(groups, lr=lr, **extra)


def suite_settings(cls: type, kwargs: dict | None = None, max_steps: int | None = None,
                   n: int | None = None) -> dict[str, Any]:
    """The constructor arguments the suite sets for ``cls`` beyond the step size (``kwargs``:
    what the config sets already; those are left alone)."""
    kwargs = kwargs or {}
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {}
    if ("weight_decay" in params or takes_any) and "weight_decay" not in kwargs:
        out["weight_decay"] = 0.0  # lambda is in the loss (a wrapper passes it to its base)
    required = {k for k, p in params.items()
                if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if "num_iterations" in required:
        out["num_iterations"] = max_steps or 1
    if "num_data" in required:
        out["num_data"] = n or 1
    if "base_optimizer" in required:
        out["base_optimizer"] = "gd"
    return {k: v for k, v in out.items() if k not in kwargs}


def _groups(params, muon_groups: bool) -> list:
    """``params`` as given; for the Muon family as parameter groups, each split into its
    matrices (``use_muon=True``) and the rest (``use_muon=False``)."""
    params = list(params)
    if not muon_groups:  # as given: tensors or groups (some classes take tensors only)
        return params
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    out = []
    for g in groups:
        ps = list(g["params"])
        for flag in (True, False):
            mine = [p for p in ps if (p.ndim >= 2) == flag]
            if mine:
                out.append({**g, "params": mine, "use_muon": flag})
    return out
