"""Theory vs experiment: every claim of the paper as a pass/fail check (adamgap/theory/).

    python scripts/verify.py                       # paper settings, seeds 0-2 (minutes)
    python scripts/verify.py --quick               # reduced setting (well under a minute)
    python scripts/verify.py --quick data.alpha=0  # no feature noise: Lemma 5.3 fails
    python scripts/verify.py --out docs/verdicts --seeds 0 1 2 --steps 10000
    python scripts/verify.py --runs runs/a runs/b  # reuse run directories for their roles
    python scripts/verify.py synthetic_adam:optim.lr=2e-4   # an override for one run only
    python scripts/verify.py --stochastic runs/stochastic --out docs/verdicts
                                                   # the follow-up's claims (stochastic Adam)

Prints the verdict table; exits 0 only when every claim holds.
"""

import sys

from adamgap.theory.verify import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
