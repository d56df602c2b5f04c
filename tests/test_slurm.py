"""The project's sbatch scripts on a real Slurm: a throw-away single-node cluster on this machine
(slurm/testcluster.sh, root only; CI is root), fake GPUs, CPU training.

- slurm/train.sbatch: one run; the same run as 2 DDP ranks started by srun (equal to float
  tolerance); that DDP run interrupted by SIGUSR1, which checkpoints, requeues, resumes and ends
  bit-identical to the uninterrupted one;
- `scripts/sweep.py ... sweep.launcher=slurm`: a job array over the cells and the aggregation
  job that runs after it.

Jobs overlap on the cluster (it advertises 4 CPUs) to keep the wall time down.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, computed_summary

pytestmark = pytest.mark.slow
SBIN = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin"
# the run every job trains (or part of it): long enough for a signal to land mid-run
STEPS = 1000
RUN = ["conf=synthetic_adam", *TINY, f"trainer.max_steps={STEPS}", "trainer.eval_every=250",
       "run.checkpoint_every=0"]


def why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "a throw-away Slurm cluster needs root (slurm/testcluster.sh); CI runs as root"
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol")
               if shutil.which(c, path=SBIN) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)}): bash scripts/install.sh test"
    return None


class Cluster:
    def __init__(self, conf_dir: Path) -> None:
        self.dir = conf_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env.update(SLURM_CONF=str(conf_dir / "slurm.conf"), PATH=SBIN,
                        ADAMGAP_PYTHON=sys.executable, OMP_NUM_THREADS="1")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=ROOT,
                              timeout=120)
        assert not check or done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
        return done

    def sbatch(self, *args: str) -> str:
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (the first record: an array's first task)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
             timeout: float = 600) -> dict[str, str]:
        """Poll until every task of ``job_id`` is in one of ``states``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self.run("scontrol", "-o", "show", "job", job_id).stdout.splitlines()
            jobs = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out if line.strip()]
            if jobs and all(j["JobState"] in states for j in jobs):
                return jobs[0]
            time.sleep(1)
        logs = "".join(p.read_text()[-2000:] for p in (self.dir / "log").glob("*.log"))
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s:\n{out}\n{logs}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = why_no_slurm()
    if reason:
        pytest.skip(reason)
    conf_dir = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / "slurm" / "testcluster.sh")
    subprocess.run(["bash", script, "start", str(conf_dir)], check=True, timeout=180,
                   env={**os.environ, "PATH": SBIN, "TESTCLUSTER_CPUS": "8"})
    try:
        yield Cluster(conf_dir)
    finally:
        subprocess.run(["bash", script, "stop", str(conf_dir)], timeout=120)


@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory):
    """Everything submitted at once: a 2-cell sweep (``out/sweep``; submitted held, so that its
    jobs are certainly queued while it is submitted a second time, then released) and the
    single run, a 2-rank DDP run and the same DDP run to requeue (run directories in ``out``)."""
    out = tmp_path_factory.mktemp("jobs")
    ids = {}
    sweep = [sys.executable, "scripts/sweep.py", "sweep.grid.conf=[synthetic_adam,synthetic_gd]",
             "sweep.seeds=2", f"sweep.dir={out / 'sweep'}", "sweep.launcher=slurm",
             "sweep.slurm.time=00:10:00", "sweep.slurm.sbatch_args=[--hold,--comment=adamgap]",
             "data.n=40", "data.n_test=400", "trainer.max_steps=100", "trainer.eval_every=50"]
    ids["sweep"] = cluster.run(*sweep).stdout
    array, aggregate = re.search(r"job array (\d+) .* aggregation job (\d+)",
                                 ids["sweep"]).groups()
    ids["sweep_array"], ids["sweep_aggregate"] = array, aggregate
    ids["aggregate_at_submit"] = cluster.job(aggregate)
    ids["sweep_again"] = cluster.run(*sweep, check=False)
    cluster.run("scontrol", "release", f"{array},{aggregate}")
    ddp = ["--ntasks-per-node=2", "--gres=gpu:2"]
    for name, extra in (("requeue", ddp), ("single", []), ("ddp", ddp)):
        ids[name] = cluster.sbatch(*extra, f"--output={out}/{name}-%j.out", "--job-name", name,
                                   "slurm/train.sbatch", *RUN, f"run.dir={out / name}")
    return out, ids


def log_of(out: Path, name: str, job_id: str) -> str:
    return (out / f"{name}-{job_id}.out").read_text()


def weights_of(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "weights.pt")["weight"]


