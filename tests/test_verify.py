"""scripts/verify.py: which runs it trains, how overrides reach them, its outputs and exit
status (0 only when every claim holds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from adamgap.config import load_config, to_yaml
from adamgap.errors import ConfigError
from adamgap.outputs import write_text
from adamgap.theory import verify


def test_consecutive_seeds_train_as_one_ensemble():
    assert verify.seed_groups([0, 1, 2]) == [(0, 3)]
    assert verify.seed_groups([5, 0, 1, 7, 6]) == [(0, 2), (5, 3)]


def test_overrides_reach_every_run_or_one_conf():
    args = ["data.alpha=0", "synthetic_adam:optim.lr=2e-4", "optim.name=lion_pytorch:Lion"]
    adam = verify.overrides_for("synthetic_adam", args, quick=False, steps=500)
    gd = verify.overrides_for("synthetic_gd", args, quick=False, steps=500)
    convex = verify.overrides_for("convex_gd", args, quick=True, steps=500)
    assert adam[-4:] == ["trainer.max_steps=500", "data.alpha=0", "optim.lr=2e-4",
                         "optim.name=lion_pytorch:Lion"]
    assert "optim.lr=2e-4" not in gd and "data.alpha=0" in gd
    assert "trainer.max_steps=500" not in convex  # --steps is the nonconvex runs' T
    assert verify.QUICK["convex_gd"][0] in convex and "data.alpha=0" in convex
    # later overrides win when the config is built
    cfg = load_config("synthetic_adam", adam[:-1])
    assert cfg.optim.lr == 2e-4 and cfg.data.alpha == 0 and cfg.trainer.max_steps == 500


def test_bad_overrides_are_config_errors():
    with pytest.raises(ConfigError, match="not one of"):
        verify.overrides_for("synthetic_adam", ["synthetic_rmsprop:optim.lr=1"], False, None)
    with pytest.raises(ConfigError, match="key=value"):
        verify.overrides_for("synthetic_adam", ["alpha"], False, None)


def test_role_comes_from_the_run_config(tmp_path):
    for name, extra in (("convex_adamw", []), ("synthetic_gd", []),
                        ("synthetic_gd", ["optim.name=RMSprop"])):
        d = tmp_path / f"{name}-{len(extra)}"
        write_text(d / "config.yaml", to_yaml(load_config(name, extra)))
        if extra:
            with pytest.raises(ConfigError, match="not used by verify"):
                verify.role_of(d)
        else:
            assert verify.role_of(d) == name


def test_bad_setting_exits_2_with_one_line(capsys, tmp_path):
    assert verify.main(["--quick", "--run-root", str(tmp_path), "data.alpah=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.alpah" in err[0]
    # an override written after --runs DIR... is still an override, checked before training
    run = tmp_path / "gd"
    write_text(run / "config.yaml", to_yaml(load_config("synthetic_gd")))
    assert verify.main(["--run-root", str(tmp_path), "--runs", str(run), "data.alpah=0"]) == 2
    assert "data.alpah" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """scripts/verify.py --quick at its defaults (seeds 0-2), as a user runs it."""
    out = tmp_path_factory.mktemp("verify")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "verify.py"), "--quick", "--out", str(out),
         "--run-root", str(out / "runs")], capture_output=True, text=True, cwd=ROOT,
        timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, out


@pytest.mark.slow
def test_quick_verify_passes_and_writes_verdicts(quick):
    proc, out = quick
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert len(verdicts) == 11 and all(v["passed"] is True for v in verdicts)
    assert all({"claim", "reference", "predicted", "measured", "passed"} <= set(v)
               for v in verdicts)
    assert "11 of 11 claims hold." in proc.stdout
    md = (out / "verdicts.md").read_text()
    assert "| claim | paper | predicted | measured | verdict |" in md and "adamw" in md
    details = json.loads((out / "details.json").read_text())
    assert details["quick"] is True and len(details["convex"]["adam"]["distance"]) == 3
    flips = details["values"]["Adam: feature learning positive early, then flips negative"]
    assert len(flips) == 3 and all(0 < f < 1000 for f in flips)


@pytest.mark.slow
def test_no_feature_noise_breaks_the_flip_and_says_so(quick, tmp_path, capsys):
    """alpha = 0 removes the feature noise: Adam's feature need not flip. Only the Adam run is
    retrained (with alpha = 0); the others are reused from the default quick run."""
    _, out = quick
    runs = [str(p) for p in sorted((out / "runs").iterdir())
            if not p.name.startswith("synthetic_adam")]
    code = verify.main(["--quick", "--seeds", "0", "--out", str(tmp_path),
                        "--run-root", str(tmp_path / "runs"), "synthetic_adam:data.alpha=0",
                        "--runs", *runs])
    printed = capsys.readouterr().out
    assert code == 1
    failed = [v["claim"] for v in json.loads((tmp_path / "verdicts.json").read_text())
              if not v["passed"]]
    assert "Adam: feature learning positive early, then flips negative" in failed
    assert "Failed: " in printed and "flips negative" in printed.split("Failed: ")[1]
    assert "never" in printed
