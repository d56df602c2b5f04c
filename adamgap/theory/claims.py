"""The paper's claims as executable checks: each turns a run's outputs into a verdict.

A check reads what a run directory holds: ``summary.json`` (errors, final gradient norms) and
``alignment.csv`` (the Figure-2 trajectories: feature learning ``max_r <w_{+1,r}, v>`` and
noise memorization ``mean_{y_i=+1} max_r <w_{+1,r}, xi_i>`` at every recorded step), for every
seed, and returns a :class:`Verdict`: what the paper predicts, what was measured (per seed), and
whether the claim holds for every seed. Thresholds are the ones stated in each docstring.

Claims (Section 4 theorems, Section 5 lemmas):

- Theorem 4.1 (Adam): train error 0 and test error >= 1/2.
- Theorem 4.1 (GD): train error 0 and test error <= 0.05.
- Lemma 5.2: Adam's noise memorization grows faster than its feature learning in Stage I.
- Lemma 5.3: Adam's feature learning is positive early and then flips sign.
- Lemma 5.4: after the flip it stays negative; noise memorization stays at a constant level.
- Lemmas 5.6 / 5.7: GD's feature learning reaches a constant and stays; noise stays near init.
- Lemma 5.5 / 5.8: Adam's final gradient is small in l1, GD's in l2.
- Theorem 4.2: on the convex (linear) model Adam and GD reach the same solution
  (see ``adamgap.theory.convex`` for the measurement).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from adamgap.config import load_run_config
from adamgap.errors import ConfigError
from adamgap.summary import replicas_of

# -- thresholds (the claims' numbers) ---------------------------------------------------------
ADAM_TEST_ERROR_MIN = 0.5  # Theorem 4.1: no better than a random guess
GD_TEST_ERROR_MAX = 0.05  # Theorem 4.1: "nearly zero"
NOISE_SATURATION_MAX = 1.5  # Lemma 5.4: growth factor allowed over the second half of training
NOISE_FLOOR = 0.5  # Lemma 5.4: after the flip noise memorization keeps this share of its level
GD_NOISE_BAND = 2.0  # Lemmas 5.6/5.7: noise memorization within this factor of its init value
CONVEX_DISTANCE_MAX = 0.01  # Theorem 4.2: relative distance between solutions
CONVEX_AGREEMENT_MIN = 0.99  # Theorem 4.2: fraction of equal test predictions
CONVEX_TEST_GAP_MAX = 0.01  # Theorem 4.2: |test error(Adam) - test error(GD)|


@dataclass
class Verdict:
    """One claim checked against measurements."""

    claim: str
    reference: str  # where the paper states it
    predicted: str
    measured: str
    passed: bool | None  # None: not measured yet (the runs it needs have not all finished)
    explanation: str  # one line: why it passed, failed or could not be judged
    values: list = field(default_factory=list)  # the headline number per seed (details.json)

    def as_dict(self) -> dict:
        """The claim as ``verdicts.json`` holds it (without ``values``)."""
        out = asdict(self)
        out.pop("values")
        return out


@dataclass
class Trajectory:
    """One seed of one run: its resolved config, summary and Figure-2 trajectories."""

    seed: int
    cfg: DictConfig
    summary: dict  # the seed's summary.json entry (train_error, test_error, grad_l1, ...)
    step: np.ndarray  # (records,) recorded iterations, starting at 0
    feature: np.ndarray  # (records,) feature learning max_r <w_{+1,r}, v>
    noise: np.ndarray  # (records,) noise memorization mean_{y_i=+1} max_r <w_{+1,r}, xi_i>

    @property
    def completed(self) -> bool:
        return self.summary.get("status", "completed") == "completed"


def load_trajectories(run_dir: str | Path) -> list[Trajectory]:
    """Every seed of a run directory (a single run or a K-replica ensemble)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        with open(run_dir / "alignment.csv") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as err:
        raise ConfigError(f"run directory {run_dir} lacks readable results: {err}") from None
    out = []
    for entry in replicas_of(summary):
        mine = [r for r in rows if int(r["seed"]) == entry["seed"]]
        out.append(Trajectory(
            seed=entry["seed"], cfg=cfg, summary=entry,
            step=np.array([int(r["step"]) for r in mine]),
            feature=np.array([float(r["feature_learning"]) for r in mine]),
            noise=np.array([float(r["noise_memorization"]) for r in mine])))
    return out


