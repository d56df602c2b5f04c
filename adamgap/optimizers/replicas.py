"""K optimizers, one per replica, stepped as one (the ``replicas`` layout of ``optim.layout``).

An ensemble's replicas must stay K independent runs whatever the optimizer does: a matrix
optimizer (Muon, Shampoo, SOAP) would orthogonalise or precondition across them if it saw the
(K, d, 2, m) block, a parameter-free one (Prodigy, D-Adaptation) pools its distance estimate
over every parameter it holds, a sharpness-aware one perturbs by the norm of the whole
gradient, LBFGS runs one line search over everything. In this layout replica k's first layer
is its own (2m, d) matrix (the patch convolution's weight) held by its own optimizer, which
sees exactly what it would in a single run:

- its own step size (``optim.lrs``: an ensemble over step sizes);
- its own random stream: optimizers that draw random numbers (Hutchinson probes, random
  preconditioner updates) draw them from the global generator, which is swapped to replica
  k's own stream (seeded from its seed) around its step;
- its own closure: ``step(closure)`` hands replica k ``lambda: closure(k)``, which evaluates
  replica k alone.

To Lightning, schedulers and checkpoints this is one ``torch.optim.Optimizer``: its
``param_groups`` are the replicas' own group dicts (a scheduler's step size reaches them), its
state dict is theirs plus the random streams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from adamgap.data import generator
from adamgap.optimizers.contract import is_schedule_free
from adamgap.optimizers.sources import OPTIMIZERS


class ReplicaOptimizers(torch.optim.Optimizer):
    """One optimizer per replica (``optimizers[k]`` holds replica k's parameters), stepped
    together; replica k's random numbers come from a stream seeded by ``seeds[k]``."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], seeds: Sequence[int]) -> None:
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.optimizers = list(optimizers)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self.device = params[0].device
        self.rng = [_seeded_state(seed, self.device) for seed in seeds]

    def step(self, closure: Callable[[int], Tensor] | None = None) -> None:
        """Step every replica's optimizer; ``closure(k)``, when given, re-evaluates replica k."""
        for k, opt in enumerate(self.optimizers):
            saved = _rng_state(self.device)
            _set_rng_state(self.device, self.rng[k])
            try:
                opt.step(None if closure is None else (lambda k=k: closure(k)))
            finally:
                self.rng[k] = _rng_state(self.device)
                _set_rng_state(self.device, saved)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"replicas": [o.state_dict() for o in self.optimizers],
                "rng": [s.clone() for s in self.rng]}

    def load_state_dict(self, state_dict: dict) -> None:
        for opt, state in zip(self.optimizers, state_dict["replicas"], strict=True):
            opt.load_state_dict(state)
        self.rng = [s.clone() for s in state_dict["rng"]]

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "optimizers", None) is None:  # torch.optim.Optimizer.__init__
            return super().add_param_group(param_group)
        raise TypeError("ReplicaOptimizers: add a parameter group to a replica's optimizer")

    # schedule-free optimizers (optimizers.contract): the point returned vs the point stepped
    def train(self) -> ReplicaOptimizers:
        for opt in self.optimizers:
            if is_schedule_free(opt):
                opt.train()
        return self

    def eval(self) -> ReplicaOptimizers:
        for opt in self.optimizers:
            if is_schedule_free(opt):
                opt.eval()
        return self

    def __repr__(self) -> str:
        return f"ReplicaOptimizers({len(self.optimizers)} x {type(self.optimizers[0]).__name__})"


def _seeded_state(seed: int, device: torch.device) -> Tensor:
    """The state of a generator on ``device`` seeded from replica ``seed``'s ``optim`` stream."""
    start = generator(seed, "optim").initial_seed()
    return torch.Generator(device=device).manual_seed(start).get_state()


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def layout_for(name: str, lrs: Sequence[float] | None, layout: str | None) -> str:
    """``optim.layout`` resolved: as set, else ``ensemble`` for the suite's short names (all
    elementwise: K blocks of one tensor are K runs) with one step size, else ``replicas``."""
    if layout is not None:
        return layout
    return "ensemble" if name in OPTIMIZERS and lrs is None else "replicas"
