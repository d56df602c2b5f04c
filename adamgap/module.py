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
from torchmetrics.wrappers import MultioutputWrapper

from adamgap.network import PatchCNN
from adamgap.optimizers import build_optimizer

SPLITS = ("train", "test")  # validation dataloader 0 is the full training set, 1 the test set


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


class GapModule(L.LightningModule):
    """Binary patch classification with logistic loss and L2 weight decay, K replicas at once."""

    def __init__(self, net: PatchCNN, optim: dict, max_steps: int, log_every: int = 100) -> None:
        super().__init__()
        self.net = net
        self.optim = dict(optim)
        self.lam = 0.0 if optim["name"] == "adamw" else float(optim["lam"])
        self.max_steps, self.log_every = max_steps, log_every
        K, self.classes = net.replicas, net.classes
        # per-replica means with summed states, so that DDP ranks evaluating disjoint blocks of
        # a split reduce to the error over the whole split (samplewise accuracy concatenates)
        self.mean_error = torch.nn.ModuleList(
            [MultioutputWrapper(MeanMetric(), num_outputs=K) for _ in SPLITS])
        self.mean_loss = torch.nn.ModuleList(
            [MultioutputWrapper(MeanMetric(), num_outputs=K) for _ in SPLITS])
        self.last: dict[str, Tensor] = {}  # latest per-replica values, for the run summary

    # -- objective ----------------------------------------------------------------------------
    def data_loss(self, f: Tensor, y: Tensor) -> Tensor:
        """Logistic loss log(1 + exp(-y f)) per example, (K, B); with C > 2 classes (logits f
        (K, B, C), labels y in 0..C-1) its multi-class form, the cross-entropy."""
        if self.classes == 2:
            return F.softplus(-y * f)
        return F.cross_entropy(f.transpose(1, 2), y.long(), reduction="none")

    def errors(self, f: Tensor, y: Tensor) -> Tensor:
        """Misclassified examples (K, B): sign(f) != y, or argmax_j F_j != y with C > 2."""
        if self.classes == 2:
            return (f > 0) != (y > 0)
        return f.argmax(-1) != y.long()

    def penalty(self) -> Tensor:
        """(lam / 2) ||W||_F^2 per replica, (K,) (W: all of the network's parameters)."""
        K = self.net.replicas
        return 0.5 * self.lam * sum(_SquaredNorm.apply(p.reshape(K, -1))
                                    for p in self.net.parameters())

    def _log_now(self) -> bool:
        # Lightning hands step-level logs to the loggers on iterations t with (t + 1) % k == 0
        # (Trainer(log_every_n_steps=k)); a value logged on another iteration would reach
        # metrics.csv k - 1 steps late, under the later step, and only if nothing replaced it
        step = self.global_step
        return (step + 1) % self.log_every == 0 or step == self.max_steps - 1

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        f = self.net(x)
        objective = self.data_loss(f, y).mean(dim=1) + self.penalty()  # (K,)
        if self._log_now():
            with torch.no_grad():
                error = self.errors(f, y).float().mean(dim=1)
                self.last.update(step_objective=objective.detach(), step_error=error)
            # under DDP each rank sees its shard: average them (equal shards: the full batch)
            self.log_dict({"train/objective": objective.mean(), "train/batch_error": error.mean()},
                          prog_bar=True, sync_dist=True)
        # the per-replica objective rides along for the divergence check (divergence.py)
        return {"loss": objective.sum(), "objective": objective.detach()}

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._log_now():
            K = self.net.replicas
            g = torch.cat([p.grad.reshape(K, -1) for p in self.net.parameters()
                           if p.grad is not None], dim=1)
            self.last.update(grad_l2=g.norm(dim=1), grad_l1=g.abs().sum(dim=1))
            self.log_dict({"grad/l2": self.last["grad_l2"].mean(),
                           "grad/l1": self.last["grad_l1"].mean()})

    # -- evaluation ---------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        f = self.net(x)
        self.mean_error[dataloader_idx].update(self.errors(f, y).float().T)  # (B, K)
        self.mean_loss[dataloader_idx].update(self.data_loss(f, y).T)  # (B, K): one per replica

    def on_validation_epoch_end(self) -> None:
        for i, split in enumerate(SPLITS):
            error = torch.stack(list(self.mean_error[i].compute())).reshape(-1)
            loss = torch.stack(list(self.mean_loss[i].compute())).reshape(-1)
            self.mean_error[i].reset()
            self.mean_loss[i].reset()
            self.last.update({f"{split}_error": error, f"{split}_loss": loss})
            self.log_dict({f"{split}/error": error.mean(), f"{split}/loss": loss.mean()},
                          prog_bar=split == "test")
        self.last["eval_step"] = torch.tensor(self.global_step)

    # -- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["last"] = self.last  # the summary of a resumed run needs the latest values

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.last = dict(checkpoint.get("last", {}))

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
