"""Sweeps: the grid and its checks, the aggregation math, and a sweep's life: a failed cell is
recorded and the others go on, an interrupted sweep resumes, a re-run redoes only what failed."""

from __future__ import annotations

import csv
import json
import math

import pytest
from helpers import TINY

from adamgap.errors import ConfigError
from adamgap.experiments.cells import cell_dir, cell_file, record_of, state
from adamgap.experiments.launch import run_sweep
from adamgap.experiments.spec import SweepSpec, config_of, create, load, parse_args, plan
from adamgap.experiments.stats import fmt, mean_ci
from adamgap.experiments.sweep import main as sweep_main

FAST = [*TINY, "trainer.max_steps=30", "trainer.eval_every=30", "align.every=10",
        "trainer.log_every=10"]


def spec_of(tmp_path, *args: str) -> SweepSpec:
    return parse_args([*args, *FAST, f"sweep.dir={tmp_path / 'sweep'}"])


# -- the spec and the grid ------------------------------------------------------------------------
def test_grid_is_the_product_of_its_keys_with_base_overrides(tmp_path):
    spec = spec_of(tmp_path, "conf=synthetic_adam", "sweep.seeds=3",
                   "sweep.grid.conf=[synthetic_adam,synthetic_gd]",
                   "sweep.grid.data.alpha=[0.05,0.1,0.2]", "model.m=4")
    assert spec.seeds == 3 and spec.grid == {"conf": ["synthetic_adam", "synthetic_gd"],
                                             "data.alpha": [0.05, 0.1, 0.2]}
    cells = plan(spec)
    assert [(c.conf, c.values["data.alpha"]) for c in cells] == [
        (conf, a) for conf in ("synthetic_adam", "synthetic_gd") for a in (0.05, 0.1, 0.2)]
    cfg = config_of(cells[4], tmp_path)
    assert (cfg.optim.name, cfg.optim.lr, cfg.data.alpha, cfg.model.m) == ("gd", 0.1, 0.1, 4)
    assert (cfg.seed, cfg.run.replicas, cfg.run.resume) == (0, 3, True)
    assert len({c.id for c in cells}) == 6


def test_chunks_split_a_cells_seeds_into_ensembles(tmp_path):
    cells = plan(spec_of(tmp_path, "seed=10", "sweep.seeds=5", "sweep.chunk=2"))
    assert [(c.seed, c.replicas) for c in cells] == [(10, 2), (12, 2), (14, 1)]


@pytest.mark.parametrize("arg, message", [
    ("sweep.grid.data.alpah=[0.1]", "sweep.grid.data.alpah: unknown config key; allowed: "),
    ("sweep.grid.data=[1]", "sweep.grid.data: a group of settings"),
    ("sweep.grid.seed=[1,2]", "sweep.grid.seed: the sweep sets seed itself"),
    ("sweep.grid.data.alpha=[]", "sweep.grid.data.alpha is empty"),
    ("sweep.sedes=3", "unknown sweep key 'sweep.sedes'"),
    ("sweep.seeds=0", "sweep.seeds=0 is not allowed: an integer >= 1"),
    ("sweep.jobs=two", "bad value for 'sweep.jobs'"),
    ("sweep.launcher=cloud", "sweep.launcher='cloud' is not allowed: local"),
    ("sweep.grid.data.alpha=[0.1,-1]", "sweep cell 001_alpha-1: data.alpha=-1.0 is not allowed"),
    ("sweep.grid.conf=[synthetic_adam,nope]", "conf=nope: no file"),
])
def test_bad_sweep_input_is_one_clear_line(tmp_path, arg, message):
    with pytest.raises(ConfigError) as err:
        plan(spec_of(tmp_path, arg))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sweep_cli_rejects_bad_input_with_exit_2(tmp_path, capsys):
    assert sweep_main(["sweep.grid.optim.lrr=[1]", f"sweep.dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.startswith("error: sweep.grid.optim.lrr: unknown config key")
    assert sweep_main(["--dir", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "sweep.yaml").exists()  # nothing written


# -- aggregation ----------------------------------------------------------------------------------
def test_mean_std_and_t_interval_on_known_numbers():
    mean, std, ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert std == pytest.approx(math.sqrt(2.5))  # sample std, n - 1
    assert ci == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5))  # t_{0.975, 4}
    _, _, ci2 = mean_ci([0.0, 1.0])
    assert ci2 == pytest.approx(12.7062047 * math.sqrt(0.5) / math.sqrt(2))  # t_{0.975, 1}
    mean1, std1, ci1 = mean_ci([0.7])
    assert mean1 == 0.7 and math.isnan(std1) and math.isnan(ci1)
    assert fmt(0.8841, 0.0123) == "0.884 ± 0.012" and fmt(0.5, math.nan) == "0.500"


# -- a sweep's life -------------------------------------------------------------------------------
def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_failed_cell_is_recorded_and_the_others_finish_then_a_rerun_redoes_it(tmp_path,
                                                                              monkeypatch):
    import adamgap.train

    spec = spec_of(tmp_path, "conf=synthetic_adam", "sweep.seeds=2",
                   "sweep.grid.optim.kwargs=[{},{amsgrad: true},{maximize: false}]")
    sweep_dir = create(spec)
    cells = load(sweep_dir)[1]
    assert (sweep_dir / "sweep.yaml").is_file() and len(cells) == 3  # written before any run
    real = adamgap.train.run

    def flaky(cfg):  # cell 1 fails on its first attempt only, cell 2 every time
        if cfg.run.dir.endswith(cells[1].id) and not flaky.failed:
            flaky.failed = True
            raise RuntimeError("node lost\nsecond line")
        if cfg.run.dir.endswith(cells[2].id):
            raise TypeError("the optimizer's step() got a bogus argument")
        return real(cfg)

    flaky.failed = False
    monkeypatch.setattr(adamgap.train, "run", flaky)
    states = run_sweep(sweep_dir, progress=lambda line: None)
    assert states == {0: "completed", 1: "failed", 2: "failed"}
    rows = read_csv(sweep_dir / "results.csv")
    assert list(rows[0])[:4] == ["conf", "seed", "status", "optim.kwargs"]
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed"),
                                                        ("0", "failed"), ("1", "failed"),
                                                        ("0", "failed"), ("1", "failed")]
    assert rows[2]["error"] == "RuntimeError: node lost"
    assert "TypeError" in rows[4]["error"] and "bogus" in rows[4]["error"]
    assert float(rows[0]["test_error"]) >= 0 and rows[0]["feature_learning"] != ""
    assert "Traceback" in cell_file(sweep_dir, cells[2], ".error.log").read_text()
    done = (cell_dir(sweep_dir, cells[0]) / "summary.json").stat().st_mtime_ns

    assert sweep_main(["--dir", str(sweep_dir)]) == 1  # cell 2 still fails: exit 1
    assert (cell_dir(sweep_dir, cells[0]) / "summary.json").stat().st_mtime_ns == done
    assert [record_of(sweep_dir, c).get("attempts") for c in cells] == [1, 2, 2]
    assert [state(sweep_dir, c) for c in cells] == ["completed", "completed", "failed"]
    agg = read_csv(sweep_dir / "aggregate.csv")
    assert [(a["n_seeds"], a["n_failed"]) for a in agg] == [("2", "0"), ("2", "0"), ("0", "2")]
    seeds = [float(r["test_error"]) for r in read_csv(sweep_dir / "results.csv")[:2]]
    assert float(agg[0]["test_error_mean"]) == pytest.approx(sum(seeds) / 2)


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_a_cell_runs_alone_by_index(tmp_path, capsys):
    args = ["conf=synthetic_gd", "sweep.seeds=2", "sweep.grid.data.alpha=[0.1,0.3]", *FAST,
            f"sweep.dir={tmp_path / 'sweep'}"]
    sweep_dir = create(parse_args(args))
    assert sweep_main(["--dir", str(sweep_dir), "--cell", "1"]) == 0  # as a cluster task would
    cells = load(sweep_dir)[1]
    assert [state(sweep_dir, c) for c in cells] == ["pending", "completed"]
    first = json.loads((cell_dir(sweep_dir, cells[1]) / "summary.json").read_text())
    assert sweep_main(args) == 0  # the same command again: resumes, runs cell 0 only
    assert [record_of(sweep_dir, c)["attempts"] for c in cells] == [1, 1]
    assert json.loads((cell_dir(sweep_dir, cells[1]) / "summary.json").read_text()) == first
    out = capsys.readouterr().out
    assert "2 cells, 1 finished, 1 to run" in out
    with pytest.raises(ConfigError, match="holds a different sweep"):
        create(parse_args([*args, "sweep.seeds=3"]))



