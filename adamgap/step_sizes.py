"""The step-size callback: what one optimizer step does to the feature coordinate and to each
training example's noise coordinates, and the optimizer's state there (Section 5's mechanism).

Section 5.1 explains Adam's failure through per-coordinate step sizes: sign GD moves every
coordinate by eta per step, so the s noise coordinates of xi_i outrun the one feature
coordinate (Lemma 5.2) until the feature-noise term -alpha y_i v turns the feature's gradient
around (Lemma 5.3). This callback measures those quantities for any torch optimizer. At every
``every``-th iteration t (and the last) it reads, around the optimizer's own ``step()`` (torch's
public step pre- and post-hooks, so it sees every step, also the ones that run inside a chunk
of ``trainer.steps_per_batch`` steps), W(t), the gradient g(t) the step uses, the update
W(t+1) - W(t) and every state tensor of W's shape the optimizer keeps after the step
(``exp_avg``, ``exp_avg_sq``, ...). Units: updates divided by the step's learning rate, so that
sign GD's update is 1 on every coordinate with a nonzero gradient.

Per replica k, for class j and filter r (``feature``, each (K, 2, m)), on supp(v) (v = e_1:
coordinate 0):

- ``feature_learning``  <w_{j,r}, j v> at W(t);
- ``step``              mean over supp(v) of |W(t+1) - W(t)| / lr;
- ``velocity``          <W(t+1) - W(t), j v> / lr (feature learning gained this step, in lr);
- ``grad``              <g_{j,r}, v>, and its parts: ``grad_feature_patch`` (from the feature
  patches y_i v), ``grad_feature_noise`` (from the noise patches' -alpha y_i v) and
  ``grad_decay`` (lam <w_{j,r}, v>), computed from W(t) on the full training set (they add up to
  ``grad`` for the full-batch gradient);
- one entry per state tensor: its value on supp(v) (mean over supp(v)).

Per training example i and noise patch p (``noise``, each (K, n, P-1)), for the filter r* of
class y_i with the largest <w_{y_i,r}, xi_{i,p}> at W(t) (the one noise memorization takes) and
its s noise coordinates S_{i,p} (supp xi'_{i,p}):

- ``noise_memorization``  <w_{y_i,r*}, xi_{i,p}> at W(t);
- ``step``                mean over S_{i,p} of |W(t+1) - W(t)| / lr;
- ``velocity``            <W(t+1) - W(t), xi_{i,p}> / lr (the whole patch, feature noise in);
- ``velocity_gauss``      its Gaussian part <W(t+1) - W(t), xi'_{i,p}> / lr;
- ``grad_abs``, ``grad_sq``  mean over S_{i,p} of |g| and of g^2;
- one entry per state tensor: the mean over S_{i,p} of its absolute value.

Outputs (rank 0): ``step_sizes.pt`` (every record: ``step``, ``lr``, ``seeds``, ``feature``
and ``noise`` dicts of stacked tensors (records, ...)), ``step_sizes.csv`` (one row per record
and replica, the class +1 summaries in Figure 2's convention: the filter with the largest
feature learning; the mean over the positive examples). It only observes: it never changes
training. It needs Definition 3.1's data (``data.task=synthetic``) and the patch CNN.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from adamgap.alignment import noise_memorization
from adamgap.outputs import atomic_write, write_csv

_CLASS_SIGN = torch.tensor([1.0, -1.0])[:, None]  # c_j of f = F_{+1} - F_{-1}: (2, 1) over (j, r)


class StepSizeCallback(L.Callback):
    """Records per-coordinate steps and optimizer state every ``every`` iterations."""

    def __init__(self, run_dir: str | Path, every: int, lam: float,
                 seeds: list[int] | None = None) -> None:
        self.run_dir, self.every, self.lam, self.seeds = Path(run_dir), every, lam, seeds
        self.steps: list[int] = []
        self.lrs: list[float] = []
        self.feature: list[dict[str, Tensor]] = []  # each key -> (K, 2, m)
        self.noise: list[dict[str, Tensor]] = []  # each key -> (K, n, P-1)
        self._handles: list = []
        self._before: dict | None = None  # what a due record took before the step
        self._t = 0  # the iteration the optimizer runs next

    # -- hooks around the optimizer's step ----------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._t, self._max = trainer.global_step, trainer.max_steps
        self._net, self._param = module.net, module.net.weight
        self._data = _Supports(trainer.datamodule, self._param.device)
        opt = trainer.optimizers[0]
        self._opt = opt
        self._handles = [opt.register_step_pre_hook(self._pre),
                         opt.register_step_post_hook(self._post)]

    def _due(self, t: int) -> bool:
        return t % self.every == 0 or t == self._max - 1

    def _pre(self, opt, args, kwargs) -> None:
        if self._due(self._t) and self._param.grad is not None:
            lr = next(float(g["lr"]) for g in opt.param_groups
                      if any(p is self._param for p in g["params"]))
            self._before = self.before_step(lr)

    def _post(self, opt, args, kwargs) -> None:
        if self._before is not None:
            self.record(self._t, self._before)
            self._before = None
        self._t += 1

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- one record -----------------------------------------------------------------------------
    @torch.no_grad()
    def before_step(self, lr: float) -> dict:
        """What iteration t's record needs from before the step: W(t), g(t), lr and the
        quantities taken at W(t)."""
        D, net, w0 = self._data, self._net, self._param.detach().clone()
        grad = self._param.grad.detach().clone()
        return {"w0": w0, "grad": grad, "lr": lr, "nm0": noise_memorization(net, D.noise, D.y),
                "feature": {"feature_learning": _CLASS_SIGN * _on_v(w0, D.v, D.supp),
                            "grad": _on_v(grad, D.v, D.supp),
                            **self._feature_gradient(net, D, w0)}}

    @torch.no_grad()
    def record(self, t: int, before: dict) -> None:
        """The record of iteration t from ``before`` (``before_step``), W(t+1) (the parameter
        now) and the optimizer's state now."""
        D, lr, w1 = self._data, before["lr"], self._param.detach()
        update = (w1 - before["w0"]) / lr  # (K, d, 2, m)
        state = {name: s.detach() for name, s in self._opt.state.get(self._param, {}).items()
                 if isinstance(s, Tensor) and s.shape == w1.shape}
        # -- the feature coordinate(s): (K, 2, m) ----------------------------------------------
        feature = {**before["feature"], "step": update[:, D.supp].abs().mean(1),
                   "velocity": _CLASS_SIGN * _on_v(update, D.v, D.supp)}
        for name, s in state.items():
            feature[name] = s[:, D.supp].mean(1)
        # -- the noise coordinates of each example, filter r*: (K, n, P-1) --------------------
        nm0 = before["nm0"]  # (K, n, P-1, m)
        nm1 = noise_memorization(self._net, D.noise, D.y)  # at W(t+1)
        best = nm0.argmax(-1, keepdim=True)  # (K, n, P-1, 1)
        on_support = D.gather(update, best)  # (K, n, P-1, s)
        g = D.gather(before["grad"], best)
        noise = {"noise_memorization": nm0.gather(-1, best).squeeze(-1),
                 "step": on_support.abs().mean(-1),
                 "velocity": (nm1 - nm0).gather(-1, best).squeeze(-1) / lr,
                 "velocity_gauss": (on_support * D.xi).sum(-1),
                 "grad_abs": g.abs().mean(-1),
                 "grad_sq": g.square().mean(-1)}
        for name, s in state.items():
            noise[name] = D.gather(s, best).abs().mean(-1)
        self.steps.append(t)
        self.lrs.append(lr)
        self.feature.append({k: v.cpu() for k, v in feature.items()})
        self.noise.append({k: v.cpu() for k, v in noise.items()})

    def _feature_gradient(self, net, D: _Supports, w: Tensor) -> dict[str, Tensor]:
        """<g_{j,r}, v> split by where it comes from: feature patches, noise patches (the
        feature noise -alpha y v), weight decay; the full-batch gradient at W = ``w``."""
        f = net(D.x)  # (K, n)
        df = -D.y * torch.sigmoid(-D.y * f) / D.y.shape[1]  # d(mean loss)/df: (K, n)
        z = net.activations(D.x)  # (K, n, P, 2, m)
        slope = torch.ones_like(z) if net.linear else net.q * z.clamp_min(0).pow(net.q - 1)
        # d f_i / d<w_{j,r}, v> along v, per patch: c_j sigma'(z_{i,p,j,r}) <x_{i,p}, v>
        per_patch = (df[:, :, None, None, None] * _CLASS_SIGN.to(z) * slope
                     * D.x_v[..., None, None])
        feature_patch = D.feature_patch[..., None, None]  # (K, n, P, 1, 1)
        return {"grad_feature_patch": (per_patch * feature_patch).sum((1, 2)),
                "grad_feature_noise": (per_patch * ~feature_patch).sum((1, 2)),
                "grad_decay": self.lam * _on_v(w, D.v, D.supp)}

    # -- checkpoints and outputs --------------------------------------------------------------
    HISTORY = ("steps", "lrs", "feature", "noise")  # what checkpoints keep; a resumed run appends

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.HISTORY}

    def load_state_dict(self, state: dict) -> None:
        for name in self.HISTORY:
            setattr(self, name, list(state[name]))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._remove_hooks()
        if trainer.is_global_zero:
            self.write()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, err) -> None:
        self._remove_hooks()

    def history(self) -> dict:
        """Every record stacked: ``step`` (R,), ``lr`` (R,), ``feature`` / ``noise`` dicts of
        (R, K, ...) tensors, ``seeds``."""
        def stack(records: list[dict[str, Tensor]]) -> dict[str, Tensor]:
            return {k: torch.stack([r[k] for r in records]) for k in records[0]} if records \
                else {}

        return {"step": torch.tensor(self.steps), "lr": torch.tensor(self.lrs, dtype=torch.float64),
                "seeds": self.seeds, "feature": stack(self.feature), "noise": stack(self.noise)}

    def rows(self, y: Tensor) -> list[dict]:
        """The csv rows: per record and replica, class +1's feature filter (largest feature
        learning) and the mean over positive examples' noise patches."""
        out = []
        pos = (y > 0).cpu()[:, :, None]  # (K, n, 1)
        for t, lr, feat, noise in zip(self.steps, self.lrs, self.feature, self.noise,
                                      strict=True):
            r_plus = feat["feature_learning"][:, 0].argmax(1)  # (K,)
            for k in range(r_plus.shape[0]):
                row = {"step": t, "seed": self.seeds[k] if self.seeds else k, "lr": lr}
                row.update({f"feature_{name}".replace("feature_feature_", "feature_"):
                            float(v[k, 0, r_plus[k]]) for name, v in feat.items()})
                mask = pos[k].expand_as(noise["step"][k])
                row.update({f"noise_{name}".replace("noise_noise_", "noise_"):
                            float(v[k][mask].mean()) for name, v in noise.items()})
                out.append(row)
        return out

    def write(self) -> None:
        if not self.steps:
            return
        write_csv(self.run_dir / "step_sizes.csv", self.rows(self._data.y))
        history = self.history()
        atomic_write(self.run_dir / "step_sizes.pt", lambda f: torch.save(history, f),
                     binary=True)


