"""Run a sweep: a grid of experiments, each cell one seed ensemble (adamgap/experiments/).

    python scripts/sweep.py conf=synthetic_adam sweep.seeds=10 sweep.grid.data.alpha=[0.05,0.1,0.2]
    python scripts/sweep.py sweep.grid.conf=[synthetic_adam,synthetic_gd] sweep.seeds=10 \
        sweep.dir=sweeps/table1 sweep.jobs=2
    python scripts/sweep.py --dir sweeps/table1               # resume: run failed/missing cells
    python scripts/sweep.py --dir sweeps/table1 --cell 3      # one cell (e.g. a cluster array task)
    python scripts/sweep.py --dir sweeps/table1 --aggregate   # results.csv and aggregate tables

sweep.* keys: seeds, chunk, grid.<config key>, dir, launcher (local | slurm: a job array and an
aggregation job, settings in sweep.slurm.*, see docs/cluster.md), jobs, threads; every other
key=value is a base override for all cells. Exit status: 0 all cells finished, 1 a cell failed,
2 bad input.
"""

import sys

from adamgap.startup import collector_paused, exit_status

with collector_paused():  # torch and Lightning load faster without the garbage collector
    from adamgap.experiments.sweep import main

if __name__ == "__main__":
    sys.exit(exit_status(main(sys.argv[1:])))
