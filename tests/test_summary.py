"""The run summary's one shape (``adamgap/summary.py``) and the provenance beside every number
(``adamgap/provenance.py``): in ``summary.json``, ``config.yaml`` and the tables built from
them."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_config

from adamgap import provenance
from adamgap.config import load_run_config
from adamgap.experiments.aggregate import aggregate, results
from adamgap.experiments.cells import cell_dir
from adamgap.experiments.launch import run_sweep
from adamgap.experiments.spec import create, load, parse_args
from adamgap.summary import assemble, replicas_of
from adamgap.train import run

SHORT = ["trainer.max_steps=20", "trainer.eval_every=10", "trainer.log_every=10",
         "align.every=10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for K in (1, 3):
        tmp = tmp_path_factory.mktemp(f"K{K}")
        out[K] = (run(tiny_config("synthetic_adam", *SHORT, f"run.replicas={K}",
                                  tmp_path=tmp)), tmp / "run")
    return out


def test_one_seed_has_its_values_on_top_and_one_replica(runs):
    summary, run_dir = runs[1]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    (row,) = summary["replicas"]
    for key, value in row.items():
        assert summary[key] == value, key
    assert summary["seed"] == 0 and "seeds" not in summary


def test_an_ensemble_has_the_means_on_top_and_every_replica(runs):
    summary, _ = runs[3]
    rows = summary["replicas"]
    assert summary["seeds"] == [r["seed"] for r in rows] == [0, 1, 2]
    for key in ("test_error", "train_loss", "feature_learning", "noise_memorization_init"):
        assert summary[key] == pytest.approx(sum(r[key] for r in rows) / 3), key
    assert summary["steps"] == 20 and summary["status"] == "completed"
    assert "seed" not in summary  # a single seed's key: an ensemble has seeds


def test_the_worst_replica_decides_the_status_and_the_error():
    rows = [{"seed": 0, "status": "completed", "steps": 5, "wall_seconds": 1.0, "x": 1.0},
            {"seed": 1, "status": "diverged", "steps": 5, "wall_seconds": 1.0, "x": None,
             "error": "diverged at step 3"},
            {"seed": 2, "status": "interrupted", "steps": 5, "wall_seconds": 1.0, "x": 3.0,
             "error": "stopped by SIGTERM"}]
    summary = assemble("c", rows)
    assert summary["status"] == "interrupted"
    assert summary["error"] == "diverged at step 3"
    assert summary["x"] == 2.0  # the mean over the replicas with a number


def test_provenance_is_recorded_with_the_config_and_the_summary(runs):
    summary, run_dir = runs[1]
    p = summary["provenance"]
    assert p == provenance.collect()
    assert p["torch"] and p["lightning"] and p["torchmetrics"] and p["python"]
    assert p["cores"] >= 1 and p["cpu"] and p["gpus"] == []
    assert p["git"] is None or p["git"].removesuffix("-dirty").isalnum()
    text = (run_dir / "config.yaml").read_text()
    assert text.startswith(f"# provenance: {provenance.line(p)}\n")
    assert load_run_config(run_dir).optim.name == "adam"  # the header is a comment


def test_an_old_flat_summary_still_reads_back_in_a_sweep(tmp_path):
    """Cells written before the per-replica list existed (one flat row) still aggregate."""
    spec = parse_args(["conf=synthetic_gd", "sweep.seeds=1", "sweep.grid.data.alpha=[0.1,0.3]",
                       *SHORT, "data.n=40", "data.n_test=400", "trainer.progress_bar=false",
                       f"sweep.dir={tmp_path / 'sweep'}"])
    sweep_dir = create(spec)
    run_sweep(sweep_dir, progress=lambda line: None)
    _, cells = load(sweep_dir)
    path = cell_dir(sweep_dir, cells[0]) / "summary.json"
    new = json.loads(path.read_text())
    flat = {k: v for k, v in new.items() if k not in ("replicas", "provenance")}
    path.write_text(json.dumps(flat))
    assert replicas_of(flat) == [flat]
    rows = results(sweep_dir)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert rows[0]["test_error"] == new["test_error"]
    table = aggregate(sweep_dir)
    assert [t["n_seeds"] for t in table] == [1, 1]
    md = (sweep_dir / "aggregate.md").read_text()
    assert md.startswith("Runs: ")
    assert "provenance not recorded" in md and f"Runs: {provenance.line(new['provenance'])}" in md
