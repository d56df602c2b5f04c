"""Checks a run needs before it starts that the schema alone cannot make: they ask torch,
Lightning, an optimizer library, the machine or the network. ``check(cfg)`` runs after
``config.load_config`` (which needs none of them) in every entry point and again at the start
of ``train.run``; like the schema's checks it raises a one-line :class:`ConfigError` before
anything is written.

- ``optim.name`` names an optimizer that can be built (``optimizers.resolve_optimizer_class``),
  and the optimizer and learning-rate schedule the run would build take one step on a stand-in
  network, as a training step takes it: unknown or mistyped ``optim.kwargs``, an optimizer that
  cannot be built from parameters alone or cannot step on this network, or a schedule that
  cannot step fail here, naming the key, not after the run directory exists;
- Lightning accepts the ``trainer`` settings on this machine (accelerator, devices, strategy,
  precision: the Trainer is built once as a question, with no logger and no run);
- the data, test set, weights, optimizer state, evaluation and alignment history fit in this
  machine's memory (:func:`memory_parts`, an estimate from the settings: nothing is allocated);
- the ``logger.wandb`` names are ones W&B accepts, and ``logger.wandb.mode=online`` has W&B
  credentials and a reachable server.
"""

from __future__ import annotations

import configparser
import functools
import inspect
import json
import logging
import math
import netrc
import os
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning as L
import torch
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from omegaconf import DictConfig, ListConfig, OmegaConf

from adamgap.config import DATASETS, image_dim, schema, world_size
from adamgap.errors import ConfigError
from adamgap.module import GapModule
from adamgap.network import PatchCNN
from adamgap.optimizers import OPTIMIZERS, layout_for, resolve_optimizer_class
from adamgap.patches import SparsePatches


def check(cfg: DictConfig, memory: bool = True) -> None:
    """Everything that can be known about ``cfg`` before a run starts (see the module doc).
    ``memory=False``: the run will not happen on this machine (a Slurm cell), so its memory
    is not judged against this machine's."""
    _check_optimizer(cfg)
    _check_trainer(cfg)
    if memory:
        check_memory(cfg)
    _check_wandb(cfg)


# -- the optimizer and its schedule -------------------------------------------------------------
def check_optimizer_name(name: str) -> None:
    """That ``optim.name`` names an optimizer class (whether it builds and steps is
    ``_check_optimizer``'s to say)."""
    try:
        resolve_optimizer_class(name)
    except ValueError:
        raise ConfigError(f"optim.name={name!r} is not allowed: {' | '.join(OPTIMIZERS)}, a "
                          "torch.optim class, a pytorch-optimizer name or module:Class"
                          ) from None


def _check_optimizer(cfg: DictConfig) -> None:
    check_optimizer_name(cfg.optim.name)
    optim = OmegaConf.to_container(cfg.optim)
    problem = _optimizer_problem(json.dumps(optim, sort_keys=True, default=repr),
                                 cfg.trainer.max_steps, _device(cfg))
    if problem is not None:
        raise ConfigError(problem)


def _device(cfg: DictConfig) -> str:
    """Where the run's weights live: a CUDA device when it asks for one and there is one."""
    wants = cfg.trainer.accelerator in ("gpu", "cuda", "auto")
    return "cuda" if wants and torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=64)
