"""The standard-gap protocol of Wilson et al. (2017, "The marginal value of adaptive gradient
methods in machine learning", Sec. 4): every optimizer gets its own step size, chosen on a grid
by the final *training* loss, then runs several seeds at that step size; the test errors are
compared over the seeds. One command runs it all, as sweeps (``adamgap.experiments.spec``):

    python scripts/standard_gap.py fmnist --out sweeps/standard_gap_fmnist

1. **tune** (``OUT/tune/<conf>``): per optimizer conf a sweep over its step-size grid and
   ``data.augment`` (without and with the standard augmentation), one seed (``tune_seed``,
   apart from the evaluation seeds);
2. **choose**: per (conf, augmentation) the step size whose run ends with the lowest training
   loss (the data loss on the un-augmented training images, ``train_loss``); diverged or
   failed runs do not count;
3. **final** (``OUT/final/<conf>-augment<false|true>``): that step size, seeds
   ``0 .. seeds - 1``, one run per seed (same seed: same subset, same W(0), same batch order for
   every optimizer, so the seeds pair up);
4. **extra** (``OUT/extra/<name>``): fixed sweeps the report shows beside them (Figure 1 of the
   patch CNN on the planted and images-as-patches tasks).

``OUT/protocol.json`` records the protocol, every tuning run's training loss, the chosen step
sizes, the sweeps and each stage's wall time; a rerun of the same command resumes (finished
cells are kept, the choice is recomputed from the same tuning runs). ``adamgap.analysis.
realcnn_report`` turns the directory into the report section (``scripts/report.py OUT``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adamgap import provenance
from adamgap.errors import ConfigError
from adamgap.experiments.aggregate import results
from adamgap.experiments.launch import run_sweep
from adamgap.experiments.spec import config_of, create, parse_args, plan, render
from adamgap.outputs import write_json
from adamgap.train import build_datamodule

# keys the protocol sets itself for every run: an override of them would fight it
RESERVED = ("optim.lr", "data.augment", "seed", "run.")
SGD_GRID = (0.3, 0.1, 0.03, 0.01)  # SGD + momentum 0.9
ADAM_GRID = (3e-3, 1e-3, 3e-4, 1e-4)  # Adam, AdamW


@dataclass(frozen=True)
class Extra:
    """A fixed sweep run beside the protocol: its name and ``scripts/sweep.py`` arguments
    (without ``sweep.dir``, ``sweep.jobs``)."""

    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Protocol:
    """What a standard-gap study runs (``PROTOCOLS``)."""

    grids: dict[str, tuple[float, ...]]  # optimizer conf -> its step-size grid
    seeds: int = 6  # evaluation seeds 0 .. seeds - 1 per (conf, augmentation)
    augment: tuple[bool, ...] = (False, True)  # data.augment values, each tuned on its own
    tune_seed: int = 100  # the tuning runs' seed (its own subset, W(0) and batch order)
    overrides: tuple[str, ...] = ()  # key=value for every run of the protocol
    extras: tuple[Extra, ...] = field(default_factory=tuple)
    baseline: str = ""  # the conf the others are compared with (win rates): the SGD one


def _grids(family: str) -> dict[str, tuple[float, ...]]:
    return {f"{family}_sgd": SGD_GRID, f"{family}_adam": ADAM_GRID, f"{family}_adamw": ADAM_GRID}


FIGURE1_PATCH = (  # Figure 1 of the paper's network (GD vs Adam, one W(0) per seed), 3 seeds
    Extra("planted", ("sweep.grid.conf=[fmnist_patch_adam,fmnist_patch_gd]", "sweep.seeds=3",
                      "conf=fmnist_patch_adam")),
    Extra("image_patches", ("sweep.grid.conf=[fmnist_grid_adam,fmnist_grid_gd]",
                            "sweep.seeds=3", "conf=fmnist_grid_adam")),
    # the same network as a convolution over every 7x7 patch of the whole image
    Extra("patchconv", ("sweep.grid.conf=[fmnist_patchconv_adam,fmnist_patchconv_gd]",
                        "sweep.seeds=3", "sweep.chunk=1", "conf=fmnist_patchconv_adam")),
)
PROTOCOLS = {
    # Fashion-MNIST on this project's 2-core CPU (docs/realcnn.md: the measured wall time)
    "fmnist": Protocol(_grids("fmnist_cnn"), extras=FIGURE1_PATCH, baseline="fmnist_cnn_sgd"),
    # CIFAR-10 on a GPU machine that has the data (data.root=DIR): the small CNN, ResNet-18
    "cifar10": Protocol(_grids("cifar10_cnn"), seeds=5, baseline="cifar10_cnn_sgd"),
    "cifar10_resnet": Protocol(_grids("cifar10_resnet"), seeds=5, baseline="cifar10_resnet_sgd",
                               overrides=("optim.weight_decay=5.0e-4",)),  # = the L2 lam
}


def tune_dir(out: Path, conf: str) -> Path:
    return Path(out) / "tune" / conf


def final_dir(out: Path, conf: str, augment: bool) -> Path:
    return Path(out) / "final" / f"{conf}-augment{render(augment)}"


def extra_dir(out: Path, name: str) -> Path:
    return Path(out) / "extra" / name


def check_overrides(overrides: list[str] | tuple[str, ...]) -> None:
    for arg in overrides:
        key = arg.partition("=")[0]
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESERVED):
            raise ConfigError(f"{arg}: the protocol sets {key} itself (step sizes, augmentation, "
                              "seeds and run directories)")


def _sweep(argv: list[str], progress: Callable[[str], None]) -> Path:
    """Create (or find) the sweep ``argv`` describes and run what is not finished."""
    sweep_dir = create(parse_args(argv))
    run_sweep(sweep_dir, progress)
    return sweep_dir


def tuning_losses(sweep_dir: Path) -> dict[bool, dict[float, float]]:
    """Per augmentation, step size -> the final training loss of the tuning run (nan when it
    diverged, failed or has not finished)."""
    out: dict[bool, dict[float, float]] = {}
    for row in results(sweep_dir):
        loss = row.get("train_loss")
        ok = row["status"] == "completed" and isinstance(loss, (int, float)) \
            and math.isfinite(loss)
        out.setdefault(bool(row["data.augment"]), {})[float(row["optim.lr"])] = \
            float(loss) if ok else math.nan
    return out


def choose(losses: dict[float, float], where: str) -> float:
    """The step size with the lowest final training loss (the larger on a tie)."""
    finite = {lr: loss for lr, loss in losses.items() if not math.isnan(loss)}
    if not finite:
        raise ConfigError(f"{where}: no tuning run finished with a finite training loss; see "
                          "its cells/*.json")
    return min(finite, key=lambda lr: (finite[lr], -lr))


def run(name: str, protocol: Protocol, out: str | Path, jobs: int = 2,
        overrides: list[str] | tuple[str, ...] = (),
        progress: Callable[[str], None] = print) -> dict:
    """Run (or resume) the protocol into ``out``; return what ``protocol.json`` records. Every
    sweep it starts with is checked (each cell's config) before anything runs or is written."""
    out = Path(out)
    overrides = [*protocol.overrides, *overrides]
    check_overrides(overrides)
    common = [*overrides, f"sweep.jobs={jobs}"]
    augment = "[" + ",".join(render(a) for a in protocol.augment) + "]"
    tunes = {conf: [f"conf={conf}", *common, f"seed={protocol.tune_seed}", "sweep.seeds=1",
                    "sweep.grid.optim.lr=[" + ",".join(render(lr) for lr in grid) + "]",
                    f"sweep.grid.data.augment={augment}", f"sweep.dir={tune_dir(out, conf)}"]
             for conf, grid in protocol.grids.items()}
    extras = {e.name: [*e.args, *overrides_for_extra(overrides), f"sweep.jobs={jobs}",
                       f"sweep.dir={extra_dir(out, e.name)}"] for e in protocol.extras}
    for argv in [*tunes.values(), *extras.values()]:
        # a bad override or grid fails here, before anything is written; so do a missing
        # dataset and a training subset larger than the split (the datamodule's checks)
        build_datamodule(config_of(plan(parse_args(argv))[0], out))
    # a resumed protocol adds its stages' wall times to those of the invocations before it
    before = (json.loads((out / "protocol.json").read_text()).get("wall_seconds", {})
              if (out / "protocol.json").is_file() else {})
    record: dict = {"name": name, "protocol": asdict(protocol), "overrides": overrides,
                    "tuning": {}, "chosen": {}, "final": {}, "extras": {}, "wall_seconds": {}}
    start = time.perf_counter()
    for argv in tunes.values():  # 1. tune
        _sweep(argv, progress)
    record["wall_seconds"]["tune"] = before.get("tune", 0.0) + time.perf_counter() - start
    for conf in protocol.grids:  # 2. choose
        losses = tuning_losses(tune_dir(out, conf))
        record["tuning"][conf] = {render(a): {render(lr): v for lr, v in sorted(ls.items())}
                                  for a, ls in losses.items()}
        record["chosen"][conf] = {render(a): choose(losses[a], f"{tune_dir(out, conf)} "
                                                    f"(data.augment={render(a)})")
                                  for a in protocol.augment}
    write_json(out / "protocol.json", record)
    start = time.perf_counter()
    for conf in protocol.grids:  # 3. final
        for a in protocol.augment:
            lr = record["chosen"][conf][render(a)]
            d = _sweep([f"conf={conf}", *common, f"optim.lr={render(lr)}",
                        f"data.augment={render(a)}", f"sweep.seeds={protocol.seeds}",
                        "sweep.chunk=1", f"sweep.dir={final_dir(out, conf, a)}"], progress)
            record["final"].setdefault(conf, {})[render(a)] = str(d.relative_to(out))
    record["wall_seconds"]["final"] = before.get("final", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    for extra, argv in extras.items():  # 4. extra
        record["extras"][extra] = str(_sweep(argv, progress).relative_to(out))
    record["wall_seconds"]["extra"] = before.get("extra", 0.0) + time.perf_counter() - start
    record["provenance"] = provenance.collect()
    write_json(out / "protocol.json", record)
    return record


def overrides_for_extra(overrides: list[str]) -> list[str]:
    """The protocol's overrides that make sense for the patch tasks of the extra sweeps: the
    trainer's (accelerator, threads), not the images task's data or model settings."""
    return [o for o in overrides if o.startswith("trainer.")]


def load(out: str | Path) -> dict:
    """``OUT/protocol.json``; ConfigError when ``out`` is not a finished protocol directory."""
    path = Path(out) / "protocol.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{out} is not a standard-gap directory: no readable protocol.json "
                          "(python scripts/standard_gap.py NAME --out DIR writes one)") from None


USAGE = "standard_gap.py NAME --out DIR [--jobs N] [key=value ...]"


def main(argv: list[str]) -> int:
    """``NAME --out DIR [--jobs N] [key=value ...]``: run (or resume) protocol NAME. Exit 0
    when it finished, 2 on bad input."""
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # argparse's usage + error: one line, as everywhere
            raise ConfigError(f"{message} (usage: {USAGE})")

    p = Parser(prog="standard_gap.py")
    p.add_argument("name")
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    try:
        args = p.parse_intermixed_args(argv)  # key=value before or after the options
        if args.name not in PROTOCOLS:
            raise ConfigError(f"protocol {args.name!r} is not allowed: one of "
                              f"{', '.join(PROTOCOLS)}")
        if args.jobs < 1:
            raise ConfigError(f"--jobs {args.jobs} is not allowed: an integer >= 1")
        start = time.perf_counter()
        record = run(args.name, PROTOCOLS[args.name], args.out, args.jobs, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # finished cells stay; the same command resumes
        print("interrupted: the same command resumes it", file=sys.stderr)
        return 130
    print(f"chosen step sizes: {json.dumps(record['chosen'])}")
    print(f"wrote {Path(args.out) / 'protocol.json'} ({time.perf_counter() - start:.0f} s); "
          f"report: python scripts/report.py {args.out}")
    return 0
