"""The LightningModule: the paper's objective (``adamgap.objective``) trained by an optimizer,
with its metrics and logs, K replicas at once.

One Lightning training step runs k optimizer steps (``trainer.steps_per_batch``): at the
paper's sizes a step's arithmetic is a fraction of a millisecond and Lightning's per-step
machinery costs about as much again, so it is paid once per k steps. The binary patch CNN on
sparse patches takes its gradient in closed form there (``objective.objective_and_gradient``);
``tests/test_chunks.py`` shows such a run equals the run with one step per training step.

Optimizers whose ``step()`` alone does not fit (``optimizers.contract``) are adapted here:

- a **closure** re-evaluates the objective and its gradient on the step's batch: of the whole
  ensemble for one optimizer over it, of replica k alone for replica k's optimizer
  (``optim.layout=replicas``), so that a line search or a sharpness-aware perturbation of one
  replica never evaluates, or is summed with, another;
- **Hessian-vector** optimizers get gradients that carry their graph (``create_graph``), from
  the twice-differentiable forward, replica by replica (one replica's Hessian-vector product
  then costs one replica's backward, not the ensemble's);
- **schedule-free** optimizers are in ``train()`` mode during a training step's optimizer steps
  and in ``eval()`` mode between training steps: evaluations, the alignment callback,
  checkpoints and the final weights all see the point the optimizer returns.
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
from adamgap.optimizers import (
    ReplicaOptimizers,
    build_optimizer,
    contract_of,
    loss_lambda,
    resolve,
)
from adamgap.patches import CSR, SparsePatches

SPLITS = ("train", "test")  # validation dataloader 0 is the full training set, 1 the test set


class GapModule(L.LightningModule):
    """Binary patch classification with logistic loss and L2 weight decay, K replicas at once."""

    def __init__(self, net: PatchCNN, optim: dict, max_steps: int, log_every: int,
                 seeds: list[int], lrs: list[float], n: int | None) -> None:
        """``seeds``, ``lrs``: replica k's seed (its optimizer's random stream) and step size;
        ``n``: the training-set size (an argument some optimizers require)."""
        super().__init__()
        self.automatic_optimization = False  # several optimizer steps per training step
        self.net = net
        self.optim = dict(optim)
        self.lam = loss_lambda(optim["name"], optim["lam"])
        self.max_steps, self.log_every = max_steps, log_every
        self.seeds, self.lrs, self.n = list(seeds), list(lrs), n
        self.contract = contract_of(resolve(optim["name"]).cls)
        self.per_replica = getattr(net, "layout", "ensemble") == "replicas"
        self._batch_of: tuple = (None, {})  # (x, {k: replica k's slice of it})
        self._grad_rows: Tensor | None = None  # replicas: the (K, C m, d) gradients, one piece
        K, self.classes = net.replicas, net.classes
        # per-replica means with summed states, so that DDP ranks evaluating disjoint blocks of
        # a split reduce to the error over the whole split (samplewise accuracy concatenates)
        self.mean_error = torch.nn.ModuleList(
            [MultioutputWrapper(MeanMetric(), num_outputs=K) for _ in SPLITS])
        self.mean_loss = torch.nn.ModuleList(
            [MultioutputWrapper(MeanMetric(), num_outputs=K) for _ in SPLITS])
        self.last: dict[str, Tensor] = {}  # latest per-replica values, for the run summary
        self.weights = list(net.parameters())  # what the optimizer steps; listed once (time)

    @property
    def params(self) -> list[Tensor]:
        """W as tensors with the replica dimension first (the L2 term, the replica sums): the
        parameters themselves, or in the replicas layout their (K, d, C, m) stack."""
        return [self.net.weight] if self.per_replica else self.weights

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
        if self.contract.schedule_free:
            opt.optimizer.train()  # the point the gradients are taken at
        totals = torch.stack([self._step(x, y, t0 + i, opt, schedule, inside)
                              for i, (x, y) in enumerate(steps)])
        if self.contract.schedule_free:
            opt.optimizer.eval()  # the point evaluated, measured and saved until the next step
        return {"totals": totals}

    def _step(self, x, y: Tensor, t: int, opt, schedule, inside: bool) -> Tensor:
        """Optimizer step t (the iteration index) on batch (x, y); its totals (3, K).

        Alone (k = 1) the gradient goes through Lightning's ``manual_backward`` and, for one
        optimizer over the ensemble, the step through ``LightningOptimizer.step``: precision,
        DDP and every per-step hook. Inside a chunk (k > 1: one process, no loss scaling, see
        ``config.steps_per_batch``) the gradient is the closed form of
        ``objective.objective_and_gradient`` where there is one (else plain autograd) and the
        step the torch optimizer's own: at the paper's sizes Lightning's per-step hooks and
        autograd's bookkeeping each cost about as much as the arithmetic. Lightning still
        counts the step (``trainer.global_step``, checkpoints, ``max_steps``) through the
        LightningOptimizer's step-count hooks, which is all its ``step()`` adds here; the
        per-step hooks (``on_before_backward``, ``on_after_backward``,
        ``on_before_optimizer_step``) are not called inside a chunk. The replicas' own
        optimizers (``optim.layout=replicas``) and closures always step this way."""
        K = self.net.replicas
        value, f = self._gradient(x, y, inside)
        own = inside or self.per_replica or self.contract.closure  # the torch optimizer's step
        # taken before it: some optimizers change the gradient in place or drop it (heavyball);
        # Lightning's step may unscale it first (mixed precision): taken after that one
        grad_sums = self._replica_grads().detach().sum(1) if own else None
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
        if own:
            if log:
                self._log_gradient()
            counted_step(opt, lambda: self._optimizer_step(opt.optimizer, x, y))
        else:
            opt.step()  # its on_before_optimizer_step hook logs the gradient
        if schedule is not None:
            schedule.step()
        if grad_sums is None:
            grad_sums = self._replica_grads().detach().sum(1)
        if self.contract.create_graph:  # release the graphs the gradients carried
            for p in self.weights:
                if p.grad is not None:
                    p.grad = p.grad.detach()
        weights = torch.stack([p.detach().sum() for p in self.weights]) if self.per_replica \
            else objective.replica_sums(self.params, K)
        return torch.stack([value.detach(), grad_sums, weights])

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, x, y: Tensor) -> None:
        """The torch optimizer's step, with a closure on (x, y) where it needs one."""
        optimizer.step(self._closure(x, y) if self.contract.closure else None)

    def step_on(self, optimizer: torch.optim.Optimizer, x, y: Tensor) -> Tensor:
        """One optimizer step on (x, y) exactly as inside a chunk, without a Trainer (what the
        independence probe drives; a schedule-free optimizer must be in ``train()`` mode).
        Returns the per-replica objective before the step, (K,)."""
        value, _ = self._gradient(x, y, inside=True)
        self._optimizer_step(optimizer, x, y)
        return value.detach()

    def _gradient(self, x, y: Tensor, inside: bool) -> tuple[Tensor, Tensor]:
        """Set every parameter's gradient of the objective on (x, y); return the per-replica
        objective (K,) and the network output f."""
        if self.contract.create_graph:  # gradients that carry their graph
            if self.per_replica:
                values, outputs = zip(*(self._replica_gradient(k, x, y, keep_f=True)
                                        for k in range(self.net.replicas)), strict=True)
                return torch.cat(values), torch.cat(outputs)
            value, f = self._objective(x, y, twice=True)
            for p, g in zip(self.weights, torch.autograd.grad(value.sum(), self.weights,
                                                               create_graph=True), strict=True):
                p.grad = g
            return value, f
        closed = objective.objective_and_gradient(self.net, x, y, self.lam, self.params) \
            if inside else None
        if closed:
            value, f, (grad,) = closed
            self._set_grad(grad)
            return value, f
        value, f = self.objective(x, y)
        if inside:
            for p in self.weights:
                p.grad = None
            value.sum().backward()
        else:
            self.optimizers().zero_grad()
            self.manual_backward(value.sum())
        return value, f

    def _objective(self, x, y: Tensor, twice: bool = False, weight: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
        """The per-replica objective (K',) and f of the network, or of ``weight`` (K', d, C,
        m); ``twice``: twice differentiable (plain ops throughout)."""
        if weight is None and (not twice or not isinstance(self.net, PatchCNN)):
            return self.objective(x, y)  # (a ResNet's plain autograd is twice differentiable)
        weight = self.net.weight if weight is None else weight
        f = self.net(x, weight=weight, twice=twice)
        if self.classes == 2:
            return objective.logistic_l2(f, y, self.lam, [weight])[0], f
        return (objective.data_loss(f, y, self.classes).mean(dim=1)
                + objective.l2_penalty([weight], self.lam, weight.shape[0])), f

    def _set_grad(self, grad: Tensor) -> None:
        """Set the gradient (K, d, C, m) of W: on the ensemble's parameter, or split into the
        replicas' (C m, d) matrices."""
        if not self.per_replica:
            self.weights[0].grad = grad
            return
        K, d, C, m = grad.shape
        self._grad_rows = grad.permute(0, 2, 3, 1).contiguous().view(K, C * m, d)
        for p, g in zip(self.weights, self._grad_rows, strict=True):
            p.grad = g

    def _closure(self, x, y: Tensor):
        """The closure of this step: ``evaluate(k)`` recomputes replica k's objective and its
        gradient on (x, y) (the replicas layout), ``evaluate()`` the whole ensemble's (one
        optimizer over it: their sum). It sets the gradients and returns the objective."""
        def evaluate(k: int | None = None) -> Tensor:
            with torch.enable_grad():
                if k is not None:
                    return self._replica_gradient(k, x, y)[0][0]
                return self._gradient(x, y, inside=True)[0].sum()
        return evaluate

    def _replica_gradient(self, k: int, x, y: Tensor, keep_f: bool = False):
        """Replica k alone: set its parameter's gradient of its objective on its part of
        (x, y); return its objective (1,) and f (1, B) (f only with ``keep_f``)."""
        xk, yk = self._replica_batch(x, y, k)
        p, weight = self.weights[k], self.net.replica_view(k)
        cg = self.contract.create_graph
        if not cg and isinstance(xk, SparsePatches) and self.classes == 2:
            closed = objective.objective_and_gradient(self.net, xk, yk, self.lam,
                                                      [weight.detach()])
            value, f, (grad,) = closed
            p.grad = grad[0].permute(1, 2, 0).contiguous().view(p.shape)
            return value, f
        value, f = self._objective(xk, yk, twice=cg, weight=weight)
        (p.grad,) = torch.autograd.grad(value.sum(), p, create_graph=cg)
        return value.detach(), (f.detach() if keep_f else None)

    def _replica_batch(self, x, y: Tensor, k: int):
        """Replica k's examples of the batch (x, y): (1, B, ...) each. The block-diagonal sparse
        batch is cut to its k-th block; cached per batch (the full batch is one object)."""
        if self._batch_of[0] is not x:
            self._batch_of = (x, {})
        cache = self._batch_of[1]
        if k not in cache:
            if isinstance(x, SparsePatches):
                K, B, P, d = x.shape
                rows, m = B * P, x.matrix
                lo, hi = int(m.crow[k * rows]), int(m.crow[(k + 1) * rows])
                block = CSR(m.crow[k * rows:(k + 1) * rows + 1] - lo, m.col[lo:hi] - k * d,
                            m.val[lo:hi], (rows, d))
                xk = SparsePatches(block, None, (1, B, P, d))
            else:
                xk = x[k:k + 1]
            cache[k] = (xk, y[k:k + 1])
        return cache[k]

    def _replica_grads(self) -> Tensor:
        """Every replica's gradient as a row, (K, N)."""
        K = self.net.replicas
        if self.per_replica:
            rows = self._grad_rows  # the gradients set in one piece, unless since replaced
            if rows is not None and all(p.grad is not None and p.grad.data_ptr() == r.data_ptr()
                                        for p, r in zip(self.weights, rows, strict=True)):
                return rows.view(K, -1)
            return torch.stack([p.grad.reshape(-1) for p in self.weights])
        grads = [p.grad.reshape(K, -1) for p in self.weights if p.grad is not None]
        return grads[0] if len(grads) == 1 else torch.cat(grads, dim=1)  # one: no copy

    def _logs_at(self, t: int) -> bool:
        """Whether iteration t logs its train metrics: every ``log_every`` steps and the last."""
        return (t + 1) % self.log_every == 0 or t == self.max_steps - 1

    def on_before_optimizer_step(self, optimizer) -> None:
        # global_step: the iteration running now (no optimizer step completed yet)
        if self._logs_at(self.global_step):
            self._log_gradient()

    def _log_gradient(self) -> None:
        g = self._replica_grads().detach()
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
        settings = dict(betas=o["betas"], eps=o["eps"], momentum=o["momentum"],
                        nesterov=o["nesterov"], weight_decay=o["weight_decay"],
                        kwargs=o["kwargs"], max_steps=self.max_steps, n=self.n)
        if self.per_replica:  # replica k's matrix, step size and random stream: its own
            opt = ReplicaOptimizers([build_optimizer([p], o["name"], lr, **settings)
                                     for p, lr in zip(self.weights, self.lrs, strict=True)],
                                    self.seeds)
        else:
            opt = build_optimizer(self.parameters(), o["name"], o["lr"], **settings)
        if o["schedule"] == "constant":
            return opt
        if o["schedule"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.max_steps)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, o["step_size"], o["gamma"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
