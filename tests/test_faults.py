"""Faults during a run, on real file systems and with real signals: a disk that fills up or
turns read-only mid-run, damaged checkpoints at resume, Ctrl-C (SIGINT) to a real process, a
sweep whose tables or cell summaries are damaged. Each ends with one ``error:`` line (naming the
file and the step), keeps what was complete, and ``run.resume=true`` (or the sweep's re-run)
ends with the same ``summary.json`` (all but ``wall_seconds``) as a run that was never stopped.

The disks are small tmpfs mounts (the tests mount them, so they need root; without it they are
skipped, saying why)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import ROOT, TINY, At, Crash, computed_summary

from adamgap import train
from adamgap.cli import main as train_main
from adamgap.config import load_config
from adamgap.errors import ConfigError
from adamgap.experiments.spec import create, load, parse_args
from adamgap.experiments.sweep import main as sweep_main
from adamgap.runtime.checkpointing import CHECKPOINT_DIR, DAMAGED, LAST, PREVIOUS

# checkpoints every 50 steps, evaluations every 100: 10 optimizer steps per training step
SETTINGS = [*TINY, "trainer.max_steps=300", "trainer.eval_every=100", "trainer.log_every=10",
            "align.every=10", "run.checkpoint_every=50"]


def argv(run_dir: Path, *extra: str) -> list[str]:
    return ["conf=synthetic_adam", *SETTINGS, f"run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run never stopped."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    torch.set_num_threads(1)
    train.run(load_config("synthetic_adam", argv(run_dir)[1:]))
    return run_dir




class Disk:
    """A small tmpfs at ``path``: fill it up, free it, make it read-only and writable again."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")

    def fill(self) -> None:
        """Write zeros to ``filler`` until the disk is full."""
        try:
            with open(self.path / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
        except OSError as err:  # also when not even the empty file fits any more
            assert err.errno == 28  # ENOSPC

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path / "disk", "32m")  # room for a sweep's cells and figures
    yield d
    d.unmount()


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def one_error(err: str) -> str:
    """stderr's only ``error:`` line (Lightning's progress lines aside), with no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- a full disk and a read-only one ----------------------------------------------------------
class AtTrainEnd(L.Callback):
    """Calls ``act()`` when training ends (before the alignment callback writes)."""

    def __init__(self, act) -> None:
        self.act = act

    def on_train_end(self, trainer, module) -> None:
        self.act()


# metrics.csv takes rows every 10 steps and the checkpoint every 50: on the full tmpfs an
# append can still fit in the last page the file already has, so the first write that fails is
# a metrics row of a later step (``first`` .. ``at_step``) or, at ``at_step``, the checkpoint.
AT_CHECKPOINT = ("metrics.csv", "checkpoints/last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("when, failing, first, at_step, kept", [
    (20, AT_CHECKPOINT, 30, 50, None),  # before the first checkpoint: nothing to keep yet
    (120, AT_CHECKPOINT, 130, 150, 100),  # the rows flushed before the checkpoint of step 150
    ("train end", ("alignment.csv",), 300, 300, 250),  # the results at the end
    ("weights", ("weights.pt",), 300, 300, 250),  # after training and evaluation
])
def test_a_disk_that_fills_up_stops_the_run_and_resume_finishes_it(
        when, failing, first, at_step, kept, disk, reference, with_callback, monkeypatch,
        capsys):
    run_dir = disk.path / "run"
    if when == "train end":
        with_callback(AtTrainEnd(disk.fill))
    elif when == "weights":
        write = train.atomic_write
        monkeypatch.setattr(train, "atomic_write", lambda *a, **k: (disk.fill(), write(*a, **k)))
    else:
        with_callback(At(when, disk.fill))
    assert train_main(train.run, argv(run_dir)) == 1
    line = one_error(capsys.readouterr().err)
    go_on = f"continue with run.dir={run_dir} run.resume=true"
    failed = next((name for name in failing if f"write {run_dir / name}:" in line), None)
    assert failed is not None, (failing, line)
    step = int(line.split(" at step ")[1].split(";")[0])
    assert first <= step <= at_step and (step == at_step or failed == "metrics.csv"), line
    if kept is None:
        assert line == (f"error: cannot write {run_dir / failed}: No space left on device at "
                        f"step {step}; no checkpoint yet: free space (or make {run_dir} "
                        f"writable), then {go_on} (it starts from step 0)")
        assert not (run_dir / CHECKPOINT_DIR / LAST).exists()
    else:
        assert line == (f"error: cannot write {run_dir / failed}: No space left on device at "
                        f"step {step}; the checkpoint of step {kept} is kept: free space (or "
                        f"make {run_dir} writable), then {go_on}")
        assert checkpoint_step(run_dir / CHECKPOINT_DIR / LAST) == kept
    assert not (run_dir / "summary.json").exists()
    assert not [p for p in run_dir.rglob(".*")]  # no temporary files left behind
    monkeypatch.undo()
    disk.free()
    assert train_main(train.run, argv(run_dir, "run.resume=true")) == 0
    assert computed_summary(run_dir) == computed_summary(reference)
    for name in ("alignment.csv", "metrics.csv"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_a_disk_turned_read_only_stops_the_run_and_resume_finishes_it(disk, reference,
                                                                       with_callback, capsys):
    run_dir = disk.path / "run"
    with_callback(At(170, lambda: disk.remount("ro")))
    assert train_main(train.run, argv(run_dir)) == 1
    line = one_error(capsys.readouterr().err)
    # the rows of step 170 are the first write after the remount (every write fails now)
    assert line.startswith(f"error: cannot write {run_dir / 'metrics.csv'}: Read-only file system "
                           "at step 170; the checkpoint of step 150 is kept")
    disk.remount("rw")
    assert train_main(train.run, argv(run_dir, "run.resume=true")) == 0
    assert computed_summary(run_dir) == computed_summary(reference)


def test_a_read_only_run_dir_is_refused_before_anything_runs(disk, capsys):
    disk.remount("ro")
    assert train_main(train.run, argv(disk.path / "run")) == 2
    assert one_error(capsys.readouterr().err) == (
        f"error: run.dir={disk.path / 'run'} cannot be created: Read-only file system; choose "
        "another run.dir")


@pytest.mark.slow
def test_a_full_disk_in_a_real_process_then_resume(tmp_path, reference):
    """``python scripts/train.py`` on a tmpfs that another process fills once the first
    checkpoint is there; freed, ``run.resume=true`` ends with the reference's summary."""
    disk = Disk(tmp_path / "disk", "8m")
    try:
        run_dir = disk.path / "run"
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *argv(run_dir)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=os.environ | {"OMP_NUM_THREADS": "1"})
        ckpt = run_dir / CHECKPOINT_DIR / LAST
        while not ckpt.exists() and proc.poll() is None:
            time.sleep(0.005)
        disk.fill()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        assert "No space left on device at step" in one_error(err)
        disk.free()
        done = subprocess.run([*cmd, "run.resume=true"], capture_output=True, text=True,
                              env=os.environ | {"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        assert computed_summary(run_dir) == computed_summary(reference)
    finally:
        disk.unmount()


# -- damaged checkpoints --------------------------------------------------------------------------

@pytest.fixture
def crashed(tmp_path, with_callback):
    """A run killed at step 230: last.ckpt of step 200, previous.ckpt of step 150."""
    run_dir = tmp_path / "run"
    with_callback(At(230, lambda: (_ for _ in ()).throw(Crash())))
    with pytest.raises(Crash):
        train.run(load_config("synthetic_adam", argv(run_dir)[1:]))
    folder = run_dir / CHECKPOINT_DIR
    assert checkpoint_step(folder / LAST) == 200 and checkpoint_step(folder / PREVIOUS) == 150
    return run_dir


def damage(path: Path, how: str, tmp_path: Path) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "not a checkpoint":
        path.write_text("these are not the weights you are looking for\n")
    else:  # another run's checkpoint, of the same shapes (its last one: step 50 of 100)
        other = tmp_path / "other"
        train.run(load_config("synthetic_adam", argv(other, "optim.lr=0.001",
                                                      "trainer.max_steps=100")[1:]))
        path.write_bytes((other / CHECKPOINT_DIR / LAST).read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("how, problem", [
    ("truncated", "it does not read back (RuntimeError: PytorchStreamReader failed"),
    ("not a checkpoint", "it does not read back (UnpicklingError: "),
    ("another run", "it is from another run (optim.lr=0.0001 differs from optim.lr=0.001)"),
])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(how, problem, crashed,
                                                                  reference, tmp_path, capsys):
    folder = crashed / CHECKPOINT_DIR
    damage(folder / LAST, how, tmp_path)
    capsys.readouterr()
    assert train_main(train.run, argv(crashed, "run.resume=true")) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "Traceback" not in err, err
    assert warnings[0].startswith(f"warning: {folder / LAST} is damaged: {problem}")
    assert warnings[0].endswith(f"set it aside as {DAMAGED} and resuming from {PREVIOUS}")
    assert (folder / DAMAGED).is_file()
    assert computed_summary(crashed) == computed_summary(reference)


@pytest.mark.slow
@pytest.mark.parametrize("also_previous", ["damaged", "missing"])
def test_no_usable_checkpoint_is_one_line_saying_what_to_do(also_previous, crashed, tmp_path,
                                                            capsys):
    folder = crashed / CHECKPOINT_DIR
    damage(folder / LAST, "truncated", tmp_path)
    if also_previous == "damaged":
        damage(folder / PREVIOUS, "not a checkpoint", tmp_path)
    else:
        (folder / PREVIOUS).unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert train_main(train.run, argv(crashed, "run.resume=true")) == 1
    line = one_error(capsys.readouterr().err)
    assert line.startswith(f"error: cannot resume {crashed}: {folder / LAST} is damaged: it does "
                           "not read back")
    assert line.endswith(f"move {folder} away to run it again from step 0, or choose another "
                         "run.dir")
    assert ("previous.ckpt is damaged" in line) == (also_previous == "damaged")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing touched
    assert not (crashed / "summary.json").exists()


# -- Ctrl-C ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_checkpoints_at_the_next_step_and_says_how_to_resume(tmp_path, reference):
    """SIGINT to the process group of a real ``scripts/train.py`` (what a terminal's Ctrl-C
    sends) once training is under way: it stops at the next step boundary with a checkpoint,
    one line, exit status 130; ``run.resume=true`` ends with the reference's summary."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *argv(run_dir)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    while not (run_dir / CHECKPOINT_DIR / LAST).exists() and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = one_error(err)
    summary = json.loads((run_dir / "summary.json").read_text())
    step = summary["steps"]
    assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGINT"
    assert line == (f"error: stopped by SIGINT at step {step} (checkpoint: step {step}); "
                    f"continue with run.dir={run_dir} run.resume=true")
    assert checkpoint_step(run_dir / CHECKPOINT_DIR / LAST) == step
    done = subprocess.run([*cmd, "run.resume=true"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert computed_summary(run_dir) == computed_summary(reference)


def test_ctrl_c_before_training_stops_at_once(tmp_path, monkeypatch, capsys):
    """SIGINT while the data is made (before training): the run stops there, one line, 130."""
    run_dir = tmp_path / "run"
    build = train.build_datamodule
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job

    def interrupted(cfg):
        dm = build(cfg)
        os.kill(os.getpid(), signal.SIGINT)  # delivered before the next bytecode
        return dm

    monkeypatch.setattr(train, "build_datamodule", interrupted)
    assert train_main(train.run, argv(run_dir)) == 130
    assert one_error(capsys.readouterr().err) == (
        "error: stopped by SIGINT before the run started; nothing was written")
    assert not run_dir.exists()
    assert signal.getsignal(signal.SIGINT) == before  # restored


# -- sweeps -----------------------------------------------------------------------------------
FAST = [*TINY, "trainer.max_steps=30", "trainer.eval_every=30", "align.every=10",
        "trainer.log_every=10", "run.checkpoint_every=10"]


def sweep_args(sweep_dir: Path) -> list[str]:
    return ["conf=synthetic_adam", "sweep.seeds=1", "sweep.grid.data.alpha=[0.1,0.2]", *FAST,
            f"sweep.dir={sweep_dir}"]


def rows_without_wall(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in csv.DictReader(f)]


@pytest.fixture
def finished_sweep(tmp_path, capsys) -> Path:
    sweep_dir = tmp_path / "sweep"
    assert sweep_main(sweep_args(sweep_dir)) == 0
    capsys.readouterr()
    return sweep_dir


@pytest.mark.slow
def test_a_sweep_rebuilds_damaged_tables_and_cell_summaries(finished_sweep, capsys):
    results = rows_without_wall(finished_sweep / "results.csv")
    cell = sorted((finished_sweep / "cells").glob("000_*/summary.json"))[0]
    summary = computed_summary(cell.parent)
    (finished_sweep / "results.csv").write_text("conf,seed\nsynthetic_adam,0,extra,\n\x00")
    cell.write_text(cell.read_text()[:40])  # cut short
    (finished_sweep / "cells.json").write_text("[{")
    assert sweep_main(["--dir", str(finished_sweep)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    assert f"warning: {finished_sweep / 'cells.json'} was missing or damaged; planned its 2 " \
           "cells again from sweep.yaml" in out.err
    assert f"{cell} is damaged; the cell runs again from its last checkpoint" in out.out
    assert computed_summary(cell.parent) == summary
    assert rows_without_wall(finished_sweep / "results.csv") == results


def test_a_damaged_sweep_yaml_is_one_line_and_the_command_rebuilds_it(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    create(parse_args(sweep_args(sweep_dir)))  # what the sweep's command wrote, cells not run
    (sweep_dir / "sweep.yaml").write_text("conf: [synthetic_adam\n")
    assert sweep_main(["--dir", str(sweep_dir)]) == 2
    line = one_error(capsys.readouterr().err)
    assert line.startswith(f"error: {sweep_dir / 'sweep.yaml'} is damaged (")
    assert line.endswith(f"run the sweep's command again with sweep.dir={sweep_dir} (finished "
                         "cells are kept)")
    create(parse_args(sweep_args(sweep_dir)))  # the command, run again, writes it anew
    assert load(sweep_dir)[0].grid == {"data.alpha": [0.1, 0.2]}
    (sweep_dir / "sweep.yaml").write_text("\x00")
    with pytest.raises(ConfigError, match="its sweep.yaml is damaged and its cells.json lists "
                                          "other cells than these settings give"):
        create(parse_args([*sweep_args(sweep_dir), "sweep.grid.data.alpha=[0.3]"]))


@pytest.mark.slow
def test_a_full_disk_while_a_sweep_writes_its_tables(tmp_path, disk, capsys):
    sweep_dir = disk.path / "sweep"
    assert sweep_main(sweep_args(sweep_dir)) == 0
    before = (sweep_dir / "results.csv").read_bytes()
    disk.fill()
    capsys.readouterr()
    assert sweep_main(["--dir", str(sweep_dir), "--aggregate"]) == 1
    line = one_error(capsys.readouterr().err)
    assert line == (f"error: cannot write {sweep_dir / 'results.csv'}: No space left on device "
                    f"(the sweep: free space, then resume it with python scripts/sweep.py --dir "
                    f"{sweep_dir})")
    assert (sweep_dir / "results.csv").read_bytes() == before  # the old table stays whole
    disk.free()
    assert sweep_main(["--dir", str(sweep_dir), "--aggregate"]) == 0



# -- the study scripts (stochastic, atlas, mechanism) ------------------------------------------
def _stopped(*_args, **_kwargs):
    raise KeyboardInterrupt  # what a sweep raises once SIGTERM or Ctrl-C stopped its cell


@pytest.mark.parametrize("script", ["stochastic", "atlas", "mechanism"])
def test_a_stopped_study_is_one_line_saying_how_to_go_on(script, tmp_path, monkeypatch, capsys):
    """SIGTERM or Ctrl-C inside a study's sweeps: one line naming the command that resumes it,
    exit status 130, no traceback."""
    from adamgap.analysis import atlas_report, mechanism_report, stochastic_report
    from adamgap.experiments import atlas, mechanism

    root = str(tmp_path / "study")
    if script == "stochastic":
        monkeypatch.setattr(stochastic_report, "run", _stopped)
        argv, main = ["run", "--root", root], stochastic_report.main
    elif script == "atlas":
        monkeypatch.setattr(atlas, "run_atlas", _stopped)
        argv, main = ["--dir", root, "--only", "adam"], atlas_report.main
    else:
        monkeypatch.setattr(mechanism, "run_all", _stopped)
        argv, main = ["run", "--root", root], mechanism_report.main
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == (f"interrupted: finished cells stay; resume with python scripts/{script}.py "
                   f"{' '.join(argv)}\n")


def test_a_study_that_cannot_write_or_is_misconfigured_is_one_line(tmp_path, capsys):
    from adamgap.cli import study
    from adamgap.errors import OutputError

    def full_disk() -> int:
        raise OutputError(tmp_path / "results.csv", OSError(28, "No space left on device"))

    def bad() -> int:
        raise ConfigError("--jobs 0 is not allowed: an integer >= 1")

    assert study(full_disk, "python scripts/stochastic.py run") == 1
    assert capsys.readouterr().err == (
        f"error: cannot write {tmp_path / 'results.csv'}: No space left on device (free space, "
        "then resume with python scripts/stochastic.py run)\n")
    assert study(bad, "python scripts/atlas.py") == 2
    assert capsys.readouterr().err == "error: --jobs 0 is not allowed: an integer >= 1\n"
    assert study(lambda: 0, "unused") == 0
