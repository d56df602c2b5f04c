"""The mechanism study: why an optimizer lands on Adam's or GD's side of the gap.

    python scripts/mechanism.py run [--root runs/mechanism] [--jobs 2] [--only betas eps ...]
    python scripts/mechanism.py report [--root runs/mechanism] [--out docs/atlas]

``run`` trains every study's sweep (resumable; adamgap/experiments/mechanism.py), ``report``
writes docs/atlas/mechanism_tables.md and docs/atlas/mechanism/*.png from them
(adamgap/analysis/mechanism_report.py); docs/atlas/mechanism.md explains them.
"""

import sys

from adamgap.analysis.mechanism_report import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
