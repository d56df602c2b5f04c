"""The configuration schema: every setting, its type and its default, in one place.

Defaults are the paper's Section 6 settings (see ``shared/paper/NOTES.md``). A named experiment
in ``conf/NAME.yaml`` states only what differs from them, optionally on top of another named
experiment (``base: NAME``). Command-line overrides are dotted ``key=value`` pairs.

``load_config`` merges schema <- conf file(s) <- overrides, rejects unknown keys, wrong types and
impossible values with a :class:`ConfigError` whose message is one line naming the key.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adamgap.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class DataConfig:
    """Definition 3.1: feature patch ``y v`` and noise patches ``xi = xi' - alpha y v``."""

    task: str = "synthetic"  # synthetic (Definition 3.1) | planted | image_patches | images
    d: int = 1000  # patch dimension
    n: int = 200  # training examples
    n_test: int = 10_000  # held-out examples for the test error
    s: int = 100  # nonzero Gaussian coordinates per noise patch (0.1 d)
    sigma_p: float | None = None  # noise std; null -> 1/sqrt(s) = 0.1
    alpha: float = 0.2  # feature-noise strength, 0 <= alpha < 1
    v: list[float] | None = None  # feature vector (length d); null -> e_1
    labels: str = "balanced"  # balanced (n/2 each, as in the paper) | rademacher
    feature_position: str = "random"  # random patch per example | fixed (patch 0)
    patches: int = 2  # P: one feature patch and P - 1 noise patches
    batch_size: int | None = None  # null -> n (full batch)
    sampling: str = "shuffle"  # mini-batches: shuffle (each epoch a permutation: every example
    # once) | replace (each epoch n // B batches of uniform draws with replacement)
    last_batch: str = "drop"  # when B does not divide n: drop the n mod B left over each epoch
    # | keep them as a smaller last batch
    sparse: bool | None = None  # sparse patch matrices; null -> when less than 25% dense
    # -- real images (tasks planted, image_patches, images; docs/realdata.md) ----------------
    dataset: str = "fashion_mnist"  # fashion_mnist | mnist | cifar10 | cifar100 (torchvision)
    root: str = "~/.cache/adamgap/datasets"  # torchvision layout; Fashion-MNIST comes from Debian
    download: bool = False  # let torchvision download a missing dataset (needs internet)
    classes: list[int] | None = None  # dataset labels used; null -> all (planted: two, +1/-1)
    image_size: int | None = None  # area-downscale images to this side; null -> native
    normalize: str = "unit"  # unit: ||x||_2 = 1 | centered: minus the mean image, then unit | none
    basis: str = "pixel"  # planted: feature coordinates are pixels | dct (orthonormal 2-D DCT-II)
    feature_k: int | None = None  # planted: keep the k largest |coordinates|; null -> all
    noise_coords: str = "all"  # planted: xi' on s of all d coordinates | outside the image's D
    feature_noise: str = "opposite"  # planted: +alpha x opposite-class image | same: -alpha x own
    grid: int = 4  # image_patches: grid x grid non-overlapping patches per image (P = grid^2)
    augment: bool = False  # images: random crop (padding 4) and horizontal flip, drawn from the
    # seed and the step (a resumed run sees the same batches)
    workers: int = 0  # images: DataLoader worker processes