# -- helpers ----------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _per_seed(claim: str, reference: str, predicted: str, trajs: list[Trajectory], measure,
              held: str, failed: str) -> Verdict:
    """A verdict from ``measure(t) -> (ok, text, value)`` on every seed: it passes when every
    seed does; ``measured`` lists the texts, ``values`` the numbers."""
    if not trajs:
        return Verdict(claim, reference, predicted, "no run", False, "no run to measure")
    bad = [f"seed {t.seed}: " + (f"status {t.summary.get('status')}" if not t.completed
                                 else "fewer than 2 alignment records")
           for t in trajs if not t.completed or t.step.size < 2]
    if bad:
        why = ", ".join(bad)
        return Verdict(claim, reference, predicted, why, False, f"nothing to measure ({why})")
    results = [(t.seed, *measure(t)) for t in trajs]
    ok = all(r[1] for r in results)
    failing = ", ".join(str(seed) for seed, good, *_ in results if not good)
    measured = (" / ".join(r[2] for r in results)
                + f" (seed{'s' if len(results) > 1 else ''} "
                + ", ".join(str(r[0]) for r in results) + ")")
    return Verdict(claim, reference, predicted, measured, ok,
                   held if ok else f"{failed} (seed {failing})",
                   [None if r[3] is None else float(r[3]) for r in results])


def flip_iteration(t: Trajectory) -> float | None:
    """Where feature learning first crosses from positive to negative (Lemma 5.3), linearly
    interpolated between the two records around the crossing; None when it never does."""
    neg = np.flatnonzero(t.feature < 0)
    if neg.size == 0 or neg[0] == 0:
        return None
    b = neg[0]
    a = b - 1
    fa, fb = t.feature[a], t.feature[b]
    return float(t.step[a] + (t.step[b] - t.step[a]) * fa / (fa - fb))


def rise_window(t: Trajectory) -> tuple[int, int]:
    """Record indices (0, end) of Stage I as measured: from initialization to the peak of
    feature learning before it turns (the first recorded interval when it never rises)."""
    neg = np.flatnonzero(t.feature < 0)
    stop = neg[0] if neg.size else t.feature.size
    end = int(np.argmax(t.feature[:max(stop, 1)]))
    return 0, max(end, 1)


def signgd_rate_ratio(s: int, sigma_p: float, alpha: float) -> float:
    """Sign-GD prediction of (noise memorization growth) / (feature learning growth) in Stage I.

    Section 5.1: in Stage I the logits are constant and weight decay is negligible, so sign GD
    moves every coordinate by exactly eta per step, along the sign of its gradient. With the
    noise supports disjoint (Lemma 5.1), coordinate k of supp(xi_i) receives gradient from
    example i alone, and w_{y_i,r} moves by eta * sign(xi_{i,k}) there: the Gaussian part of
    <w_{y_i,r}, xi_i> grows by eta * sum_k |xi_{i,k}| per step, in expectation
    eta * s * E|N(0, sigma_p^2)| = eta * s * sigma_p * sqrt(2/pi). Feature learning
    <w_{+1,r}, v> = w_{+1,r}[1] uses one coordinate and grows by eta per step while it rises
    (Lemma 5.3), and that same step moves the feature-noise coordinate of xi_i = -alpha y_i v,
    taking alpha * eta per step off <w_{y_i,r}, xi_i>. Hence

        ratio = s * sigma_p * sqrt(2 / pi) - alpha       (7.78 at s=100, sigma_p=0.1, alpha=0.2)

    i.e. ~sqrt(s) at the paper's sigma_p = 1/sqrt(s).
    """
    return s * sigma_p * math.sqrt(2.0 / math.pi) - alpha


def _sigma_p(cfg: DictConfig) -> float:
    d = cfg.data
    return 1.0 / math.sqrt(d.s) if d.sigma_p is None else float(d.sigma_p)


def stage1_rates(t: Trajectory) -> tuple[float, float, int]:
    """Measured growth rates per iteration of (noise memorization, feature learning) over
    Stage I (``rise_window``), and the window's last step."""
    a, b = rise_window(t)
    dt = float(t.step[b] - t.step[a])
    return (t.noise[b] - t.noise[a]) / dt, (t.feature[b] - t.feature[a]) / dt, int(t.step[b])