def _optimizer_problem(optim_json: str, max_steps: int, device: str = "cpu") -> str | None:
    """Why the optimizer and schedule of ``optim`` cannot train, or None: they are built as the
    run builds them (``GapModule.configure_optimizers``, the replicas' layout the run would
    use) over a stand-in patch CNN on the run's ``device``, then take one optimizer step the
    way a training step takes it (``GapModule.step_on``: with a closure, a gradient graph or
    schedule-free modes where the optimizer needs them) and two schedule steps."""
    optim = json.loads(optim_json)
    name, kwargs = optim["name"], optim.get("kwargs") or {}
    cls = resolve_optimizer_class(name)
    layout = layout_for(name, optim.get("lrs"), optim.get("layout"))
    lrs = optim.get("lrs") or [optim["lr"]]
    seeds = list(range(len(lrs)))
    net = PatchCNN(d=3, m=2, q=3.0, sigma_0=0.1, seeds=seeds, layout=layout).to(device)
    module = GapModule(net, optim, max_steps, log_every=1, seeds=seeds, lrs=lrs, n=2)
    # two examples of two sparse patches in R^3 per replica, in the training loop's format
    K, g = len(seeds), torch.Generator().manual_seed(0)
    index = torch.tensor([[[0, 1], [1, 2]], [[0, 2], [2, 1]]]).expand(K, 2, 2, 2)  # (K, B, P, L)
    x = SparsePatches.from_coordinates(index, torch.randn(K, 2, 2, 2, generator=g), 3).to(device)
    y = torch.tensor([[1.0, -1.0]] * K).to(device)  # (K, B)
    where = ("one 4-D tensor (K, d, 2, m)" if layout == "ensemble" else
             "one (2m, d) matrix per replica")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            built = module.configure_optimizers()
        except Exception as err:  # noqa: BLE001 - whatever the constructor raises is the answer
            return _construction_problem(cls, name, kwargs, err)
        opt, sched = (built, None) if isinstance(built, torch.optim.Optimizer) else (
            built["optimizer"], built["lr_scheduler"]["scheduler"])
        try:
            if module.contract.schedule_free:
                opt.train()
            module.step_on(opt, x, y)
        except Exception as err:  # noqa: BLE001
            return (f"optim.name={name!r} is not allowed: {cls.__name__}.step() fails on this "
                    f"network's weight ({where}): {_first_line(err)}")
        if sched is not None:
            try:
                for _ in range(2):
                    sched.step()
            except Exception as err:  # noqa: BLE001
                return (f"optim.schedule={optim['schedule']!r} is not allowed with "
                        f"optim.step_size={optim['step_size']}, optim.gamma={optim['gamma']}: "
                        f"{type(sched).__name__} fails: {_first_line(err)}")
    return None


def _construction_problem(cls: type, name: str, kwargs: dict, err: Exception) -> str:
    """The one line for an optimizer that cannot be built, naming the key that is wrong."""
    msg = _first_line(err)
    unknown = re.search(r"unexpected keyword argument '(\w+)'", msg)
    twice = re.search(r"multiple values for (?:keyword )?argument '(\w+)'", msg)
    if unknown and unknown.group(1) in kwargs:
        key = unknown.group(1)
        return (f"optim.kwargs.{key}={kwargs[key]!r} is not allowed: {cls.__name__} takes no "
                f"argument '{key}' (it takes: {', '.join(_arguments(cls))})")
    if twice and twice.group(1) in kwargs:
        key = twice.group(1)
        own = f"optim.{key}" if key in ("lr", "betas", "eps", "momentum", "nesterov",
                                        "weight_decay") else "its own setting"
        return (f"optim.kwargs.{key}={kwargs[key]!r} is not allowed: {name} sets {key} from "
                f"{own}")
    named = [k for k in kwargs if re.search(rf"\b{re.escape(k)}\b", msg, re.IGNORECASE)]
    if named:
        return f"optim.kwargs.{named[0]}={kwargs[named[0]]!r} is not allowed: {msg}"
    if kwargs:
        return f"optim.kwargs={kwargs!r} is not allowed: {cls.__name__}(...) fails: {msg}"
    return f"optim.name={name!r} is not allowed: {cls.__name__}(params, lr=...) fails: {msg}"


def _arguments(cls: type) -> list[str]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return ["?"]
    return [p for p in params if p not in ("self", "params")
            and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                       inspect.Parameter.VAR_KEYWORD)]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


# -- the Trainer --------------------------------------------------------------------------------
def _check_trainer(cfg: DictConfig) -> None:
    """Lightning judges its own arguments (names, combinations, what this machine has): ask it
    now, before a run directory exists, rather than when the run builds its Trainer."""
    t = cfg.trainer
    devices = tuple(t.devices) if isinstance(t.devices, ListConfig) else t.devices
    try:
        error = _trainer_error(t.accelerator, devices, t.num_nodes, t.strategy, t.precision)
    except TypeError:  # an unhashable value (e.g. a mapping for trainer.devices)
        error = f"Trainer(devices={OmegaConf.to_container(t)['devices']!r}) is not valid"
    if error is not None:
        key = next((k for k in ("precision", "strategy", "num_nodes", "devices", "accelerator")
                    if k in error), "accelerator")
        value = OmegaConf.to_container(t)[key]
        raise ConfigError(f"trainer.{key}={value!r} is not allowed: {error}")
    if t.num_nodes > 1 and not _launched_on_nodes():
        raise ConfigError(f"trainer.num_nodes={t.num_nodes} is not allowed here: the other "
                          "nodes' processes must come from a cluster launcher (srun under "
                          "Slurm: docs/cluster.md; torchrun; or MASTER_ADDR and NODE_RANK set on "
                          "every node), else this process waits for them forever")
    if cfg.data.task != "images" and t.precision not in MIXED_OR_32:
        raise ConfigError(f"trainer.precision={t.precision!r} is not allowed: 32-true, "
                          f"16-mixed or bf16-mixed with data.task={cfg.data.task} (its patches "
                          "stay float32: weights of another type cannot multiply them)")


