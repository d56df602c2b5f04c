"""Generated bad input: command lines for ``scripts/train.py`` and ``scripts/sweep.py`` built
from the schema (every key, values of every type and of out-of-range sizes, malformed tokens),
each checked the way a user meets it: either the configuration validates, or the exit status is
2 with exactly one ``error:`` line, no traceback, and no run or sweep directory.

Validation only: the scripts' own entry points run in-process (``cli.main`` with
``train.run``; ``experiments.sweep.main``), everything up to the point where training would
start (the schema, ``preflight``: the optimizer built on a stand-in, the Trainer's arguments,
the memory estimate, W&B; the run directory's claim), with the training itself replaced by a
stand-in. Seeded (``derandomize``): the same cases every time. A few cases also go through the
real scripts as subprocesses.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adamgap import config, provenance, train
from adamgap.cli import main as train_main
from adamgap.experiments import sweep as sweep_cli
from adamgap.experiments.slurm import SlurmSpec
from adamgap.experiments.spec import SweepSpec
from adamgap.optimizers import OPTIMIZERS

TRAIN_CASES, SWEEP_CASES = 1000, 300


def leaves(cls: type, prefix: str = "") -> dict[str, str]:
    """Every setting of a schema dataclass: dotted key -> its annotation (a string)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out |= leaves(kind, f"{prefix}{f.name}.")
        else:
            out[f"{prefix}{f.name}"] = str(kind)
    return out


CONFIG_KEYS = {k: v for k, v in leaves(config.Config).items() if k != "conf"}
SWEEP_KEYS = {f"sweep.{k}": v for k, v in leaves(SweepSpec).items()
              if k not in ("grid", "overrides", "conf")}
SWEEP_KEYS |= {f"sweep.slurm.{k}": v for k, v in leaves(SlurmSpec).items()}

# values a key's allowed set is made of, and near misses (for str settings)
WORDS = {
    "data.task": [*config.TASKS, "video"], "data.labels": ["balanced", "rademacher", "random"],
    "data.feature_position": ["random", "fixed", "middle"],
    "data.dataset": [*config.DATASETS, "svhn"], "data.normalize": ["unit", "centered", "none"],
    "data.basis": ["pixel", "dct", "fft"], "data.noise_coords": ["all", "outside"],
    "data.feature_noise": ["opposite", "same"], "model.name": ["patch_cnn", "linear", "resnet18"],
    "optim.name": [*OPTIMIZERS, "RMSprop", "Adagrad", "NAdam", "LBFGS", "SparseAdam", "Rprop",
                   "lion_pytorch:Lion", "torch.optim:Optimizer", "no_such:Opt", "adamx", ":"],
    "optim.schedule": ["constant", "cosine", "step", "linear"],
    "trainer.accelerator": ["cpu", "gpu", "auto", "tpu7", "mps"],
    "trainer.strategy": ["auto", "ddp", "ddp_spawn", "single_device", "fsdp", "no_such"],
    "trainer.precision": ["32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true",
                          "13"],
    "trainer.devices": ["auto", "1", "2", "[0]", "[0,1]", "-1", "0"],
    "trainer.deterministic": ["true", "false", "warn", "maybe"],
    "logger.wandb.mode": ["offline", "online", "disabled", "sometimes"],
    "sweep.launcher": ["local", "slurm", "cloud"],
    "sweep.slurm.time": ["01:00:00", "90", "1-00:00:00", "90min"],
    "sweep.slurm.aggregate_time": ["00:20:00", "soon"],
    "sweep.slurm.mem": ["8G", "16000M", "0", "lots", "1T"],
}
PATHS = ("run.dir", "data.root", "sweep.dir")  # generated as relative paths (in a scratch dir)
KWARGS = ["foo", "amsgrad", "lr", "momentum", "weight_decay", "betas", "maximize", "foreach",
          "dampening", "centered", "alpha", "lr_decay", "params", "capturable", "eps"]

INTS = st.one_of(st.sampled_from([0, 1, 2, 3, -1, 7, 10, 99, 100, 1000, 10**6, 10**9, 2**31,
                                  2**63, 10**30, -(10**30)]),
                 st.integers(-100, 5000)).map(str)
FLOATS = st.one_of(st.sampled_from(["0", "0.0", "-0.0", "1", "0.5", "1e-12", "1e308", "-1e308",
                                    "1e-320", ".nan", ".inf", "-.inf", "nan", "inf", "1e400"]),
                   # no subnormals: runs flush them to zero (train.run), which Hypothesis sees
                   st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False
                             ).map(repr))
