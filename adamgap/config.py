"""The configuration schema: every setting, its type and its default, in one place.

Defaults are the paper's Section 6 settings (see ``shared/paper/NOTES.md``). A named experiment
in ``conf/NAME.yaml`` states only what differs from them, optionally on top of another named
experiment (``base: NAME``). Command-line overrides are dotted ``key=value`` pairs.

``load_config`` merges schema <- conf file(s) <- overrides, rejects unknown keys, wrong types and
impossible values with a :class:`ConfigError` whose message is one line naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key and what is allowed."""


@dataclass
class DataConfig:
    """Definition 3.1: feature patch ``y v`` and noise patches ``xi = xi' - alpha y v``."""

    task: str = "synthetic"  # synthetic (Definition 3.1)
    d: int = 1000  # patch dimension
    n: int = 200  # training examples
    n_test: int = 10_000  # held-out examples for the test error
    s: int = 100  # nonzero Gaussian coordinates per noise patch (0.1 d)
    sigma_p: Optional[float] = None  # noise std; null -> 1/sqrt(s) = 0.1
    alpha: float = 0.2  # feature-noise strength, 0 <= alpha < 1
    v: Optional[list[float]] = None  # feature vector (length d); null -> e_1
    labels: str = "balanced"  # balanced (n/2 each, as in the paper) | rademacher
    feature_position: str = "random"  # random patch per example | fixed (patch 0)
    patches: int = 2  # P: one feature patch and P - 1 noise patches
    batch_size: Optional[int] = None  # null -> n (full batch)
    sparse: Optional[bool] = None  # sparse patch matrices; null -> when less than 25% dense


@dataclass
class ModelConfig:
    """The two-layer patch CNN of Section 3 (or its linear, convex counterpart)."""

    name: str = "patch_cnn"  # patch_cnn: sigma(z) = max(z, 0)^q | linear: sigma(z) = z
    m: int = 20  # filters per class
    q: float = 3.0  # activation power, q >= 1 (the theory needs q >= 3)
    sigma_0: float = 0.01  # init std of W(0)


@dataclass
class OptimConfig:
    """Optimizer and objective. The loss is mean logistic + (lam / 2) ||W||_F^2 (L2, inside the
    gradient, as in the paper) for every optimizer except ``adamw``, whose decay is decoupled
    (``weight_decay``) and whose loss has no L2 term."""

    name: str = "adam"  # gd | sgd | adam | adamw | signgd | a torch.optim class | module:Class
    lr: float = 1e-4  # eta
    lam: float = 1e-5  # lambda, L2 weight decay inside the loss (not used by adamw)
    weight_decay: float = 0.01  # adamw only: decoupled decay coefficient (PyTorch's default)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    eps: float = 1e-8  # adam, adamw
    momentum: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments for other classes
    schedule: str = "constant"  # constant | cosine | step
    step_size: int = 1000  # step schedule: decay every step_size steps ...
    gamma: float = 0.1  # ... by this factor


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments (and how often the module logs and evaluates)."""

    max_steps: int = 10_000  # T
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: Any = 1  # int, list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ...
    precision: str = "32-true"
    log_every: int = 100  # steps between logged train metrics (logging every step costs time)
    eval_every: int = 1000  # steps between test-error evaluations (and at the end)
    progress_bar: bool = True


@dataclass
class AlignConfig:
    """The alignment callback (feature learning and noise memorization, Figure 2)."""

    enabled: bool = True
    every: int = 100  # record every k steps (and at steps 0 and T)


@dataclass
class WandbConfig:
    enabled: bool = False
    mode: str = "offline"  # offline | online | disabled
    project: str = "adamgap"
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    name: Optional[str] = None


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RunConfig:
    dir: Optional[str] = None  # null -> runs/<conf>/<timestamp>-s<seed>
    resume: bool = False
    replicas: int = 1  # K seeds (seed, seed+1, ..., seed+K-1) trained at once as one ensemble


@dataclass
class Config:
    conf: str = "default"  # name of the experiment file (set by load_config)
    seed: int = 0  # fixes data and W(0): Adam and GD with one seed share both
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunConfig = field(default_factory=RunConfig)


OPTIMIZERS = ("gd", "sgd", "adam", "adamw", "signgd")


def conf_names() -> list[str]:
    """Names of the experiment files in ``conf/``."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def _conf_file(name: str, chain: tuple[str, ...] = ()) -> DictConfig:
    """Read ``conf/NAME.yaml`` and, recursively, the experiment it names as ``base``."""
    path = CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"conf={name}: no file {path}; available: {', '.join(conf_names())}")
    if name in chain:
        raise ConfigError(f"conf={name}: 'base' chain loops ({' -> '.join(chain + (name,))})")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"conf={name}: {path} must hold a mapping of config keys")
    base = node.pop("base", None)
    if base is None:
        return node
    return OmegaConf.merge(_conf_file(str(base), chain + (name,)), node)


def _merge(schema: DictConfig, node: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, node)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        if "not in" in msg:
            parent = OmegaConf.select(schema, key.rpartition(".")[0]) if "." in key else schema
            allowed = ", ".join(parent.keys()) if isinstance(parent, DictConfig) else ""
            raise ConfigError(f"unknown config key '{key}' ({where}); allowed: {allowed}") from None
        raise ConfigError(f"bad value for '{key}' ({where}): {msg}") from None


