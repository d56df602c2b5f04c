"""The convex control of Theorem 4.2: the linear patch model, its unique minimiser, and how
close Adam's and GD's solutions come to it.

With sigma(z) = z (``model.name=linear``) the patch network is linear in W:

    f(W, x) = sum_p <u, x_p>,    u = sum_r w_{+1,r} - sum_r w_{-1,r}           (K, d)
    L(W)    = (1/n) sum_i log(1 + exp(-y_i f(W, x_i))) + (lam / 2) ||W||_F^2

The logistic part is convex in W and the L2 part makes L lam-strongly convex, so L has exactly
one stationary point W* and every optimizer that drives the gradient to zero lands on it
(Theorem 4.2). Here W* is computed independently of the training code: L-BFGS in float64 on
the same data, stopped when the gradient is below a tight tolerance; the first-order condition
is checked with the closed-form gradient (:func:`gradient`), not with autograd.

Weights are laid out as in ``PatchCNN``: (K, d, 2, m), ``[:, :, 0, r]`` is w_{+1,r} and
``[:, :, 1, r]`` is w_{-1,r}. Examples come as a ``PatchSet`` (per-patch coordinate lists).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from adamgap.alignment import feature_learning, noise_memorization, summarize
from adamgap.config import load_run_config, seeds_of
from adamgap.data import PatchSet
from adamgap.errors import ConfigError
from adamgap.network import PatchCNN
from adamgap.train import build_datamodule


def direction(weight: Tensor) -> Tensor:
    """u = sum_r w_{+1,r} - sum_r w_{-1,r}: (K, d, 2, m) -> (K, d)."""
    return weight[:, :, 0].sum(-1) - weight[:, :, 1].sum(-1)


def linear_scores(patches: PatchSet, weight: Tensor) -> Tensor:
    """f(W, x_i) = sum_p <u, x_{i,p}> for every example: (K, N), in ``weight``'s dtype."""
    u = direction(weight)
    index, value = patches.index.to(u.device), patches.value.to(u)  # (K, N, P, L)
    picked = u.gather(1, index.flatten(1)).view(index.shape)  # u at each listed coordinate
    return (picked * value).sum(dim=(2, 3))


def objective(weight: Tensor, patches: PatchSet, lam: float) -> Tensor:
    """L(W) per replica, (K,): mean logistic loss + (lam / 2) ||W||_F^2."""
    f = linear_scores(patches, weight)
    y = patches.y.to(f)
    return F.softplus(-y * f).mean(1) + 0.5 * lam * weight.square().flatten(1).sum(1)


def gradient(weight: Tensor, patches: PatchSet, lam: float) -> Tensor:
    """grad L(W) in closed form, (K, d, 2, m).

    d f_i / d w_{j,r} = j X_i with X_i = sum_p x_{i,p}, and d/df log(1 + exp(-y f)) =
    -y sigmoid(-y f), so grad_{w_{j,r}} L = j g + lam w_{j,r} with
    g = -(1/n) sum_i y_i sigmoid(-y_i f_i) X_i.
    """
    f = linear_scores(patches, weight)
    y = patches.y.to(f)
    K, N = f.shape
    coef = -(y * torch.sigmoid(-y * f)) / N  # (K, N)
    value = patches.value.to(f) * coef[:, :, None, None]
    g = torch.zeros(K, weight.shape[1], dtype=f.dtype, device=f.device)
    g.scatter_add_(1, patches.index.to(f.device).flatten(1), value.flatten(1))  # (K, d)
    sign = torch.tensor([1.0, -1.0], dtype=f.dtype, device=f.device)
    return g[:, :, None, None] * sign[:, None] + lam * weight


def minimiser(patches: PatchSet, lam: float, m: int, rtol: float = 1e-6,
              max_rounds: int = 50) -> Tensor:
    """The unique minimiser W* of L for every replica, (K, d, 2, m) in float64.

    L-BFGS with a strong-Wolfe line search from W = 0, restarted until the solution is
    certified: L is lam-strongly convex, so ||W - W*|| <= ||grad L(W)|| / lam, and the loop
    stops once that bound (closed-form gradient) is below ``rtol`` ||W|| for every replica.
    Raises when float64 cannot get there in ``max_rounds`` rounds.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0 for a unique minimiser, got {lam}")
    K, d = patches.y.shape[0], patches.d
    weight = torch.zeros(K, d, 2, m, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight], lr=1.0, max_iter=500, history_size=50,
                            tolerance_grad=1e-12, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective(weight, patches, lam).sum()  # replicas are independent: sum
        loss.backward()
        return loss

    for _ in range(max_rounds):
        opt.step(closure)
        bound = certified_distance(weight.detach(), patches, lam)
        if float(bound.max()) < rtol:
            return weight.detach()
    raise RuntimeError(f"L-BFGS reached only ||W - W*|| / ||W|| <= {float(bound.max()):.3g} "
                       f"(wanted {rtol:g})")


def certified_distance(weight: Tensor, patches: PatchSet, lam: float) -> Tensor:
    """Upper bound on ||W - W*|| / ||W|| per replica from strong convexity:
    ||grad L(W)|| / (lam ||W||), (K,)."""
    g = gradient(weight, patches, lam).flatten(1).norm(dim=1)
    return g / (lam * weight.flatten(1).norm(dim=1).clamp(min=torch.finfo(weight.dtype).tiny))


def relative_distance(a: Tensor, b: Tensor) -> Tensor:
    """||a - b||_F / ||b||_F per replica, (K,)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1)


