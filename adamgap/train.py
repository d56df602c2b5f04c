"""One training run: config -> data, network, objective, Trainer -> run directory + summary.

``run(cfg)`` is what ``scripts/train.py`` calls and what the tests call. A run directory holds
``config.yaml`` (resolved), ``metrics.csv`` (Lightning's CSV logger), ``alignment.csv``,
``alignment.pt``, ``figures/alignment.png``, ``summary.json``, ``weights.pt``, the first-layer
filters at W(0) and at the end (``filters.pt``, ``figures/filters.png``), ``step_sizes.csv``
and ``step_sizes.pt`` (when ``align.step_sizes``), and
``checkpoints/last.ckpt`` and ``run.lock`` (docs/reliability.md: resume, divergence, locking).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from adamgap import first_layer, optimizers, preflight, provenance, summary
from adamgap.alignment import AlignmentCallback
from adamgap.config import MODELS, TASKS, lrs_of, seeds_of, steps_per_batch, to_yaml
from adamgap.data import Definition31DataModule
from adamgap.errors import OutputError
from adamgap.figures import plot_filters
from adamgap.module import GapModule
from adamgap.network import PatchCNN
from adamgap.outputs import atomic_write, write_json, write_text
from adamgap.runtime import requeue, rundir, wandb_run
from adamgap.runtime.checkpointing import (
    AtomicCheckpointIO,
    Interrupted,
    MetricsCSVLogger,
    StepCheckpoint,
    resume_from,
)
from adamgap.runtime.divergence import Diverged, DivergenceCallback
from adamgap.step_sizes import StepSizeCallback
from adamgap.tasks.image_patches import ImagePatchDataModule
from adamgap.tasks.images import ImageClassifier, ImageDataModule
from adamgap.tasks.planted import PlantedDataModule

# Warnings that say nothing about a run, silenced so that a real one stands out: the run
# directory exists before the CSV logger starts (metrics.csv is ours to keep: checkpointing.py);
# Lightning's hint that `srun` exists on a machine with Slurm installed; torch's notes that its
# sparse CSR tensors are a beta feature without invariant checks; a deprecation inside Lightning.
for _message in ("Experiment logs directory .* exists and is not empty",
                 "The `srun` command is available on your system but is not used",
                 "Sparse CSR tensor support is in beta state",
                 "Sparse invariant checks are implicitly disabled",
                 r"`isinstance\(treespec, LeafSpec\)` is deprecated"):
    warnings.filterwarnings("ignore", _message)

# Names the default run directory. Every DDP rank and every restart of a requeued Slurm job must
# agree on it: slurm/*.sbatch set it from the job id, and run() hands its own to the processes
# Lightning's DDP launcher starts (they re-execute the script with the same arguments).
RUN_STAMP_ENV = "ADAMGAP_RUN_STAMP"


def run_stamp() -> str:
    """$ADAMGAP_RUN_STAMP when set, otherwise the current time and this process's id (two runs
    started in the same microsecond still get two directories)."""
    return (os.environ.get(RUN_STAMP_ENV)
            or f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}-p{os.getpid()}")


def run_dir_of(cfg: DictConfig, stamp: str | None = None) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return Path("runs") / cfg.conf / f"{stamp or run_stamp()}-s{cfg.seed}"


def is_launch_rank_zero() -> bool:
    """Whether this process is global rank 0, known before the Trainer starts from what the
    launchers set (torchrun RANK, Lightning's LOCAL_RANK and NODE_RANK, srun SLURM_PROCID)."""
    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


@contextmanager
def exported(name: str, value: str):
    """Set environment variable ``name`` for the duration of the block (child processes see it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


# data.task -> its datamodule, built with exactly the data.* keys config.TASKS lists for it
DATAMODULES: dict[str, type[L.LightningDataModule]] = {
    "synthetic": Definition31DataModule, "planted": PlantedDataModule,
    "image_patches": ImagePatchDataModule, "images": ImageDataModule}


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The task's datamodule, given by name every ``data`` setting it takes (``config.TASKS``)."""
    task = cfg.data.task
    data = OmegaConf.to_container(cfg.data)
    kwargs = {key: data[key] for key in TASKS[task].keys}
    if task != "images":  # one optimizer step per Lightning step (config.steps_per_batch)
        kwargs["steps_per_batch"] = steps_per_batch(cfg)
    return DATAMODULES[task](seeds_of(cfg), max_steps=cfg.trainer.max_steps, **kwargs)


def build_module(cfg: DictConfig, dm: L.LightningDataModule) -> GapModule:
    mo = cfg.model
    if MODELS[mo.name].images:  # given by name the model.* settings it reads (config.MODELS)
        net = ImageClassifier(mo.name, dm.channels, dm.side, dm.num_classes, cfg.seed,
                              **{key: mo[key] for key in MODELS[mo.name].keys})
    else:
        net = PatchCNN(dm.d, mo.m, mo.q, mo.sigma_0, seeds_of(cfg), linear=mo.name == "linear",
                       classes=getattr(dm, "num_classes", 2), layout=layout_of(cfg))
    return GapModule(net, OmegaConf.to_container(cfg.optim), cfg.trainer.max_steps,
                     cfg.trainer.log_every, seeds_of(cfg), lrs_of(cfg), getattr(dm, "n", None))


def layout_of(cfg: DictConfig) -> str:
    """How the replicas' weights meet the optimizer (``optim.layout`` resolved)."""
    return optimizers.layout_for(cfg.optim.name, cfg.optim.lrs, cfg.optim.layout)


def optimizer_record(cfg: DictConfig) -> dict:
    """What ``optim.name`` resolved to: class, distribution and version, the replicas' layout
    and the step adapters in use (``summary.json``'s ``optimizer``; ``config.yaml``'s header)."""
    found = optimizers.resolve(cfg.optim.name)
    return {"name": cfg.optim.name, "class": found.qualname, "package": found.package,
            "version": found.version, "layout": layout_of(cfg),
            "adapters": optimizers.contract_of(found.cls).describe()}


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = [MetricsCSVLogger(run_dir)]
    if cfg.logger.wandb.enabled:
        loggers.append(wandb_run.build_logger(cfg, run_dir))
    return loggers


def prepare_run_dir(cfg: DictConfig, stamp: str | None = None) -> Path:
    """The run directory, claimed and created by rank 0 only (other DDP ranks write nothing):
    ``rundir.claim`` refuses a running, finished or foreign directory unless resuming, and
    locks it; a resumed run keeps its original ``config.yaml``."""
    run_dir = run_dir_of(cfg, stamp)
    if not is_launch_rank_zero():
        return run_dir
    if rundir.claim(cfg, run_dir) is None and not (run_dir / "config.yaml").is_file():
        o = optimizer_record(cfg)
        write_text(run_dir / "config.yaml", provenance.yaml_header(provenance.collect())
                   + f"# optimizer: {o['class']} ({o['package']} {o['version']}), layout "
                     f"{o['layout']}, {o['adapters']}\n" + to_yaml(cfg))
    return run_dir


def process_settings(cfg: DictConfig) -> None:
    """What this process sets before it trains (``run``, and benchmarks of its steps)."""
    # Adam's second-moment state and the tiny early gradients become denormal floats, which
    # slow x86 CPUs by an order of magnitude; flushing them to zero changes nothing visible.
    torch.set_flush_denormal(True)
    if cfg.trainer.accelerator == "cpu":
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import (fork safety for CUDA); with
        # it, torch's Adam-family step() probes NVML (a dlopen) on every call: ~0.1 ms a step
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def run(cfg: DictConfig) -> dict:
    """Train as configured; write the run directory; return the summary (``adamgap.summary``).

    Faults end with one line and keep what was complete: a file that cannot be written (a full
    disk, a read-only directory) stops the run with :class:`RunError` naming the file and the
    step, the last checkpoint kept for ``run.resume=true``; SIGINT (Ctrl-C) stops it like
    SIGTERM at the next step boundary, checkpointed (``StepCheckpoint.interruptible``)."""
    preflight.check(cfg)  # what the schema cannot know (entry points ran it already: cached)
    process_settings(cfg)
    stamp = run_stamp()
    run_dir = run_dir_of(cfg, stamp)
    checkpoint = StepCheckpoint(run_dir, cfg.run.checkpoint_every,
                                rundir.computing_settings(cfg))
    with checkpoint.interruptible():
        try:
            dm = build_datamodule(cfg)  # first: a missing dataset fails before anything is written
        except Interrupted:
            raise Interrupted("stopped by SIGINT before the run started; nothing was written"
                              ) from None
        try:
            prepare_run_dir(cfg, stamp)
        except OutputError as err:
            _remove_if_empty(run_dir)
            raise err.noted("; nothing of the run was kept") from None
        try:
            return _train(cfg, dm, run_dir, checkpoint, stamp)
        finally:
            rundir.release(run_dir)


def _train(cfg: DictConfig, dm: L.LightningDataModule, run_dir: Path,
           checkpoint: StepCheckpoint, stamp: str) -> dict:
    """The run in its claimed ``run_dir``: train, evaluate, write the results."""
    if cfg.run.resume and rundir.inspect(run_dir) in rundir.FINISHED:
        return summary.read(run_dir)  # nothing left to do (e.g. a requeued, finished job)
    module = build_module(cfg, dm)
    filters_init = first_layer.filter_images(module.net, dm)  # W(0): a resumed run's too
    t = cfg.trainer
    diverge = DivergenceCallback(seeds_of(cfg), cfg.optim.name, lrs_of(cfg), t.log_every)
    callbacks: list[L.Callback] = [diverge, checkpoint, *requeue.callbacks()]
    align = None
    if cfg.align.enabled:
        align = AlignmentCallback(run_dir, cfg.align.every, seeds_of(cfg), cfg.align.variance,
                                  cfg.align.images)
        callbacks.append(align)
    step_sizes = None
    if cfg.align.step_sizes:
        step_sizes = StepSizeCallback(run_dir, cfg.align.step_sizes_every, module.lam,
                                      seeds_of(cfg))
        callbacks.append(step_sizes)
    k = steps_per_batch(cfg)  # optimizer steps per Lightning training step (batch)
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every // k)))
    trainer = L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        val_check_interval=min(t.eval_every, t.max_steps) // k, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every // k, logger=build_loggers(cfg, run_dir),
        callbacks=callbacks,
        enable_checkpointing=True, plugins=[AtomicCheckpointIO(), *requeue.plugins()],
        deterministic=t.deterministic,
        enable_model_summary=False, enable_progress_bar=t.progress_bar, default_root_dir=run_dir,
        # Definition 3.1 data splits itself over DDP ranks (data.py); others: Lightning's sampler
        use_distributed_sampler=not getattr(dm, "shards_for_ddp", False))
    ckpt = None
    if cfg.run.resume:
        shapes = {key: tuple(v.shape) for key, v in module.state_dict().items()}
        ckpt = resume_from(run_dir, stash_metrics=is_launch_rank_zero(),
                           settings=rundir.computing_settings(cfg), shapes=shapes)
    start = time.perf_counter()
    stop: BaseException | None = None
    try:
        with exported(RUN_STAMP_ENV, stamp):
            try:
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
                if int(module.last.get("eval_step", -1)) != trainer.global_step:
                    trainer.validate(module, datamodule=dm, verbose=False)  # the final test error
            except (Diverged, SIGTERMException, Interrupted) as err:  # the summary says why
                stop = err
        wall = time.perf_counter() - start
        extras = dm.summary_extras() if hasattr(dm, "summary_extras") else {}
        rows = diverge.mark(replica_rows(cfg, module, align, trainer.global_step, wall, extras))
        if isinstance(stop, (SIGTERMException, Interrupted)):
            rows = checkpoint.mark_interrupted(rows, trainer.global_step,
                                               stop if isinstance(stop, Interrupted) else None)
        result = summary.assemble(cfg.conf, rows, provenance.collect())
        result["optimizer"] = optimizer_record(cfg)
        if trainer.is_global_zero:
            if isinstance(stop, Diverged):  # the trajectories up to the divergence, for the
                for recorder in (align, step_sizes):  # post-mortem
                    if recorder is not None:
                        recorder.write()
            atomic_write(run_dir / "weights.pt",
                         lambda f: torch.save(module.net.state_dict(), f), binary=True)
            write_filters(run_dir, filters_init, first_layer.filter_images(module.net, dm),
                          rows[0])
            write_json(run_dir / "summary.json", result)
            if cfg.logger.wandb.enabled:
                wandb_run.finish(trainer.loggers, result, run_dir)
    except OutputError as err:
        raise err.noted(f" at step {trainer.global_step}; {_kept(checkpoint, run_dir)}"
                        ) from None
    except OSError as err:  # a write of Lightning's or a library's, not through adamgap.outputs
        if err.errno not in WRITE_FAULTS:
            raise
        raise OutputError(err.filename or run_dir, err, f" at step {trainer.global_step}; "
                          f"{_kept(checkpoint, run_dir)}") from None
    except Interrupted as err:  # a second SIGINT while the results were written
        raise Interrupted(checkpoint.mark_interrupted([{}], trainer.global_step, err)[0]["error"]
                          ) from None
    return result