BOOLS = st.sampled_from(["true", "false", "True", "yes", "no", "0", "1", "maybe"])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
LISTS = st.one_of(st.sampled_from(["[]", "[1,2]", "[0.9,0.999]", "[0.9,1.0]", "[0]", "[0,1]",
                                   "[[1]]", "[a,b]", "[-1]", "[0,0,0]", "[1e308,1e308]",
                                   "[.nan,0.5]"]),
                  st.lists(st.integers(-3, 12), max_size=4).map(
                      lambda v: f"[{','.join(map(str, v))}]"))
DICTS = st.sampled_from(["{}", "{a: 1}", "{lr: 0.1}", "{foo: [1]}", "{amsgrad: true}"])
NULL = st.just("null")
ANY = st.one_of(INTS, FLOATS, BOOLS, TEXT, LISTS, DICTS, NULL)
MALFORMED = st.sampled_from([
    "seed", "=5", "data.d==3", "data.d=[1,2", "data.d={a:", "data..d=1", "data.=1", ".d=1",
    "data.d= ", "conf.x=1", "data=5", "optim=[1]", "data.d=1:2", "data.d=\u00e9", "=",
    "data.d=!!python/object:os.system ls", "data.v=[1, 2", "optim.kwargs.=1", "%%%=1",
])


def values_for(kind: str, key: str) -> st.SearchStrategy[str]:
    """Values of a setting's own type (its edges and beyond) and, now and then, of any type."""
    own = []
    if key in PATHS:
        own.append(st.sampled_from(["out", "out/nested/dir", "", "existing_file", "out dir",
                                    "out/../out2"]))
    if key in WORDS:
        own.append(st.sampled_from(WORDS[key]))
    if "int" in kind:
        own.append(INTS)
    if "float" in kind:
        own.append(FLOATS)
    if "bool" in kind:
        own.append(BOOLS)
    if "list" in kind:
        own.append(LISTS)
    if "dict" in kind:
        own.append(DICTS)
    if "str" in kind and key not in PATHS and key not in WORDS:
        own.append(TEXT)
    if "None" in kind or "Any" in kind:
        own.append(NULL)
    if "Any" in kind:
        own.append(ANY)
    if key in PATHS:  # never an arbitrary absolute path: the cases write nowhere else
        return st.one_of(*own)
    return st.one_of(st.one_of(*own), st.one_of(*own), ANY)


def override(keys: dict[str, str]) -> st.SearchStrategy[str]:
    """One ``key=value`` token: a known key and a value, an optimizer argument, an unknown key,
    or a malformed token."""
    known = st.sampled_from(sorted(keys)).flatmap(
        lambda key: values_for(keys[key], key).map(lambda v: f"{key}={v}"))
    kwarg = st.tuples(st.sampled_from(KWARGS), ANY).map(lambda kv: f"optim.kwargs.{kv[0]}={kv[1]}")
    unknown = st.tuples(st.sampled_from(["data", "model", "optim", "trainer", "run", "align",
                                         "logger.wandb", "foo"]),
                        st.from_regex(r"[a-z_]{1,8}", fullmatch=True), ANY).map(
        lambda t: f"{t[0]}.{t[1]}={t[2]}")
    return st.one_of(known, known, known, known, kwarg, unknown, MALFORMED)


CONFS = st.sampled_from([*config.conf_names(), "no_such_conf", "../conf/synthetic_adam", ""])
TRAIN_ARGV = st.tuples(CONFS, st.lists(override(CONFIG_KEYS), min_size=1, max_size=4)).map(
    lambda t: [f"conf={t[0]}", *t[1]])
GRID = st.tuples(st.sampled_from(["data.alpha", "optim.lr", "model.m", "seed", "data", "conf",
                                  "data.foo", "optim.kwargs", "run.dir", "trainer.max_steps"]),
                 st.one_of(LISTS, INTS, FLOATS, TEXT, st.just("[synthetic_adam,synthetic_gd]"))
                 ).map(lambda kv: f"sweep.grid.{kv[0]}={kv[1]}")