def _launched_on_nodes() -> bool:
    """Whether this process is one of a multi-node launch: a cluster environment Lightning
    detects, or the variables of a manual launch (Lightning's own environment; Kubeflow's,
    which Lightning cannot detect, sets them too)."""
    detected = (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)
    return (any(env.detect() for env in detected)
            or ("MASTER_ADDR" in os.environ and "NODE_RANK" in os.environ))


# precisions that keep the weights float32 (the patch tasks' data is float32), Lightning's
# aliases included
MIXED_OR_32 = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16")


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
        return str(err).splitlines()[0] if str(err).strip() else type(err).__name__
    finally:
        log.setLevel(level)
    return None


# -- memory -------------------------------------------------------------------------------------
F32, I64 = 4, 8  # bytes per float32 value and per int64 coordinate index


@dataclass(frozen=True)
class Part:
    """One thing a run holds in memory: bytes per replica (K of them live at once), bytes held
    once, and the settings that make it large (the first named the one to lower)."""

    what: str
    per_replica: float
    once: float
    keys: tuple[str, ...]

    def size(self, K: int) -> float:
        return K * self.per_replica + self.once


def memory_parts(cfg: DictConfig) -> list[Part]:
    """What a run holds in host memory at its peak, estimated from its settings (an upper
    estimate: transient buffers count as if they were alive together).

    Patch tasks, for N examples (n training, n_test test) of P patches with L stored
    coordinates each (Definition 3.1: s noise coordinates plus supp(v); planted: s + D; image
    patches: d): the coordinate lists (int64 + float32) and the network input made from them
    (a sparse CSR matrix of the same size, or dense (N, P, d) float32), twice while the
    replicas are stacked; the noise draw (``data.sparse_noise``: one random key per patch and
    free coordinate, N P d float32, and a copy of the used ones); the weights W (K, d, C, m)
    with their gradient and up to two optimizer states; the evaluation's activations
    (N, P, C m) three times (z, sigma(z), sigma'(z)); the alignment history, one (n, P-1, m)
    record per ``align.every`` steps, twice when it is written. Images: the dataset's images
    of the chosen classes, uint8 and float32, and ResNet-18's weights."""
    d, t = cfg.data, cfg.data.task
    m, classes = cfg.model.m, 2
    if t in ("planted", "image_patches", "images"):
        info = DATASETS[d.dataset]
        chosen = len(d.classes) if d.classes is not None else info.classes
        side = d.image_size or info.side
        pool = info.images * chosen / info.classes * info.channels * side * side
        images = Part("dataset images", 0.0, pool * (1 + 3 * F32), ("data.image_size",))
        if t == "images":
            resnet = 11.2e6 * F32 * 4  # ResNet-18: weights, gradient, two optimizer states
            x = (d.n + d.n_test) * info.channels * side * side * F32
            return [images, Part("ResNet-18 and optimizer state", 0.0, resnet, ("data.n",)),
                    Part("training and test images", 0.0, x, ("data.n_test", "data.n"))]
        if t == "image_patches":
            classes = chosen if chosen > 2 else 2
    P = d.patches
    if t == "synthetic":
        support = 1 if d.v is None else sum(1 for x in d.v if x != 0)
        L, free = d.s + support, d.d - support
    elif t == "planted":
        D = image_dim(d.dataset, d.image_size)
        L, free = d.s + D, d.d if d.noise_coords == "all" else d.d - D
    else:
        L, free = d.d, 0
    sparse = d.sparse if d.sparse is not None else L / d.d < 0.25
    coords = P * L * (I64 + F32)  # one example's coordinate lists
    inputs = P * L * (I64 + F32) if sparse else P * d.d * F32  # one example's network input
    noise = (P - 1) * (L * (I64 + F32) if sparse else d.d * F32)  # its noise patches
    size = ("data.s", "data.patches") if sparse else ("data.d", "data.patches")
    N = max(d.n, d.n_test)
    parts = [Part("training set", d.n * (2 * coords + inputs + noise), 0.0, ("data.n", *size)),
             Part("test set", d.n_test * (2 * coords + inputs), 0.0, ("data.n_test", *size)),
             Part("noise draw", 0.0, N * (2 * P - 1) * free * F32,
                  ("data.n_test" if d.n_test >= d.n else "data.n", "data.d", "data.patches")),
             Part("weights and optimizer state", 4 * d.d * classes * m * F32, d.d * F32,
                  ("model.m", "data.d")),
             Part("evaluation", 3 * N * P * classes * m * F32, 0.0,
                  ("data.n_test" if d.n_test >= d.n else "data.n", "model.m", "data.patches"))]
    if t == "image_patches":
        parts.append(images)
    if cfg.align.enabled:
        records = cfg.trainer.max_steps // cfg.align.every + 2
        one = d.n * max(P - 1, 1) * m + classes * m
        parts.append(Part("alignment history", 2 * records * one * F32, 0.0,
                          ("align.every", "trainer.max_steps", "data.n", "model.m")))
    return parts


