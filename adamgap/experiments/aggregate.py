"""A sweep's results: ``results.csv`` (one row per cell and seed) and ``aggregate.csv`` /
``aggregate.md`` (per grid point, every metric's mean, std and 95% CI over the seeds that
finished; the markdown table opens with the provenance of the runs behind it)."""

from __future__ import annotations

import math
from pathlib import Path

from adamgap import provenance
from adamgap.experiments.cells import FINISHED, cell_dir, record_of, state
from adamgap.experiments.spec import SweepSpec, load, render
from adamgap.experiments.stats import fmt, mean_ci
from adamgap.outputs import write_csv, write_text
from adamgap.summary import is_number, read, replicas_of


def results(sweep_dir: str | Path) -> list[dict]:
    """One row per (cell, seed): conf, seed, status, the grid values, every summary metric
    (a cell that failed or has not run gives its seeds' rows with the status and error)."""
    sweep_dir = Path(sweep_dir)
    spec, cells = load(sweep_dir)
    rows = []
    for cell in cells:
        now = state(sweep_dir, cell)
        summary = read(cell_dir(sweep_dir, cell)) if now in FINISHED else None
        replicas = (replicas_of(summary) if summary else
                    [{"seed": cell.seed + k} for k in range(cell.replicas)])
        keys = {k: v for k, v in cell.values.items() if k != "conf"}
        for r in replicas:
            row = {"conf": cell.conf, "seed": r["seed"], "status": r.get("status", now), **keys,
                   "cell": cell.id}
            row.update({k: v for k, v in r.items() if k not in row and k != "error"})
            error = r.get("error") or (record_of(sweep_dir, cell).get("error")
                                       if not summary else None)
            row["error"] = error or ""
            rows.append(row)
    return rows


def group_key(row: dict, spec: SweepSpec) -> tuple:
    """The grid point of a results row (values rendered, so that lists and dicts hash)."""
    return (row["conf"], *(render(row.get(k)) for k in spec.grid if k != "conf"))


def aggregate(sweep_dir: str | Path) -> list[dict]:
    """Write ``results.csv`` and ``aggregate.csv``/``.md``: per grid point, every numeric
    metric's mean, std and 95% CI half-width over the seeds that finished."""
    sweep_dir = Path(sweep_dir)
    spec, _ = load(sweep_dir)
    rows = results(sweep_dir)
    write_csv(sweep_dir / "results.csv", rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_key(row, spec), []).append(row)
    keys = [k for k in spec.grid if k != "conf"]
    table = []
    for group, members in groups.items():
        done = [r for r in members if r["status"] in FINISHED]
        out = {"conf": group[0], **{k: members[0].get(k) for k in keys}, "n_seeds": len(done),
               "n_failed": sum(r["status"] == "failed" for r in members),
               "n_diverged": sum(r["status"] == "diverged" for r in members)}
        metrics = [k for k in members[0] if k not in out and k not in
                   ("seed", "lr", "status", "cell", "error", "steps")]
        for k in metrics:
            vals = [float(r[k]) for r in done if is_number(r.get(k))]
            if not vals:
                continue
            out[f"{k}_mean"], out[f"{k}_std"], out[f"{k}_ci95"] = mean_ci(vals)
        table.append(out)
    write_csv(sweep_dir / "aggregate.csv", table)
    write_text(sweep_dir / "aggregate.md", markdown(table, keys, run_provenance(sweep_dir)))
    return table


def run_provenance(sweep_dir: str | Path) -> list[str]:
    """The distinct provenance lines (``adamgap.provenance.line``) of the finished cells."""
    sweep_dir = Path(sweep_dir)
    _, cells = load(sweep_dir)
    return provenance.lines_of([read(cell_dir(sweep_dir, c)) for c in cells
                                if state(sweep_dir, c) in FINISHED])


def markdown(table: list[dict], keys: list[str], runs: list[str] = ()) -> str:
    """The aggregate table's headline metrics, mean ± 95% CI, after the provenance lines of
    the ``runs`` behind it."""
    metrics = ("train_error", "test_error", "feature_learning", "noise_memorization")
    head = ["conf", *keys, "seeds", *metrics]
    lines = [*(f"Runs: {line}" for line in runs), *([""] if runs else []),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [str(row["conf"]), *(str(row[k]) for k in keys), str(row["n_seeds"])]
        cells += [fmt(row.get(f"{m}_mean", math.nan), row.get(f"{m}_ci95", math.nan))
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
