"""The LightningModule: the paper's objective (``adamgap.objective``) trained by an optimizer,
with its metrics and logs, K replicas at once.

One Lightning training step runs k optimizer steps (``trainer.steps_per_batch``): at the
paper's sizes a step's arithmetic is a fraction of a millisecond and Lightning's per-step
machinery costs about as much again, so it is paid once per k steps. The binary patch CNN on
sparse patches takes its gradient in closed form there (``objective.objective_and_gradient``);
``tests/test_chunks.py`` shows such a run equals the run with one step per training step.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.wrappers import MultioutputWrapper

from adamgap import objective
from adamgap.data import StepChunk
from adamgap.lightning_internals import counted_step
from adamgap.network import PatchCNN
from adamgap.optimizers import build_optimizer

SPLITS = ("train", "test")  # validation dataloader 0 is the full training set, 1 the test set


class GapModule(L.LightningModule):
    """Binary patch classification with logistic loss and L2 weight decay, K replicas at once."""

    def __init__(self, net: PatchCNN, optim: dict, max_steps: int, log_every: int) -> None:
        super().__init__()
        self.automatic_optimization = False  # several optimizer steps per training step
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
        self.params = list(net.parameters())  # W; listing them anew each step costs time

    # -- objective ----------------------------------------------------------------------------
    def objective(self, x, y: Tensor) -> tuple[Tensor, Tensor]:
        """The per-replica objective L_k(W) (K,) on a batch, and the network output f."""
        return objective.objective(self.net, x, y, self.lam, self.params)

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """The optimizer steps of one Lightning training step: those of a ``data.StepChunk``
        (k = ``trainer.steps_per_batch``), or one for a plain batch. Returns, per step and
        replica, the sums of the objective, the gradient and the updated weights (``totals``,
        (k, 3, K)): a non-finite total is how the divergence check (divergence.py) finds the
        first bad step inside a chunk."""
        steps = batch.batches if isinstance(batch, StepChunk) else [batch]
        opt, schedule = self.optimizers(), self.lr_schedulers()
        t0, inside = self.global_step, len(steps) > 1
        return {"totals": torch.stack([self._step(x, y, t0 + i, opt, schedule, inside)
                                       for i, (x, y) in enumerate(steps)])}

    def _step(self, x, y: Tensor, t: int, opt, schedule, inside: bool) -> Tensor:
        """Optimizer step t (the iteration index) on batch (x, y); its totals (3, K).

        Alone (k = 1) it goes through Lightning's ``manual_backward`` and ``LightningOptimizer
        .step``: precision, DDP and every per-step hook. Inside a chunk (k > 1: one process,
        no loss scaling, see ``config.steps_per_batch``) the gradient is the closed form of
        ``objective.objective_and_gradient`` where there is one (else plain autograd) and the step
        the torch optimizer's own: at the paper's sizes Lightning's per-step hooks and
        autograd's bookkeeping each cost about as much as the arithmetic. Lightning still
        counts the step (``trainer.global_step``, checkpoints, ``max_steps``) through the
        LightningOptimizer's step-count hooks, which is all its ``step()`` adds here; the
        per-step hooks (``on_before_backward``, ``on_after_backward``,
        ``on_before_optimizer_step``) are not called inside a chunk."""
        K = self.net.replicas
        closed = objective.objective_and_gradient(self.net, x, y, self.lam, self.params) \
            if inside else None
        value, f = closed[:2] if closed else self.objective(x, y)
        log = self._logs_at(t)
        if log:
            # Lightning hands these to the loggers at the end of the training step (k divides
            # log_every), labelled with ``step`` t rather than its count of training steps
            with torch.no_grad():
                error = objective.errors(f, y, self.classes).float().mean(dim=1)
            self.last.update(step_objective=value.detach(), step_error=error)
            # under DDP each rank sees its shard: average them (equal shards: the full batch)
            self.log_dict({"train/objective": value.mean(), "train/batch_error": error.mean()},
                          prog_bar=True, sync_dist=True)
            self.log("step", float(t))  # the x-axis of this training step's logs
        if inside:
            if closed:
                for p, grad in zip(self.params, closed[2], strict=True):
                    p.grad = grad
            else:
                opt.optimizer.zero_grad()
                value.sum().backward()
            if log:
                self._log_gradient()
            counted_step(opt, opt.optimizer.step)
        else:
            opt.zero_grad()
            self.manual_backward(value.sum())
            opt.step()  # its on_before_optimizer_step hook logs the gradient
        if schedule is not None:
            schedule.step()
        grad = objective.replica_sums([p.grad for p in self.params if p.grad is not None], K)
        return torch.stack([value.detach(), grad, objective.replica_sums(self.params, K)])

    def _logs_at(self, t: int) -> bool:
        """Whether iteration t logs its train metrics: every ``log_every`` steps and the last."""
        return (t + 1) % self.log_every == 0 or t == self.max_steps - 1

    def on_before_optimizer_step(self, optimizer) -> None:
        # global_step: the iteration running now (no optimizer step completed yet)
        if self._logs_at(self.global_step):
            self._log_gradient()

    def _log_gradient(self) -> None:
        K = self.net.replicas
        g = torch.cat([p.grad.reshape(K, -1) for p in self.params if p.grad is not None], dim=1)
        self.last.update(grad_l2=g.norm(dim=1), grad_l1=g.abs().sum(dim=1))
        self.log_dict({"grad/l2": self.last["grad_l2"].mean(),
                       "grad/l1": self.last["grad_l1"].mean()})

    # -- evaluation ---------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        f = self.net(x)
        self.mean_error[dataloader_idx].update(objective.errors(f, y, self.classes).float().T)
        self.mean_loss[dataloader_idx].update(objective.data_loss(f, y, self.classes).T)  # (B, K)

    def on_validation_epoch_end(self) -> None:
        for i, split in enumerate(SPLITS):
            error = torch.stack(list(self.mean_error[i].compute())).reshape(-1)
            loss = torch.stack(list(self.mean_loss[i].compute())).reshape(-1)
            self.mean_error[i].reset()
            self.mean_loss[i].reset()
            self.last.update({f"{split}_error": error, f"{split}_loss": loss})
            self.log_dict({f"{split}/error": error.mean(), f"{split}/loss": loss.mean()},
                          prog_bar=split == "test")
        # the logger's x-axis: as Lightning labels it with one optimizer step per training
        # step, an evaluation inside training carries the index of the iteration just run
        fit = self.trainer.state.fn == "fit"
        self.log("step", float(self.global_step - 1 if fit else self.global_step))
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
