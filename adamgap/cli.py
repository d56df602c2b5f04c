"""Entry-point plumbing shared by the scripts: parse ``conf=NAME key=value ...``, turn a bad
configuration into one line on stderr and exit status 2 (no traceback, nothing written), and
keep the garbage collector off the import of torch and Lightning (:func:`collector_paused`)."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from adamgap.config import ConfigError, load_config, parse_overrides


@contextmanager
def collector_paused() -> Iterator[None]:
    """For a script's heavy imports: importing torch and Lightning creates millions of
    long-lived objects, and the cyclic garbage collector traverses them again and again while
    they load (about 1 s of a 3 s start-up here). Pause it, then ``gc.freeze`` what was created
    (out of its reach for the rest of the process) and let it run on. Only for scripts: a
    frozen object is never collected, so a long-lived caller (a test session) should not."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def exit_status(status: int) -> int:
    """Freeze the heap before a script exits: the interpreter's final collection would
    otherwise traverse every object once more (about 1 s here) just before the process ends."""
    gc.freeze()
    return status


def main(run: Callable, argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(sys.modules["__main__"].__doc__ or "usage: conf=NAME [key=value ...]")
        return 0
    try:
        name, overrides = parse_overrides(argv)
        cfg = load_config(name, overrides)
        summary = run(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    keys = ("status", "train_error", "test_error", "feature_learning", "noise_memorization",
            "wall_seconds")
    from lightning.pytorch.utilities import rank_zero_only  # not before collector_paused

    rows = summary.get("replicas", [summary]) if rank_zero_only.rank == 0 else []  # DDP: once
    for row in rows:
        print(json.dumps({"conf": summary["conf"], "seed": row["seed"],
                          **{k: row[k] for k in keys if k in row}}))
        if row.get("error"):  # diverged or interrupted: the one line that says why
            print(f"error: {row['error']}", file=sys.stderr)
    return 0 if summary.get("status") == "completed" else 1
