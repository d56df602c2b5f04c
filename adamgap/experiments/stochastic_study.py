"""The follow-up's synthetic study (Tang, Zhang, Cao & Zou 2025, "Understanding the
Generalization of Stochastic Gradient Adam in Learning Neural Networks", arXiv 2510.11354,
Appendix D.2) as three sweeps of ``scripts/sweep.py``, the one definition of its grids:

    adam      conf=stochastic_adam   batch size x lambda (L2 in the loss, ``optim.lam``)
    adamw     conf=stochastic_adamw  batch size x lambda (decoupled, ``optim.weight_decay``)
    figure2   both confs at batch 200 (= n, full batch), alignment every 100 steps: the
              large-batch half of the Figure-2 pair (the small-batch half is the batch-2 cell
              of each grid at the conf's own lambda, recorded every 10 000 steps)

Every cell trains ``SEEDS`` seeds as one ensemble for 10^4 epochs (10^6 steps at batch 2).

    python scripts/stochastic.py run --root runs/stochastic --jobs 2
    python scripts/stochastic.py report --root runs/stochastic --out docs/stochastic
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from adamgap.config import load_config
from adamgap.experiments.aggregate import results
from adamgap.experiments.launch import run_sweep
from adamgap.experiments.spec import SweepSpec, check, create, render
from adamgap.experiments.stats import mean_ci
from adamgap.summary import is_number

BATCHES = [2, 4, 10, 20, 50, 100, 200]  # the follow-up's batch sizes; n = 200
SEEDS = 5
LAMBDA_KEY = {"adam": "optim.lam", "adamw": "optim.weight_decay"}
LAMBDAS = {"adam": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],  # the ranges, in decades, with 1e-5
           "adamw": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]}  # and 1e-2 in both
KEY_LAMBDAS = (1e-5, 1e-2)  # where the batch-size table reads both optimizers (in both grids)
CONFS = {"adam": "stochastic_adam", "adamw": "stochastic_adamw"}
FIGURE2_EVERY = 100  # alignment records of the full-batch runs (10^4 steps: 101 records)


def grid(name: str) -> dict[str, list]:
    """Sweep ``name``'s grid in the order its cells run: the largest batch first (a batch-B cell
    is 10^4 n/B steps, so the cheapest first), and at each batch size ``KEY_LAMBDAS`` before
    the other lambdas; a study stopped part way holds the large batches and the key lambdas."""
    lams = sorted(LAMBDAS[name], key=lambda lam: (lam not in KEY_LAMBDAS, lam))
    return {"data.batch_size": sorted(BATCHES, reverse=True), LAMBDA_KEY[name]: lams}


def specs(root: str | Path, jobs: int = 2, overrides: list[str] = ()) -> dict[str, SweepSpec]:
    """The study's sweeps by name, their directories under ``root``; ``overrides`` go to every
    cell (a smaller instance, e.g. for a test)."""
    root = Path(root)
    out = {name: check({"conf": CONFS[name], "seeds": SEEDS, "jobs": jobs,
                        "grid": grid(name),
                        "overrides": list(overrides), "dir": str(root / name)})
           for name in CONFS}
    out["figure2"] = check({"conf": CONFS["adam"], "seeds": SEEDS, "jobs": jobs,
                            "grid": {"conf": list(CONFS.values())},
                            "overrides": [*overrides, f"data.batch_size={max(BATCHES)}",
                                          f"align.every={FIGURE2_EVERY}"],
                            "dir": str(root / "figure2")})
    return out


def command(spec: SweepSpec) -> str:
    """The ``scripts/sweep.py`` command that makes the same sweep."""
    grid = " ".join(f"sweep.grid.{k}=[{','.join(render(v) for v in vs)}]"
                    for k, vs in spec.grid.items())
    conf = "" if "conf" in spec.grid else f"conf={spec.conf} "
    return (f"python scripts/sweep.py {conf}{grid} {' '.join(spec.overrides)} "
            f"sweep.seeds={spec.seeds} sweep.jobs={spec.jobs} sweep.dir={spec.dir}"
            ).replace("  ", " ")


def run(root: str | Path, jobs: int = 2, names: list[str] | None = None,
        overrides: list[str] = ()) -> dict[str, dict]:
    """Create (or resume) and run the sweeps ``names`` (all by default), in order."""
    out = {}
    for name, spec in specs(root, jobs, overrides).items():
        if names is None or name in names:
            print(f"[stochastic] {name}: {command(spec)}", flush=True)
            out[name] = run_sweep(create(spec))
    return out


# -- results ----------------------------------------------------------------------------------
@dataclass
class Point:
    """One grid point of the study: an optimizer at a batch size and a lambda, its seeds."""

    optimizer: str  # adam | adamw
    batch: int
    lam: float
    rows: list[dict] = field(default_factory=list)  # results.csv rows of its seeds
    missing: int = 0  # seeds that did not finish (failed, diverged, not run)
    unrun: int = 0  # of those, seeds not run to their end (not diverged): nothing measured

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.rows if is_number(r.get(key))]

    def stat(self, key: str) -> tuple[float, float]:
        """(mean, 95% CI half-width) over the finished seeds (``stats.mean_ci``)."""
        mean, _, ci = mean_ci(self.values(key))
        return mean, ci

    @property
    def measured(self) -> bool:
        """Every seed ran to its end: completed, or stopped by divergence."""
        return self.unrun == 0 and bool(self.rows or self.missing)

    @property
    def fits(self) -> bool:
        """Every seed completed with training error 0 (a diverged seed does not fit)."""
        return (bool(self.rows) and not self.missing
                and all(float(r["train_error"]) == 0.0 for r in self.rows))

    def flipped(self) -> list[int]:
        """Per seed, how many classes' feature learning ``max_r <w_{j,r}, j v>`` ended < 0."""
        return [int(float(r["feature_learning"]) < 0) + int(float(r["feature_learning_neg"]) < 0)
                for r in self.rows]