@dataclass
class ModelConfig:
    """The two-layer patch CNN of Section 3 (or its linear, convex counterpart); on whole images
    (``data.task=images``) the same network as a convolution, or a standard CNN."""

    name: str = "patch_cnn"  # patch_cnn: sigma(z) = max(z, 0)^q | linear: sigma(z) = z |
    # on images: patch_conv (Section 3's CNN over k x k patches) | cnn (DeepOBS's 2c2d) | resnet18
    m: int = 20  # filters per class
    q: float = 3.0  # activation power, q >= 1 (the theory needs q >= 3)
    sigma_0: float = 0.01  # init std of W(0)
    kernel: int = 7  # patch_conv: k x k patches (7: the 7x7 patches of 28x28 images as a grid)
    stride: int = 1  # patch_conv: 1 overlapping patches | kernel: the grid of image_patches
    width: int = 32  # cnn: conv1 filters (conv2 2x, dense 32x); 32 is DeepOBS's fmnist_2c2d


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
    # (their own weight decay is off unless kwargs.weight_decay sets it: adamgap/optimizers)
    lrs: list[float] | None = None  # one ensemble over step sizes: replica (i, k) trains seed
    # seed + k at lrs[i] (K = len(lrs) x run.replicas; optim.lr unused); null -> optim.lr for all
    layout: str | None = None  # ensemble: W is one (K, d, 2, m) tensor (elementwise optimizers)
    # | replicas: one (2m, d) matrix and one optimizer per replica; null -> ensemble for gd, sgd,
    # adam, adamw, signgd without lrs, else replicas (adamgap/optimizers/replicas.py)
    schedule: str = "constant"  # constant | cosine | step
    step_size: int = 1000  # step schedule: decay every step_size steps ...
    gamma: float = 0.1  # ... by this factor


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments (and how often the module logs and evaluates)."""

    max_steps: int = 10_000  # T
    max_epochs: int | None = None  # passes over the training set instead of max_steps, which
    # then is max_epochs x steps per epoch (n / B: data.n, data.batch_size, data.last_batch)
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: Any = 1  # int, list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ...
    precision: str = "32-true"
    log_every: int = 100  # steps between logged train metrics (logging every step costs time)
    eval_every: int = 1000  # steps between test-error evaluations (and at the end)
    progress_bar: bool = True
    steps_per_batch: int | None = None  # optimizer steps per Lightning training step; null:
    # the largest that divides max_steps, log_every, eval_every, align.every, checkpoint_every
    # (1 under DDP, 16-bit loss scaling, data.task=images); see steps_per_batch() below
    deterministic: Any = True  # torch deterministic algorithms: true | false | warn (on GPUs:
    # docs/reliability.md)


@dataclass
class AlignConfig:
    """What a run measures of W: the alignment callback (feature learning and noise
    memorization, Figure 2, where the feature is planted; the first layer's alignment with the
    data, ``adamgap.first_layer``, on real images) and the step-size callback (Section 5's
    per-coordinate steps)."""

    enabled: bool = True
    every: int = 100  # record every k steps (and at steps 0 and T)
    variance: float = 0.95  # first layer: share of the training patches' energy that the
    # feature subspace (their top principal components) explains; the rest is the noise subspace
    images: int = 1000  # first layer: training and test examples it measures on (at most)
    # per-coordinate step sizes and optimizer state on the feature and noise coordinates
    # (adamgap/step_sizes.py; data.task=synthetic): the step of every k-th iteration and the last
    step_sizes: bool = False
    step_sizes_every: int = 10


@dataclass
class WandbConfig:
    enabled: bool = False
    mode: str = "offline"  # offline | online | disabled
    project: str = "adamgap"
    entity: str | None = None  # W&B team or user; null -> your default entity
    group: str | None = None  # null -> the sweep's name, or conf (adamgap/runtime/wandb_run.py)
    tags: list[str] = field(default_factory=list)  # added to optim:<name> task:<task> conf:<name>
    name: str | None = None  # null -> <conf>-s<seed>


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RunConfig:
    dir: str | None = None  # null -> runs/<conf>/<timestamp>-s<seed>
    resume: bool = False  # continue run.dir from its last checkpoint (docs/reliability.md)
    checkpoint_every: int = 1000  # steps between checkpoints/last.ckpt; 0: only on SIGTERM
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


def conf_names() -> list[str]:
    """Names of the experiment files in ``conf/``."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def _conf_nodes(name: str, chain: tuple[str, ...] = ()) -> list[DictConfig]:
    """``conf/NAME.yaml`` and the experiments it is based on, each as written (without its
    ``base`` key), the first base first."""
    path = CONF_DIR / f"{name}.yaml"
    which = f"conf={chain[-1]}: base {name}" if chain else f"conf={name}"
    if not path.is_file():
        raise ConfigError(f"{which}: no file {path}; available: {', '.join(conf_names())}")
    if name in chain:
        raise ConfigError(f"conf={name}: 'base' chain loops ({' -> '.join(chain + (name,))})")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # the YAML parser's errors are not OmegaConf's
        raise ConfigError(f"{which}: {path} is not valid YAML: {str(err).splitlines()[0]}") \
            from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"conf={name}: {path} must hold a mapping of config keys")
    base = node.pop("base", None)
    if base is None:
        return [node]
    return [*_conf_nodes(str(base), chain + (name,)), node]


