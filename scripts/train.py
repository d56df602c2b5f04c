"""Train one run (or a K-seed ensemble): python scripts/train.py conf=synthetic_adam [key=value ...]

Examples:
    python scripts/train.py conf=synthetic_adam
    python scripts/train.py conf=synthetic_gd data.alpha=0.3 seed=3 run.dir=/tmp/x
"""

import sys

from adamgap.startup import collector_paused, exit_status

with collector_paused():  # torch and Lightning load faster without the garbage collector
    from adamgap.cli import main
    from adamgap.train import run

if __name__ == "__main__":
    sys.exit(exit_status(main(run, sys.argv[1:])))
