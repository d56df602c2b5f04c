"""How an optimizer must be stepped, where ``step()`` alone does not fit.

- **closure**: ``step(closure)`` re-evaluates the objective (line searches, sharpness-aware
  perturbations, Polyak-type step sizes): torch's LBFGS, pytorch-optimizer's AliG and SAM
  family, heavyball's SAMWrapper. ``GapModule`` supplies a closure recomputing the objective
  and its gradient on the step's batch.
- **create_graph**: the optimizer takes Hessian-vector products of the gradient (Hutchinson
  estimates of the Hessian diagonal: AdaHessian, SophiaH), so the gradient must carry its
  graph: the module differentiates with ``create_graph=True`` through a twice-differentiable
  forward (``PatchCNN.forward(..., twice=True)``), not the closed form.
- **schedule_free**: the optimizer keeps the point it evaluates gradients at apart from the
  point it returns (Defazio et al. 2024; heavyball's momentum-SAM likewise): ``train()``
  before its steps, ``eval()`` before the network is evaluated; the module switches around
  every training step, so that every evaluation, alignment measurement and checkpoint sees
  the returned point. (heavyball's SAMWrapper has the pair only to forward it.)
- **muon_groups**: pytorch-optimizer's Muon family takes each parameter group's ``use_muon``
  flag (orthogonalised update for matrices, AdamW for the rest); ``build_optimizer`` sets it.

Classes of the three collections are known by name (the tables below); for any other class
a ``closure`` argument without a default means it needs one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

# (distribution, class name) of the optimizers whose step() needs a closure / a gradient graph
CLOSURE = {("torch", "LBFGS"), ("pytorch_optimizer", "AliG"), ("pytorch_optimizer", "BSAM"),
           ("pytorch_optimizer", "SAM"), ("pytorch_optimizer", "GSAM"),
           ("pytorch_optimizer", "WSAM"), ("pytorch_optimizer", "LookSAM"),
           ("pytorch_optimizer", "FriendlySAM"), ("heavyball", "SAMWrapper")}
CREATE_GRAPH = {("pytorch_optimizer", "AdaHessian"), ("pytorch_optimizer", "SophiaH")}
MUON_GROUPS = {("pytorch_optimizer", n) for n in ("Muon", "AdaMuon", "AdaGO", "NorMuon",
                                                  "MuonClip", "DistributedMuon")}
# train()/eval() that only forward to a wrapped optimizer (schedule-free only if that is)
FORWARDS_MODES = {("heavyball", "SAMWrapper")}


@dataclass(frozen=True)
class Contract:
    closure: bool = False
    create_graph: bool = False
    schedule_free: bool = False
    muon_groups: bool = False

    def describe(self) -> str:
        """The adapters in use, e.g. ``closure, schedule-free`` (``plain`` for none)."""
        on = [label for label, flag in (("closure", self.closure),
                                        ("create_graph", self.create_graph),
                                        ("schedule-free", self.schedule_free),
                                        ("muon groups", self.muon_groups)) if flag]
        return ", ".join(on) or "plain"


def _key(cls: type) -> tuple[str, str]:
    return cls.__module__.split(".")[0], cls.__name__


def contract_of(cls: type[torch.optim.Optimizer]) -> Contract:
    """How ``cls`` must be stepped (see the module docstring)."""
    key = _key(cls)
    closure = key in CLOSURE
    if not closure and key[0] not in ("torch", "pytorch_optimizer", "heavyball"):
        param = inspect.signature(cls.step).parameters.get("closure")
        closure = param is not None and param.default is inspect.Parameter.empty
    return Contract(closure=closure, create_graph=key in CREATE_GRAPH,
                    schedule_free=is_schedule_free(cls) and key not in FORWARDS_MODES,
                    muon_groups=key in MUON_GROUPS)


def is_schedule_free(opt: type | torch.optim.Optimizer) -> bool:
    """Whether ``opt`` (a class or an instance) has the schedule-free ``train()`` / ``eval()``
    pair (torch's Optimizer has neither)."""
    return all(callable(getattr(opt, m, None)) for m in ("train", "eval"))
