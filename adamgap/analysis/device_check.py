"""The prepared GPU check (``scripts/device_check.sh``): one table of what only a GPU can say.

    bash scripts/device_check.sh                 # on the GPU, paper sizes (a few minutes)
    bash scripts/device_check.sh --small --accelerator cpu   # the same checks in seconds

Rows:

- **ensemble scaling**: ms per Adam step at the paper's settings (Section 6: d = 1000, n = 200,
  m = 20) for K = 1 and K = 1000 seeds in one ensemble, and their ratio. docs/benchmark.md's
  design says a step is a fixed number of kernels whatever K, so on a GPU the ratio should be
  small; on a CPU it grows with K. The cost is marginal (fit time at T2 less at T1 steps, over
  T2 - T1), so drawing the data cancels; the ensemble runs draw 1000 test examples per seed
  (10 000 x 1000 would take minutes of CPU sampling, docs/benchmark.md), which changes no step.
- **bit for bit**: two identical runs on the device (``synthetic_adam``, seed 0, T = 10 000):
  the final weights ``torch.equal`` and the summaries' numbers equal.
- **CPU vs device**: README Table 1 (seeds 0-4, ``synthetic_adam`` and ``synthetic_gd``, as one
  ensemble each) on the CPU and on the device: test errors, feature learning, noise
  memorization, and their largest difference.
- **real CNN**: ResNet-18 (``tasks.resnet``) training throughput on random 32x32 images, in
  images per second (SGD steps of cross-entropy, after warm-up), fp32 and, on a GPU, bf16.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adamgap import provenance, train
from adamgap.config import load_config
from adamgap.outputs import write_json
from adamgap.summary import replicas_of
from adamgap.tasks.images import ImageClassifier


@dataclass(frozen=True)
class Sizes:
    """What each check runs: the paper's sizes on the device, or small ones for a CPU test."""

    data: tuple[str, ...]  # overrides of the paper's Definition 3.1 instance
    seeds_many: int  # K of the large ensemble
    n_test_many: int  # test examples per seed in the large ensemble
    steps: tuple[int, int]  # T1, T2 of the marginal step cost
    table1_steps: int  # T of the Table-1 and bit-for-bit runs
    table1_seeds: int
    cnn_batch: int
    cnn_steps: int


PAPER = Sizes((), 1000, 1000, (1000, 3000), 10_000, 5, 256, 30)
SMALL = Sizes(("data.d=100", "data.n=20", "data.n_test=50", "data.s=10", "model.m=4"),
              8, 50, (20, 60), 100, 2, 4, 2)


def run_one(conf: str, overrides: list[str], work: Path, name: str) -> tuple[dict, Path]:
    """One in-process run (``train.run``) in ``work/name``; its summary and directory."""
    run_dir = work / name
    cfg = load_config(conf, [*overrides, f"run.dir={run_dir}", "trainer.progress_bar=false"])
    return train.run(cfg), run_dir


def ensemble_scaling(sizes: Sizes, accelerator: str, work: Path) -> dict:
    """ms per Adam step for K = 1 and K = many, marginal over T1..T2 steps."""
    out = {}
    for K in (1, sizes.seeds_many):
        fits = []
        for T in sizes.steps:
            extra = [f"data.n_test={sizes.n_test_many}"] if K > 1 else []
            summary, _ = run_one("synthetic_adam", [
                *sizes.data, *extra, f"run.replicas={K}", f"trainer.max_steps={T}",
                f"trainer.eval_every={T}", "align.enabled=false", "run.checkpoint_every=0",
                f"trainer.accelerator={accelerator}"], work, f"scale-K{K}-T{T}")
            fits.append(summary["wall_seconds"])
        out[K] = 1e3 * (fits[1] - fits[0]) / (sizes.steps[1] - sizes.steps[0])
    return out


def bit_for_bit(sizes: Sizes, accelerator: str, work: Path) -> dict:
    """Two identical runs on ``accelerator``: equal weights and summary numbers?"""
    weights, numbers = [], []
    for i in range(2):
        summary, run_dir = run_one("synthetic_adam", [
            *sizes.data, f"trainer.max_steps={sizes.table1_steps}",
            f"trainer.accelerator={accelerator}"], work, f"twice-{i}")
        weights.append(torch.load(run_dir / "weights.pt", map_location="cpu")["weight"])
        numbers.append({k: v for k, v in replicas_of(summary)[0].items()
                        if k != "wall_seconds"})
    return {"weights_equal": torch.equal(*weights), "summary_equal": numbers[0] == numbers[1],
            "max_abs_weight_difference": float((weights[0] - weights[1]).abs().max())}


TABLE1_KEYS = ("train_error", "test_error", "feature_learning", "noise_memorization")


