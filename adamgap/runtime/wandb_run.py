"""The Weights & Biases side of a run (``logger.wandb.enabled=true``; wandb is imported only then).

- **One W&B run per run directory**, with an id derived from the directory (:func:`run_id`):
  a requeued Slurm job or a ``run.resume=true`` restart has the same directory, so online it
  continues the same W&B run (``resume="allow"``), and offline each restart writes another
  ``RUN_DIR/wandb/offline-run-*-<id>`` that ``wandb sync`` uploads under that id.
- **Grouped by sweep**: ``logger.wandb.group``, else the sweep a run belongs to (a sweep cell's
  directory is ``SWEEP_DIR/cells/<cell>``), else the experiment name.
- **Tagged** ``optim:<name>``, ``task:<task>``, ``conf:<name>`` plus ``logger.wandb.tags``.
- **x-axis** ``trainer/global_step`` (Lightning's ``WandbLogger`` defines it for every metric);
  the alignment curves (Figure 2) arrive from the alignment callback under ``align/...``.
- **At the end** (:func:`finish`): the run's summary metrics and the Figure-2 image
  ``figures/alignment.png`` under ``figures/alignment``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger  # imports wandb only when one is built
from omegaconf import DictConfig, OmegaConf

from adamgap.summary import is_number, replicas_of

FIGURE_KEY = "figures/alignment"  # the Figure-2 image's media key (analysis.wandb_report)


def run_id(run_dir: str | Path) -> str:
    """``<dir name>-<hash of the absolute path>``: W&B's id charset, stable across restarts."""
    run_dir = Path(run_dir).resolve()
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:12]
    name = re.sub(r"[^a-z0-9_-]+", "-", run_dir.name.lower()).strip("-")[:48]
    return f"{name}-{digest}" if name else digest


def sweep_of(run_dir: str | Path) -> str | None:
    """The name of the sweep whose cell ``run_dir`` is, or None (``experiments.cells``)."""
    run_dir = Path(run_dir).resolve()
    sweep_dir = run_dir.parent.parent
    if run_dir.parent.name == "cells" and (sweep_dir / "sweep.yaml").is_file():
        return sweep_dir.name
    return None


def group_of(cfg: DictConfig, run_dir: str | Path) -> str:
    return cfg.logger.wandb.group or sweep_of(run_dir) or cfg.conf


def tags_of(cfg: DictConfig) -> list[str]:
    tags = [f"optim:{cfg.optim.name}", f"task:{cfg.data.task}", f"conf:{cfg.conf}"]
    return tags + [t for t in cfg.logger.wandb.tags if t not in tags]


def build_logger(cfg: DictConfig, run_dir: Path):
    """Lightning's ``WandbLogger`` for this run, files under ``RUN_DIR/wandb``."""
    w = cfg.logger.wandb
    return WandbLogger(project=w.project, entity=w.entity, group=group_of(cfg, run_dir),
                       tags=tags_of(cfg), name=w.name or f"{cfg.conf}-s{cfg.seed}",
                       id=run_id(run_dir), resume="allow", mode=w.mode, save_dir=str(run_dir),
                       config=OmegaConf.to_container(cfg, resolve=True))


def summary_metrics(summary: dict) -> dict:
    """The run summary as W&B summary values: its top-level numbers (for an ensemble the
    means over its replicas) and, for an ensemble, every replica's under ``seed<k>/``."""
    def numbers(row: dict) -> dict:
        return {k: v for k, v in row.items() if is_number(v) and k != "seed"}

    out = {"status": summary.get("status", "completed"), **numbers(summary)}
    replicas = replicas_of(summary)
    if len(replicas) > 1:
        for r in replicas:
            out |= {f"seed{r['seed']}/{k}": v for k, v in numbers(r).items()}
    return out


def finish(loggers: list, summary: dict, run_dir: Path) -> None:
    """Rank 0, after training: summary metrics, the Figure-2 image, then close the W&B run."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        figure = Path(run_dir) / "figures" / "alignment.png"
        if figure.is_file():
            logger.log_image(FIGURE_KEY, [str(figure)], step=summary.get("steps"))
        logger.experiment.summary.update(summary_metrics(summary))
        logger.experiment.finish()
