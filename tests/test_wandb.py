"""W&B: deterministic run ids, grouping by sweep, tags, what an offline run records, and the
report built offline (no network: wandb.Api is made to fail)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
import wandb
import wandb_workspaces.reports.v2 as wr
from helpers import tiny_config
from wandb.proto import wandb_internal_pb2 as pb

from adamgap.analysis.wandb_report import CURVES, build_report, outline
from adamgap.experiments.cells import cell_dir
from adamgap.experiments.spec import config_of, create, load, parse_args
from adamgap.outputs import write_csv
from adamgap.runtime.wandb_run import FIGURE_KEY, group_of, run_id, summary_metrics, tags_of
from adamgap.summary import assemble
from adamgap.train import run


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the W&B API was contacted")

    monkeypatch.setattr(wandb, "Api", no_network)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_run_id_depends_on_the_run_directory_only(tmp_path, monkeypatch):
    a = run_id(tmp_path / "cells" / "003-alpha=0.1")
    monkeypatch.chdir(tmp_path / "..")
    assert run_id(Path(tmp_path.name) / "cells" / "003-alpha=0.1") == a  # relative, same dir
    assert run_id(tmp_path / "cells" / "003-alpha=0.2") != a
    assert a.startswith("003-alpha-0-1-") and len(a) <= 64
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def make_sweep(tmp_path: Path) -> Path:
    spec = parse_args(["sweep.grid.conf=[synthetic_adam,synthetic_gd]",
                             "sweep.grid.data.alpha=[0.1,0.2]", "sweep.grid.data.s=[10,20]",
                             "sweep.seeds=2", f"sweep.dir={tmp_path / 'phase'}"])
    return create(spec)


def test_group_is_the_sweep_then_the_conf(tmp_path):
    sweep_dir = make_sweep(tmp_path)
    _, cells = load(sweep_dir)
    cfg = config_of(cells[0], sweep_dir)
    assert group_of(cfg, cell_dir(sweep_dir, cells[0])) == "phase"
    assert group_of(cfg, tmp_path / "elsewhere") == "synthetic_adam"
    assert group_of(tiny_config("synthetic_gd", "logger.wandb.group=mine"), tmp_path) == "mine"
    assert tags_of(tiny_config("synthetic_gd", "logger.wandb.tags=[paper]")) == [
        "optim:gd", "task:synthetic", "conf:synthetic_gd", "paper"]


def test_summary_of_an_ensemble_is_the_mean_and_each_seed():
    summary = assemble("x", [
        {"seed": s, "status": "completed", "steps": 10, "wall_seconds": 1.0, "test_error": e,
         "train_error": 0.0} for s, e in ((3, 0.8), (4, 0.6))])
    out = summary_metrics(summary)
    assert out["test_error"] == pytest.approx(0.7)
    assert out["seed3/test_error"] == 0.8 and out["seed4/test_error"] == 0.6
    assert out["status"] == "completed" and "seed" not in out


def wandb_records(path: Path):
    """Records of a W&B transaction log (``run-<id>.wandb``): LevelDB-log framing (32 KiB
    blocks, 7-byte headers: crc32, length, type 1 full / 2 first / 3 middle / 4 last) of
    ``wandb_internal_pb2.Record`` messages after a 7-byte file header."""
    data, pos, part = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a header
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            yield record


def top(item) -> str:
    """A history or summary item's key (an image is spread over nested keys under it)."""
    return item.key or item.nested_key[0]


@pytest.mark.slow
def test_offline_run_records_what_the_report_reads(tmp_path):
    cfg = tiny_config("synthetic_adam", "trainer.max_steps=100", "trainer.eval_every=50",
                      "logger.wandb.enabled=true", "logger.wandb.mode=offline", tmp_path=tmp_path)
    summary = run(cfg)
    run_dir = tmp_path / "run"
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id(run_dir)}"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    log = offline[0] / f"run-{run_id(run_dir)}.wandb"
    for _ in range(100):  # wandb's service process may still be flushing the log
        records = list(wandb_records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.2)
    info = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (info.run_id, info.run_group) == (run_id(run_dir), "synthetic_adam")
    assert {"optim:adam", "task:synthetic"} <= set(info.tags)
    rows = [{top(item): item.value_json for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    logged = set().union(*rows)
    assert {"trainer/global_step", *CURVES, "test/error", FIGURE_KEY} <= logged
    # every alignment record (steps 0, 50, 100) on the report's x-axis, in increasing order
    align_steps = [int(r["trainer/global_step"]) for r in rows if CURVES[0] in r]
    assert len(align_steps) == 3 and align_steps == sorted(set(align_steps))
    final = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            final.update({top(item): item.value_json for item in r.summary.update})
    assert float(final["test_error"]) == pytest.approx(summary["test_error"])
    assert float(final["train_error"]) == pytest.approx(summary["train_error"])
    assert list((offline[0] / "files/media/images/figures").glob("alignment_*.png"))


def test_report_of_a_sweep_is_built_offline(tmp_path):
    sweep_dir = make_sweep(tmp_path)
    # aggregate.csv as `scripts/sweep.py --aggregate` writes it (the numbers are test inputs)
    rows = [{"conf": conf, "data.alpha": alpha, "data.s": s, "n_seeds": 2, "n_failed": 0,
             "n_diverged": 0, "train_error_mean": 0.0, "train_error_std": 0.0,
             "train_error_ci95": 0.0, "test_error_mean": err, "test_error_std": 0.01,
             "test_error_ci95": 0.09}
            for conf, err in (("synthetic_adam", 0.85), ("synthetic_gd", 0.05))
            for alpha in (0.1, 0.2) for s in (10, 20)]
    write_csv(sweep_dir / "aggregate.csv", rows)
    report = build_report("team", "adamgap", "phase", sweep_dir)

    assert (report.entity, report.project, report.title) == ("team", "adamgap", "adamgap: phase")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert all("Group" in rs.filters and "phase" in rs.filters for g in grids
               for rs in g.runsets)
    table = next(b for b in report.blocks if isinstance(b, wr.MarkdownBlock)).text
    assert "| adam | synthetic_adam | 0.1 | 10 | 2 | 0.000 ± 0.000 | 0.850 ± 0.090 |" in table
    assert table.count("test error Adam - GD = **0.800**") == 4  # one per (alpha, s) point
    curves = [p for g in grids for p in g.panels if isinstance(p, wr.LinePlot)]
    assert [(p.x, p.y, p.groupby) for p in curves] == [
        ("trainer/global_step", [key], "config.optim.name") for key in CURVES]
    phases = [(rs.name, p) for g in grids for rs in g.runsets for p in g.panels
              if isinstance(p, wr.ScatterPlot)]
    assert [name for name, _ in phases] == ["adam", "gd"]  # a phase diagram per optimizer
    assert all((p.x.name, p.y.name, p.z.name) == ("data.alpha", "data.s", "test_error")
               for _, p in phases)
    assert "Figure 2 per run" in outline(report)