def memory_needed(cfg: DictConfig, parts: list[Part] | None = None) -> float:
    """Bytes of host memory the run needs on one machine (its DDP ranks there included)."""
    K = cfg.run.replicas
    return sum(p.size(K) for p in parts or memory_parts(cfg)) * _ranks_here(cfg)


def _ranks_here(cfg: DictConfig) -> int:
    """The processes of the run on one machine (each holds its own copy of the data)."""
    return max(1, world_size(cfg.trainer) // cfg.trainer.num_nodes)


def available_memory() -> float:
    """Bytes this process can still allocate: the kernel's MemAvailable, and within a cgroup
    (a container, a Slurm job) what its limit leaves."""
    avail = math.inf
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            avail = min(avail, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return avail


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _culprit(cfg: DictConfig, part: Part) -> str:
    """The key of ``part`` furthest from its default (``align.every``: below it)."""
    defaults = schema()

    def ratio(key: str) -> float:
        value, default = OmegaConf.select(cfg, key), OmegaConf.select(defaults, key)
        if not default or not value:
            return 1.0
        return default / value if key == "align.every" else value / default

    return max(part.keys, key=ratio)  # ties: the first


def _advice(key: str, part: Part | None = None) -> str:
    if key == "align.every":
        return "raise align.every or set align.enabled=false"
    if part is not None and part.what == "alignment history":
        return f"lower {key} (or raise align.every, or set align.enabled=false)"
    return f"lower {key}"


def check_memory(cfg: DictConfig, available: float | None = None,
                 has: str = "this machine has") -> float:
    """Refuse a run that would not fit in memory (``available`` bytes; default what this
    machine has now), with one line: the estimate, its largest parts, what there is, and which
    key to change. Returns the estimate."""
    K, ranks = cfg.run.replicas, _ranks_here(cfg)
    parts = memory_parts(cfg)
    need = memory_needed(cfg, parts)
    avail = available_memory() if available is None else available
    if need <= avail:
        _check_device_memory(cfg, parts)
        return need
    one = sum(p.size(1) for p in parts) * ranks  # a single replica's run
    if K > 1 and one <= avail:
        per = sum(p.per_replica for p in parts) * ranks
        fit = int((avail - (one - per)) // per) if per else K
        key, advice = "run.replicas", (f"lower run.replicas (about {fit} fit; a sweep splits "
                                       "its seeds into runs of sweep.chunk)")
    elif ranks > 1 and need / ranks <= avail:
        key, advice = "trainer.devices", "run fewer processes per machine"
    else:
        largest = max(parts, key=lambda p: p.size(K))
        key = _culprit(cfg, largest)
        advice = _advice(key, largest)
    largest = sorted(parts, key=lambda p: -p.size(K))[:2]
    detail = ", ".join(f"{p.what} {gb(p.size(K))}" for p in largest)
    how = "small" if key == "align.every" else "large"
    raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r} is too {how}: the run needs about "
                      f"{gb(need)} of memory ({detail}), {has} {gb(avail)} available; {advice}")


def _check_device_memory(cfg: DictConfig, parts: list[Part]) -> None:
    """On a CUDA device: the data, weights and evaluation it holds (not the alignment history
    or the noise draw, which stay on the host) against its free memory."""
    if cfg.trainer.accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return
    K = cfg.run.replicas
    on_device = [p for p in parts if p.what not in ("alignment history", "noise draw",
                                                     "dataset images")]
    need = sum(p.size(K) for p in on_device)
    free, _ = torch.cuda.mem_get_info()
    if need > free:
        largest = max(on_device, key=lambda p: p.size(K))
        key = "run.replicas" if K > 1 and need / K <= free else _culprit(cfg, largest)
        raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r} is too large: the run needs "
                          f"about {gb(need)} of GPU memory ({largest.what} "
                          f"{gb(largest.size(K))}), the GPU has {gb(free)} free; "
                          f"{_advice(key)}")


