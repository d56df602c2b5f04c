"""Speed: adamgap's runs against a plain PyTorch loop of the same math, side by side.

    python scripts/benchmark.py     # the tables, printed and written into docs/benchmark.md

What is timed (wall clock of a fresh process each, so start-up and data are included; median
over ``repeats``):

- ``train.py``: one default run, ``python scripts/train.py conf=synthetic_adam`` (Section 6:
  d=1000, n=200, n_test=10 000, T=10 000 full-batch Adam steps, test error every 1000 steps,
  alignment every 100);
- ``plain loop``: :func:`plain_loop`, what one would write without this project: dense (n, 2, d)
  patches, ``einsum`` forward, autograd, ``torch.optim.Adam``, logistic loss + (lam/2)||W||^2,
  the test error at the same cadence; with and without ``torch.set_flush_denormal(True)``;
- ``Table 1``: ``scripts/sweep.py`` over {synthetic_adam, synthetic_gd} x 10 seeds;
- the cost of one Adam step against the batch size B (the marginal cost: fit time of a long
  run less that of a short one, over the steps between; evaluation and alignment off), and the
  ratio to a full-batch step;
- the follow-up's batch-2 protocol (``conf=stochastic_adam``: 10^4 epochs = 10^6 steps), one
  seed, and five seeds as one ensemble (per seed);
- the cost of one run as d, n, T and the number of seeds K grow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from adamgap import provenance
from adamgap.outputs import write_text

ROOT = Path(__file__).resolve().parents[2]
END = "<!-- to here -->"  # and begin(writer): the part of a page its script rewrites


# -- the baseline ----------------------------------------------------------------------------------
def plain_loop(seed: int = 0, d: int = 1000, n: int = 200, n_test: int = 10_000, s: int = 100,
               alpha: float = 0.2, m: int = 20, sigma_0: float = 0.01, lam: float = 1e-5,
               lr: float = 1e-4, steps: int = 10_000, eval_every: int = 1000,
               flush_denormal: bool = False) -> dict:
    """Definition 3.1 data, the two-layer cubic CNN and full-batch Adam in plain PyTorch: the
    straightforward implementation the benchmark compares against (no sparsity, no Lightning)."""
    torch.set_flush_denormal(flush_denormal)
    g = torch.Generator().manual_seed(seed)

    def data(N: int):
        y = torch.where(torch.rand(N, generator=g) < 0.5, 1.0, -1.0)
        xi = torch.zeros(N, d)
        idx = torch.rand(N, d - 1, generator=g).argsort(dim=1)[:, :s] + 1  # s of coords 2..d
        xi.scatter_(1, idx, torch.randn(N, s, generator=g) / math.sqrt(s))  # sigma_p=1/sqrt(s)
        xi[:, 0] = -alpha * y  # feature noise
        feature = torch.zeros(N, d)
        feature[:, 0] = y  # y v, v = e_1
        first = torch.rand(N, generator=g) < 0.5  # which patch holds the feature
        x = torch.where(first[:, None, None], torch.stack([feature, xi], 1),
                        torch.stack([xi, feature], 1))
        return x, y  # (N, 2, d), (N,)

    x, y = data(n)
    x_test, y_test = data(n_test)
    W = (sigma_0 * torch.randn(2, m, d, generator=g)).requires_grad_()
    opt = torch.optim.Adam([W], lr=lr)

    def f(x):
        z = torch.einsum("npd,jrd->npjr", x, W)  # <w_{j,r}, x_p>
        F = torch.relu(z).pow(3).sum(dim=(1, 3))  # (N, 2)
        return F[:, 0] - F[:, 1]

    def error(x, y) -> float:
        with torch.no_grad():
            return float((f(x) * y <= 0).float().mean())

    test_error = math.nan
    for t in range(steps):
        loss = torch.nn.functional.softplus(-y * f(x)).mean() + lam / 2 * W.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (t + 1) % eval_every == 0 or t + 1 == steps:
            test_error = error(x_test, y_test)
    return {"train_error": error(x, y), "test_error": test_error}


# -- timing ----------------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of a fresh process running ``cmd`` (from the repository root), its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=os.environ | (env or {}))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")
    return wall, proc.stdout


def last_json(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])


def median_of(repeats: int, fn) -> tuple[float, list[float], object]:
    walls, out = [], None
    for _ in range(repeats):
        wall, out = fn()
        walls.append(wall)
    return statistics.median(walls), walls, out


def train_cmd(work: Path, name: str, *overrides: str) -> list[str]:
    """The default run exactly as a user types it (progress bar and all), in its own dir."""
    return [sys.executable, "scripts/train.py", "conf=synthetic_adam", f"run.dir={work / name}",
            *overrides]


# scripts/train.py without its start-up measure (startup.collector_paused): the ablation row
WITHOUT_GC_PAUSE = ("import sys; from adamgap.cli import main; from adamgap.train import run; "
                    "sys.exit(main(run, sys.argv[1:]))")


def bench(repeats: int = 3, scaling: bool = True, threads: int = 1,
          out: Path | None = ROOT / "docs" / "benchmark.md", log=print,
          batches: bool = True, protocol: bool = True,
          command: str = "python scripts/benchmark.py",
          protocol_repeats: int | None = None) -> str:
    """Run every measurement; return (and write to ``out``) the markdown report. The repeats
    of the single-run variants are interleaved (A, B, C, A, B, C, ...) so that a change in the
    machine's load touches all of them alike; the batch-2 protocol runs (10^6 steps each) take
    ``protocol_repeats`` (default: ``repeats``)."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    work = Path(tempfile.mkdtemp(prefix="adamgap-bench-"))
    counter = iter(range(10**6))

    def fresh(name: str) -> str:
        return f"{name}{next(counter)}"

    def train(*overrides: str):
        wall, stdout = timed(train_cmd(work, fresh("run"), *overrides), env)
        return wall, last_json(stdout)

    def train_without_gc_pause():
        cmd = [sys.executable, "-c", WITHOUT_GC_PAUSE, "conf=synthetic_adam",
               f"run.dir={work / fresh('run')}"]
        wall, stdout = timed(cmd, env)
        return wall, last_json(stdout)

    def plain(flush: bool):
        code = (f"import json; from adamgap.analysis.benchmark import plain_loop; "
                f"print(json.dumps(plain_loop(flush_denormal={flush})))")
        wall, stdout = timed([sys.executable, "-c", code], env)
        return wall, last_json(stdout)

    variants = {
        "train": lambda: train(),
        "k1": lambda: train("trainer.steps_per_batch=1"),
        "nogc": train_without_gc_pause,
        "plain": lambda: plain(False),
        "plain_flush": lambda: plain(True),
    }
    load_before = os.getloadavg()[0]
    log(f"benchmark: {repeats} repeats, {threads} thread(s) per process, work dir {work}")
    walls: dict[str, list[float]] = {k: [] for k in variants}
    result: dict[str, dict] = {}
    for r in range(repeats):
        for key, fn in variants.items():
            wall, result[key] = fn()
            walls[key].append(wall)
            log(f"repeat {r}: {key} {wall:.2f} s -> {result[key]}")
    med = {k: statistics.median(v) for k, v in walls.items()}

    def errors(key: str) -> str:
        return (f"test error {result[key]['test_error']:.3f}, train error "
                f"{result[key]['train_error']:.3f}")

    a, b = med["train"], {False: med["plain"], True: med["plain_flush"]}
    rows = [
        ("`python scripts/train.py conf=synthetic_adam`", f"{a:.1f}",
         f"{errors('train')}; {a / b[False]:.2f}x the plain loop ({a / b[True]:.2f}x its "
         "flushed variant)"),
        ("the same with `trainer.steps_per_batch=1` (Lightning drives every step, autograd)",
         f"{med['k1']:.1f}", errors("k1")),
        ("the same started without `startup.collector_paused` (garbage collector on while "
         "importing)", f"{med['nogc']:.1f}", errors("nogc")),
        ("plain PyTorch loop, flush_denormal=False", f"{b[False]:.1f}", errors("plain")),
        ("plain PyTorch loop, flush_denormal=True", f"{b[True]:.1f}", errors("plain_flush")),
    ]

    def table1():
        sweep = work / fresh("table1")
        wall, _ = timed([sys.executable, "scripts/sweep.py",
                         "sweep.grid.conf=[synthetic_adam,synthetic_gd]", "sweep.seeds=10",
                         "sweep.jobs=2", f"sweep.threads={threads}", f"sweep.dir={sweep}"], env)
        return wall, (sweep / "aggregate.md").read_text()

    c, c_walls, c_out = median_of(repeats, table1)
    log(f"Table 1 sweep: {c_walls}\n{c_out}")
    rows.append(("Table 1: `scripts/sweep.py sweep.grid.conf=[synthetic_adam,synthetic_gd] "
                 "sweep.seeds=10 sweep.jobs=2`", f"{c:.1f}", "20 runs of 10 000 steps"))
    steps = step_cost_rows(train, repeats, log) if batches else []
    protocol_runs = (protocol_rows(train, protocol_repeats or repeats, log)
                     if batches and protocol else [])
    scale = scaling_rows(train, log) if scaling else []
    load = (load_before, os.getloadavg()[0])
    text = markdown(rows, scale, repeats, threads, a, b, c, load, steps, protocol_runs, command,
                    protocol_repeats or repeats)
    if out is not None:
        write_into(out, text)
    return text