def _at_step(t: Trajectory, step: float) -> int:
    """Index of the record nearest to ``step``."""
    return int(np.argmin(np.abs(t.step - step)))


# -- Theorem 4.1 ------------------------------------------------------------------------------
def adam_generalization(adam: list[Trajectory]) -> Verdict:
    """Theorem 4.1 (Adam): zero training error and test error >= 1/2."""
    def measure(t: Trajectory):
        tr, te = t.summary["train_error"], t.summary["test_error"]
        return tr == 0 and te >= ADAM_TEST_ERROR_MIN, f"{tr:.3g}, {te:.3f}", te

    return _per_seed("Adam: train error 0, test error >= 1/2", "Theorem 4.1 (1)",
                     f"train 0; test >= {ADAM_TEST_ERROR_MIN}", adam, measure,
                     "Adam fits the training set and is no better than a random guess",
                     "training set not fitted, or test error below 1/2")


def gd_generalization(gd: list[Trajectory]) -> Verdict:
    """Theorem 4.1 (GD): zero training error and test error <= 0.05 (nearly zero)."""
    def measure(t: Trajectory):
        tr, te = t.summary["train_error"], t.summary["test_error"]
        return tr == 0 and te <= GD_TEST_ERROR_MAX, f"{tr:.3g}, {te:.3f}", te

    return _per_seed("GD: train error 0, test error ~0", "Theorem 4.1 (2)",
                     f"train 0; test <= {GD_TEST_ERROR_MAX}", gd, measure,
                     "GD fits the training set and generalises",
                     "training set not fitted, or test error above the bound")


# -- Adam, Lemmas 5.2-5.5 ---------------------------------------------------------------------
def noise_outpaces_feature(adam: list[Trajectory]) -> Verdict:
    """Lemma 5.2: in Stage I (initialization to the peak of feature learning) Adam's noise
    memorization grows faster than its feature learning: measured rate ratio > 1. The sign-GD
    prediction of the ratio (:func:`signgd_rate_ratio`) is shown beside it, not thresholded."""
    pred = float("nan")
    if adam:
        d = adam[0].cfg.data
        pred = signgd_rate_ratio(d.s, _sigma_p(adam[0].cfg), d.alpha)

    def measure(t: Trajectory):
        noise_rate, feature_rate, end = stage1_rates(t)
        ratio = noise_rate / feature_rate if feature_rate > 0 else math.inf
        eta = float(t.cfg.optim.lr)
        text = (f"{_fmt(ratio)} (steps 0-{end}: noise {noise_rate / eta:.2g} eta, "
                f"feature {feature_rate / eta:.2g} eta per step)")
        return noise_rate > 0 and ratio > 1, text, ratio

    return _per_seed("Adam, Stage I: noise memorization outpaces feature learning",
                     "Lemma 5.2", f"growth-rate ratio > 1; sign GD: {pred:.2f} (noise "
                     f"{pred:.2f} eta, feature 1 eta per step)", adam, measure,
                     "noise memorization rose faster than feature learning in Stage I",
                     "noise memorization did not outpace feature learning")


def feature_flips(adam: list[Trajectory]) -> Verdict:
    """Lemma 5.3: Adam's feature learning max_r <w_{+1,r}, v> is positive at first and later
    turns negative; measured: the (interpolated) iteration of the first sign change."""
    def measure(t: Trajectory):
        flip = flip_iteration(t)
        ok = t.feature[0] > 0 and flip is not None
        return ok, "never" if flip is None else f"{flip:.0f}", flip

    return _per_seed("Adam: feature learning positive early, then flips negative", "Lemma 5.3",
                     "> 0 at init, < 0 later (flip iteration)", adam, measure,
                     "Adam learned the feature briefly, then fitted the feature noise instead",
                     "feature learning never turned negative (no flip)")