def test_the_same_sweep_again_runs_with_this_commands_jobs_and_threads(tmp_path):
    args = ["conf=synthetic_gd", "sweep.grid.data.alpha=[0.1,0.3]", *FAST,
            f"sweep.dir={tmp_path / 'sweep'}"]
    sweep_dir = create(parse_args([*args, "sweep.jobs=1", "sweep.threads=1"]))
    assert (load(sweep_dir)[0].jobs, load(sweep_dir)[0].threads) == (1, 1)
    create(parse_args([*args, "sweep.jobs=2", "sweep.threads=2"]))  # resumed: faster
    spec, cells = load(sweep_dir)
    assert (spec.jobs, spec.threads, spec.grid) == (2, 2, {"data.alpha": [0.1, 0.3]})
    assert [c.id for c in cells] == [c.id for c in plan(parse_args(args))]

@pytest.mark.slow
def test_parallel_jobs_run_cells_in_their_own_processes(tmp_path):
    spec = spec_of(tmp_path, "sweep.seeds=1", "sweep.jobs=2",
                   "sweep.grid.conf=[synthetic_adam,synthetic_signgd]")
    sweep_dir = create(spec)
    assert run_sweep(sweep_dir, progress=lambda line: None) == {0: "completed",
                                                                  1: "completed"}
    cells = load(sweep_dir)[1]
    assert all(cell_file(sweep_dir, c, ".log").is_file() for c in cells)
    rows = read_csv(sweep_dir / "results.csv")
    assert [r["conf"] for r in rows] == ["synthetic_adam", "synthetic_signgd"]


LEAGUE = ["synthetic_adam", "synthetic_adamw", "synthetic_sgd", "synthetic_gd",
          "synthetic_signgd", "synthetic_rmsprop", "synthetic_adagrad", "synthetic_nadam",
          "synthetic_lion", "synthetic_sgd_momentum"]


@pytest.mark.slow
def test_every_league_optimizer_trains_in_a_sweep(tmp_path):
    """The optimizer league's confs (Lion from lion-pytorch among them) each train and finish."""
    spec = parse_args([f"sweep.grid.conf=[{','.join(LEAGUE)}]", "sweep.seeds=1", *TINY,
                          "trainer.max_steps=3", "trainer.eval_every=3", "align.every=3",
                          f"sweep.dir={tmp_path / 'league'}"])
    states = run_sweep(create(spec), progress=lambda line: None)
    assert list(states.values()) == ["completed"] * len(LEAGUE)
    rows = read_csv(tmp_path / "league" / "results.csv")
    assert [r["conf"] for r in rows] == LEAGUE
    assert all(float(r["noise_memorization"]) != float(r["noise_memorization_init"])
               for r in rows)  # every optimizer moved the weights
