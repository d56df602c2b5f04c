"""The LightningModule: the paper's objective, its optimizers and its metrics.

    L(W) = (1/n) sum_i log(1 + exp(-y_i f(W, x_i))) + (lam / 2) ||W||_F^2      (Section 4)

The L2 term is inside the loss (and so inside Adam's gradient) for every optimizer except
``adamw``, whose decay is decoupled. With K replicas the loss is the sum of the K replicas'
objectives, so every replica receives exactly its own gradient and per-element optimizers
treat the replicas as K separate runs.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy
from torchmetrics.wrappers import MultioutputWrapper

from adamgap.network import PatchCNN
from adamgap.optimizers import build_optimizer

SPLITS = ("train", "test")  # validation dataloader 0 is the full training set, 1 the test set


class GapModule(L.LightningModule):
    """Binary patch classification with logistic loss and L2 weight decay, K replicas at once."""

    def __init__(self, net: PatchCNN, optim: dict, max_steps: int, log_every: int = 100) -> None:
        super().__init__()
        self.net = net
        self.optim = dict(optim)
        self.lam = 0.0 if optim["name"] == "adamw" else float(optim["lam"])
        self.max_steps, self.log_every = max_steps, log_every
        K = net.weight.shape[0]
        # per-replica metrics: samplewise accuracy over a (K, B) batch gives K accuracies
        self.accuracy = torch.nn.ModuleList(
            [BinaryAccuracy(multidim_average="samplewise") for _ in SPLITS])
        self.mean_loss = torch.nn.ModuleList(
            [MultioutputWrapper(MeanMetric(), num_outputs=K) for _ in SPLITS])
        self.last: dict[str, Tensor] = {}  # latest per-replica values, for the run summary

    # -- objective ----------------------------------------------------------------------------
    def data_loss(self, f: Tensor, y: Tensor) -> Tensor:
        """Logistic loss log(1 + exp(-y f)) per example, (K, B)."""
        return F.softplus(-y * f)

    def penalty(self) -> Tensor:
        """(lam / 2) ||W||_F^2 per replica, (K,)."""
        return 0.5 * self.lam * self.net.weight.square().flatten(1).sum(1)

    def _log_now(self) -> bool:
        step = self.global_step
        return step % self.log_every == 0 or step == self.max_steps - 1

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        f = self.net(x)
        objective = self.data_loss(f, y).mean(dim=1) + self.penalty()  # (K,)
        if self._log_now():
            with torch.no_grad():
                error = ((f * y) <= 0).float().mean(dim=1)
                self.last.update(step_objective=objective.detach(), step_error=error)
            self.log_dict({"train/objective": objective.mean(), "train/batch_error": error.mean()},
                          prog_bar=True)
        return objective.sum()

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._log_now():
            g = self.net.weight.grad.flatten(1)
            self.last.update(grad_l2=g.norm(dim=1), grad_l1=g.abs().sum(dim=1))
            self.log_dict({"grad/l2": self.last["grad_l2"].mean(),
                           "grad/l1": self.last["grad_l1"].mean()})

    # -- evaluation ---------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        f = self.net(x)
        self.accuracy[dataloader_idx].update((f > 0).int(), (y > 0).int())
        self.mean_loss[dataloader_idx].update(self.data_loss(f, y).T)  # (B, K): one output per replica

    def on_validation_epoch_end(self) -> None:
        for i, split in enumerate(SPLITS):
            error = (1.0 - self.accuracy[i].compute()).reshape(-1)
            loss = torch.stack(list(self.mean_loss[i].compute())).reshape(-1)
            self.accuracy[i].reset()
            self.mean_loss[i].reset()
            self.last.update({f"{split}_error": error, f"{split}_loss": loss})
            self.log_dict({f"{split}/error": error.mean(), f"{split}/loss": loss.mean()},
                          prog_bar=split == "test")
        self.last["eval_step"] = torch.tensor(self.global_step)

    # -- optimization -------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.optim
        opt = build_optimizer(self.parameters(), o["name"], o["lr"], betas=o["betas"],
                              eps=o["eps"], momentum=o["momentum"], nesterov=o["nesterov"],
                              weight_decay=o["weight_decay"], kwargs=o["kwargs"])
        if o["schedule"] == "constant":
            return opt
        if o["schedule"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.max_steps)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, o["step_size"], o["gamma"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