def begin(writer: str) -> str:
    """The line after which ``writer`` (the command that measures) rewrites a page."""
    return f"<!-- {writer} writes from here -->"


def write_into(path: Path, text: str, writer: str = "scripts/benchmark.py") -> None:
    """Replace what stands between ``begin(writer)`` and ``END`` in ``path`` (the measured
    tables; the prose around them is the document's own) with ``text``; a new file holds
    ``text`` alone."""
    start = begin(writer)
    old = path.read_text() if path.is_file() else f"{start}\n{END}\n"
    head, rest = old.split(start, 1) if start in old else (old, END)
    tail = rest.split(END, 1)[1] if END in rest else ""
    write_text(path, f"{head}{start}\n{text}{END}{tail}")


BATCHES = (2, 4, 10, 20, 50, 100, 200)  # the follow-up's batch sizes (n = 200)
STEP_COST = (2000, 10_000)  # the short and the long run whose difference is timed
QUIET = ["align.enabled=false", "trainer.progress_bar=false"]  # evaluation: once, at the end


def step_cost_rows(train, repeats: int, log) -> list[tuple[int, float, float]]:
    """(B, ms per Adam step, ratio to the full-batch step) at the paper's sizes: the marginal
    cost (fit time at T = 10 000 less at T = 2000, over 8000 steps), so that drawing the data
    and the final evaluation cancel; repeats interleaved over the batch sizes; medians."""
    cost: dict[int, list[float]] = {B: [] for B in BATCHES}
    for r in range(repeats):
        for B in BATCHES:
            fits = []
            for T in STEP_COST:
                _, summary = train(f"data.batch_size={B}", f"trainer.max_steps={T}",
                                   f"trainer.eval_every={T}", *QUIET)
                fits.append(summary["wall_seconds"])
            cost[B].append(1e3 * (fits[1] - fits[0]) / (STEP_COST[1] - STEP_COST[0]))
            log(f"repeat {r}: batch {B}: {cost[B][-1]:.3f} ms / step (fits {fits})")
    med = {B: statistics.median(v) for B, v in cost.items()}
    full = med[BATCHES[-1]]
    return [(B, med[B], med[B] / full) for B in BATCHES]


