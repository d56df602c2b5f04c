"""What several test files share: the tiny configuration, a lock held by another process,
a run summary without its wall times, and callbacks that act at a chosen step. (Fixtures live
in ``conftest.py``.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from adamgap.config import TASKS, DataConfig, TrainerConfig, load_config
from adamgap.data import Definition31DataModule
from adamgap.summary import replicas_of

ROOT = Path(__file__).resolve().parent.parent

# A small instance of Definition 3.1: the paper's d, s, sigma_p, alpha, sigma_0, lam, m and q,
# but n = 40 examples, 400 test examples and T = 500 steps (the paper: 200, 10 000, 10 000).
# With learning rates scaled to the short horizon (tests/test_train.py: Adam 3e-4, GD 1.0) the
# paper's gap appears in every one of seeds 0-95 we tried; a run takes a few seconds on a CPU.
TINY = [
    "data.n=40", "data.n_test=400", "trainer.max_steps=500", "trainer.eval_every=250",
    "trainer.log_every=50", "trainer.progress_bar=false", "align.every=50",
]


def tiny_config(name: str = "synthetic_adam", *overrides: str, tmp_path=None) -> DictConfig:
    """The tiny config for experiment ``name``, with ``overrides`` applied last."""
    extra = [f"run.dir={tmp_path / 'run'}"] if tmp_path is not None else []
    return load_config(name, [*TINY, *extra, *overrides])


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir``'s lock until killed."""
    code = ("import sys, time; from pathlib import Path; from adamgap.runtime import rundir; "
            "rundir.lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def computed_summary(run_dir: Path) -> dict:
    """``summary.json`` without what is not computed: the wall times."""
    out = json.loads((run_dir / "summary.json").read_text())
    for row in [out, *replicas_of(out)]:
        row.pop("wall_seconds", None)
    return out


def synthetic_datamodule(seeds=(0,), steps_per_batch: int = 1, **data
                         ) -> Definition31DataModule:
    """Definition 3.1 data for ``seeds``, set up: the schema's ``data.*`` defaults but ``data``."""
    defaults = OmegaConf.to_container(OmegaConf.structured(DataConfig))
    settings = {k: defaults[k] for k in TASKS["synthetic"].keys} | data
    dm = Definition31DataModule(list(seeds), max_steps=TrainerConfig.max_steps,
                                 steps_per_batch=steps_per_batch, **settings)
    dm.setup("fit")
    return dm


class Crash(BaseException):
    """Stands for a kill: nothing of the run is saved after it (Lightning only flushes logs)."""


class At(L.Callback):
    """Calls ``act()`` once, at the end of training step ``step`` (before any checkpoint)."""

    def __init__(self, step: int, act):
        self.step, self.act, self.done = step, act, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.done:
            self.done = True
            self.act()
