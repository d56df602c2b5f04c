"""Shared fixtures: one tiny CPU configuration (seconds to train), outputs under tmp_path."""

from __future__ import annotations

import pytest
import torch
from omegaconf import DictConfig

from adamgap.config import load_config

# A small instance of Definition 3.1 where the paper's gap appears in a few hundred steps
# (see tests/test_train.py for the behaviour it is expected to show).
TINY = [
    "data.d=200", "data.n=40", "data.n_test=400", "data.s=20",
    "model.m=5", "trainer.max_steps=300", "trainer.eval_every=100",
    "trainer.log_every=50", "trainer.progress_bar=false", "align.every=50",
]


def tiny_config(name: str = "synthetic_adam", *overrides: str, tmp_path=None) -> DictConfig:
    """The tiny config for experiment ``name``, with ``overrides`` applied last."""
    extra = [f"run.dir={tmp_path / 'run'}"] if tmp_path is not None else []
    return load_config(name, [*TINY, *extra, *overrides])


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tests are many small problems: threads only add overhead
    yield