PROTOCOL = {  # the follow-up's batch-2 protocol: conf=stochastic_adam (10^6 steps)
    "one seed": ("conf=stochastic_adam",),
    "5 seeds, one ensemble": ("conf=stochastic_adam", "run.replicas=5"),
}


def protocol_rows(train, repeats: int, log) -> list[tuple[str, float, float, str]]:
    """(what, process wall s, wall s per seed, result) of the batch-2 protocol runs, medians of
    ``repeats`` interleaved fresh processes."""
    walls: dict[str, list[float]] = {k: [] for k in PROTOCOL}
    result: dict[str, dict] = {}
    for r in range(repeats):
        for key, overrides in PROTOCOL.items():
            wall, result[key] = train(*overrides, "trainer.progress_bar=false")
            walls[key].append(wall)
            log(f"repeat {r}: protocol {key}: {wall:.1f} s -> test error "
                f"{result[key]['test_error']:.4f}")
    out = []
    for key, overrides in PROTOCOL.items():
        wall = statistics.median(walls[key])
        seeds = int(next((o.split("=")[1] for o in overrides if o.startswith("run.replicas")),
                         1))
        res = result[key]
        out.append((key, wall, wall / seeds, f"test error {res['test_error']:.3f}, train error "
                                             f"{res['train_error']:.3f} (mean over seeds)"))
    return out


SCALING = [  # (what varies, overrides); T = 2000 steps keeps the table quick
    ("default (d=1000, n=200, K=1)", []),
    ("d=500", ["data.d=500"]), ("d=2000", ["data.d=2000"]),
    ("n=100", ["data.n=100"]), ("n=400", ["data.n=400"]),
    ("T=1000", ["trainer.max_steps=1000"]), ("T=4000", ["trainer.max_steps=4000"]),
    ("K=10 seeds", ["run.replicas=10"]), ("K=30 seeds", ["run.replicas=30"]),
]


