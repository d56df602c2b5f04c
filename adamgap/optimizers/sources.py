"""Where optimizers come from, and the names configs give them.

``optim.name`` is, tried in this order,

- a short name of the suite (``OPTIMIZERS``): ``gd``, ``sgd``, ``adam``, ``adamw``, ``signgd``;
- a ``torch.optim`` class by name (``RMSprop``, ``NAdam``, ``Muon``, ...);
- a name in pytorch-optimizer's registry (``adan``, ``prodigy``, ``soap``, ...:
  ``pytorch_optimizer.get_supported_optimizers()``, 128 names, case as listed there);
- ``module:Class``, any installed class: ``heavyball:SOAP``, ``lion_pytorch:Lion``,
  ``pytorch_optimizer:SAM``, ``mypackage.optim:MyOptimizer``.

pytorch-optimizer and heavyball are imported only when a name needs them (each adds about a
second to a run's start-up). heavyball compiles its update kernels with ``torch.compile`` on
first use; :func:`import_package` switches that off as it imports heavyball
(``heavyball.utils.compile_mode = None``, the library's own switch), so nothing compiles at run
time (tests/test_optimizers.py counts compiled frames).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType

import torch

from adamgap.optimizers.signgd import SignGD

PYTORCH_OPTIMIZER = "pytorch_optimizer"
HEAVYBALL = "heavyball"


@dataclass(frozen=True)
class Named:
    """An optimizer with a short name: its class, and how tables and figures call it."""

    cls: type[torch.optim.Optimizer]
    label: str


# The short names, the one table of them (configs, validation, reports).
OPTIMIZERS = {
    "gd": Named(torch.optim.SGD, "GD"),  # built with momentum 0, full batch only
    "sgd": Named(torch.optim.SGD, "SGD"),
    "adam": Named(torch.optim.Adam, "Adam"),
    "adamw": Named(torch.optim.AdamW, "AdamW"),
    "signgd": Named(SignGD, "signGD"),
}


@dataclass(frozen=True)
class Resolved:
    """What ``optim.name`` names: the class, and the distribution that installed it."""

    name: str
    cls: type[torch.optim.Optimizer]
    package: str  # the distribution (pip name): torch, pytorch_optimizer, heavyball, ...
    version: str

    @property
    def qualname(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


def import_package(module: str) -> ModuleType:
    """Import ``module``; heavyball with its run-time ``torch.compile`` switched off."""
    imported = importlib.import_module(module)
    if module.split(".")[0] == HEAVYBALL:
        importlib.import_module(HEAVYBALL).utils.compile_mode = None
    return imported


def resolve(name: str) -> Resolved:
    """The optimizer named ``name`` (see the module docstring); ValueError if there is none."""
    cls = _find(name)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) \
            or cls is torch.optim.Optimizer:
        raise ValueError(f"{name} is not a torch.optim.Optimizer")
    package, version = distribution_of(cls)
    return Resolved(name, cls, package, version)


def _find(name: str):
    if name in OPTIMIZERS:
        return OPTIMIZERS[name].cls
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(import_package(module), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"cannot import optimizer {name}: {err}") from None
    cls = getattr(torch.optim, name, None)
    if cls is not None:
        return cls
    registry = import_package(PYTORCH_OPTIMIZER)
    if name in registry.get_supported_optimizers():
        return registry.load_optimizer(name)
    raise ValueError(f"no optimizer named {name}")


def resolve_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class for a name (see module docstring); ValueError if there is none."""
    return resolve(name).cls


def pytorch_optimizer_names() -> list[str]:
    """pytorch-optimizer's registry: ``get_supported_optimizers()``."""
    return list(import_package(PYTORCH_OPTIMIZER).get_supported_optimizers())


def heavyball_names() -> list[str]:
    """heavyball's optimizer classes (its ``__all__``), as ``heavyball:Class`` names."""
    hb = import_package(HEAVYBALL)
    return [f"{HEAVYBALL}:{k}" for k in hb.__all__ if isinstance(getattr(hb, k), type)
            and issubclass(getattr(hb, k), torch.optim.Optimizer)]


def distribution_of(cls: type) -> tuple[str, str]:
    """(distribution name, version) of the package that defines ``cls``."""
    top = cls.__module__.split(".")[0]
    try:  # a distribution named as its module (all of ours): no scan of every installed one
        found = importlib.metadata.distribution(top)
        return found.metadata["Name"], found.version
    except importlib.metadata.PackageNotFoundError:
        pass
    dist = _distributions().get(top, [top])[0]  # ~0.25 s: reads every distribution's files
    try:
        return dist, importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return dist, getattr(importlib.import_module(top), "__version__", "unknown")


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def label(name: str) -> str:
    """How a report names optimizer ``name``: the short name's label, a class name for
    ``module:Class``, else the name itself."""
    return OPTIMIZERS[name].label if name in OPTIMIZERS else name.rpartition(":")[2]