def _merge(schema: DictConfig, node: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, node)
    except (OmegaConfBaseException, TypeError, ValueError) as err:  # TypeError: a list for a dict
        key = getattr(err, "full_key", None) or culprit(schema, node)
        msg = str(err).splitlines()[0]
        if "not in" in msg:
            parent = OmegaConf.select(schema, key.rpartition(".")[0]) if "." in key else schema
            allowed = ", ".join(parent.keys()) if isinstance(parent, DictConfig) else ""
            raise ConfigError(f"unknown config key '{key}' ({where}); allowed: {allowed}") from None
        raise ConfigError(f"bad value for '{key}' ({where}): {msg}") from None


def culprit(schema: DictConfig, node: Any, prefix: str = "") -> str:
    """The dotted key of ``node`` (a DictConfig or a plain dict) that does not merge into
    ``schema``, one key merged at a time (OmegaConf names none when a whole group, e.g.
    ``data=5``, is replaced by a value, or a mapping is given for a list)."""
    for key, value in node.items():
        try:
            OmegaConf.merge(schema, {key: value})
        except (OmegaConfBaseException, TypeError, ValueError):
            child = schema.get(key) if isinstance(schema, DictConfig) else None
            if isinstance(value, (DictConfig, dict)) and isinstance(child, DictConfig):
                return culprit(child, value, f"{prefix}{key}.")
            return f"{prefix}{key}"
    return "?"


def parse_overrides(args: list[str]) -> tuple[str, list[str]]:
    """Split ``conf=NAME key=value ...`` into the conf name and the dotted overrides."""
    name, rest = "default", []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(
                f"argument '{arg}' is not key=value (e.g. conf=synthetic_adam seed=3)")
        key, _, value = arg.partition("=")
        if not key:
            raise ConfigError(f"argument '{arg}' has no key before '=' (e.g. seed=3)")
        if key == "conf":
            name = value
        else:
            rest.append(arg)
    return name, rest


@functools.lru_cache(maxsize=1)
def _structured() -> DictConfig:
    return OmegaConf.structured(Config)


def schema() -> DictConfig:
    """The schema with its defaults, a fresh copy (building it is ~10x slower than copying)."""
    return copy.deepcopy(_structured())


def _experiment(name: str) -> tuple[DictConfig, tuple[DictConfig, ...]]:
    """Schema defaults <- ``conf/NAME.yaml`` (and its bases), with ``conf`` set, and the conf
    files as written (the first base first); shared by every call for the same files
    (``OmegaConf.merge`` copies what it merges, never changing it): a sweep or the input tests
    load one experiment thousands of times."""
    files = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in CONF_DIR.glob("*.yaml")))
    return _experiment_of(name, str(CONF_DIR), files)


@functools.lru_cache(maxsize=64)
def _experiment_of(name: str, conf_dir: str, files: tuple
                   ) -> tuple[DictConfig, tuple[DictConfig, ...]]:
    cfg = schema()
    nodes = tuple(_conf_nodes(name)) if name != "default" else ()
    if nodes:
        cfg = _merge(cfg, OmegaConf.merge(*nodes), f"conf/{name}.yaml")
    cfg.conf = name
    return cfg, nodes