def test_ddp_requeue_resumes_to_the_uninterrupted_result(cluster, jobs):
    out, ids = jobs
    job = ids["requeue"]
    metrics = out / "requeue" / "metrics.csv"
    end = time.monotonic() + 300
    while not metrics.is_file() and time.monotonic() < end:  # training has started
        time.sleep(0.5)
    assert metrics.is_file(), log_of(out, "requeue", job)
    # What --signal=SIGUSR1@90 sends, delivered by slurmd to the step's tasks while they are
    # stopped (Slurm refuses to signal a suspended job): so it lands mid-run however fast,
    # and the two ranks get it at different points of their step.
    tasks = [int(line.split()[0]) for line in
             cluster.run("scontrol", "listpids", job).stdout.splitlines()[1:]
             if line.split()[2] == "0" and line.split()[3] != "-"]  # step 0: its 2 tasks
    assert len(tasks) == 2, tasks
    for pid in tasks:
        os.kill(pid, signal.SIGSTOP)
    try:
        cluster.run("scancel", "--signal=USR1", job)
    finally:
        for pid in tasks:
            os.kill(pid, signal.SIGCONT)
    info = cluster.wait(job, states=("PENDING", "COMPLETED", "FAILED"), timeout=120)
    log = log_of(out, "requeue", job)
    assert info["Restarts"] == "1", (info, log[-3000:])
    step = int(re.search(r"requeue signal: checkpoint at step (\d+)", log).group(1))
    checkpoint = torch.load(out / "requeue" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == step and 0 < step < STEPS  # the signal's, mid-run
    # Slurm holds a requeued job for about two minutes (BeginTime); start it now
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = cluster.wait(job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1")
    log = log_of(out, "requeue", job)
    assert f"restart 1 of job {job}: resuming" in log

    cluster.wait(ids["ddp"])
    ddp, requeued = out / "ddp", out / "requeue"
    assert computed_summary(requeued) == computed_summary(ddp)
    assert torch.equal(weights_of(requeued), weights_of(ddp))
    assert (requeued / "alignment.csv").read_text() == (ddp / "alignment.csv").read_text()
    assert not list(requeued.glob("hpc_ckpt_*.ckpt"))  # Lightning's own handler stayed off


def test_single_run(cluster, jobs):
    out, ids = jobs
    info = cluster.wait(ids["single"])
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0")
    assert info["TresPerNode"] == "gres:gpu:1"  # train.sbatch's default, a fake GPU here
    summary = computed_summary(out / "single")
    assert (summary["status"], summary["steps"]) == ("completed", STEPS)
    printed = json.loads(log_of(out, "single", ids["single"]).strip().splitlines()[-1])
    assert printed["test_error"] == summary["test_error"]


def test_ddp_via_srun_equals_the_single_run(cluster, jobs):
    out, ids = jobs
    info = cluster.wait(ids["ddp"])
    log = log_of(out, "ddp", ids["ddp"])
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert (info["NumTasks"], info["TresPerNode"]) == ("2", "gres:gpu:2")
    assert "1 node(s) x 2 task(s)" in log and "MEMBER: 2/2" in log  # two srun tasks, one DDP
    cluster.wait(ids["single"])
    torch.testing.assert_close(weights_of(out / "ddp"), weights_of(out / "single"),
                               rtol=1e-4, atol=1e-6)
    ddp, single = computed_summary(out / "ddp"), computed_summary(out / "single")
    assert (ddp["train_error"], ddp["test_error"]) == (single["train_error"],
                                                       single["test_error"])
    assert ddp["test_loss"] == pytest.approx(single["test_loss"], rel=1e-4)


def test_sweep_array_then_aggregation(cluster, jobs):
    out, ids = jobs
    sweep_dir = out / "sweep"
    array, aggregate = ids["sweep_array"], ids["sweep_aggregate"]
    info = ids["aggregate_at_submit"]
    assert info["JobState"] == "PENDING"
    assert info["Dependency"].startswith(f"afterany:{array}")  # waits for the whole array
    assert info["Comment"] == "adamgap"  # sweep.slurm.sbatch_args reach sbatch
    assert cluster.job(array)["ArrayJobId"] == array
    assert cluster.wait(array)["JobState"] == "COMPLETED"
    assert cluster.wait(aggregate)["JobState"] == "COMPLETED"
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["conf"], r["seed"], r["status"]) for r in rows) == [
        ("synthetic_adam", "0", "completed"), ("synthetic_adam", "1", "completed"),
        ("synthetic_gd", "0", "completed"), ("synthetic_gd", "1", "completed")]
    with open(sweep_dir / "aggregate.csv") as f:
        assert [r["n_seeds"] for r in csv.DictReader(f)] == ["2", "2"]
    assert json.loads((sweep_dir / "slurm" / "jobs.json").read_text())["aggregate"] == aggregate


def test_sweep_submissions_that_cannot_go(cluster, jobs, tmp_path):
    again = jobs[1]["sweep_again"]
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.startswith("error: sweep ") and "still has jobs in the queue" in \
        again.stderr and len(again.stderr.splitlines()) == 1
    bad = cluster.run(sys.executable, "scripts/sweep.py", "conf=synthetic_gd", "sweep.seeds=1",
                      f"sweep.dir={tmp_path / 'bad'}", "sweep.launcher=slurm",
                      "sweep.slurm.partition=nope", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: sbatch refused sweep.sbatch: sbatch: error: Batch job "
                                  "submission failed: Invalid partition name specified")
