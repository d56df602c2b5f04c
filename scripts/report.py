"""Build the gap report (Table 1, Figure 2, phase diagrams, optimizer league) from sweeps.

    python scripts/report.py sweeps/optimizers sweeps/alpha_s --out docs/report

Writes OUT/report.md and its PNGs (OUT defaults to the first sweep directory); each section
appears when the sweeps hold what it needs (adamgap/analysis/report.py).
"""

import sys

from adamgap.analysis.report import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