SWEEP_ARGV = st.tuples(
    CONFS, st.lists(st.one_of(override(SWEEP_KEYS), override(SWEEP_KEYS), GRID,
                              override(CONFIG_KEYS)), min_size=1, max_size=4)).map(
    lambda t: [f"conf={t[0]}", *t[1]])


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """A scratch working directory and every step after validation replaced: the run's
    training (``train._train``) and data (``train.build_datamodule``), a sweep's launch, the
    git calls of provenance; no W&B credentials or network."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(train, "build_datamodule", lambda cfg: None)
    monkeypatch.setattr(train, "_train", lambda cfg, *a: {
        "conf": cfg.conf, "status": "completed", "replicas": [{"seed": cfg.seed,
                                                               "status": "completed"}]})
    monkeypatch.setattr(sweep_cli, "run_sweep", lambda sweep_dir: {0: "submitted"})
    monkeypatch.setattr(provenance, "collect", lambda: {"commit": "test"})
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return work


def outcome(main, argv: list[str], work: Path, capsys) -> str:
    """Run one command line; check the contract; return "valid" or "rejected"."""
    for p in work.iterdir():  # a clean scratch dir per case (one file the paths may hit)
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (work / "existing_file").write_text("x")
    code = main(argv)
    out = capsys.readouterr()
    if code == 0:
        assert "error:" not in out.err, (argv, out.err)
        return "valid"
    lines = out.err.splitlines()
    assert code == 2, (argv, code, out.err)
    assert "Traceback" not in out.err, (argv, out.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, out.err)
    left = sorted(p.name for p in work.iterdir() if p.name != "existing_file")
    assert left == [], (argv, left)  # no run or sweep directory (nor anything else)
    assert (work / "existing_file").read_text() == "x"
    return "rejected"


def run_train(argv: list[str]) -> int:
    return train_main(train.run, argv)


def generated(main, argvs: st.SearchStrategy, cases: int, work: Path, capsys,
              prepare=lambda argv: argv) -> dict[str, int]:
    """Check ``cases`` command lines drawn (seeded) from ``argvs`` against the contract; how
    many validated and how many were refused."""
    seen = {"valid": 0, "rejected": 0}

    @settings(max_examples=cases, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(argvs)
    def case(argv):
        seen[outcome(main, prepare(argv), work, capsys)] += 1

    case()
    assert sum(seen.values()) >= cases
    return seen


@pytest.mark.slow
def test_generated_train_command_lines(stand_ins, capsys):
    seen = generated(run_train, TRAIN_ARGV, TRAIN_CASES, stand_ins, capsys)
    assert seen["valid"] >= 20 and seen["rejected"] >= 500, seen  # both kinds occur


def with_sweep_dir(argv: list[str]) -> list[str]:
    """The sweep's own directory, not the default sweeps/<timestamp>."""
    return argv if any(a.startswith("sweep.dir=") for a in argv) else [*argv, "sweep.dir=sweep"]


@pytest.mark.slow
def test_generated_sweep_command_lines(stand_ins, capsys):
    seen = generated(sweep_cli.main, SWEEP_ARGV, SWEEP_CASES, stand_ins, capsys, with_sweep_dir)
    assert seen["valid"] >= 5 and seen["rejected"] >= 100, seen


@pytest.mark.slow
def test_generated_cases_through_the_real_scripts(tmp_path):
    """A handful of generated cases (the first of the seeded stream that are rejected) through
    ``python scripts/train.py`` and ``scripts/sweep.py``, all at once: status 2, one line, no
    traceback, nothing in the working directory."""
    cases: list[tuple[str, list[str]]] = []

    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(TRAIN_ARGV, SWEEP_ARGV)
    def collect(train_argv, sweep_argv):
        cases.append(("train", train_argv))
        cases.append(("sweep", sweep_argv))

    collect()
    # the ones that the schema alone rejects, without a run: a stand-in-free subprocess
    # must not start training for a valid one
    picked = []
    for script, argv in cases:
        try:
            name, over = config.parse_overrides([a for a in argv if not a.startswith("sweep.")])
            config.load_config(name, over)
        except config.ConfigError:
            picked.append((script, argv))
        if len(picked) == 4:
            break
    env = os.environ | {"NETRC": str(tmp_path / "no-netrc")}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *argv,
                               *(["sweep.dir=sweep"] if script == "sweep" else [])],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for script, argv in picked]
    for (script, argv), proc in zip(picked, procs, strict=True):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (script, argv, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, (script, argv, err)
        assert err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