def load_config(name: str = "default", overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Schema defaults <- ``conf/NAME.yaml`` (and its bases) <- ``overrides``; validated."""
    cfg, files = _experiment(name)
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except Exception as err:  # OmegaConf's errors, and the YAML parser's for values like [1,2
        raise ConfigError(_unparsable(list(overrides), str(err).splitlines()[0])) from None
    if "conf" in dotlist:
        raise ConfigError("'conf' is chosen with conf=NAME, not overridden inside a config")
    cfg = _merge(cfg, dotlist, "command line")
    _resolve_epochs(cfg, files, dotlist)
    validate(cfg)
    return cfg


def _resolve_epochs(cfg: DictConfig, files: list[DictConfig], dotlist: DictConfig) -> None:
    """``trainer.max_steps`` from ``trainer.max_epochs``. The source read last (the schema,
    each conf file of the ``base`` chain, the command line) that names either decides which
    one counts; one source naming both is an error (one of them would be ignored)."""
    for where, node in (*(("conf file", f) for f in files), ("command line", dotlist)):
        trainer = node.get("trainer") if isinstance(node, DictConfig) else None
        named = [k for k in ("max_steps", "max_epochs")
                 if isinstance(trainer, DictConfig) and k in trainer]
        if len(named) == 2 and trainer.max_epochs is not None:
            raise ConfigError(f"trainer.max_steps and trainer.max_epochs are both set ({where}): "
                              "give one of them")
        if "max_steps" in named:
            cfg.trainer.max_epochs = None
    t = cfg.trainer
    if t.max_epochs is not None:
        _check(t.max_epochs >= 1, "trainer.max_epochs", "null or an integer >= 1", cfg)
        d = cfg.data
        _check(d.n >= 2, "data.n", "an integer >= 2", cfg)
        _check(d.batch_size is None or 1 <= d.batch_size <= d.n, "data.batch_size",
               f"null (full batch) or 1..n (n={d.n})", cfg)
        t.max_steps = t.max_epochs * steps_per_epoch(d.n, d.batch_size, d.last_batch)


def steps_per_epoch(n: int, batch_size: int | None, last_batch: str = "drop") -> int:
    """Optimizer steps in one pass over n examples in batches of ``batch_size`` (null: n): the
    remainder n mod B dropped or a smaller last batch."""
    B = batch_size or n
    return n // B if last_batch == "drop" else -(-n // B)


def _parses(*items: str) -> bool:
    try:
        OmegaConf.from_dotlist(list(items))
    except Exception:
        return False
    return True


def _unparsable(overrides: list[str], msg: str) -> str:
    """The line for overrides that do not parse: the one whose value is not YAML, or two that
    cannot both hold (``optim.kwargs=[]`` and ``optim.kwargs.foo=1``)."""
    bad = next((item for item in overrides if not _parses(item)), None)
    if bad is not None:
        return f"cannot parse '{bad}': its value is not valid YAML ({msg})"
    for i, second in enumerate(overrides):
        first = next((o for o in overrides[:i] if not _parses(o, second)), None)
        if first is not None:
            return f"'{first}' and '{second}' cannot both hold ({msg})"
    return f"cannot parse the overrides ({msg})"


def _nonnegative(x: float) -> bool:
    """A finite number >= 0 (NaN and infinity are not values a run can use)."""
    return math.isfinite(x) and x >= 0


def _check(ok: bool, key: str, allowed: str, cfg: DictConfig) -> None:
    if not ok:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Reject impossible values (types and keys are already checked by the schema): each
    group by its own function, then what depends on several. Checks that need torch or
    Lightning (the optimizer, the Trainer's arguments) are ``adamgap.preflight``'s."""
    _validate_data(cfg)
    _validate_model(cfg)
    _validate_optim(cfg)
    _validate_trainer(cfg)
    _check(cfg.align.every >= 1, "align.every", "an integer >= 1", cfg)
    _check(not (cfg.align.enabled and cfg.data.patches == 1 and cfg.data.task in
                ("synthetic", "planted")), "align.enabled",
           "false with data.patches=1 (no noise patch to measure noise memorization on)", cfg)
    _check(cfg.align.step_sizes_every >= 1, "align.step_sizes_every", "an integer >= 1", cfg)
    _check(not cfg.align.step_sizes or cfg.data.task == "synthetic", "align.step_sizes",
           "false unless data.task=synthetic (it reads Definition 3.1's noise supports)", cfg)
    _check(0 < cfg.align.variance <= 1, "align.variance", "a share in (0, 1]", cfg)
    _check(cfg.align.images >= 1, "align.images", "an integer >= 1", cfg)
    _check(cfg.logger.wandb.mode in ("offline", "online", "disabled"), "logger.wandb.mode",
           "offline | online | disabled", cfg)
    _check(cfg.run.replicas >= 1, "run.replicas", "an integer >= 1", cfg)
    _check(cfg.run.checkpoint_every >= 0, "run.checkpoint_every", "an integer >= 0 (0: off)", cfg)
    _check(cfg.seed >= 0, "seed", "an integer >= 0", cfg)
    _validate_steps_per_batch(cfg)


def _validate_data(cfg: DictConfig) -> None:
    d = cfg.data
    _check(d.task in TASKS, "data.task", f"one of {', '.join(TASKS)}", cfg)
    task = TASKS[d.task]
    unused = [k for k, v in OmegaConf.to_container(d).items()
              if k != "task" and k not in task.keys and v != _DATA_DEFAULTS[k]]
    _check(not unused, f"data.{unused[0] if unused else ''}",
           f"its default: data.task={d.task} does not use it (it reads {', '.join(task.keys)})",
           cfg)
    _check(d.d >= 2, "data.d", "an integer >= 2", cfg)
    _check(d.n >= 2, "data.n", "an integer >= 2", cfg)
    _check(d.n_test > 0, "data.n_test", "an integer > 0", cfg)
    _check(d.sigma_p is None or _nonnegative(d.sigma_p), "data.sigma_p", "null (1/sqrt(s)) or >= 0",
           cfg)
    _check(_nonnegative(d.alpha), "data.alpha", "a number >= 0", cfg)
    _check(d.labels in ("balanced", "rademacher"), "data.labels", "balanced | rademacher", cfg)
    _check(d.feature_position in ("random", "fixed"), "data.feature_position", "random | fixed",
           cfg)
    _check(d.patches >= 1, "data.patches", "an integer >= 1", cfg)
    _check(d.batch_size is None or 1 <= d.batch_size <= d.n, "data.batch_size",
           f"null (full batch) or 1..n (n={d.n})", cfg)
    _check(d.sampling in ("shuffle", "replace"), "data.sampling", "shuffle | replace", cfg)
    _check(d.last_batch in ("drop", "keep"), "data.last_batch", "drop | keep", cfg)
    task.check(cfg)


def _validate_synthetic(cfg: DictConfig) -> None:
    """Definition 3.1: the noise lives outside supp(v)."""
    d = cfg.data
    _check(0 <= d.s < d.d, "data.s", f"0 <= s < d (d={d.d})", cfg)
    _check(d.s > 0 or d.sigma_p is not None, "data.sigma_p",
           "a number >= 0 with data.s=0 (the default 1/sqrt(s) needs s >= 1; with s=0 the noise "
           "patches hold no Gaussian coordinates, so any value, e.g. 0, gives the same data)", cfg)
    if d.v is not None:
        _check(len(d.v) == d.d and any(x != 0 for x in d.v) and all(math.isfinite(x) for x in d.v),
               "data.v",
               f"null (e_1) or a nonzero list of d={d.d} numbers", cfg)
        free = sum(1 for x in d.v if x == 0)
        _check(d.s <= free, "data.s", f"at most the {free} coordinates outside supp(v)", cfg)


def _image_classes(cfg: DictConfig) -> list[int]:
    """The real-image tasks' dataset and classes (null -> all of them), checked."""
    d = cfg.data
    _check(d.dataset in DATASETS, "data.dataset", " | ".join(DATASETS), cfg)
    total = DATASETS[d.dataset].classes
    classes = list(range(total)) if d.classes is None else list(d.classes)
    _check(len(set(classes)) == len(classes) >= 2 and all(0 <= c < total for c in classes),
           "data.classes", f"null (all) or >= 2 distinct labels in 0..{total - 1}", cfg)
    _check(d.image_size is None or 1 <= d.image_size <= DATASETS[d.dataset].side,
           "data.image_size", f"null or 1..{DATASETS[d.dataset].side}", cfg)
    _check(d.normalize in ("unit", "centered", "none"), "data.normalize",
           "unit | centered | none", cfg)
    most = max(64, 4 * (os.cpu_count() or 1))  # each worker is a process: bound absurd values
    _check(0 <= d.workers <= most, "data.workers", f"an integer in 0..{most} (64, or 4 per core "
           "of this machine if more)", cfg)
    return classes


def _validate_planted(cfg: DictConfig) -> None:
    """The planted feature-patch task (``adamgap.tasks.planted``)."""
    d = cfg.data
    classes = _image_classes(cfg)
    _check(d.basis in ("pixel", "dct"), "data.basis", "pixel | dct", cfg)
    _check(d.noise_coords in ("all", "outside"), "data.noise_coords", "all | outside", cfg)
    _check(d.feature_noise in ("opposite", "same"), "data.feature_noise", "opposite | same", cfg)
    D = image_dim(d.dataset, d.image_size)
    _check(len(classes) == 2, "data.classes", "two labels [y=+1, y=-1], e.g. [0, 1]", cfg)
    _check(d.d >= D, "data.d", f">= the image dimension D={D} (it is embedded in R^d)", cfg)
    free = d.d if d.noise_coords == "all" else d.d - D
    _check(0 <= d.s <= free, "data.s", f"0..{free} (noise_coords={d.noise_coords})", cfg)
    _check(d.feature_k is None or 1 <= d.feature_k <= D, "data.feature_k", f"null or 1..{D}",
           cfg)


def _validate_image_patches(cfg: DictConfig) -> None:
    """Images cut into a grid of patches (``adamgap.tasks.image_patches``)."""
    d = cfg.data
    _image_classes(cfg)
    C, side = DATASETS[d.dataset].channels, d.image_size or DATASETS[d.dataset].side
    _check(d.grid >= 1 and side % d.grid == 0, "data.grid", f"a divisor of the image side {side}",
           cfg)
    _check(d.d == C * (side // d.grid) ** 2, "data.d",
           f"the patch dimension C*(side/grid)^2 = {C * (side // d.grid) ** 2}", cfg)


def _validate_images(cfg: DictConfig) -> None:
    """Whole images for a CNN (``adamgap.tasks.images``)."""
    _image_classes(cfg)
    _check(cfg.run.replicas == 1, "run.replicas", "1 with data.task=images", cfg)


def _validate_model(cfg: DictConfig) -> None:
    mo = cfg.model
    _check(mo.name in MODELS, "model.name", " | ".join(MODELS), cfg)
    images = tuple(name for name, model in MODELS.items() if model.images)
    on_images = cfg.data.task == "images"
    _check(MODELS[mo.name].images == on_images, "model.name",
           f"{' | '.join(images)} with data.task=images" if on_images else
           f"{' | '.join(images)} only with data.task=images", cfg)
    unused = [k for k, v in OmegaConf.to_container(mo).items()
              if k != "name" and k not in MODELS[mo.name].keys and v != _MODEL_DEFAULTS[k]]
    _check(not unused, f"model.{unused[0] if unused else ''}",
           f"the default with model.name={mo.name} (it reads only "
           f"{', '.join(MODELS[mo.name].keys) or 'no model.* key'})", cfg)
    _check(mo.m >= 1, "model.m", "an integer >= 1", cfg)
    _check(mo.q >= 1 and math.isfinite(mo.q), "model.q", "a number >= 1", cfg)
    _check(_nonnegative(mo.sigma_0), "model.sigma_0", "a number >= 0", cfg)
    _check(mo.width >= 1, "model.width", "an integer >= 1", cfg)
    _check(mo.stride >= 1, "model.stride", "an integer >= 1", cfg)
    if on_images:
        side = DATASETS[cfg.data.dataset].side
        _check(1 <= mo.kernel <= side, "model.kernel", f"1..{side} (the image side)", cfg)


def _validate_optim(cfg: DictConfig) -> None:
    """The values; whether ``optim.name`` builds is ``adamgap.preflight``'s to say."""
    o = cfg.optim
    _check(o.lr > 0 and math.isfinite(o.lr), "optim.lr", "a number > 0", cfg)
    _check(_nonnegative(o.lam), "optim.lam", "a number >= 0", cfg)
    _check(_nonnegative(o.weight_decay), "optim.weight_decay", "a number >= 0", cfg)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           "two numbers in [0, 1)", cfg)
    _check(_nonnegative(o.eps), "optim.eps", "a number >= 0", cfg)
    _check(_nonnegative(o.momentum), "optim.momentum", "a number >= 0", cfg)
    _check(not (o.name == "sgd" and o.nesterov and o.momentum == 0), "optim.nesterov",
           "false with optim.momentum=0 (Nesterov momentum needs optim.momentum > 0)", cfg)
    _check(o.schedule in ("constant", "cosine", "step"), "optim.schedule",
           "constant | cosine | step", cfg)
    _check(o.step_size >= 1, "optim.step_size", "an integer >= 1 (steps between decays)", cfg)
    _check(o.gamma > 0 and math.isfinite(o.gamma), "optim.gamma",
           "a number > 0 (the factor of each decay)", cfg)
    _check(o.name != "gd" or cfg.data.batch_size in (None, cfg.data.n), "data.batch_size",
           "null or n with optim.name=gd (full batch); use optim.name=sgd for mini-batches", cfg)
    _check(o.lrs is None or (len(o.lrs) > 0 and all(lr > 0 and math.isfinite(lr) for lr in o.lrs)),
           "optim.lrs", "null or a non-empty list of numbers > 0", cfg)
    _check(o.layout in (None, "ensemble", "replicas"), "optim.layout",
           "null | ensemble | replicas", cfg)
    _check(o.lrs is None or o.layout != "ensemble", "optim.layout",
           "replicas or null with optim.lrs (one step size per replica's optimizer)", cfg)
    images = cfg.model.name == "resnet18"
    _check(not images or (o.layout is None and o.lrs is None), "optim.layout" if o.layout
           else "optim.lrs", "null with model.name=resnet18 (one network, its own parameters)",
           cfg)
    _check(o.layout != "replicas" or cfg.trainer.precision not in ("16-mixed", "16"),
           "optim.layout", f"ensemble or null with trainer.precision={cfg.trainer.precision} "
           "(the replicas' optimizers step outside Lightning's loss scaling)", cfg)


def _validate_trainer(cfg: DictConfig) -> None:
    """The values; whether Lightning accepts the combination is ``adamgap.preflight``'s."""
    t, d = cfg.trainer, cfg.data
    _check(t.max_steps >= 1, "trainer.max_steps", "an integer >= 1", cfg)
    if t.max_epochs is not None:  # a resolved config (config.yaml) holds both: they agree
        _check(t.max_epochs >= 1, "trainer.max_epochs", "null or an integer >= 1", cfg)
        per = steps_per_epoch(d.n, d.batch_size, d.last_batch)
        _check(t.max_steps == t.max_epochs * per, "trainer.max_steps",
               f"trainer.max_epochs x {per} steps per epoch = {t.max_epochs * per}", cfg)
    _check(t.log_every >= 1, "trainer.log_every", "an integer >= 1", cfg)
    _check(t.eval_every >= 1, "trainer.eval_every", "an integer >= 1", cfg)
    _check(not t.strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")), "trainer.strategy",
           "auto | ddp | ... (spawned or forked ranks would keep the run summary to themselves)",
           cfg)
    _check(t.deterministic in (True, False, "warn"), "trainer.deterministic",
           "true | false | warn", cfg)
    world = world_size(t)
    if world > 1:  # DDP: every rank a shard of equal size (data.py)
        _check(d.n % world == 0, "data.n",
               f"divisible by the {world} DDP processes (trainer.devices x trainer.num_nodes)", cfg)
        _check(d.batch_size is None or d.batch_size % world == 0, "data.batch_size",
               f"divisible by the {world} DDP processes (trainer.devices x trainer.num_nodes)", cfg)
        # (then n mod B, a kept last batch, divides too)


def _validate_steps_per_batch(cfg: DictConfig) -> None:
    k = cfg.trainer.steps_per_batch
    if k is None:
        return
    why = _one_step_per_batch(cfg)
    _check(k >= 1 and (k == 1 or why is None), "trainer.steps_per_batch",
           f"1 or null {why}" if why else "null or an integer >= 1", cfg)
    off = [(key, p) for key, p in _step_periods(cfg) if p % k]
    _check(not off, "trainer.steps_per_batch",
           "null or a divisor of " + ", ".join(f"{key}={p}" for key, p in off[:1]) +
           " (callbacks act only between training steps)", cfg)


def _one_step_per_batch(cfg: DictConfig) -> str | None:
    """Why Lightning must drive every optimizer step (``steps_per_batch`` = 1), or None."""
    t = cfg.trainer
    if world_size(t) > 1:
        return "under DDP (one backward pass per DDP forward)"
    if t.strategy not in ("auto", "single_device"):
        return f"with trainer.strategy={t.strategy} (its backward pass is its own)"
    if t.precision in ("16-mixed", "16"):
        return f"with trainer.precision={t.precision} (the loss is scaled in Lightning's backward)"
    if cfg.data.task == "images":
        return ("with data.task=images (a CNN's mini-batch step outweighs Lightning's per-step "
                "cost: every step goes through Lightning)")
    return None


def world_size(t: DictConfig) -> int:
    """The number of processes the ``trainer`` settings start (devices x nodes)."""
    return t.num_nodes * (t.devices if isinstance(t.devices, int) else
                          len(t.devices) if isinstance(t.devices, ListConfig) else 1)


def seeds_of(cfg: DictConfig) -> list[int]:
    """The replicas' seeds: seed, seed + 1, ..., seed + R - 1 (R = run.replicas), once per step
    size of ``optim.lrs`` when it is set (common random numbers: every step size sees the same
    seeds)."""
    seeds = [cfg.seed + k for k in range(cfg.run.replicas)]
    return seeds * len(cfg.optim.lrs) if cfg.optim.lrs is not None else seeds


def lrs_of(cfg: DictConfig) -> list[float]:
    """Each replica's step size, in the order of :func:`seeds_of`."""
    R = cfg.run.replicas
    if cfg.optim.lrs is None:
        return [float(cfg.optim.lr)] * R
    return [float(lr) for lr in cfg.optim.lrs for _ in range(R)]


def _step_periods(cfg: DictConfig) -> list[tuple[str, int]]:
    """The step counts at whose multiples a callback or the logger acts (a chunk of optimizer
    steps must end there), with their keys."""
    t = cfg.trainer
    periods = [("trainer.max_steps", t.max_steps), ("trainer.log_every", t.log_every),
               ("trainer.eval_every", min(t.eval_every, t.max_steps))]
    if cfg.align.enabled:
        periods.append(("align.every", cfg.align.every))
    if cfg.run.checkpoint_every > 0:
        periods.append(("run.checkpoint_every", cfg.run.checkpoint_every))
    return periods


def steps_per_batch(cfg: DictConfig) -> int:
    """k, the optimizer steps one Lightning training step runs (``GapModule.training_step``).

    Lightning's per-step machinery (loops, hooks, logger connector) costs more than one step
    of the sparse math: running k steps inside one training step amortises it. Callbacks then
    act at chunk ends, so k divides every period they act on: by default the largest such k,
    and 1 where Lightning must drive each step (DDP, loss scaling, other strategies, the
    ``images`` task: ``_one_step_per_batch``)."""
    t = cfg.trainer
    if t.steps_per_batch is not None:
        return t.steps_per_batch
    if _one_step_per_batch(cfg) is not None:
        return 1
    return math.gcd(*(p for _, p in _step_periods(cfg)))


@dataclass(frozen=True)
class Dataset:
    """What the schema needs to know of a real-image dataset without loading it."""

    channels: int
    side: int  # images are side x side
    classes: int
    images: int  # training and test images together (for the memory estimate)


DATASETS = {"fashion_mnist": Dataset(1, 28, 10, 70_000), "mnist": Dataset(1, 28, 10, 70_000),
            "cifar10": Dataset(3, 32, 10, 60_000), "cifar100": Dataset(3, 32, 100, 60_000)}


def image_dim(name: str, image_size: int | None = None) -> int:
    """D = C * H * W of dataset ``name`` after downscaling to ``image_size``."""
    side = image_size or DATASETS[name].side
    return DATASETS[name].channels * side * side


@dataclass(frozen=True)
class Task:
    """A value of ``data.task``: the ``data.*`` keys its datamodule takes (by name, exactly
    these: ``adamgap.train.build_datamodule``) and its own validation."""

    keys: tuple[str, ...]
    check: Callable[[DictConfig], None]


_SYNTHETIC_KEYS = ("d", "n", "n_test", "s", "sigma_p", "alpha", "labels", "feature_position",
                   "patches", "batch_size", "sparse")
_EPOCH_KEYS = ("sampling", "last_batch")  # Definition 3.1's own datamodule reads these
_IMAGE_KEYS = ("dataset", "root", "download", "classes")
TASKS = {
    "synthetic": Task((*_SYNTHETIC_KEYS, "v", *_EPOCH_KEYS), _validate_synthetic),  # Def. 3.1
    "planted": Task((*_IMAGE_KEYS, "image_size", "normalize", "basis", "feature_k",
                     "noise_coords", "feature_noise", *_SYNTHETIC_KEYS), _validate_planted),
    "image_patches": Task((*_IMAGE_KEYS, "image_size", "normalize", "grid", "d", "n", "n_test",
                           "labels", "batch_size"), _validate_image_patches),
    "images": Task((*_IMAGE_KEYS, "n", "n_test", "batch_size", "augment", "workers"),
                   _validate_images),
}
_DATA_DEFAULTS = OmegaConf.to_container(OmegaConf.structured(DataConfig))


@dataclass(frozen=True)
class Model:
    """A value of ``model.name``: the ``model.*`` keys its network reads (``adamgap.train.
    build_module``) and whether it takes whole images (``data.task=images``) or patches."""

    keys: tuple[str, ...]
    images: bool


MODELS = {
    "patch_cnn": Model(("m", "q", "sigma_0"), images=False),  # Section 3
    "linear": Model(("m", "q", "sigma_0"), images=False),  # Theorem 4.2's convex control
    "patch_conv": Model(("m", "q", "sigma_0", "kernel", "stride"), images=True),  # Section 3
    "cnn": Model(("width",), images=True),  # DeepOBS's 2c2d
    "resnet18": Model((), images=True),  # torchvision's, for 32x32
}
_MODEL_DEFAULTS = OmegaConf.to_container(OmegaConf.structured(ModelConfig))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved ``config.yaml`` of a run directory, merged onto the schema and validated
    (so a run written before a new setting existed gets that setting's default)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: no config.yaml")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # the YAML parser's errors (a truncated or overwritten file)
        raise ConfigError(f"{path} is damaged: {str(err).splitlines()[0]}") from None
    cfg = _merge(schema(), node, str(path))
    validate(cfg)
    return cfg