def _on_v(w: Tensor, v: Tensor, supp: Tensor) -> Tensor:
    """<w_{j,r}, v> for W (K, d, 2, m): (K, 2, m)."""
    return torch.einsum("kdjr,d->kjr", w[:, supp], v[supp])


class _Supports:
    """What the records need of the training set (Definition 3.1, ``data.PatchSet``): the
    noise coordinates S_{i,p} and values xi'_{i,p} (K, n, P-1, s), the class of each example,
    supp(v), <x_{i,p}, v> (K, n, P) and which patch is the feature patch (K, n, P)."""

    def __init__(self, dm, device: torch.device) -> None:
        train = dm.train  # PatchSet: index / value (K, n, P, L), L = s + |supp v|
        K, n, P, L = train.index.shape
        s = dm.s
        self.v = dm.v.to(device)
        self.supp = self.v.nonzero().flatten()
        where = train.feature_patch  # (K, n)
        self.feature_patch = (torch.arange(P)[None, None] == where[..., None]).to(device)
        order = torch.argsort(self.feature_patch.int().cpu(), dim=-1, stable=True)[..., :P - 1]
        pick = order[..., None].expand(-1, -1, -1, L)  # the noise patches, in patch order
        index, value = train.index.gather(2, pick), train.value.gather(2, pick)
        # a noise patch's entries: its s Gaussian coordinates and -alpha y v on supp(v), in
        # whatever order the patch set stores them; keep the s outside supp(v)
        outside = torch.argsort(torch.isin(index, self.supp.cpu()).int(), dim=-1,
                                stable=True)[..., :s]
        self.index = index.gather(-1, outside).to(device)  # (K, n, P-1, s)
        self.xi = value.gather(-1, outside).to(device)
        self.x_v = (train.value * dm.v[train.index]).sum(-1).to(device)  # (K, n, P)
        self.cls = (train.y < 0).long().to(device)  # 0: class +1's filters, 1: class -1's
        self.y = dm.y_train.to(device)
        self.x, self.noise = dm.x_train, dm.train_noise
        self.K = K

    def gather(self, w: Tensor, r: Tensor) -> Tensor:
        """W (K, d, 2, m) on each example's noise coordinates S_{i,p}, for filter ``r``
        (K, n, P-1, 1) of the example's own class: (K, n, P-1, s)."""
        k = torch.arange(self.K, device=w.device)[:, None, None, None]
        return w.permute(0, 2, 1, 3)[k, self.cls[:, :, None, None], self.index, r]
