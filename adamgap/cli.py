"""Entry-point plumbing shared by the scripts: parse ``conf=NAME key=value ...``, turn a bad
configuration into one line on stderr and exit status 2 (no traceback, nothing written)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from lightning.pytorch.utilities import rank_zero_only

from adamgap.config import ConfigError, load_config, parse_overrides


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
    rows = summary.get("replicas", [summary]) if rank_zero_only.rank == 0 else []  # DDP: once
    for row in rows:
        print(json.dumps({"conf": summary["conf"], "seed": row["seed"],
                          **{k: row[k] for k in keys if k in row}}))
        if row.get("error"):  # diverged or interrupted: the one line that says why
            print(f"error: {row['error']}", file=sys.stderr)
    return 0 if summary.get("status") == "completed" else 1
