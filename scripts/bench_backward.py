"""Speed: the two ways a sparse mini-batch takes its backward product ``X_B^T dz``
(``SparsePatches.transpose_matmul``), side by side in one process, at the paper's sizes
(``conf=synthetic_adam``: d = 1000, n = 200, s = 100, 2m = 40 filters):

- ``own``: every batch with a transpose of its own, those of a group of epochs from one
  stable sort of their nonzeros (``data.sparse_epoch(..., source=False)``);
- ``source``: every batch with the training set's transpose, built once, its rows of ``dz``
  copied into a zero full-size matrix (``source=True``).

Per batch size: the milliseconds per step of building the batches (``sparse_epoch`` over one
group of ``epochs_per_build`` epochs, per batch) plus the product itself, medians of the
repeats (the two ways alternated). ``data.SOURCE_SHARE`` is where ``source`` becomes the
cheaper.

    python scripts/bench_backward.py [--repeats 5] [--groups 4]
"""

import argparse
import statistics
import sys
import time

import torch

from adamgap import provenance
from adamgap.config import load_config
from adamgap.data import SOURCE_SHARE, ExampleBlocks, sparse_epoch
from adamgap.train import build_datamodule, process_settings

BATCHES = (2, 4, 10, 20, 50, 100)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(prog="bench_backward.py")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--groups", type=int, default=4, help="groups of epochs built per repeat")
    args = p.parse_args(argv)
    print(f"provenance: {provenance.line(provenance.collect())}")
    print(f"ms per step, medians of {args.repeats} repeats x {args.groups} groups of epochs; "
          f"data.SOURCE_SHARE = {SOURCE_SHARE} (source from batch {SOURCE_SHARE * 200:g})")
    print("| batch B | own: build | own: product | own | source: build | source: product "
          "| source | source / own |")
    print("|---|---|---|---|---|---|---|---|")
    for B in BATCHES:
        cfg = load_config("synthetic_adam", [f"data.batch_size={B}"])
        process_settings(cfg)
        dm = build_datamodule(cfg)
        dm.setup("fit")
        x, y = dm.x_train, dm.y_train
        examples = ExampleBlocks.of(x)
        G = dm.epochs_per_build
        groups = [[b for e in range(g * G, g * G + G) for b in dm.blocks(e)]
                  for g in range(args.groups)]
        steps = sum(len(blocks) for blocks in groups)
        dz = torch.randn(x.matrix.shape[0], 40)  # (K n P, 2m); a batch takes its first rows
        x.transpose()  # the training set's transpose is built once, before any step
        cost: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
        for _ in range(args.repeats):
            for source in (False, True):
                start = time.perf_counter()
                epochs = [sparse_epoch(x, examples, y, blocks, source) for blocks in groups]
                built = time.perf_counter()
                for epoch in epochs:
                    for batch in epoch.x:
                        batch.transpose_matmul(dz[:batch.matrix.shape[0]])
                done = time.perf_counter()
                cost[source][0].append((built - start) / steps * 1e3)
                cost[source][1].append((done - built) / steps * 1e3)
        med = {s: [statistics.median(v) for v in cost[s]] for s in cost}
        own, src = sum(med[False]), sum(med[True])
        print(f"| {B} | {med[False][0]:.3f} | {med[False][1]:.3f} | {own:.3f} | "
              f"{med[True][0]:.3f} | {med[True][1]:.3f} | {src:.3f} | {src / own:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
