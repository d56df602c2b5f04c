"""Speed: the atlas's tuning ensemble (11 step sizes on the one tuning seed's data) as 11
block-diagonal copies of the data against (K d, 2m) weights, which is how the suite runs it,
against the one data set against (d, K 2m) weights. Both sparse products (forward ``X W`` and
backward ``X^T dZ``) give the same floats; this prints their medians, measured side by side.

    python scripts/bench_tuning_product.py [--repeats 7] [--steps 200]
"""

import argparse
import statistics
import sys
import time

import torch

from adamgap import provenance
from adamgap.config import load_config
from adamgap.experiments.atlas import GRID, TUNE_SEED
from adamgap.patches import CSR, SparsePatches, csr_matmul
from adamgap.train import build_datamodule


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_tuning_product.py")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=200, help="products per repeat")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    K = len(GRID)
    cfg = load_config("default", [f"optim.lrs=[{','.join(map(str, GRID))}]",
                                  "optim.layout=replicas", f"seed={TUNE_SEED}"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    x, _ = dm.full_batch  # (K, n, P, d), every replica's block the tuning seed's data
    _, n, P, d = x.shape
    cm = 2 * cfg.model.m
    rows = n * P
    nnz = int(x.matrix.crow[rows])
    one = SparsePatches(CSR(x.matrix.crow[:rows + 1], x.matrix.col[:nnz], x.matrix.val[:nnz],
                            (rows, d)), None, (1, n, P, d))
    g = torch.Generator().manual_seed(0)
    W = torch.randn(K, d, cm, generator=g)  # the weights, (K, d, 2m)
    dZ = torch.randn(K, rows, cm, generator=g)  # a backward pass's input, (K, n P, 2m)

    def blocks():  # the suite's layout: (K n P, K d) block-diagonal
        return (csr_matmul(x.matrix, W.reshape(K * d, cm)).view(K, rows, cm),
                csr_matmul(x.transpose(), dZ.reshape(K * rows, cm)).view(K, d, cm))

    def shared():  # one data set against the replicas side by side
        z = csr_matmul(one.matrix, W.permute(1, 0, 2).reshape(d, K * cm))
        dw = csr_matmul(one.transpose(), dZ.permute(1, 0, 2).reshape(rows, K * cm))
        return (z.view(rows, K, cm).permute(1, 0, 2).contiguous(),
                dw.view(d, K, cm).permute(1, 0, 2).contiguous())

    same = all(torch.equal(a, b) for a, b in zip(blocks(), shared(), strict=True))
    times: dict[str, list[float]] = {"blocks": [], "shared": []}
    for _ in range(args.repeats):  # alternated, so that both see the same machine
        for name, fn in (("blocks", blocks), ("shared", shared)):
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    a, b = (statistics.median(times[k]) for k in ("blocks", "shared"))
    print(f"K={K} replicas, n={n}, d={d}, 2m={cm}: forward + backward product, medians of "
          f"{args.repeats} x {args.steps}: block-diagonal {a:.3f} ms, shared data {b:.3f} ms "
          f"({b / a:.2f}x); equal bit for bit: {same}")
    print(f"provenance: {provenance.line(provenance.collect())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
