"""Determinism: the same config and seed give the same numbers, bit for bit, on a CPU; torch's
deterministic algorithms are on (``trainer.deterministic=true``, the default) and the sparse CSR
products of the synthetic data run under them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import computed_summary, tiny_config

from adamgap import train

SHORT = ["trainer.max_steps=60", "trainer.eval_every=30", "trainer.log_every=10",
         "align.every=10"]


def outputs(run_dir: Path) -> dict:
    """Everything a run computes: the summary but its wall time, the logs, the final weights."""
    weights = torch.load(run_dir / "weights.pt", weights_only=True)
    return {"summary": computed_summary(run_dir),
            "alignment": (run_dir / "alignment.csv").read_text(),
            "metrics": (run_dir / "metrics.csv").read_text(),
            "weights": {k: v.numpy().tobytes() for k, v in weights.items()}}


@pytest.mark.parametrize("name, extra", [
    ("synthetic_adam", ["data.sparse=true"]),  # the CSR patch products
    ("synthetic_adam", ["data.sparse=false"]),  # the dense einsum
    ("synthetic_sgd", ["data.batch_size=8", "run.replicas=2"]),  # mini-batches, an ensemble
])
def test_same_config_same_numbers(name, extra, tmp_path):
    runs = []
    for i in range(2):
        summary = train.run(tiny_config(name, *SHORT, *extra, f"run.dir={tmp_path / str(i)}"))
        assert summary["status"] == "completed"
        assert torch.are_deterministic_algorithms_enabled()  # no op refused to run under it
        runs.append(outputs(tmp_path / str(i)))
    assert runs[0] == runs[1]


def test_another_seed_other_numbers(tmp_path):
    """The comparison above can fail: a different seed changes every number."""
    a = train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={tmp_path / 'a'}"))
    b = train.run(tiny_config("synthetic_adam", *SHORT, "seed=1", f"run.dir={tmp_path / 'b'}"))
    for key in ("train_loss", "test_loss", "feature_learning", "noise_memorization"):
        assert a[key] != b[key], key
