"""One training run: config -> data, network, objective, Trainer -> run directory + summary.

``run(cfg)`` is what ``scripts/train.py`` calls and what the tests call. A run directory holds
``config.yaml`` (resolved), ``metrics.csv`` (Lightning's CSV logger), ``alignment.csv``,
``alignment.pt``, ``figures/alignment.png`` and ``summary.json``.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from adamgap.alignment import AlignmentCallback
from adamgap.config import ConfigError, to_yaml
from adamgap.data import SyntheticDataModule
from adamgap.module import GapModule
from adamgap.network import PatchCNN
from adamgap.outputs import write_json, write_text


def seeds_of(cfg: DictConfig) -> list[int]:
    """The replicas' seeds: seed, seed + 1, ..., seed + K - 1."""
    return [cfg.seed + k for k in range(cfg.run.replicas)]


def run_dir_of(cfg: DictConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / cfg.conf / f"{stamp}-s{cfg.seed}"


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    d = OmegaConf.to_container(cfg.data)
    d.pop("task")
    return SyntheticDataModule(seeds_of(cfg), max_steps=cfg.trainer.max_steps, **d)


def build_module(cfg: DictConfig, dm: L.LightningDataModule) -> GapModule:
    mo = cfg.model
    net = PatchCNN(dm.d, mo.m, mo.q, mo.sigma_0, seeds_of(cfg), linear=mo.name == "linear")
    return GapModule(net, OmegaConf.to_container(cfg.optim), cfg.trainer.max_steps,
                     cfg.trainer.log_every)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = [CSVLogger(run_dir, name="", version="")]
    w = cfg.logger.wandb
    if w.enabled:  # imported only when switched on
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=w.project, group=w.group, tags=list(w.tags),
                                   name=w.name or f"{cfg.conf}-s{cfg.seed}", mode=w.mode,
                                   save_dir=str(run_dir),
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def prepare_run_dir(cfg: DictConfig) -> Path:
    run_dir = run_dir_of(cfg)
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.run.resume:
        raise ConfigError(f"run.dir={run_dir} already holds files; choose another run.dir "
                          "or set run.resume=true")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", to_yaml(cfg))
    return run_dir


def run(cfg: DictConfig) -> dict:
    """Train as configured; write the run directory; return the summary (see ``summarize``)."""
    # Adam's second-moment state and the tiny early gradients become denormal floats, which
    # slow x86 CPUs by an order of magnitude; flushing them to zero changes nothing visible.
    torch.set_flush_denormal(True)
    run_dir = prepare_run_dir(cfg)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    t = cfg.trainer
    callbacks: list[L.Callback] = []
    align = None
    if cfg.align.enabled:
        align = AlignmentCallback(run_dir, cfg.align.every, seeds_of(cfg))
        callbacks.append(align)
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every)))
    trainer = L.Trainer(
        max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        val_check_interval=min(t.eval_every, t.max_steps), num_sanity_val_steps=0,
        log_every_n_steps=t.log_every, logger=build_loggers(cfg, run_dir), callbacks=callbacks,
        enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=t.progress_bar, default_root_dir=run_dir)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    if int(module.last.get("eval_step", -1)) != trainer.global_step:
        trainer.validate(module, datamodule=dm, verbose=False)  # the final test error
    wall = time.perf_counter() - start
    summary = summarize(cfg, module, align, trainer.global_step, wall)
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
    return summary


def summarize(cfg: DictConfig, module: GapModule, align: AlignmentCallback | None, steps: int,
              wall: float) -> dict:
    """Per-replica results; a single run's summary is flat, an ensemble's lists its replicas."""
    seeds = seeds_of(cfg)
    history = align.history() if align is not None else {}
    replicas = []
    for k, seed in enumerate(seeds):
        r = {"seed": seed, "status": "completed", "steps": steps, "wall_seconds": wall}
        for key in ("train_error", "test_error", "train_loss", "test_loss", "grad_l2", "grad_l1"):
            r[key] = float(module.last[key][k])
        for key, values in history.items():
            if key != "step":
                r[key] = float(values[-1, k])
                r[f"{key}_init"] = float(values[0, k])
        replicas.append(r)
    if len(replicas) == 1:
        return {"conf": cfg.conf, **replicas[0]}
    return {"conf": cfg.conf, "status": "completed", "seeds": seeds, "steps": steps,
            "wall_seconds": wall, "replicas": replicas}
