"""Optimizers: the paper's GD and Adam, their relatives, and every optimizer a researcher can
install (torch.optim, pytorch-optimizer, heavyball, lion-pytorch, any ``module:Class``).

``sources``    names -> classes, and the package and version that installed each
``build``      ``build_optimizer``: the suite's settings on top of the class's defaults
``contract``   how an optimizer must be stepped (closure, gradient graph, schedule-free, Muon)
``replicas``   one optimizer per replica, stepped as one (ensembles that stay independent)
``catalogue``  every installed optimizer, its family, and why some cannot run here
``signgd``     sign GD, the proof's proxy for Adam

None of them gets its own weight decay except ``adamw``: the paper's lambda lives in the loss.
"""

from adamgap.optimizers.build import DECOUPLED, build_optimizer, loss_lambda, suite_settings
from adamgap.optimizers.contract import Contract, contract_of, is_schedule_free
from adamgap.optimizers.replicas import ReplicaOptimizers, layout_for
from adamgap.optimizers.signgd import SignGD
from adamgap.optimizers.sources import (
                                        OPTIMIZERS,
                                        Named,
                                        Resolved,
                                        label,
                                        resolve,
                                        resolve_optimizer_class,
)

__all__ = ["DECOUPLED", "OPTIMIZERS", "Contract", "Named", "ReplicaOptimizers", "Resolved",
           "SignGD", "build_optimizer", "contract_of", "is_schedule_free", "label", "layout_for",
           "loss_lambda", "resolve", "resolve_optimizer_class", "suite_settings"]