def cpu_vs_device(sizes: Sizes, accelerator: str, work: Path) -> dict:
    """Table 1's runs on the CPU and on ``accelerator``: per-seed numbers, largest gaps."""
    out: dict = {}
    for conf in ("synthetic_adam", "synthetic_gd"):
        rows = []
        for i, where in enumerate(("cpu", accelerator)):
            summary, _ = run_one(conf, [
                *sizes.data, f"trainer.max_steps={sizes.table1_steps}",
                f"run.replicas={sizes.table1_seeds}", f"trainer.accelerator={where}"],
                work, f"table1-{conf}-{i}-{where}")
            rows.append({k: [r[k] for r in replicas_of(summary)] for k in TABLE1_KEYS})
        gaps = {k: max(abs(a - b) for a, b in zip(rows[0][k], rows[1][k], strict=True))
                for k in TABLE1_KEYS}
        out[conf] = {"cpu": rows[0], "device": rows[1], "max_difference": gaps}
    return out


def cnn_throughput(sizes: Sizes, accelerator: str) -> dict:
    """Training images per second of ResNet-18 on random 32x32x3 images, 10 classes."""
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(sizes.cnn_batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (sizes.cnn_batch,), generator=g).to(device)
    out = {}
    for precision in ("fp32", "bf16") if device.type == "cuda" else ("fp32",):
        out[precision] = _images_per_second(sizes, device, x, y, precision == "bf16")
    return out


def _images_per_second(sizes: Sizes, device: torch.device, x: torch.Tensor, y: torch.Tensor,
                       bf16: bool) -> float:
    net = ImageClassifier("resnet18", 3, 32, 10, seed=0).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x)[0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: cuDNN autotuning, the allocator
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(sizes.cnn_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sizes.cnn_batch * sizes.cnn_steps / (time.perf_counter() - start)


def _fmt(xs: list[float]) -> str:
    return ", ".join(f"{x:.4g}" for x in xs)


def table(results: dict, sizes: Sizes, accelerator: str) -> str:
    """The one table the check prints (markdown)."""
    K = sizes.seeds_many
    s = results["scaling"]
    b = results["bit_for_bit"]
    rows = [
        ("ensemble scaling", f"1 seed: {s[1]:.3f} ms / step; {K} seeds in one ensemble: "
         f"{s[K]:.3f} ms / step", f"{s[K] / s[1]:.1f}x the cost for {K}x the seeds"),
        ("bit for bit (two identical runs)",
         f"weights equal: {b['weights_equal']}; summary numbers equal: {b['summary_equal']}",
         f"max |w1 - w2| = {b['max_abs_weight_difference']:.3g}"),
    ]
    for conf, r in results["cpu_vs_device"].items():
        gaps = ", ".join(f"{k} {v:.3g}" for k, v in r["max_difference"].items())
        rows.append((f"CPU vs {accelerator}: {conf}",
                     f"test error cpu [{_fmt(r['cpu']['test_error'])}] vs "
                     f"[{_fmt(r['device']['test_error'])}]; feature learning cpu "
                     f"[{_fmt(r['cpu']['feature_learning'])}] vs "
                     f"[{_fmt(r['device']['feature_learning'])}]", f"largest gaps: {gaps}"))
    rows.append(("real CNN (ResNet-18, 32x32 images)",
                 "; ".join(f"{p}: {v:,.0f} images/s" for p, v in results["cnn"].items()),
                 f"batch {sizes.cnn_batch}, {sizes.cnn_steps} SGD steps"))
    head = (f"device check on {accelerator} ({'small sizes' if sizes is SMALL else 'paper sizes'}"
            f"), {results['wall_seconds']:.0f} s; {provenance.line(provenance.collect())}")
    return "\n".join([head, "", "| check | measured | |", "|---|---|---|",
                      *(f"| {a} | {m} | {n} |" for a, m, n in rows)]) + "\n"


def check(sizes: Sizes, accelerator: str, work: Path) -> dict:
    start = time.perf_counter()
    results = {"accelerator": accelerator,
               "scaling": ensemble_scaling(sizes, accelerator, work),
               "bit_for_bit": bit_for_bit(sizes, accelerator, work),
               "cpu_vs_device": cpu_vs_device(sizes, accelerator, work),
               "cnn": cnn_throughput(sizes, accelerator)}
    results["wall_seconds"] = time.perf_counter() - start
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/device_check.sh", description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="small sizes (a CPU test, seconds)")
    p.add_argument("--accelerator", choices=("gpu", "cpu"),
                   default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--work", default=None, help="run directories here (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print("error: --accelerator gpu: torch sees no GPU (use --accelerator cpu)",
              file=sys.stderr)
        return 2
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    sizes = SMALL if args.small else PAPER
    work = Path(args.work or tempfile.mkdtemp(prefix="adamgap-device-"))
    results = check(sizes, args.accelerator, work)
    if args.json:
        write_json(Path(args.json), results)
    print(table(results, sizes, args.accelerator), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
