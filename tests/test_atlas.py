"""The optimizer atlas (``adamgap/experiments/atlas.py``, ``adamgap/analysis/atlas_report.py``):
the protocol as docs/atlas/protocol.md states it, the selection rule on a hand-made table, the
catalogue, the stages' cells, and ``scripts/gaptest.py`` end to end on a tiny override."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
from helpers import ROOT, TINY

from adamgap.analysis import atlas_report
from adamgap.experiments import atlas
from adamgap.experiments.probe import Verdict
from adamgap.optimizers import catalogue


def grid_row(lr, status="completed", train_error=0.0, train_objective=0.1, test_error=0.5):
    return {"lr": lr, "status": status, "train_error": train_error,
            "train_objective": train_objective, "test_error": test_error}


def test_the_protocol_is_the_one_protocol_md_states():
    text = (ROOT / "docs" / "atlas" / "protocol.md").read_text()
    assert len(atlas.GRID) == 11 and atlas.GRID[0] == 1e-5 and atlas.GRID[-1] == 1.0
    assert all(math.isclose(b / a, 10 ** 0.5, rel_tol=1e-2)
               for a, b in zip(atlas.GRID, atlas.GRID[1:], strict=False))
    assert ", ".join(f"{lr:g}" for lr in atlas.GRID) in text
    assert f"seed {atlas.TUNE_SEED}" in text and atlas.TUNE_SEED >= atlas.EVAL_SEEDS
    assert f"{atlas.EVAL_SEEDS} evaluation seeds" in text
    assert re.search(r"T = 10 000", text)


def test_selection_takes_the_lowest_objective_among_step_sizes_that_fit():
    grid = [grid_row(1e-4, train_objective=0.30, test_error=0.0),
            grid_row(1e-3, train_objective=0.10, test_error=0.9),
            grid_row(1e-2, train_error=0.05, train_objective=0.01),  # lower, but does not fit
            grid_row(1e-1, status="diverged", train_objective=None),
            grid_row(1.0, status="failed")]
    choice = atlas.select(grid)
    assert (choice.lr, choice.rule) == (1e-3, "fits")
    # the best test error over the grid is reported beside it, among those that fit
    assert (choice.best_test_lr, choice.best_test_error) == (1e-4, 0.0)


def test_selection_ties_go_to_the_smaller_step_and_test_data_never_chooses():
    grid = [grid_row(1e-2, train_objective=0.1, test_error=0.9),
            grid_row(1e-3, train_objective=0.1, test_error=0.0)]
    assert atlas.select(grid).lr == 1e-3
    flipped = [dict(r, test_error=1 - r["test_error"]) for r in grid]
    assert atlas.select(flipped).lr == 1e-3  # the test errors do not enter


def test_selection_when_nothing_fits_or_everything_diverged():
    grid = [grid_row(1e-4, train_error=0.2, train_objective=0.6),
            grid_row(1e-3, train_error=0.1, train_objective=0.7),
            grid_row(1e-2, status="diverged")]
    choice = atlas.select(grid)
    assert (choice.lr, choice.rule) == (1e-3, "no fit")
    assert atlas.select([grid_row(1e-2, status="diverged"),
                         grid_row(1e-1, status="failed")]).rule == "none"


def test_the_catalogue_holds_every_installed_optimizer_once():
    import heavyball
    import pytorch_optimizer

    names = catalogue.names()
    assert len(names) == len(set(names)) >= 170
    classes = [catalogue.resolve(n).cls for n in names]
    assert len(set(classes)) == len(classes)  # no class twice (torch's re-exports once)
    registry = {pytorch_optimizer.load_optimizer(n) for n in
                pytorch_optimizer.get_supported_optimizers()}
    assert registry <= set(classes)
    assert {getattr(heavyball, n) for n in heavyball.__all__ if n != "capture_param_shapes"} \
        <= set(classes)
    for table in (catalogue.EXCLUDED, catalogue.NOTES, catalogue.FAMILY_OF):
        assert set(table) <= set(names), set(table) - set(names)  # no name misspelt
    assert all(catalogue.EXCLUDED.values())


def test_stage_cells_follow_the_probes_verdict():
    a = atlas.Atlas(ROOT / "unused", ["adam", "muon", "odd", "broken"], ["data.n=40"])
    verdicts = {"adam": Verdict("adam", "ensemble", 0.0, 0.0, 1.0),
                "muon": Verdict("muon", "replicas", 1.0, 0.0, 1.0),
                "odd": Verdict("odd", "processes", 1.0, 1.0, 1.0),
                "broken": Verdict("broken", None, None, None, None, "TypeError: no")}
    tune = atlas.tune_cells(a, verdicts)
    by = {}
    for c in tune:
        by.setdefault(c.values["optim.name"], []).append(c)
    assert set(by) == {"adam", "muon", "odd"}
    assert len(by["adam"]) == 1 and by["adam"][0].seed == atlas.TUNE_SEED
    assert f"optim.lrs={json.dumps(list(atlas.GRID))}" in by["adam"][0].overrides
    assert "data.n=40" in by["adam"][0].overrides
    assert len(by["odd"]) == len(atlas.GRID)  # one process per step size
    choices = {n: atlas.Choice(1e-3, "fits", 1e-3, 0.0) for n in ("adam", "muon", "odd")}
    evals = atlas.eval_cells(a, verdicts, choices)
    shape = {(c.values["optim.name"], c.seed, c.replicas) for c in evals}
    assert ("adam", 0, atlas.EVAL_SEEDS) in shape and ("muon", 0, atlas.EVAL_SEEDS) in shape
    assert {s for n, s, k in shape if n == "odd"} == set(range(atlas.EVAL_SEEDS))
    assert "optim.layout=ensemble" in next(c for c in evals
                                           if c.values["optim.name"] == "adam").overrides


def test_an_optimizer_not_run_is_listed_and_the_probe_alone_excludes_one_for_cost(tmp_path):
    """The report of an atlas whose probe has seen more optimizers than have run: one too dear
    for the protocol is excluded for cost by its probe verdict, one that is not is "not
    run", and the page says how many have not run."""
    probes = [Verdict("adam", "ensemble", 0.0, 0.0, 1.0),
              Verdict("shampoo", "replicas", 1.0, 0.0, 2 * atlas.COST_MS)]
    (tmp_path / "probe.json").write_text(json.dumps([v.record() for v in probes]))
    records = atlas.collect(tmp_path)
    assert [r["name"] for r in records] == ["adam", "shampoo"]
    assert records[0]["excluded"] is None
    assert records[1]["excluded"].startswith("cost: 30 ms a step")
    table = {r["optimizer"]: r for r in atlas_report.rows(records)}
    assert (table["adam"]["status"], table["shampoo"]["status"]) == ("not run", "excluded (cost)")
    page = atlas_report.markdown(list(table.values()), [], records, tmp_path, "cmd")
    assert "2 of the " in page and "1 not measured" not in page and "2 not measured" in page
    full = [dict(table["adam"], optimizer=f"x{i}") for i in range(len(catalogue.names()))]
    assert f"({len(full)} of them not run yet" in atlas_report.markdown(full, [], records,
                                                                       tmp_path, "cmd")