def scaling_rows(train, log) -> list[tuple[str, str, str, str]]:
    """Process wall time and in-run (fit) time of a 2000-step Adam run as one size changes."""
    out = []
    for label, extra in SCALING:
        overrides = ["trainer.max_steps=2000", *extra]
        wall, summary = train(*overrides)
        fit = summary["wall_seconds"]
        steps = int(next(o.split("=")[1] for o in overrides[::-1] if "max_steps" in o))
        out.append((label, f"{wall:.1f}", f"{fit:.1f}", f"{1e3 * fit / steps:.2f}"))
        log(f"scaling {label}: wall {wall:.1f} s, fit {fit:.1f} s")
    return out


def markdown(rows, scale, repeats, threads, a, b, c, load=(math.nan, math.nan),
             steps=(), protocol=(), command: str = "python scripts/benchmark.py",
             protocol_repeats: int | None = None) -> str:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    busy = (f" The machine's 1-minute load average was {load[0]:.1f} at the start and "
            f"{load[1]:.1f} at the end" + (": other jobs shared the cores, so these times are "
                                           "inflated." if max(load) > 1.5 else "."))
    lines = [
        f"`{command}` on {machine}, {threads} thread(s) per process; medians "
        f"of {repeats} fresh processes (wall seconds, start-up and data included).{busy}", "",
        f"Provenance: {provenance.line(provenance.collect())}.", "",
        "| what | wall s | notes |", "|---|---|---|",
        *(f"| {w} | {s} | {n} |" for w, s, n in rows), "",
        f"Targets: `train.py` <= 0.4x the plain loop: **{a / b[True]:.2f}x** (against the plain "
        f"loop with flushed denormals; {a / b[False]:.2f}x without); Table 1 (10 seeds x "
        f"{{Adam, GD}}) < 60 s: **{c:.1f} s**." + _batch_targets(steps, protocol), ""]
    if steps:
        lines += ["## Cost of one Adam step against the batch size (d = 1000, n = 200, K = 1)", "",
                  "Marginal cost: (fit s at T = 10 000 - fit s at T = 2000) / 8000, alignment "
                  "off, one evaluation at the end; `target` is B/n + 0.1.", "",
                  "| batch B | ms / step | x full-batch step | target |", "|---|---|---|---|",
                  *(f"| {B} | {ms:.3f} | {ratio:.2f} | "
                    + (f"{B / BATCHES[-1] + 0.1:.2f} |" if B < BATCHES[-1] else "- |")
                    for B, ms, ratio in steps), ""]
    if protocol:
        lines += ["## The follow-up's batch-2 protocol (`conf=stochastic_adam`: 10^4 epochs, "
                  "10^6 steps)", "",
                  f"Medians of {protocol_repeats or repeats} fresh processes.", "",
                  "| run | process wall s | wall s per seed | result |", "|---|---|---|---|",
                  *(f"| {k} | {w:.1f} | {p:.1f} | {res} |" for k, w, p, res in protocol), ""]
    if scale:
        lines += ["## Cost of one run (Adam, T = 2000 unless stated)", "",
                  "`fit s` is `summary.json`'s `wall_seconds`: Lightning's fit, which includes "
                  "drawing the data; `ms / step` is fit s / T.", "",
                  "| size | process wall s | fit s | ms / step |", "|---|---|---|---|",
                  *(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in scale), ""]
    return "\n".join(lines) + "\n"


def _batch_targets(steps, protocol) -> str:
    parts = []
    if steps:
        ratio = dict((B, r) for B, _, r in steps)[100]
        parts.append(f"Batch-100 step <= 0.6x a full-batch step: **{ratio:.2f}x**")
    if protocol:
        parts.append(f"the batch-2 protocol <= 300 s per seed: **{protocol[0][2]:.0f} s** (one "
                     f"seed), **{protocol[1][2]:.0f} s** per seed in a 5-seed ensemble")
    return (" " + "; ".join(parts) + ".") if parts else ""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--no-scaling", action="store_true", help="skip the cost-scaling table")
    p.add_argument("--no-batches", action="store_true",
                   help="skip the step cost against the batch size and the batch-2 protocol")
    p.add_argument("--no-protocol", action="store_true",
                   help="skip the batch-2 protocol runs (10^6 steps each), keep the step costs")
    p.add_argument("--protocol-repeats", type=int, default=None,
                   help="repeats of the batch-2 protocol runs (default: --repeats)")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmark.md"))
    args = p.parse_args(argv)
    print(bench(args.repeats, not args.no_scaling, args.threads, Path(args.out),
                batches=not args.no_batches, protocol=not args.no_protocol,
                command=" ".join(["python scripts/benchmark.py", *argv]),
                protocol_repeats=args.protocol_repeats))
    return 0
