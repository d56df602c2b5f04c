"""The ensemble-independence probe: does an optimizer treat an ensemble's replicas as separate
runs?

Before an optimizer runs K replicas at once (a sweep cell, the atlas's step-size grid), a
short run of K = 2 replicas is compared with the two single runs it stands for, at the run's
own sizes (the paper's: replica k's first layer a (2m, d) = (40, 1000) matrix), for
``STEPS`` optimizer steps driven exactly as inside a training step (``GapModule.step_on``):

``ensemble``  one optimizer over the (K, d, 2, m) tensor, seeds s and s + 1 at one step size,
              against the single runs of s and of s + 1 (at 1e-3 and at the class's own
              default step size);
``replicas``  one optimizer per replica (``optim.layout=replicas``), seed s at those two step
              sizes (``optim.lrs``), against the single runs of s at each.

A layout passes when every weight of the ensemble is within the tolerance of the single runs'
weights relative to how far they moved (mixing replicas, e.g. a norm over the whole tensor or
a shared random stream, moves them by about as much as the steps themselves; identical
arithmetic leaves rounding at most). The tolerance is ``TOLERANCE``, or the optimizer's own
sensitivity to rounding when that is larger: how far its single runs move when W(0) moves by
one unit in the last place (``floor``: pytorch-optimizer's Muon iterates Newton-Schulz in
bfloat16 and turns last-bit differences into ~1e-3 in 20 steps, as large as its replicas
layout's deviation), capped at ``FLOOR_CAP`` so that an optimizer chaotic from its first steps
is still held to a percent. The verdict: the cheapest layout that passes (``ensemble``, then
``replicas``), or ``processes`` when neither does: the replicas then run as separate processes
(one seed per sweep cell). The probe also times the replicas layout's step (the cost
of one replica's optimizer step with its gradient, ``ms_per_step``).
"""

from __future__ import annotations

import inspect
import math
import time
import traceback
import warnings
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from adamgap.optimizers import resolve
from adamgap.train import build_datamodule, build_module

STEPS = 20
TOLERANCE = 1e-4  # largest deviation from the single runs, relative to the largest move
FLOOR_CAP = 1e-2  # ... or the optimizer's own one-ulp sensitivity, at most this
PROBE_LR = 1e-3  # one step size of every check; the other is the class's own default lr


@dataclass
class Verdict:
    """The probe's outcome for one optimizer (the atlas records it in the optimizer's row)."""

    name: str
    layout: str | None  # ensemble | replicas | processes; None: it could not be built/stepped
    ensemble: float | None  # relative deviation of the ensemble layout (None: not checked)
    replicas: float | None  # ... of the replicas layout
    ms_per_step: float | None  # one replica's optimizer step with its gradient (replicas)
    error: str | None = None  # why it could not be built or stepped, one line
    floor: float | None = None  # the single runs' deviation after one ulp of W(0)

    @property
    def tolerance(self) -> float:
        """The deviation a layout may have (module docstring)."""
        return max(TOLERANCE, min(self.floor or 0.0, FLOOR_CAP))

    def passes(self, layout: str) -> bool:
        d = getattr(self, layout)
        return d is not None and d <= self.tolerance

    def describe(self) -> str:
        if self.error:
            return f"not runnable: {self.error}"
        if self.ensemble is None and self.replicas is None:
            return f"only timed ({self.ms_per_step:.0f} ms a step): its layouts were not checked"
        parts = [f"{k} {'=' if self.passes(k) else '!='} separate ({_fmt(getattr(self, k))})"
                 for k in ("ensemble", "replicas") if getattr(self, k) is not None]
        return f"{self.layout}: " + ", ".join(parts) + f" (tolerance {self.tolerance:.0e})"

    def record(self) -> dict:
        return asdict(self)


def _fmt(d: float | None) -> str:
    return "error" if d is None else "nan" if math.isnan(d) else f"{d:.1e}"


