"""The follow-up's synthetic study: stochastic Adam and AdamW over batch size x lambda
(Tang, Zhang, Cao & Zou 2025; adamgap/experiments/stochastic_study.py), and its report.

    python scripts/stochastic.py run --root runs/stochastic --jobs 2
    python scripts/stochastic.py report --root runs/stochastic --out docs/stochastic
    python scripts/verify.py --stochastic runs/stochastic --out docs/verdicts   # the verdicts
"""

import sys

from adamgap.analysis.stochastic_report import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
