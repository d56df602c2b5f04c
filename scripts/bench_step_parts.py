"""Speed: the parts of one Adam step as a chunk of ``GapModule`` runs it, against the batch size,
at the paper's sizes (``conf=synthetic_adam``: d = 1000, n = 200, s = 100, m = 20), measured
side by side in one process (batches built beforehand; the ways alternated over the repeats):

- ``gradient``: the closed-form objective and gradient (``objective.objective_and_gradient``);
- ``Adam``: ``torch.optim.Adam(fused=True).step()`` over the 40 000 weights;
- ``sums``: the per-step sums the divergence check reads (``objective.replica_sums``).

From them, the floor of the issue's ratio target: a step is a batch-independent part F plus a
part D B/n that grows with the batch, so a batch-B step costs at least (F + D B/n) / (F + D)
of a full-batch step, which is at most B/n + 0.1 only if F <= D (0.1 / (1 - B/n - 0.1)),
i.e. F <= D / 4 at B = 100. Printed: D (the gradient's growth from B = 2 to n, scaled to
the whole batch), F (a step at B = 2 less its share of D) and the resulting floor at B = 100.

    python scripts/bench_step_parts.py [--steps 500] [--repeats 5]
"""

import argparse
import statistics
import sys
import time

import torch

from adamgap import objective, provenance
from adamgap.config import load_config
from adamgap.train import build_datamodule, build_module, process_settings

BATCHES = (2, 20, 100, 200)


def parts_of(B: int, steps: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per step of each part at batch size B."""
    cfg = load_config("synthetic_adam", [f"data.batch_size={B}"])
    process_settings(cfg)  # as train.run sets them
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm)
    net, lam = module.net, module.lam
    W = torch.nn.Parameter(net.weight.detach().clone())
    opt = torch.optim.Adam([W], lr=cfg.optim.lr, fused=True)
    batches = [dm.train_batch(t) for t in range(steps)]

    def gradient() -> None:
        for x, y in batches:
            W.grad = objective.objective_and_gradient(net, x, y, lam, [W.detach()])[2][0]

    def adam() -> None:
        for _ in batches:
            opt.step()

    def sums() -> None:
        for _ in batches:
            objective.replica_sums([W.grad], 1)
            objective.replica_sums([W], 1)

    parts = {"gradient": gradient, "Adam": adam, "sums": sums}
    gradient()  # warm: every batch's first use, W.grad set
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(repeats):
        for key, fn in parts.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) / steps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_step_parts.py")
    p.add_argument("--steps", type=int, default=500, help="steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ms = {B: parts_of(B, args.steps, args.repeats) for B in BATCHES}
    n = BATCHES[-1]
    print(f"provenance: {provenance.line(provenance.collect())}")
    print(f"ms per step, medians of {args.repeats} x {args.steps} steps")
    print("| batch B | gradient | Adam | sums | step |")
    print("|---|---|---|---|---|")
    for B in BATCHES:
        parts = ms[B]
        print(f"| {B} | {parts['gradient']:.3f} | {parts['Adam']:.3f} | {parts['sums']:.3f} | "
              f"{sum(parts.values()):.3f} |")
    small = BATCHES[0]
    D = (ms[n]["gradient"] - ms[small]["gradient"]) * n / (n - small)
    F = sum(ms[small].values()) - D * small / n
    floor = (F + D * 100 / n) / (F + D)
    print(f"D (batch-dependent, whole batch) = {D:.3f} ms; F (batch-independent) = {F:.3f} ms, "
          f"of which Adam {ms[small]['Adam']:.3f} ms; the target 0.6 at B = 100 needs "
          f"F <= D / 4 = {D / 4:.3f} ms; with these parts a batch-100 step costs at least "
          f"{floor:.2f}x a full-batch one")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