# errno values of a write that cannot succeed until someone acts: a full disk or quota, a
# read-only file system
WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _kept(checkpoint: StepCheckpoint, run_dir: Path) -> str:
    """What a run stopped by a write fault keeps, and how to go on."""
    go_on = f"continue with run.dir={run_dir} run.resume=true"
    if checkpoint.saved_step >= 0:
        return (f"the checkpoint of step {checkpoint.saved_step} is kept: free space (or make "
                f"{run_dir} writable), then {go_on}")
    return (f"no checkpoint yet: free space (or make {run_dir} writable), then {go_on} (it "
            "starts from step 0)")


def _remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but its lock (a run that could not start)."""
    rundir.release(run_dir)
    if run_dir.is_dir() and all(p.name == rundir.LOCK for p in run_dir.iterdir()):
        with contextlib.suppress(OSError):
            (run_dir / rundir.LOCK).unlink()
            run_dir.rmdir()


def write_filters(run_dir: Path, init: torch.Tensor, final: torch.Tensor, row: dict) -> None:
    """``filters.pt`` (the first-layer filters of every replica at W(0) and at the end, as
    ``first_layer.filter_images`` gives them) and ``figures/filters.png`` (replica 0's, with
    the first layer's feature energy where it was measured)."""
    atomic_write(run_dir / "filters.pt", lambda f: torch.save({"init": init, "final": final}, f),
                 binary=True)
    key = "first_layer_feature_energy"
    where = {"init": f"{key}_init", "final": key}
    titles = {part: f"seed {row['seed']}, {label}" + (
        f": feature energy {row[where[part]]:.2f}" if where[part] in row else "")
        for part, label in (("init", "W(0)"), ("final", f"step {row['steps']}"))}
    plot_filters([(titles["init"], init[0]), (titles["final"], final[0])],
                 run_dir / "figures" / "filters.png")


def replica_rows(cfg: DictConfig, module: GapModule, align: AlignmentCallback | None,
                 steps: int, wall: float, extras: dict[str, list[float]] | None = None
                 ) -> list[dict]:
    """Each replica's results, one row per seed (``adamgap.summary``). ``extras``: per-replica
    values the datamodule reports (e.g. the planted task's l1/l2 ratios)."""
    history = align.history() if align is not None else {}
    rows = []
    for k, seed in enumerate(seeds_of(cfg)):
        r = {"seed": seed, "lr": lrs_of(cfg)[k], "status": "completed", "steps": steps,
             "wall_seconds": wall}
        for key in ("train_error", "test_error", "train_loss", "test_loss", "grad_l2", "grad_l1"):
            if key in module.last:  # a run stopped early may not have evaluated yet
                r[key] = float(module.last[key][k])
        for key, values in history.items():
            if key != "step":
                r[key] = float(values[-1, k])
                r[f"{key}_init"] = float(values[0, k])
        if "train_loss" in r:  # L(W) of Section 4: the data term plus (lam / 2) ||W||^2
            K = module.net.replicas
            norm2 = sum(float(p.detach().reshape(K, -1)[k].double().square().sum())
                        for p in module.params)
            r["train_objective"] = r["train_loss"] + 0.5 * module.lam * norm2
        r.update({key: values[k] for key, values in (extras or {}).items()})
        rows.append(r)
    return rows