def parse_overrides(args: list[str]) -> tuple[str, list[str]]:
    """Split ``conf=NAME key=value ...`` into the conf name and the dotted overrides."""
    name, rest = "default", []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument '{arg}' is not key=value (e.g. conf=synthetic_adam seed=3)")
        key, _, value = arg.partition("=")
        if key == "conf":
            name = value
        else:
            rest.append(arg)
    return name, rest


def load_config(name: str = "default", overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Schema defaults <- ``conf/NAME.yaml`` (and its bases) <- ``overrides``; validated."""
    cfg = OmegaConf.structured(Config)
    if name != "default":
        cfg = _merge(cfg, _conf_file(name), f"conf/{name}.yaml")
    cfg.conf = name
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides: {str(err).splitlines()[0]}") from None
    if "conf" in dotlist:
        raise ConfigError("'conf' is chosen with conf=NAME, not overridden inside a config")
    cfg = _merge(cfg, dotlist, "command line")
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, allowed: str, cfg: DictConfig) -> None:
    if not ok:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Reject impossible values (types and keys are already checked by the schema)."""
    d = cfg.data
    _check(d.task in TASKS, "data.task", f"one of {', '.join(TASKS)}", cfg)
    _check(d.d >= 2, "data.d", "an integer >= 2", cfg)
    _check(d.n >= 2, "data.n", "an integer >= 2", cfg)
    _check(d.n_test > 0, "data.n_test", "an integer > 0", cfg)
    _check(0 <= d.s < d.d, "data.s", f"0 <= s < d (d={d.d})", cfg)
    _check(d.sigma_p is None or d.sigma_p >= 0, "data.sigma_p", "null (1/sqrt(s)) or >= 0", cfg)
    _check(math.isfinite(d.alpha) and d.alpha >= 0, "data.alpha", "a number >= 0", cfg)
    _check(d.labels in ("balanced", "rademacher"), "data.labels", "balanced | rademacher", cfg)
    _check(d.feature_position in ("random", "fixed"), "data.feature_position", "random | fixed", cfg)
    _check(d.patches >= 1, "data.patches", "an integer >= 1", cfg)
    _check(d.batch_size is None or 1 <= d.batch_size <= d.n, "data.batch_size",
           f"null (full batch) or 1..n (n={d.n})", cfg)
    if d.v is not None:
        _check(len(d.v) == d.d and any(x != 0 for x in d.v), "data.v",
               f"null (e_1) or a nonzero list of d={d.d} numbers", cfg)
        free = sum(1 for x in d.v if x == 0)
        _check(d.s <= free, "data.s", f"at most the {free} coordinates outside supp(v)", cfg)
    mo = cfg.model
    _check(mo.name in ("patch_cnn", "linear"), "model.name", "patch_cnn | linear", cfg)
    _check(mo.m >= 1, "model.m", "an integer >= 1", cfg)
    _check(mo.q >= 1, "model.q", "a number >= 1", cfg)
    _check(mo.sigma_0 >= 0, "model.sigma_0", "a number >= 0", cfg)
    o = cfg.optim
    _check(_known_optimizer(o.name), "optim.name",
           f"{' | '.join(OPTIMIZERS)}, a torch.optim class or module:Class", cfg)
    _check(o.lr > 0 and math.isfinite(o.lr), "optim.lr", "a number > 0", cfg)
    _check(o.lam >= 0, "optim.lam", "a number >= 0", cfg)
    _check(o.weight_decay >= 0, "optim.weight_decay", "a number >= 0", cfg)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           "two numbers in [0, 1)", cfg)
    _check(o.eps >= 0, "optim.eps", "a number >= 0", cfg)
    _check(o.momentum >= 0, "optim.momentum", "a number >= 0", cfg)
    _check(o.schedule in ("constant", "cosine", "step"), "optim.schedule",
           "constant | cosine | step", cfg)
    _check(o.name != "gd" or d.batch_size in (None, d.n), "data.batch_size",
           "null or n with optim.name=gd (full batch); use optim.name=sgd for mini-batches", cfg)
    t = cfg.trainer
    _check(t.max_steps >= 1, "trainer.max_steps", "an integer >= 1", cfg)
    _check(t.log_every >= 1, "trainer.log_every", "an integer >= 1", cfg)
    _check(t.eval_every >= 1, "trainer.eval_every", "an integer >= 1", cfg)
    _check(cfg.align.every >= 1, "align.every", "an integer >= 1", cfg)
    w = cfg.logger.wandb
    _check(w.mode in ("offline", "online", "disabled"), "logger.wandb.mode",
           "offline | online | disabled", cfg)
    _check(cfg.run.replicas >= 1, "run.replicas", "an integer >= 1", cfg)
    _check(cfg.seed >= 0, "seed", "an integer >= 0", cfg)


TASKS = ("synthetic",)


def _known_optimizer(name: str) -> bool:
    from adamgap.optimizers import resolve_optimizer_class

    try:
        resolve_optimizer_class(name)
    except ValueError:
        return False
    return True


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
