"""The command line of ``scripts/train.py``: parse ``conf=NAME key=value ...``, check the
configuration, train, print one JSON line per seed. A bad configuration is one line on stderr
and exit status 2, with no traceback and nothing written; a run that cannot go on (a full disk,
no readable checkpoint) one line and status 1; Ctrl-C one line saying how to resume and status
130. ``study`` gives the study scripts (stochastic, atlas, mechanism) the same endings."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from lightning.pytorch.utilities import rank_zero_only

from adamgap import preflight
from adamgap.config import load_config, parse_overrides
from adamgap.errors import ConfigError, RunError
from adamgap.runtime.checkpointing import Interrupted
from adamgap.startup import SIGINT_STATUS
from adamgap.summary import replicas_of

PRINTED = ("status", "train_error", "test_error", "feature_learning", "noise_memorization",
           "wall_seconds")  # per seed, in the JSON line


def main(run: Callable, argv: list[str]) -> int:
    """``run`` (``adamgap.train.run``) the configuration ``argv`` names. Exit status: 0 when
    the run completed, 1 when it diverged, was stopped (SIGTERM) or could not go on, 2 for a
    bad configuration, 130 when SIGINT (Ctrl-C) stopped it."""
    if any(a in ("-h", "--help") for a in argv):
        print(sys.modules["__main__"].__doc__ or "usage: conf=NAME [key=value ...]")
        return 0
    try:
        name, overrides = parse_overrides(argv)
        cfg = load_config(name, overrides)
        preflight.check(cfg)
        summary = run(cfg)
    except ConfigError as err:
        return _error(err, 2)
    except RunError as err:
        return _error(err, 1)
    except Interrupted as err:  # stopped at once: before the run, or while writing its results
        return _error(err, SIGINT_STATUS)
    except KeyboardInterrupt:  # before train.run listens for SIGINT: nothing was written
        return _error("stopped by SIGINT before the run started; nothing was written",
                      SIGINT_STATUS)
    rows = replicas_of(summary) if rank_zero_only.rank == 0 else []  # DDP: print once
    for row in rows:
        print(json.dumps({"conf": summary["conf"], "seed": row["seed"],
                          **{k: row[k] for k in PRINTED if k in row}}))
        if row.get("error"):  # diverged or interrupted: the one line that says why
            print(f"error: {row['error']}", file=sys.stderr)
    if any(row.get("stopped_by") == "SIGINT" for row in replicas_of(summary)):
        return SIGINT_STATUS
    return 0 if summary.get("status") == "completed" else 1


def study(body: Callable[[], int], resume: str) -> int:
    """Run a study script's ``body`` (``scripts/stochastic.py``, ``atlas.py``, ``mechanism.py``
    over many sweeps): a bad configuration is one ``error:`` line and status 2; a file that
    cannot be written one line and 1; Ctrl-C or SIGTERM (the running cell is recorded as
    interrupted, with its checkpoint) one line saying how to go on and 130. Finished cells
    stay in every case; ``resume`` is the command that goes on."""
    try:
        return body()
    except ConfigError as err:
        return _error(err, 2)
    except RunError as err:
        return _error(f"{err} (free space, then resume with {resume})", 1)
    except KeyboardInterrupt:
        print(f"interrupted: finished cells stay; resume with {resume}", file=sys.stderr)
        return SIGINT_STATUS


def _error(line: object, status: int) -> int:
    """``error: line`` on stderr; the exit status ``status``."""
    print(f"error: {line}", file=sys.stderr)
    return status