# -- Weights & Biases ---------------------------------------------------------------------------
def _check_wandb(cfg: DictConfig) -> None:
    w = cfg.logger.wandb
    if w.enabled and w.mode != "disabled":
        problem = _wandb_settings_problem(w.project, w.entity, w.group, w.name, tuple(w.tags))
        if problem is not None:
            raise ConfigError(problem)
    if w.enabled and w.mode == "online":
        key = bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"))
        netrc_file = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        problem = _wandb_problem(wandb_base_url(), key, netrc_file, proxy)
        if problem is not None:
            raise ConfigError(f"logger.wandb.mode='online' is not allowed here: {problem}; "
                              "or use logger.wandb.mode=offline and upload the run later "
                              "('wandb sync' on the run directory's wandb folder)")


@functools.lru_cache(maxsize=8)
def _wandb_settings_problem(project: str, entity: str | None, group: str | None,
                            name: str | None, tags: tuple[str, ...]) -> str | None:
    """What wandb's own settings model refuses among the ``logger.wandb`` values (a project
    name with '/', a tag of more than 64 characters, ...), as the one line; None if nothing."""
    import wandb  # optional at import time: only a run with W&B on needs it

    fields = {"project": ("logger.wandb.project", project),
              "entity": ("logger.wandb.entity", entity),
              "run_group": ("logger.wandb.group", group),
              "run_name": ("logger.wandb.name", name),
              "run_tags": ("logger.wandb.tags", list(tags))}
    for field, (key, value) in fields.items():
        if value is None:
            continue
        try:
            wandb.Settings(**{field: value})
        except Exception as err:  # noqa: BLE001 - wandb's UsageError, pydantic's ValidationError
            errors = err.errors() if hasattr(err, "errors") else None
            msg = errors[0]["msg"] if errors else _first_line(err)
            return f"{key}={value!r} is not allowed: {msg}"
    return None


def wandb_base_url() -> str:
    """The W&B server wandb would talk to: $WANDB_BASE_URL, else wandb's settings file."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "settings")
        return parser.get("default", "base_url")
    except (configparser.Error, OSError):
        return "https://api.wandb.ai"


@functools.lru_cache(maxsize=8)
def _wandb_problem(base_url: str, env_key: bool, netrc_file: Path,
                   proxy: str | None) -> str | None:
    """Why an online W&B run could not start: no credentials where wandb looks for them (an
    environment variable, ``env_key``, then the netrc file), or no connection to the server
    (through the HTTPS ``proxy`` if one is set); None when both are there. Asked once per
    process for the same answers (a sweep's cells share them)."""
    url = urlsplit(base_url)
    host = url.hostname or "api.wandb.ai"
    if not env_key:
        try:
            found = netrc.netrc(netrc_file).authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            found = False
        if not found:
            return (f"no W&B API key for {host} (neither $WANDB_API_KEY nor an entry in "
                    f"{netrc_file}); log in once with 'wandb login'")
    target = urlsplit(proxy) if proxy else url
    port = target.port or (443 if (target.scheme or "https") == "https" else 80)
    try:
        socket.create_connection((target.hostname or host, port), timeout=3).close()
    except OSError as err:
        return (f"cannot reach the W&B server {base_url} ({err.strerror or type(err).__name__})"
                "; check the network connection")
    return None