@dataclass
class Solution:
    """What a trained (or reference) W does on the data, per replica (each (K,))."""

    train_error: Tensor
    test_error: Tensor
    grad_l2: Tensor  # ||grad L(W)||_2, closed form, float64
    predictions: Tensor  # (K, n_test) signs of f on the test set


def evaluate(weight: Tensor, train: PatchSet, test: PatchSet, lam: float) -> Solution:
    """Errors, gradient norm and test predictions of W (evaluated in float64)."""
    w = weight.double()

    def error(ps: PatchSet, f: Tensor) -> Tensor:
        return ((f * ps.y.to(f)) <= 0).double().mean(1)

    f_train, f_test = linear_scores(train, w), linear_scores(test, w)
    return Solution(train_error=error(train, f_train), test_error=error(test, f_test),
                    grad_l2=gradient(w, train, lam).flatten(1).norm(dim=1),
                    predictions=torch.sign(f_test))


def agreement(a: Solution, b: Solution) -> Tensor:
    """Fraction of test examples on which two solutions predict the same label, (K,)."""
    return (a.predictions == b.predictions).double().mean(1)


def load_weight(run_dir: str | Path) -> Tensor:
    """The final W (K, d, 2, m) a run saved in ``weights.pt``."""
    path = Path(run_dir) / "weights.pt"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no weights.pt (not a finished run)")
    return torch.load(path, map_location="cpu")["weight"]


def alignment_of(weight: Tensor, dm) -> dict[str, list[float]]:
    """Figure 2's feature learning and noise memorization of W on ``dm``'s training set, per
    replica (``adamgap.alignment``, through the linear patch network holding W)."""
    K, d, _, m = weight.shape
    net = PatchCNN(d, m, q=1.0, sigma_0=0.0, seeds=range(K), linear=True)
    with torch.no_grad():
        net.weight.copy_(weight)
        summary = summarize(feature_learning(net, dm.features),
                            noise_memorization(net, dm.train_noise, dm.y_train), dm.y_train)
    return {key: summary[key].tolist() for key in ("feature_learning", "noise_memorization")}


def compare_runs(runs: dict[str, str | Path]) -> dict:
    """Compare linear-model runs on the same data with the minimiser W* (Theorem 4.2).

    ``runs`` maps a name ("adam", "gd", and optionally e.g. "adamw") to a run directory; all
    must share data, seeds and m. Every solution is measured on the lam-regularised objective
    of the "gd" run (AdamW's decoupled decay minimises something else: that is the point of
    comparing it). Returns plain per-seed lists: ``reference`` (W*'s errors), for each name its
    ``distance`` ||W - W*|| / ||W*||, ``norm_ratio`` ||W|| / ||W*||, ``grad_l2``, errors,
    ``agreement`` with W*'s test predictions and Figure 2's alignment (:func:`alignment_of`),
    and ``adam_vs_gd`` (distance, agreement).
    """
    cfgs = {name: load_run_config(d) for name, d in runs.items()}
    base = cfgs["gd"]
    for name, cfg in cfgs.items():
        same = (OmegaConf.to_container(cfg.data) == OmegaConf.to_container(base.data)
                and cfg.seed == base.seed and cfg.run.replicas == base.run.replicas
                and cfg.model.m == base.model.m)
        if cfg.model.name != "linear" or not same:
            raise ConfigError(f"convex runs must be linear models on the same data and seeds: "
                              f"{runs[name]} differs from {runs['gd']}")
    lam = float(base.optim.lam)
    dm = build_datamodule(base)
    dm.setup()
    w_star = minimiser(dm.train, lam, base.model.m)
    ref = evaluate(w_star, dm.train, dm.test, lam)
    out: dict = {"seeds": seeds_of(base), "lam": lam,
                 "reference": {"train_error": ref.train_error.tolist(),
                               "test_error": ref.test_error.tolist(),
                               "grad_l2": ref.grad_l2.tolist(),
                               "certified": certified_distance(w_star, dm.train, lam).tolist(),
                               **alignment_of(w_star, dm)}}
    weights, solutions = {}, {}
    for name, d in runs.items():
        weights[name] = w = load_weight(d)
        solutions[name] = sol = evaluate(w, dm.train, dm.test, lam)
        out[name] = {"distance": relative_distance(w, w_star).tolist(),
                     "norm_ratio": (w.double().flatten(1).norm(dim=1)
                                    / w_star.flatten(1).norm(dim=1)).tolist(),
                     "grad_l2": sol.grad_l2.tolist(),
                     "train_error": sol.train_error.tolist(),
                     "test_error": sol.test_error.tolist(),
                     "agreement": agreement(sol, ref).tolist(), **alignment_of(w, dm)}
    if "adam" in runs:
        out["adam_vs_gd"] = {
            "distance": relative_distance(weights["adam"], weights["gd"]).tolist(),
            "agreement": agreement(solutions["adam"], solutions["gd"]).tolist()}
    return out
