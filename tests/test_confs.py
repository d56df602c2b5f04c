"""Every named experiment in ``conf/`` loads and trains: 2 steps on a tiny override of its own
data (a new conf can no longer go untested). CIFAR configs read a tiny CIFAR-10 written in its
on-disk format (``conftest.cifar_root``); Fashion-MNIST comes from Debian's package."""

from __future__ import annotations

import math

import pytest

from adamgap import preflight
from adamgap.config import conf_names, load_config
from adamgap.train import run

TINY_RUN = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1",
            "align.every=1", "trainer.progress_bar=false"]


def tiny_overrides(name: str, cifar_root) -> list[str]:
    """A few examples of the conf's own data, on this machine's CPU."""
    cfg = load_config(name)
    if cfg.data.task == "images":
        out = ["data.n=8", "data.n_test=8", "data.workers=0", "trainer.accelerator=cpu",
               "align.images=4"]
        if cfg.data.batch_size is not None:  # mini-batches (full batch stays full)
            out.append("data.batch_size=4")
    else:
        out = ["data.n=20", "data.n_test=40"]
    if cfg.data.task != "synthetic" and cfg.data.dataset.startswith("cifar"):
        out.append(f"data.root={cifar_root}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", conf_names())
def test_every_conf_trains_two_steps(name, cifar_root, tmp_path):
    cfg = load_config(name, [*TINY_RUN, *tiny_overrides(name, cifar_root),
                             f"run.dir={tmp_path / 'run'}"])
    preflight.check(cfg)
    summary = run(cfg)
    assert summary["conf"] == name
    assert (summary["status"], summary["steps"]) == ("completed", 2)
    assert 0.0 <= summary["test_error"] <= 1.0 and math.isfinite(summary["test_loss"])
    assert (tmp_path / "run" / "summary.json").is_file()
