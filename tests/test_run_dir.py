"""Run directory safety (adamgap/runtime/rundir.py): a directory holding a completed, running,
unfinished or foreign run is refused unless resuming; a running one always; two processes never
share one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from helpers import ROOT, hold_lock, tiny_config

from adamgap import train
from adamgap.errors import ConfigError
from adamgap.runtime import rundir

SHORT = ["trainer.max_steps=20", "trainer.eval_every=10", "trainer.log_every=10"]


def snapshot(d: Path) -> dict:
    return {p.relative_to(d): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in d.rglob("*")}


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("done") / "run"
    train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={run_dir}"))
    return run_dir


def killed_run(run_dir: Path) -> Path:
    """The directory of a run killed before its first checkpoint: only its config.yaml."""
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        train.to_yaml(tiny_config("synthetic_adam", *SHORT, f"run.dir={run_dir}")))
    return run_dir


def test_completed_run_is_refused_and_untouched(completed):
    before = snapshot(completed)
    with pytest.raises(ConfigError) as err:
        train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={completed}"))
    assert str(err.value) == (f"run.dir={completed} holds a completed run (summary.json); choose "
                              "another run.dir, or set run.resume=true to return its summary")
    assert snapshot(completed) == before


def test_completed_run_with_resume_returns_its_summary(completed):
    before = snapshot(completed)
    summary = train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={completed}",
                                    "run.resume=true"))
    assert summary == json.loads((completed / "summary.json").read_text())
    assert snapshot(completed) == before


def test_unfinished_run_is_refused_without_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"holds a run that did not finish \(unfinished\); "
                                          r"set run.resume=true"):
        train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={run_dir}"))


def test_foreign_directory_is_refused_even_with_resume(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for resume in ("false", "true"):
        with pytest.raises(ConfigError, match="already holds files that are not an adamgap run"):
            train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={tmp_path}",
                                  f"run.resume={resume}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_with_other_settings_is_refused(tmp_path):
    run_dir = killed_run(tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={run_dir}", "run.resume=true",
                              "optim.lr=0.001"))
    assert str(err.value) == (f"run.resume=true: optim.lr=0.001 differs from optim.lr=0.0001 in "
                              f"{run_dir / 'config.yaml'}; resume with the run's settings")


def test_running_run_is_refused_until_its_process_dies(tmp_path):
    run_dir = killed_run(tmp_path / "run")
    proc = hold_lock(run_dir)
    try:
        for resume in ("false", "true"):  # resuming a live run would share its files
            with pytest.raises(ConfigError) as err:
                train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={run_dir}",
                                      f"run.resume={resume}"))
            assert str(err.value).startswith(f"run.dir={run_dir} is in use by a running run "
                                             f"(pid {proc.pid} on ")
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup: the kernel drops the lock
        proc.wait()
    summary = train.run(tiny_config("synthetic_adam", *SHORT, f"run.dir={run_dir}",
                                    "run.resume=true"))
    assert summary["status"] == "completed"
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == os.getpid()


def test_a_run_that_raised_does_not_lock_out_this_process(tmp_path, monkeypatch):
    cfg = tiny_config("synthetic_adam", *SHORT, tmp_path=tmp_path)
    monkeypatch.setattr(train, "build_module", lambda *a: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        train.run(cfg)
    assert rundir.inspect(tmp_path / "run") == "unfinished"
    monkeypatch.undo()
    summary = train.run(tiny_config("synthetic_adam", *SHORT, "run.resume=true",
                                    tmp_path=tmp_path))
    assert summary["status"] == "completed"


@pytest.mark.slow
def test_two_processes_on_one_directory_never_both_run(tmp_path):
    """Started together: one trains, the other exits with status 2 and one line, whether it
    looks while the first runs (the usual case) or, on a slow machine, after it finished."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "scripts/train.py", "conf=synthetic_adam", "data.n=40",
            "data.n_test=400", "trainer.max_steps=1000", "trainer.progress_bar=false",
            f"run.dir={run_dir}"]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outcomes = sorted((p.wait(), p.communicate()[1], p.pid) for p in procs)
    (ok, _, winner), (refused, stderr, _) = outcomes
    assert (ok, refused) == (0, 2)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0] in (
        f"error: run.dir={run_dir} is in use by a running run (pid {winner} on "
        f"{socket.gethostname()} since {json.loads((run_dir / 'run.lock').read_text())['started']}"
        "); wait for it to end or choose another run.dir",
        f"error: {rundir.refusal(run_dir, 'completed')}")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_default_run_dirs_of_runs_started_together_differ(monkeypatch):
    """Two processes whose clocks read the same microsecond still get two directories."""
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2025, 1, 2, 3, 4, 5, 678901)

    monkeypatch.delenv(train.RUN_STAMP_ENV, raising=False)
    monkeypatch.setattr(train, "datetime", Frozen)
    cfg = tiny_config("synthetic_adam")
    dirs = []
    for pid in (4242, 4243):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        dirs.append(train.run_dir_of(cfg))
    assert dirs == [Path("runs/synthetic_adam/20250102-030405-678901-p4242-s0"),
                    Path("runs/synthetic_adam/20250102-030405-678901-p4243-s0")]