def test_a_rows_notes_say_which_decay_the_optimizer_ran_with():
    """AdamW decays by its own optim.weight_decay with no lambda in the loss; a class the suite
    builds with its own decay off says so, with the default it overrode."""
    def rec(name):
        return {"name": name, "note": "", "probe": {}, "grid": [], "eval": []}
    assert atlas_report.notes(rec("adamw")) == [
        "decoupled weight decay 0.01 (optim.weight_decay), no lambda in the loss"]
    assert atlas_report.notes(rec("stableadamw")) == ["own weight decay off (default 0.01)"]
    assert atlas_report.notes(rec("adam")) == []


GAPTEST_TINY = [*TINY, "trainer.eval_every=500"]


@pytest.mark.slow
def test_gaptest_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = atlas_report.gaptest(["optim.name=NAdam", "optim.kwargs.momentum_decay=0.004",
                                 *GAPTEST_TINY])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    result = json.loads(out[-1])
    assert {"optimizer", "lr", "train_error", "test_error", "test_error_ci", "feature_learning",
            "noise_memorization", "side"} <= set(result)
    assert result["optimizer"] == "NAdam" and result["lr"] in atlas.GRID
    assert result["seeds"] == atlas.EVAL_SEEDS
    assert out[-2].startswith("verdict: NAdam lands ")
    rows = [line for line in out if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| NAdam", "| adam", "| gd"]
    # the references stay the references: GD learns the feature on the tiny config too
    gd = next(r for r in rows if r.startswith("| gd "))
    assert "GD's" in gd
    # a second call finds everything finished (resumable) and answers the same
    assert atlas_report.gaptest(["optim.name=NAdam", "optim.kwargs.momentum_decay=0.004",
                                 *GAPTEST_TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result


@pytest.mark.parametrize("argv, message", [
    (["optim.name=no_such_module:Opt"], "error: optim.name='no_such_module:Opt' is not allowed"),
    (["optim.name=pytorch_optimizer:GSAM"],  # the preflight's line (config validation)
     "error: optim.name='pytorch_optimizer:GSAM' is not allowed: GSAM(params, lr=...) fails: "
     "TypeError: "),
    (["optim.name=test_probe:Broken"],
     "error: optim.name='test_probe:Broken' is not allowed: Broken.step() fails on this "
     "network's weight (one (2m, d) matrix per replica): RuntimeError: this optimizer cannot "
     "step"),
    (["data.n=40"], "error: optim.name is required"),
])
def test_gaptest_rejects_an_optimizer_it_cannot_build_or_step(argv, message, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert atlas_report.gaptest([*argv, *TINY]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_the_atlas_end_to_end_writes_every_row_and_resumes(tmp_path, capsys):
    """``scripts/atlas.py`` on a tiny override: a measured optimizer, one excluded by the
    catalogue and one the probe cannot step are all rows of atlas.csv / atlas.md; the
    figures are written; a second call runs no cell and writes the same table."""
    argv = ["--dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--only", "adam",
            "SparseAdam", "test_probe:Broken", "sweep.jobs=1", *GAPTEST_TINY]
    assert atlas_report.main(argv) == 0
    out = tmp_path / "out"
    assert (out / "atlas.png").stat().st_size > 0 and (out / "sensitivity.png").stat().st_size > 0
    table = {r["optimizer"]: r for r in csv.DictReader((out / "atlas.csv").open())}
    assert list(table) == ["adam", "SparseAdam", "test_probe:Broken"]
    adam = table["adam"]
    assert adam["status"] == "measured" and adam["seeds"] == str(atlas.EVAL_SEEDS)
    assert float(adam["lr"]) in atlas.GRID and adam["layout"] == "ensemble"
    assert adam["side"] in ("Adam's", "GD's", "in between") and adam["package"] == "torch"
    assert table["SparseAdam"]["status"] == "excluded"
    assert "sparse gradients" in table["SparseAdam"]["notes"]
    assert table["test_probe:Broken"]["status"] == "not runnable"
    assert "RuntimeError: this optimizer cannot step" in table["test_probe:Broken"]["notes"]
    md = (out / "atlas.md").read_text()
    assert "| `adam` |" in md and "| `SparseAdam` |" in md and "| `test_probe:Broken` |" in md
    # the chosen step size came from the tuning runs by the selection rule
    grid = atlas.collect(tmp_path / "runs")[0]["grid"]
    assert sorted(r["lr"] for r in grid) == sorted(atlas.GRID)
    assert atlas.select(grid).lr == float(adam["lr"])
    before = (out / "atlas.csv").read_text()
    capsys.readouterr()
    assert atlas_report.main(argv) == 0
    log = capsys.readouterr().out
    assert "tune: 1 cells, 0 to run" in log and "eval: 1 cells, 0 to run" in log
    assert "] cell " not in log  # no cell ran again
    assert (out / "atlas.csv").read_text() == before
    # both invocations are on the page, each with its command and wall time
    command = "`python scripts/atlas.py " + " ".join(argv) + "`"
    wall = next(ln for ln in (out / "atlas.md").read_text().splitlines()
                if ln.startswith("Wall time:"))
    assert "in 2 invocation(s)" in wall and wall.count(command) == 2
