"""``scripts/sweep.py``: a grid of experiments, each cell one seed ensemble, in one directory.

    python scripts/sweep.py conf=synthetic_adam sweep.seeds=10 sweep.grid.data.alpha=[0.05,0.1,0.2]
    python scripts/sweep.py --dir SWEEP_DIR                # resume: run failed/missing cells
    python scripts/sweep.py --dir SWEEP_DIR --cell 3       # one cell (e.g. a cluster array task)
    python scripts/sweep.py --dir SWEEP_DIR --aggregate    # results.csv and aggregate tables

What a sweep runs: ``spec``; its cells and their states: ``cells``; how they run: ``launch``
(and ``slurm``); what comes out: ``aggregate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adamgap.errors import ConfigError, RunError
from adamgap.experiments.aggregate import aggregate
from adamgap.experiments.launch import run_cell, run_sweep
from adamgap.experiments.spec import create, load, parse_args
from adamgap.startup import collector_paused, exit_status

USAGE = "sweep.py --dir D [--cell I | --aggregate] [--threads N]"


def main(argv: list[str]) -> int:
    """``conf=... sweep.*=... key=value`` (new or same sweep), or ``--dir D [--cell I |
    --aggregate] [--threads N]``. Exit 0 when every cell finished, 1 when one failed, 2 on bad
    input (130 after Ctrl-C)."""
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # argparse's usage + error: one line, as everywhere
            raise ConfigError(f"{message} (usage: {USAGE})")

    sweep_dir: str | Path = "SWEEP_DIR"  # named in the interrupt message
    try:
        args = None
        if argv and argv[0].startswith("--"):
            p = Parser(prog="sweep.py")
            p.add_argument("--dir", required=True)
            p.add_argument("--cell", type=int)
            p.add_argument("--aggregate", action="store_true")
            p.add_argument("--threads", type=int)
            args = p.parse_args(argv)
        if args is None:
            sweep_dir = create(parse_args(argv))
        else:
            sweep_dir = Path(args.dir)
            spec, cells = load(sweep_dir)
            if args.cell is not None:
                if not 0 <= args.cell < len(cells):
                    raise ConfigError(f"--cell {args.cell}: the sweep has cells "
                                      f"0..{len(cells) - 1}")
                status = run_cell(sweep_dir, cells[args.cell], args.threads or spec.threads)
                print(f"cell {args.cell} {cells[args.cell].id}: {status}")
                return 1 if status == "failed" else 0
            if args.aggregate:
                aggregate(sweep_dir)
                print(f"wrote {sweep_dir / 'results.csv'} and {sweep_dir / 'aggregate.csv'}")
                return 0
        states = run_sweep(sweep_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:  # a file that cannot be written (a full disk): the sweep stops
        print(f"error: {err} (the sweep: free space, then resume it with python "
              f"scripts/sweep.py --dir {sweep_dir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: finished cells stay, the rest resume
        print(f"interrupted: resume with python scripts/sweep.py --dir {sweep_dir}",
              file=sys.stderr)
        return 130
    if "submitted" in states.values():
        return 0  # the launcher printed its job ids; results come from the aggregation job
    failed = sorted(i for i, s in states.items() if s == "failed")
    print((Path(sweep_dir) / "aggregate.md").read_text(), end="")
    print(f"results: {Path(sweep_dir) / 'results.csv'}" + (f"; failed cells: {failed}"
                                                           if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":  # a cell of a local or Slurm sweep, in its own process
    with collector_paused():
        import adamgap.train  # noqa: F401 - torch and Lightning, without the collector
    sys.exit(exit_status(main(sys.argv[1:])))
