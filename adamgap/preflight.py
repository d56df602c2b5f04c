"""Checks a run needs before it starts that the schema alone cannot make: they ask torch,
Lightning or an optimizer library. ``check(cfg)`` runs after ``config.load_config`` (which
needs neither) in every entry point and again at the start of ``train.run``; like the schema's
checks it raises a one-line :class:`ConfigError` before anything is written.

- ``optim.name`` names an optimizer that can be built (``optimizers.resolve_optimizer_class``);
- Lightning accepts the ``trainer`` settings on this machine (accelerator, devices, strategy,
  precision: the Trainer is built once as a question, with no logger and no run).
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf

from adamgap.errors import ConfigError
from adamgap.optimizers import OPTIMIZERS, resolve_optimizer_class


def check(cfg: DictConfig) -> None:
    """Everything that can be known about ``cfg`` before a run starts (see the module doc)."""
    _check_optimizer(cfg)
    _check_trainer(cfg)


def _check_optimizer(cfg: DictConfig) -> None:
    try:
        resolve_optimizer_class(cfg.optim.name)
    except ValueError:
        raise ConfigError(f"optim.name={cfg.optim.name!r} is not allowed: "
                          f"{' | '.join(OPTIMIZERS)}, a torch.optim class, a pytorch-optimizer "
                          "name or module:Class"
                          ) from None


def _check_trainer(cfg: DictConfig) -> None:
    """Lightning judges its own arguments (names, combinations, what this machine has): ask it
    now, before a run directory exists, rather than when the run builds its Trainer."""
    t = cfg.trainer
    devices = tuple(t.devices) if isinstance(t.devices, ListConfig) else t.devices
    error = _trainer_error(t.accelerator, devices, t.num_nodes, t.strategy, t.precision)
    if error is not None:
        key = next((k for k in ("precision", "strategy", "num_nodes", "devices", "accelerator")
                    if k in error), "accelerator")
        value = OmegaConf.to_container(t)[key]
        raise ConfigError(f"trainer.{key}={value!r} is not allowed: {error}")


@functools.lru_cache(maxsize=32)
def _trainer_error(accelerator: str, devices: Any, num_nodes: int, strategy: str,
                   precision: str) -> str | None:
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    log.setLevel(logging.ERROR)  # this Trainer is a question, not a run: no banner
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L.Trainer(accelerator=accelerator, num_nodes=num_nodes, strategy=strategy,
                      devices=list(devices) if isinstance(devices, tuple) else devices,
                      precision=precision, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    except Exception as err:  # Lightning raises ValueError, TypeError, MisconfigurationException
        return str(err).splitlines()[0]
    finally:
        log.setLevel(level)
    return None
