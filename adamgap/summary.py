"""The run summary, ``summary.json``: one shape for every run, a single seed or K at once.

    {"conf": "synthetic_adam",
     "status": "completed",         # the run's: completed | diverged | interrupted (the worst
                                    # replica's, in that order)
     "seed": 0,                     # K = 1; an ensemble has "seeds": [0, 1, ..., K-1] instead
     "steps": 10000, "wall_seconds": 6.2,
     "test_error": 0.9514, ...      # every metric: K = 1 the run's value, K > 1 the mean over
                                    # the replicas where it is a finite number
     "error": "...",                # only when a replica stopped early: the first one's line
     "replicas": [{"seed": 0, "lr": 1e-4, "status": "completed", "steps": ..., "wall_seconds": ...,
                   "train_error": ..., "test_error": ..., "train_loss": ..., "test_loss": ...,
                   "grad_l2": ..., "grad_l1": ..., "feature_learning": ...,
                   "feature_learning_init": ..., ..., "diverged_step"?: ..., "error"?: ...}],
     "provenance": {...},           # adamgap.provenance: commit, versions, host
     "optimizer": {...}}            # train.optimizer_record: class, package, version, layout

``replicas`` is always there (one entry for K = 1). Summaries written before it was, flat rows
of one seed, still read back through :func:`replicas_of`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

STATUSES = ("completed", "diverged", "interrupted")  # a run's status is its worst replica's
# per-replica numbers that are facts of the run, not metrics to average
NOT_AVERAGED = ("seed", "lr", "steps", "wall_seconds", "diverged_step")


def is_number(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def assemble(conf: str, replicas: list[dict], provenance: dict | None = None) -> dict:
    """The summary of a run whose replicas ended as ``replicas`` (one row per seed)."""
    status = max((r.get("status", "completed") for r in replicas), key=STATUSES.index)
    first = replicas[0]
    out: dict[str, Any] = {"conf": conf, "status": status}
    if len(replicas) == 1:
        out.update({k: v for k, v in first.items() if k != "status"})
    else:
        out["seeds"] = [r["seed"] for r in replicas]
        out["steps"], out["wall_seconds"] = first["steps"], first["wall_seconds"]
        keys = dict.fromkeys(k for r in replicas for k in r if k not in NOT_AVERAGED)
        for key in keys:
            values = [r[key] for r in replicas if is_number(r.get(key))]
            if values:
                out[key] = sum(values) / len(values)
        errors = [r["error"] for r in replicas if r.get("error")]
        if errors:
            out["error"] = errors[0]
    out["replicas"] = replicas
    if provenance is not None:
        out["provenance"] = provenance
    return out


def replicas_of(summary: dict) -> list[dict]:
    """The per-seed rows of a summary (a flat summary of one seed is its own row)."""
    return summary["replicas"] if "replicas" in summary else [summary]


def read(run_dir: str | Path) -> dict | None:
    """``RUN_DIR/summary.json``, or None when there is none or it does not parse."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
