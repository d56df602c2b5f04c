"""Checkpoint and resume (adamgap/runtime/checkpointing.py): a run stopped at any step and
resumed with ``run.resume=true`` ends with the same ``summary.json`` (every field but
``wall_seconds``), ``alignment.csv`` and ``metrics.csv``, byte for byte, as the run that was
never stopped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, At, Crash, computed_summary, tiny_config

from adamgap import train
from adamgap.runtime.checkpointing import AtomicCheckpointIO

# checkpoints at 20, 40, ...; evaluations at 40, 80, ...: both kinds of save point occur
SETTINGS = ["trainer.max_steps=150", "trainer.eval_every=40", "trainer.log_every=10",
            "align.every=10", "run.checkpoint_every=20"]
# k = 10 optimizer steps per Lightning training step by default (the gcd of the periods above):
# a callback, and so ``At`` below, sees only steps 10, 20, ...; "adam1" lets Lightning drive
# every step, for stops at any step
TASKS = {"adam": ("synthetic_adam", []),  # full batch
         "adam1": ("synthetic_adam", ["trainer.steps_per_batch=1"]),
         "sgd": ("synthetic_sgd", ["data.batch_size=8"]),  # mini-batches: data order matters
         "ensemble": ("synthetic_sgd", ["data.batch_size=8", "run.replicas=2"]),
         # epochs of 7 batches (six of 6, one of 4): checkpoints fall mid-epoch
         "epochs": ("stochastic_adam", ["data.batch_size=6", "data.last_batch=keep",
                                        "run.replicas=2"]),
         # a CNN on whole images with the standard augmentation: crops, flips and the batch
         # order are drawn from the seed and the step (adamgap/tasks/images.py)
         # (3 batches of 12 of the 40 images per epoch: step 40 resumes inside an epoch)
         "images": ("fmnist_cnn_sgd", ["data.batch_size=12", "data.n_test=100", "model.width=4",
                                       "data.augment=true", "align.images=40"])}





@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each task, computed once."""
    cache = {}

    def get(task: str) -> Path:
        if task not in cache:
            name, extra = TASKS[task]
            run_dir = tmp_path_factory.mktemp("reference") / task
            torch.set_num_threads(1)
            train.run(tiny_config(name, *SETTINGS, *extra, f"run.dir={run_dir}"))
            cache[task] = run_dir
        return cache[task]
    return get


def assert_same_run(ref: Path, run_dir: Path) -> None:
    assert computed_summary(run_dir) == computed_summary(ref)
    for name in ("alignment.csv", "metrics.csv"):
        assert (run_dir / name).read_bytes() == (ref / name).read_bytes(), name


def resume(task: str, run_dir: Path) -> dict:
    name, extra = TASKS[task]
    return train.run(tiny_config(name, *SETTINGS, *extra, f"run.dir={run_dir}",
                                 "run.resume=true"))


def checkpoint_step(run_dir: Path) -> int:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    return ckpt["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("task, crash_at, resumes_from", [
    ("adam", 10, None),  # before the first checkpoint: starts again
    ("adam", 50, 40),  # checkpoint taken after the evaluation of step 40
    ("adam", 70, 60),  # checkpoint at the end of a training step
    ("sgd", 90, 80),
    ("ensemble", 70, 60),
    ("epochs", 70, 60),  # checkpoint at step 60: batch 4 of epoch 8
    ("adam1", 47, 40),
    ("adam1", 73, 60),
    ("images", 47, 40),  # after the evaluation of step 40, inside an epoch
    ("images", 73, 60),
])
def test_crash_then_resume_equals_uninterrupted(task, crash_at, resumes_from, tmp_path,
                                                reference, with_callback):
    ref = reference(task)
    run_dir = tmp_path / "run"
    name, extra = TASKS[task]
    with_callback(At(crash_at, lambda: (_ for _ in ()).throw(Crash())))
    with pytest.raises(Crash):
        train.run(tiny_config(name, *SETTINGS, *extra, f"run.dir={run_dir}"))
    assert not (run_dir / "summary.json").exists()
    if resumes_from is None:
        assert not (run_dir / "checkpoints").exists()
    else:
        assert checkpoint_step(run_dir) == resumes_from
    summary = resume(task, run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 150
    assert_same_run(ref, run_dir)
    assert not (run_dir / "metrics.resume.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task, signum, step, saved", [
    ("adam", signal.SIGTERM, 30, 30),  # saved at the end of step 30
    ("adam", signal.SIGUSR1, 80, 80),  # outside Slurm SIGUSR1 stops too; after step 80's eval
    ("adam1", signal.SIGTERM, 33, 33),
])
def test_signal_checkpoints_stops_and_resumes(task, signum, step, saved, tmp_path, reference,
                                              with_callback):
    ref = reference(task)
    run_dir = tmp_path / "run"
    name, extra = TASKS[task]
    with_callback(At(step, lambda: os.kill(os.getpid(), signum)))
    summary = train.run(tiny_config(name, *SETTINGS, *extra, f"run.dir={run_dir}"))
    assert summary["status"] == "interrupted" and summary["steps"] == step
    assert summary["error"] == (f"stopped by {signum.name} at step {step} (checkpoint: step "
                                f"{saved}); continue with run.dir={run_dir} run.resume=true")
    assert summary["stopped_by"] == signum.name
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert checkpoint_step(run_dir) == saved
    assert resume(task, run_dir)["status"] == "completed"
    assert_same_run(ref, run_dir)


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_step_then_resume(tmp_path):
    """A real process, killed with SIGKILL at a random moment after its first checkpoint."""
    settings = ["trainer.max_steps=1500", "trainer.eval_every=400", "trainer.log_every=50",
                "align.every=50", "run.checkpoint_every=100", "data.batch_size=8"]
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    args = ["conf=synthetic_sgd", *TINY, *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float arithmetic as in-process
    proc = subprocess.Popen([sys.executable, "scripts/train.py", *args, f"run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()  # it was really killed mid-run
    killed_at = checkpoint_step(run_dir)
    assert 100 <= killed_at < 1500 and killed_at % 100 == 0

    train.run(tiny_config("synthetic_sgd", *settings, f"run.dir={ref}"))
    summary = train.run(tiny_config("synthetic_sgd", *settings, f"run.dir={run_dir}",
                                    "run.resume=true"))
    assert summary["status"] == "completed" and summary["steps"] == 1500
    assert_same_run(ref, run_dir)


def test_checkpoint_write_is_atomic(tmp_path):
    """A write that dies half-way leaves the previous checkpoint whole and no debris."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"global_step": 2, "w": torch.ones(1000), "x": Unpicklable()}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_completed_run_is_not_rerun_on_resume(tmp_path):
    cfg = ["trainer.max_steps=30", "trainer.eval_every=10"]
    first = train.run(tiny_config("synthetic_adam", *cfg, tmp_path=tmp_path))
    again = train.run(tiny_config("synthetic_adam", *cfg, "run.resume=true", tmp_path=tmp_path))
    assert again == json.loads(json.dumps(first))  # summary.json as written, nothing trained
