"""Entry-point plumbing shared by the scripts: parse ``conf=NAME key=value ...``, turn a bad
configuration into one line on stderr and exit status 2 (no traceback, nothing written)."""

from __future__ import annotations

import json
import sys
from typing import Callable

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
    for row in summary.get("replicas", [summary]):
        print(json.dumps({"conf": summary["conf"], "seed": row["seed"],
                          **{k: row[k] for k in keys if k in row}}))
    return 0 if summary.get("status") == "completed" else 1
