"""Every rejected input of docs/bad_input.md, row by row: exit status 2, exactly the documented
line on stderr (naming the key), no traceback, and nothing written (no run or sweep directory).

The document is the source: each table row is a case. Placeholders in it stand for what a test
prepares: RUN_DIR (the run or sweep directory the command would use: the test checks it is
never created), TMP (a scratch folder), CONF_DIR (a conf folder holding the real experiments and
the broken ones the document lists), prepared directories (COMPLETED_RUN, UNFINISHED_RUN,
DAMAGED_RUN, FOREIGN_DIR, RUNNING_RUN, OTHER_SWEEP, CORRUPT_CIFAR) and ``...`` (any text: pids,
long lists).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, hold_lock

from adamgap import config, train
from adamgap.analysis import atlas_report
from adamgap.cli import main as train_main
from adamgap.experiments.standard_gap import main as standard_gap_main
from adamgap.experiments.sweep import main as sweep_main
from adamgap.tasks import datasets

DOC = ROOT / "docs" / "bad_input.md"
BROKEN_CONFS = {  # conf/NAME.yaml -> content, the broken experiment files the document uses
    "broken_base": "base: no_such_conf\n",
    "broken_loop_a": "base: broken_loop_b\n",
    "broken_loop_b": "base: broken_loop_a\n",
    "broken_list": "- data\n- model\n",
    "broken_yaml": "data: {d: 10\n",
    "broken_key": "data:\n  dims: 10\n",
    "broken_type": "data:\n  d: ten\n",
}


def documented_cases() -> list[tuple[str, str, str]]:
    """(script, input, stderr line) for every table row of docs/bad_input.md; the script is
    named in the section heading: ``(scripts/train.py)``, ``(scripts/sweep.py)`` or
    ``(scripts/standard_gap.py)``."""
    script, cases = None, []
    for line in DOC.read_text().splitlines():
        heading = re.match(r"#+ .*\(scripts/(\w+)\.py\)", line)
        if heading:
            script = heading.group(1)
        row = re.match(r"\|\s*\d+\s*\|\s*`([^`]*)`\s*\|\s*`([^`]*)`\s*\|", line)
        if row and script:  # "\|" is a "|" escaped for the markdown table
            cases.append((script, *(g.replace("\\|", "|") for g in row.groups())))
    return cases


CASES = documented_cases()


def pattern(expected: str, values: dict[str, str]) -> re.Pattern:
    """The documented line as a regex: placeholders filled in, ``...`` any text."""
    parts = re.split(r"(\.\.\.|" + "|".join(sorted(values, key=len, reverse=True)) + ")",
                     expected)
    out = "".join(".*" if p == "..." else re.escape(values.get(p, p)) for p in parts)
    return re.compile(out + r"\Z")


def snapshot(d: Path) -> dict:
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, str]:
    """The placeholders' values, with what they name prepared."""
    conf_dir = tmp_path / "conf"
    shutil.copytree(config.CONF_DIR, conf_dir)
    for name, text in BROKEN_CONFS.items():
        (conf_dir / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(config, "CONF_DIR", conf_dir)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):  # no W&B login
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_cfg = config.load_config("synthetic_adam")
    places = {"RUN_DIR": str(tmp_path / "run"), "TMP": str(tmp_path),
              "CONF_DIR": str(conf_dir)}
    for name, files in {
        "COMPLETED_RUN": {"config.yaml": train.to_yaml(run_cfg),
                          "summary.json": json.dumps({"status": "completed"})},
        "UNFINISHED_RUN": {"config.yaml": train.to_yaml(run_cfg)},
        "DAMAGED_RUN": {"config.yaml": "data: {d: 10\n"},
        "FOREIGN_DIR": {"notes.txt": "not a run"},
        "OTHER_SWEEP": {"sweep.yaml": "conf: synthetic_gd\nseeds: 3\n", "cells.json": "[]"},
    }.items():
        d = tmp_path / name.lower()
        d.mkdir()
        for file, text in files.items():
            (d / file).write_text(text)
        places[name] = str(d)
    return places


def prepare(places: dict[str, str], arg: str, request) -> list:
    """Prepare what only some rows need (a live lock, a corrupt dataset); return cleanups."""
    if "RUNNING_RUN" in arg:
        d = Path(places["TMP"]) / "running"
        d.mkdir()
        proc = hold_lock(d)
        places["RUNNING_RUN"] = str(d)
        return [proc.kill, proc.wait]
    if "CORRUPT_CIFAR" in arg:
        root = request.getfixturevalue("cifar_root")  # tests/conftest.py: a tiny CIFAR-10
        batch = root / "cifar-10-batches-py" / "data_batch_1"
        batch.write_bytes(batch.read_bytes()[:100])  # truncated, as by a failed download
        places["CORRUPT_CIFAR"] = str(root)
    return []


def test_the_document_has_enough_cases():
    assert len(CASES) >= 25
    assert len({(s, arg) for s, arg, _ in CASES}) == len(CASES)  # no row twice


@pytest.mark.parametrize("script, arg, expected", CASES, ids=[c[1][:60] for c in CASES])
def test_rejected(script, arg, expected, places, request, capsys):
    cleanups = prepare(places, arg, request)
    try:
        argv = arg.split()
        if script == "train" and not any(a.startswith("run.dir=") for a in argv):
            argv.append("run.dir=RUN_DIR")
        if script == "sweep" and not argv[0].startswith("--") and \
                not any(a.startswith("sweep.dir=") for a in argv):
            argv.append("sweep.dir=RUN_DIR")
        if script in ("gaptest", "atlas"):
            argv += ["--dir", "RUN_DIR"] + (["--out", "RUN_DIR"] if script == "atlas" else [])
        argv = [re.sub("|".join(places), lambda m: places[m.group(0)], a) for a in argv]
        before = {k: snapshot(Path(v)) for k, v in places.items() if k != "TMP"}
        mains = {"train": lambda a: train_main(train.run, a), "sweep": sweep_main,
                 "standard_gap": standard_gap_main, "gaptest": atlas_report.gaptest,
                 "atlas": atlas_report.main}
        code = mains[script](argv)
        captured = capsys.readouterr()
        assert code == 2
        assert "Traceback" not in captured.err
        assert len(captured.err.splitlines()) == 1, captured.err
        assert pattern(expected, places).match(captured.err.rstrip("\n")), captured.err
        assert not Path(places["RUN_DIR"]).exists()
        after = {k: snapshot(Path(v)) for k, v in places.items() if k != "TMP"}
        assert after == before  # prepared directories untouched
    finally:
        for cleanup in cleanups:
            cleanup()


@pytest.mark.slow
def test_rejected_by_the_real_script(tmp_path):
    """The same through ``python scripts/train.py`` (three at once): one line, status 2, and no
    default run directory (runs/...) under the working directory."""
    cases = [["conf=synthetic_adam", "data.foo=1"], ["conf=no_such_conf"],
             ["conf=synthetic_adam", "model.q=0.5"]]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *argv],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv in cases]
    results = [(p.wait(), p.communicate()[1]) for p in procs]
    assert [code for code, _ in results] == [2, 2, 2]
    firsts = [err.splitlines() for _, err in results]
    assert [len(lines) for lines in firsts] == [1, 1, 1], firsts
    assert firsts[0][0].startswith("error: unknown config key 'data.foo' (command line)")
    assert firsts[1][0].startswith("error: conf=no_such_conf: no file ")
    assert firsts[2][0] == "error: model.q=0.5 is not allowed: a number >= 1"
    assert list(tmp_path.iterdir()) == []