def probe(cfg: DictConfig, steps: int = STEPS, budget_ms: float | None = None) -> Verdict:
    """Probe ``cfg``'s optimizer (its data and model settings; seed, replicas, layout and step
    sizes are the probe's own): at two step sizes, 1e-3 and the class's default (an
    optimizer whose pooled statistics move slowly shows its mixing at its own step size).
    ``budget_ms``: an optimizer whose first single run steps slower than this is only timed
    (its layouts are not checked: it will not run)."""
    name, s = cfg.optim.name, cfg.seed
    try:
        a, b = PROBE_LR, _own_lr(name)
        single = [f"seed={s}", f"optim.lr={a}", "optim.layout=replicas"]
        first, seconds = _run(cfg, steps, single)
        if budget_ms is not None and 1e3 * seconds / steps > budget_ms:
            # the first run of a class (of a process) also pays one-time costs: lazy imports,
            # kernels, allocations; the same run again is the class's own cost
            first, seconds = _run(cfg, steps, single)
            if 1e3 * seconds / steps > budget_ms:
                return Verdict(name, "replicas", None, None, 1e3 * seconds / steps)
        singles = {(seed, lr): first[0] if (seed, lr) == (s, a) else
                   _run(cfg, steps, [f"seed={seed}", f"optim.lr={lr}",
                                     "optim.layout=replicas"])[0][0]
                   for seed in (s, s + 1) for lr in (a, b)}
        replicas, seconds = _run(cfg, steps, ["run.replicas=1", f"optim.lrs=[{a},{b}]",
                                              "optim.layout=replicas"])
        nudged = {lr: _run(cfg, steps, [f"seed={s}", f"optim.lr={lr}", "optim.layout=replicas"],
                           ulp=True)[0][0] for lr in (a, b)}
    except Exception as err:  # noqa: BLE001 - any failure of the library is the verdict
        return Verdict(name, None, None, None, None, _error_line(err))
    moved = max((w[1] - w[0]).abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
                for w in singles.values())
    if moved == 0:
        return Verdict(name, None, None, None, None,
                       f"the weights did not move in {steps} steps at lr {a:g} or {b:g}")
    floor = max(_deviation([nudged[lr]], [singles[(s, lr)]], same_start=False) for lr in (a, b))
    dev_replicas = _deviation(replicas, [singles[(s, a)], singles[(s, b)]])
    dev_ensemble = 0.0
    for lr in (a, b):
        try:
            ensemble, _ = _run(cfg, steps, ["run.replicas=2", f"optim.lr={lr}",
                                            "optim.layout=ensemble"])
            dev = _deviation(ensemble, [singles[(s, lr)], singles[(s + 1, lr)]])
        except Exception:  # noqa: BLE001 - e.g. an optimizer that takes matrices only
            dev = math.inf
        dev_ensemble = max(dev_ensemble, dev)
    v = Verdict(name, None, dev_ensemble, dev_replicas, 1e3 * seconds / (2 * steps),
                floor=floor)
    v.layout = "ensemble" if v.passes("ensemble") else \
        "replicas" if v.passes("replicas") else "processes"
    return v


def _own_lr(name: str) -> float:
    """The class's default step size (``lr``, or AliG's ``max_lr``) when it is a number > 0
    and not the probe's, else 1e-2."""
    params = inspect.signature(resolve(name).cls.__init__).parameters
    lr = next((params[k].default for k in ("lr", "max_lr") if k in params), None)
    ok = isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and lr != PROBE_LR
    return float(lr) if ok else 1e-2


def _run(cfg: DictConfig, steps: int, overrides: list[str], ulp: bool = False
         ) -> tuple[list[torch.Tensor], float]:
    """``steps`` optimizer steps of ``cfg`` with ``overrides``: W(0) and W(steps) per replica
    ((d, C, m) each) and the wall seconds of the steps; ``ulp``: W(0) one unit in the last
    place up (every weight: the next float towards +inf)."""
    with warnings.catch_warnings():  # torch's notes on sparse CSR tensors: not the probe's
        warnings.filterwarnings("ignore", "Sparse", UserWarning)
        return _steps(cfg, steps, overrides, ulp)


def _steps(cfg: DictConfig, steps: int, overrides: list[str], ulp: bool
           ) -> tuple[list[torch.Tensor], float]:
    base = OmegaConf.merge(cfg, {"trainer": {"max_steps": steps}, "data": {"n_test": 2},
                                 "optim": {"lrs": None, "layout": None},
                                 "run": {"replicas": 1}})
    run_cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    dm = build_datamodule(run_cfg)
    dm.setup("fit")
    module = build_module(run_cfg, dm)
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    if ulp:
        with torch.no_grad():
            for p in module.net.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
    w0 = module.net.weight.detach().clone()
    schedule_free = module.contract.schedule_free
    if schedule_free:
        opt.train()
    start = time.perf_counter()
    for t in range(steps):
        module.step_on(opt, *dm.train_batch(t))
    seconds = time.perf_counter() - start
    if schedule_free:
        opt.eval()
    w = module.net.weight.detach()
    return [torch.stack([w0[k], w[k]]) for k in range(w.shape[0])], seconds


def _deviation(ensemble: list[torch.Tensor], singles: list[torch.Tensor],
               same_start: bool = True) -> float:
    """max |W_ensemble - W_single| / max |W_single(T) - W(0)| over the replicas (nan where
    both diverged the same way counts as equal; with ``same_start``, a start that differs is
    a failure)."""
    worst = 0.0
    for ens, one in zip(ensemble, singles, strict=True):
        if same_start and not torch.equal(ens[0], one[0]):
            return math.inf
        moved = (one[1] - one[0]).abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
        both_bad = ~ens[1].isfinite() & ~one[1].isfinite()
        diff = torch.where(both_bad, 0.0, (ens[1] - one[1]).abs()).nan_to_num(nan=math.inf)
        worst = max(worst, diff.max().item() / max(moved, 1e-30))
    return worst


def _error_line(err: BaseException) -> str:
    """``Type: first line`` of an exception, and where in the library it was raised."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    frames = traceback.extract_tb(err.__traceback__)
    where = next((f"{f.filename.rpartition('site-packages/')[2]}:{f.lineno}"
                  for f in reversed(frames) if "site-packages" in f.filename), None)
    return f"{type(err).__name__}: {text}" + (f" ({where})" if where else "")
