"""The prepared GPU check, ``scripts/device_check.sh``, run on the CPU at small sizes: it prints
its one table and its numbers say what they should where the answer is known (CPU against
CPU: identical; two identical runs: identical)."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_device_check_runs_on_the_cpu_at_small_sizes(tmp_path):
    out = tmp_path / "device.json"
    proc = subprocess.run(["bash", "scripts/device_check.sh", "--small", "--accelerator", "cpu",
                           "--work", str(tmp_path / "runs"), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device check on cpu (small sizes)")
    checks = [ln.split(" | ")[0].removeprefix("| ") for ln in lines if ln.startswith("| ")][1:]
    assert checks == ["ensemble scaling", "bit for bit (two identical runs)",
                      "CPU vs cpu: synthetic_adam", "CPU vs cpu: synthetic_gd",
                      "real CNN (ResNet-18, 32x32 images)"]
    numbers = json.loads(out.read_text())
    assert numbers["bit_for_bit"]["weights_equal"] and numbers["bit_for_bit"]["summary_equal"]
    for conf in ("synthetic_adam", "synthetic_gd"):
        r = numbers["cpu_vs_device"][conf]
        assert set(r["max_difference"].values()) == {0.0}  # the CPU twice: the same numbers
        assert len(r["cpu"]["test_error"]) == 2  # seeds 0 and 1
    # timings: measured, never judged here (a marginal cost at small sizes on a busy machine
    # can come out at or below zero); every ensemble size has its number
    assert set(numbers["scaling"]) and all(math.isfinite(ms) for ms in
                                           numbers["scaling"].values())
    assert numbers["cnn"]["fp32"] > 0  # images per second: a count over a positive time