def pattern_maintained(adam: list[Trajectory]) -> Verdict:
    """Lemma 5.4: after the flip Adam's feature learning stays negative at every record to the
    end, and noise memorization stays at a constant level: never below ``NOISE_FLOOR`` x its
    value at the flip, and growing by at most ``NOISE_SATURATION_MAX`` x over the second half
    of training."""
    def measure(t: Trajectory):
        neg = np.flatnonzero(t.feature < 0)
        if neg.size == 0:
            return False, "no flip", None
        stays_negative = bool((t.feature[neg[0]:] < 0).all())
        keeps_noise = bool(t.noise[neg[0]:].min() >= NOISE_FLOOR * t.noise[neg[0]])
        growth = float(t.noise[-1] / t.noise[_at_step(t, t.step[-1] / 2)])
        text = (f"feature {t.feature[-1]:.3g}, N(T)/N(T/2) {growth:.2f}"
                + ("" if stays_negative else ", feature back >= 0")
                + ("" if keeps_noise else ", noise fell"))
        return stays_negative and keeps_noise and growth <= NOISE_SATURATION_MAX, text, growth

    return _per_seed("Adam: pattern maintained after the flip", "Lemma 5.4",
                     f"feature < 0 to the end; noise stays (>= {NOISE_FLOOR:g}x its level at "
                     f"the flip, N(T)/N(T/2) <= {NOISE_SATURATION_MAX:g})", adam, measure,
                     "the flipped feature and the memorized noise persist through Stage II",
                     "the Stage-I pattern was not maintained")


def descent_scale(t: Trajectory) -> float:
    """L(W(0)) / (eta T): the scale of the descent-lemma bounds of Lemmas 5.5 / 5.8 on the
    average gradient norm (l1 for sign GD, squared l2 for GD), with L(W(0)) ~ log 2 because
    f(W(0), x) ~ 0 at the small initialization sigma_0."""
    return math.log(2.0) / (float(t.cfg.optim.lr) * int(t.summary.get("steps") or 1))


def _small_gradient(claim: str, ref: str, trajs: list[Trajectory], norm: str, name: str,
                    value, factor: float) -> Verdict:
    """Final ``value(t)`` (a gradient norm) <= ``factor`` x ``descent_scale``."""
    def measure(t: Trajectory):
        g, bound = value(t), factor * descent_scale(t)
        return g <= bound, f"{g:.3g} (bound {bound:.3g})", g

    scale = "L(W(0))/(eta T)" if factor == 1 else f"{factor:g} L(W(0))/(eta T)"
    return _per_seed(claim, ref, f"‖grad L‖_{norm} <= {scale}", trajs, measure,
                     f"the final {name} gradient is below the descent-lemma scale",
                     f"the final {name} gradient is above the descent-lemma scale")


def adam_gradient_l1(adam: list[Trajectory]) -> Verdict:
    """Lemma 5.5: Adam finds a point with a small gradient in l1 norm: the final
    ||grad L||_1 is below the sign-GD descent-lemma scale L(W(0)) / (eta T)."""
    return _small_gradient("Adam: final gradient small in l1", "Lemma 5.5", adam, "1", "l1",
                           lambda t: t.summary["grad_l1"], 1.0)


def gd_gradient_l2(gd: list[Trajectory]) -> Verdict:
    """Lemma 5.8: GD finds a point with a small gradient in l2 norm: the final
    ||grad L||_2^2 is below the GD descent-lemma scale 2 L(W(0)) / (eta T)."""
    return _small_gradient("GD: final gradient small in l2", "Lemma 5.8", gd, "2^2",
                           "squared l2", lambda t: t.summary["grad_l2"] ** 2, 2.0)


# -- GD, Lemmas 5.6 / 5.7 ---------------------------------------------------------------------
def gd_feature_learned(gd: list[Trajectory]) -> Verdict:
    """Lemmas 5.6 / 5.7: GD's feature learning reaches a constant and stays there: it reaches
    m^(-1/q), the level at which the feature alone can give |f| >= 1 (sum over m filters of
    sigma(<w, v>) = m <w, v>^q), and never falls below it afterwards."""
    level = gd[0].cfg.model.m ** (-1.0 / gd[0].cfg.model.q) if gd else float("nan")

    def measure(t: Trajectory):
        above = np.flatnonzero(t.feature >= level)
        stays = above.size > 0 and bool((t.feature[above[0]:] >= level).all())
        reached = f"from step {t.step[above[0]]}" if above.size else "never"
        return stays, f"{reached}, final {t.feature[-1]:.3g}", float(t.feature[-1])

    return _per_seed("GD: feature learning reaches a constant and stays", "Lemmas 5.6, 5.7",
                     f">= m^(-1/q) = {level:.3g} from some step on", gd, measure,
                     "GD learned the feature and kept it",
                     "GD's feature learning did not reach or keep a constant level")


