"""The follow-up's claims as verdicts: Tang, Zhang, Cao & Zou 2025, "Understanding the
Generalization of Stochastic Gradient Adam in Learning Neural Networks" (arXiv 2510.11354),
checked against the study's sweeps (``experiments.stochastic_study``: Definition 3.1 at the
paper's sizes, lr 5e-5, 10^4 epochs, batch sizes 2..200 x lambda, 5 seeds per point).

- **Large batch**: with batches as large as the training set, Adam (L2) and AdamW at their
  confs' lambda end no better than a random guess: every seed's test error >= 1/2 at B = n.
- **Small batch**: with batches of 2, both generalize: every seed's test error <= 0.05.
- **Weight decay**: Adam with L2 stops fitting the training set once lambda grows, AdamW
  tolerates a much larger decay: at every batch size, the largest lambda up to which AdamW
  fits the training set (every seed at training error 0, at every grid lambda up to it) is at
  least 10x Adam's.

The thresholds are the ones above, fixed before the study ran (1/2 and 0.05 are Theorem 4.1's,
``theory.claims``; 10x is one decade of the lambda grid). Each verdict states the measured
numbers whatever they show.

    python scripts/verify.py --stochastic runs/stochastic --out docs/verdicts
"""

from __future__ import annotations

import math
from pathlib import Path

from adamgap import provenance
from adamgap.experiments.aggregate import run_provenance
from adamgap.experiments.stochastic_study import (
    CONFS,
    Limit,
    Point,
    batches_of,
    conf_lambda,
    fit_limits,
    points,
)
from adamgap.theory.claims import GD_TEST_ERROR_MAX, Verdict

LARGE_BATCH_TEST_ERROR_MIN = 0.5  # "no better than a random guess" (Theorem 4.1's bound)
SMALL_BATCH_TEST_ERROR_MAX = GD_TEST_ERROR_MAX  # "near-zero test error"
DECAY_TOLERANCE_MIN = 10.0  # "much larger": AdamW fits up to >= 10x Adam's largest lambda
LABEL = {"adam": "Adam", "adamw": "AdamW"}


def _errors(p: Point) -> str:
    seeds = p.values("test_error")
    return (" / ".join(f"{e:.3f}" for e in seeds) or "no finished seed") + (
        f" ({p.missing} seeds missing)" if p.missing else "")


def batch_claim(grids: dict[str, dict], batch: int, claim: str, predicted: str, ok,
                held: str, failed: str) -> Verdict:
    """A per-seed test-error claim at ``batch`` and each optimizer's conf lambda."""
    measured, values, good = [], [], True
    for opt, grid in grids.items():
        lam = conf_lambda(opt)
        p = grid.get((batch, lam))
        if p is None or not p.rows:
            measured.append(f"{LABEL[opt]} (lambda {lam:g}): no finished seed")
            good = False
            continue
        errors = p.values("test_error")
        good &= not p.missing and all(ok(e) for e in errors)
        measured.append(f"{LABEL[opt]} (lambda {lam:g}): {_errors(p)}")
        values += errors
    return Verdict(claim, "Tang et al. 2025", predicted, "; ".join(measured), good,
                   held if good else failed, values)


def large_batch(grids: dict[str, dict]) -> Verdict:
    B = max(b for grid in grids.values() for b in batches_of(grid))  # the study's: n
    return batch_claim(grids, B, f"Large batch (B = {B} = n): Adam and AdamW no better than a "
                       "random guess", f"test error >= {LARGE_BATCH_TEST_ERROR_MIN} (every seed)",
                       lambda e: e >= LARGE_BATCH_TEST_ERROR_MIN,
                       "both end at or above 1/2 test error with full batches",
                       "a seed ends below 1/2 test error")


def small_batch(grids: dict[str, dict]) -> Verdict:
    B = min(b for grid in grids.values() for b in batches_of(grid))
    return batch_claim(grids, B, f"Small batch (B = {B}): Adam and AdamW generalize",
                       f"test error <= {SMALL_BATCH_TEST_ERROR_MAX} (every seed)",
                       lambda e: e <= SMALL_BATCH_TEST_ERROR_MAX,
                       "both reach near-zero test error with batches of 2",
                       "a seed ends above the near-zero bound")


def decay_tolerance(grids: dict[str, dict]) -> Verdict:
    """At every batch size: AdamW's largest fitting lambda >= 10x Adam's. Not measured
    (``passed`` None) while a batch size's limit is not known (``Limit.known``) and none that
    is known contradicts the claim."""
    limits = {opt: fit_limits(grid) for opt, grid in grids.items()}
    measured, values, good, unknown = [], [], True, []
    none = Limit(math.nan, math.nan, math.nan)
    for B in sorted(set(limits["adam"]) | set(limits["adamw"])):
        a, w = (limits[o].get(B, none) for o in ("adam", "adamw"))
        ratio = w.fits_up_to / a.fits_up_to if a.fits_up_to > 0 and w.fits_up_to > 0 \
            else math.nan
        if a.known and w.known:
            good &= not math.isnan(ratio) and ratio >= DECAY_TOLERANCE_MIN
        else:
            unknown.append(B)
        (a_fit, a_stop), (w_fit, w_stop) = a.texts(), w.texts()
        measured.append(f"B={B}: Adam fits up to {a_fit} (stops at {a_stop}), "
                        f"AdamW up to {w_fit} (stops at {w_stop})")
        values.append(ratio)
    if not good:
        passed, why = False, ("at some batch size AdamW's largest fitting lambda is under 10x "
                              "Adam's, or one of them fits at none")
    elif unknown:
        passed, why = None, (f"not every limit is measured: batch size "
                             f"{', '.join(map(str, unknown))} has lambdas not run below its "
                             "first failure; the claim holds at the others")
    else:
        passed, why = True, ("AdamW fits the training set at a decay at least 10x larger at "
                             "every batch size")
    return Verdict("Weight decay: Adam (L2) stops fitting as lambda grows, AdamW tolerates "
                   "much larger decay", "Tang et al. 2025",
                   f"largest fitting lambda, AdamW >= {DECAY_TOLERANCE_MIN:g}x Adam's, at every "
                   "batch size", "; ".join(measured), passed, why, values)


def check_all(root: str | Path) -> tuple[list[Verdict], dict]:
    grids = {opt: points(root, opt) for opt in CONFS}
    verdicts = [large_batch(grids), small_batch(grids), decay_tolerance(grids)]
    details = {"root": str(root), "git": provenance.git_commit(),
               "provenance": sorted({line for opt in CONFS
                                     for line in run_provenance(Path(root) / opt)}),
               "values": {v.claim: v.values for v in verdicts}}
    return verdicts, details


def markdown(verdicts: list[Verdict], details: dict, table: str) -> str:
    """``stochastic.md``: the verdict table (rendered by ``theory.verify.table``), why, runs."""
    return "\n".join([
        "# The follow-up's claims (Tang et al. 2025, stochastic Adam): verdicts", "",
        f"From `python scripts/verify.py --stochastic {details['root']}` (git "
        f"{details['git']}); the study: docs/stochastic.md.", "",
        *(f"Runs: {line}." for line in details["provenance"]), "",
        table, "", "## Why", "",
        *(f"- {v.claim}: {v.explanation}." for v in verdicts)]) + "\n"
