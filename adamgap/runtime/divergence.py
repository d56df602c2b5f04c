"""Divergence: a non-finite loss, gradient or weight stops the run with one clear line.

A run whose objective overflows would otherwise train on NaNs to the end and write a
plausible-looking ``summary.json`` (a NaN network predicts one class: test error ~0.5).
:class:`DivergenceCallback` watches, for every replica k of the ensemble and every step t,

    the objective L_k(W(t)),   its gradient,   the weights W(t+1) after the update,

and records the first step at which one of them is not finite (``step`` is the iteration
index t, as in ``metrics.csv``). A Lightning training step runs k = ``trainer.steps_per_batch``
optimizer steps (``GapModule.training_step``), so a callback cannot look between them: the
module returns, per step and replica, the sums of the three quantities (``totals``, (k, 3, K);
a few microseconds a step), and this callback reads them at the end of the training step. The
reported step and quantity are exact; the run stops at the end of that training step (at most
k - 1 steps later). Cost, the choice made:

- alone on a CPU (reading a number costs nothing there): one host-side sum of the chunk's
  totals per training step; only when it is not finite are the replicas and steps told apart.
- on a GPU or under DDP: per-replica flags kept on the device (a few kernels, no host sync),
  read every ``trainer.log_every`` steps and at the last step, where Lightning synchronises to
  log anyway; the run stops at the next such check.

A sum also overflows when values reach ~1e33, which then counts as divergence too.

A replica that diverges is marked and the others train on (replicas never mix: their gradients
are independent); once every replica has diverged, training stops with :class:`Diverged`. The
summary then says ``status: "diverged"`` with ``diverged_step``, ``diverged_quantity`` and
``error`` (the one line, also printed on stderr), and the command exits non-zero.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor

from adamgap.objective import replica_sums

QUANTITIES = ("loss", "gradient", "weights")  # in the order a divergence propagates


class Diverged(Exception):
    """Every replica has diverged: training stops (the message is the first replica's line)."""


class DivergenceCallback(L.Callback):
    """Finds the first non-finite loss, gradient or weight per replica (see the module doc)."""

    def __init__(self, seeds: list[int], optim_name: str, lr: float | list[float],
                 sync_every: int = 100):
        """``lr``: the step size, or each replica's (an ensemble over step sizes)."""
        self.seeds, self.optim_name = list(seeds), optim_name
        self.lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(self.seeds)
        self.sync_every = self.check_every = sync_every
        self.first: Tensor | None = None  # (K,) first bad step per replica, -1 while finite
        self.what: Tensor | None = None  # (K,) index into QUANTITIES
        self.reported: set[int] = set()
        self.messages: dict[int, str] = {}  # replica -> its line

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.first is None:  # not restored from a checkpoint
            self.first = torch.full((len(self.seeds),), -1, dtype=torch.long)
            self.what = torch.zeros(len(self.seeds), dtype=torch.long)
        self.first, self.what = self.first.to(module.device), self.what.to(module.device)
        alone_on_cpu = module.device.type == "cpu" and trainer.world_size == 1
        self.check_every = 1 if alone_on_cpu else self.sync_every  # reading flags costs a sync

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # (k, 3, K): per step of this training step, the sums of the objective, the gradient
        # (as the optimizer used it: under DDP averaged over ranks) and the updated weights
        totals = outputs["totals"].clone()
        k, _, K = totals.shape
        # the last step's weights as they are now, after every callback of this training step
        totals[-1, 2] = replica_sums(module.params, K)
        if self.check_every == 1 and math.isfinite(totals.sum().item()):
            return  # alone on a CPU, where reading a number costs nothing: the common case
        bad = ~totals.isfinite().permute(2, 0, 1).reshape(K, 3 * k)  # (K, steps x quantities)
        first = bad.int().argmax(1)  # each replica's earliest (step, quantity), in that order
        new = bad.any(1) & (self.first < 0)
        t0 = trainer.global_step - k  # the iteration index of the chunk's first step
        self.first = torch.where(new, t0 + first // 3, self.first)
        self.what = torch.where(new, first % 3, self.what)
        if trainer.global_step % self.check_every == 0 or trainer.global_step >= trainer.max_steps:
            self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Report replicas that diverged since the last check; stop when all have."""
        first, what = self.first.tolist(), self.what.tolist()  # the one host sync
        for k, t in enumerate(first):
            if t >= 0 and k not in self.reported:
                self.reported.add(k)
                self.messages[k] = self.line(self.seeds[k], t, QUANTITIES[what[k]], self.lrs[k])
        # every rank sees the same weights and gradients; agree anyway before leaving the loop
        if trainer.strategy.reduce_boolean_decision(all(t >= 0 for t in first), all=False):
            raise Diverged(self.messages[min(self.messages)] if self.messages else "diverged")

    def state_dict(self) -> dict:
        return {"first": self.first, "what": self.what}

    def load_state_dict(self, state: dict) -> None:
        self.first, self.what = state["first"], state["what"]

    def line(self, seed: int, step: int, quantity: str, lr: float) -> str:
        if step == 0 and quantity == "loss":
            hint = "the initial network output overflows: lower model.sigma_0 or the data scale"
        else:
            hint = f"optim.lr={lr:g} is likely too large for {self.optim_name}"
        return f"diverged at step {step} (seed {seed}): the {quantity} is not finite; {hint}"

    def mark(self, rows: list[dict]) -> list[dict]:
        """Set status, ``diverged_step``, ``diverged_quantity`` and ``error`` of the diverged
        replicas' summary rows (``adamgap.summary``); their non-finite numbers become null."""
        first, what = self.first.tolist(), self.what.tolist()
        for k in sorted(self.messages):
            row = rows[k]
            for key, value in row.items():
                if isinstance(value, float) and not math.isfinite(value):
                    row[key] = None
            row.update(status="diverged", diverged_step=first[k],
                       diverged_quantity=QUANTITIES[what[k]], error=self.messages[k])
        return rows