def gd_noise_bounded(gd: list[Trajectory]) -> Verdict:
    """Lemmas 5.6 / 5.7: GD's noise memorization stays within ``GD_NOISE_BAND`` x of its value
    at initialization at every recorded step."""
    def measure(t: Trajectory):
        ratio = t.noise / t.noise[0]
        ok = bool((ratio <= GD_NOISE_BAND).all() and (ratio >= 1 / GD_NOISE_BAND).all())
        return ok, f"x{ratio.min():.2f}..x{ratio.max():.2f}", float(ratio.max())

    return _per_seed("GD: noise memorization stays near its initial level", "Lemmas 5.6, 5.7",
                     f"within {GD_NOISE_BAND:g}x of init throughout", gd, measure,
                     "GD memorized (almost) nothing of the noise",
                     "GD's noise memorization left the band around its initial value")


# -- Theorem 4.2 ------------------------------------------------------------------------------
def convex_same_solution(comparison: dict | None) -> Verdict:
    """Theorem 4.2: on the strongly convex linear objective Adam and GD converge to the unique
    minimiser W*: both within ``CONVEX_DISTANCE_MAX`` relative distance of the L-BFGS reference
    and of each other (``comparison`` from ``theory.convex.compare_runs``)."""
    claim, ref = "Convex: Adam and GD reach the same (unique) minimiser", "Theorem 4.2"
    predicted = f"relative distances <= {CONVEX_DISTANCE_MAX:g}"
    if not comparison:
        return Verdict(claim, ref, predicted, "no run", False, "no convex runs to measure")
    worst = {label: max(comparison[key]["distance"])
             for key, label in (("adam", "Adam-W*"), ("gd", "GD-W*"), ("adam_vs_gd", "Adam-GD"))}
    ok = max(worst.values()) <= CONVEX_DISTANCE_MAX
    measured = "; ".join(f"{label} {v:.2g}" for label, v in worst.items()) + " (max over seeds)"
    why = ("both optimizers converged to the L-BFGS minimiser" if ok
           else "a solution is farther than the bound from W* or from the other optimizer's")
    return Verdict(claim, ref, predicted, measured, ok, why, list(worst.values()))


def convex_same_predictions(comparison: dict | None) -> Verdict:
    """Theorem 4.2: hence the same behaviour: zero training error for both, test predictions
    agreeing on >= ``CONVEX_AGREEMENT_MIN`` of the test set, test errors within
    ``CONVEX_TEST_GAP_MAX``."""
    claim, ref = "Convex: Adam and GD predict alike", "Theorem 4.2"
    predicted = (f"train 0 for both; agreement >= {CONVEX_AGREEMENT_MIN:g}; "
                 f"test-error gap <= {CONVEX_TEST_GAP_MAX:g}")
    if not comparison:
        return Verdict(claim, ref, predicted, "no run", False, "no convex runs to measure")
    a, g = np.array(comparison["adam"]["test_error"]), np.array(comparison["gd"]["test_error"])
    gap = float(np.abs(a - g).max())
    agree = min(comparison["adam_vs_gd"]["agreement"])
    train = max(comparison["adam"]["train_error"] + comparison["gd"]["train_error"])
    ok = train == 0 and agree >= CONVEX_AGREEMENT_MIN and gap <= CONVEX_TEST_GAP_MAX
    measured = (f"train max {train:.3g}; agreement min {agree:.4f}; test Adam "
                f"{'/'.join(f'{x:.4f}' for x in a)}, GD {'/'.join(f'{x:.4f}' for x in g)}")
    why = ("the two solutions classify the test set the same way" if ok
           else "the convex solutions differ in training fit, test predictions or test error")
    return Verdict(claim, ref, predicted, measured, ok, why, [train, agree, gap])


def check_all(adam: list[Trajectory], gd: list[Trajectory],
              comparison: dict | None) -> list[Verdict]:
    """Every claim, in the paper's order."""
    return [adam_generalization(adam), gd_generalization(gd), noise_outpaces_feature(adam),
            feature_flips(adam), pattern_maintained(adam), adam_gradient_l1(adam),
            gd_feature_learned(gd), gd_noise_bounded(gd), gd_gradient_l2(gd),
            convex_same_solution(comparison), convex_same_predictions(comparison)]
