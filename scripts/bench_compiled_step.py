"""Speed: what ``torch.compile`` would gain on a mini-batch step of the stochastic study
(``conf=stochastic_adam``: batches of B, Adam with L2 in the loss). Three ways to run the same
steps, measured side by side in one process:

- ``suite``: as a chunk of ``GapModule`` runs it: the closed-form gradient
  (``objective.objective_and_gradient``) and ``torch.optim.Adam(fused=True).step()``;
- ``compiled gradient``: that gradient through ``torch.compile``, the same fused Adam step;
- ``compiled step``: the gradient and ``torch.optim.Adam(foreach=True).step()``, each through
  ``torch.compile`` (a constant learning rate: a schedule would recompile every step).

Prints the compile time (the first calls), the median time of a step and how far the
compiled runs' weights end from the suite's after the measured steps (compiled code fuses and
reorders the arithmetic: equal to round-off, not bit for bit).

    python scripts/bench_compiled_step.py [--batch 2] [--steps 500] [--repeats 5]
"""

import argparse
import statistics
import sys
import time

import torch

from adamgap import objective, provenance
from adamgap.config import load_config
from adamgap.train import build_datamodule, build_module, process_settings


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_compiled_step.py")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=500, help="steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config("stochastic_adam", [f"data.batch_size={args.batch}",
                                          "trainer.max_epochs=100"])
    process_settings(cfg)  # as train.run sets them
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm)
    net, lam, lr, betas = module.net, module.lam, cfg.optim.lr, tuple(cfg.optim.betas)
    batches = [dm.train_batch(t) for t in range(args.steps)]

    def runner(compile_gradient: bool, compile_step: bool):
        W = torch.nn.Parameter(net.weight.detach().clone())
        kernel = {"foreach": True} if compile_step else {"fused": True}
        opt = torch.optim.Adam([W], lr=lr, betas=betas, **kernel)

        def gradient(W, x, y):
            return objective.objective_and_gradient(net, x, y, lam, [W])[2][0]
        grad_fn = torch.compile(gradient, dynamic=False) if compile_gradient else gradient
        step_fn = torch.compile(opt.step) if compile_step else opt.step

        def steps(count: int) -> None:
            for x, y in batches[:count]:
                W.grad = grad_fn(W.detach(), x, y)
                step_fn()
        return W, steps

    ways = {"suite": runner(False, False), "compiled gradient": runner(True, False),
            "compiled step": runner(True, True)}
    first = {}
    for name, (_, steps) in ways.items():
        start = time.perf_counter()
        steps(3)  # compiles
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):  # alternated, so that all see the same machine
        for name, (_, steps) in ways.items():
            start = time.perf_counter()
            steps(args.steps)
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    W0 = ways["suite"][0].detach()
    base = statistics.median(times["suite"])
    print(f"conf=stochastic_adam data.batch_size={args.batch}, medians of {args.repeats} x "
          f"{args.steps} steps (after 3 + {args.repeats} x {args.steps} steps each):")
    for name, (W, _) in ways.items():
        ms = statistics.median(times[name])
        gap = (W.detach() - W0).abs().max().item()
        print(f"  {name:18s} {ms:.3f} ms a step ({ms / base:.2f}x the suite's); first 3 steps "
              f"{first[name]:.1f} s; max |W - W_suite| = {gap:.2e}")
    print(f"provenance: {provenance.line(provenance.collect())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
