"""Speed: train.py against a plain PyTorch loop, the Table 1 sweep, cost scaling
(adamgap/analysis/benchmark.py).

    python scripts/benchmark.py                  # prints the table, writes docs/benchmark.md
    python scripts/benchmark.py --repeats 5 --no-scaling
"""

import sys

from adamgap.analysis.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