def conf_lambda(optimizer: str) -> float:
    """The lambda of the optimizer's conf (where the batch-size claims are judged)."""
    cfg = load_config(CONFS[optimizer])
    return float(cfg.optim.lam if optimizer == "adam" else cfg.optim.weight_decay)


def points(root: str | Path, optimizer: str) -> dict[tuple[int, float], Point]:
    """The grid of sweep ``optimizer`` under ``root``: (batch, lambda) -> Point."""
    out: dict[tuple[int, float], Point] = {}
    key = LAMBDA_KEY[optimizer]
    for row in results(Path(root) / optimizer):
        at = (int(row["data.batch_size"]), float(row[key]))
        p = out.setdefault(at, Point(optimizer, *at))
        if row["status"] == "completed":
            p.rows.append(row)
        else:
            p.missing += 1
            p.unrun += row["status"] != "diverged"
    return out


def batches_of(grid: dict[tuple[int, float], Point]) -> list[int]:
    """The batch sizes of a grid, ascending."""
    return sorted({b for b, _ in grid})


def lambdas_of(grid: dict[tuple[int, float], Point]) -> list[float]:
    """The lambdas of a grid, ascending."""
    return sorted({lam for _, lam in grid})


class Limit(NamedTuple):
    """Where a batch size's training set stops being fitted as lambda grows (nan: none)."""

    fits_up_to: float  # the largest lambda up to which every grid lambda fits
    stops_at: float  # the first lambda that does not fit
    unmeasured_from: float  # the first lambda not run yet, before any that does not fit

    @property
    def known(self) -> bool:
        """The limit is measured: a lambda that does not fit, or the whole grid fits."""
        return not math.isnan(self.stops_at) or math.isnan(self.unmeasured_from)

    def texts(self) -> tuple[str, str]:
        """(fits up to, stops at) as words: a lambda, "none", "not run from" a lambda, or
        "none in the grid"."""
        fit = "none" if math.isnan(self.fits_up_to) else f"{self.fits_up_to:g}"
        if not math.isnan(self.stops_at):
            return fit, f"{self.stops_at:g}"
        if not math.isnan(self.unmeasured_from):
            return fit, f"not run from {self.unmeasured_from:g}"
        return fit, "none in the grid"


def fit_limits(grid: dict[tuple[int, float], Point]) -> dict[int, Limit]:
    """Per batch size, lambda ascending: the last that fits the training set before the first
    that does not (a lambda that fits again above it does not count), or before the first
    that has not been run."""
    out = {}
    for B in batches_of(grid):
        fit = stop = unmeasured = math.nan
        for lam in sorted(lam for b, lam in grid if b == B):
            p = grid[(B, lam)]
            if not p.measured:
                unmeasured = lam
                break
            if not p.fits:
                stop = lam
                break
            fit = lam
        out[B] = Limit(fit, stop, unmeasured)
    return out
