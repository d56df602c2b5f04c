"""Does my optimizer generalize like GD or like Adam on data where the two provably part?

    python scripts/gaptest.py optim.name=adan
    python scripts/gaptest.py optim.name=mypackage.optim:MyOptimizer optim.kwargs.beta=0.9

Runs the atlas's protocol (docs/atlas/protocol.md: the step-size grid on a tuning seed, the
step size chosen from training data, 10 fresh seeds) for that optimizer beside Adam's and GD's
reference rows, prints the three rows, a verdict line and, last, one JSON line (optimizer, lr,
train_error, test_error, test_error_ci, feature_learning, noise_memorization, side, ...).
``optim.*`` overrides are the optimizer's own; any other ``key=value`` applies to all three.
Exit 0 when it ran; 2 (one ``error:`` line, nothing written) on bad input or an optimizer that
cannot be built or stepped.
"""

import sys

from adamgap.startup import collector_paused, exit_status

with collector_paused():  # torch and Lightning load faster without the garbage collector
    from adamgap.analysis.atlas_report import gaptest

if __name__ == "__main__":
    sys.exit(exit_status(gaptest(sys.argv[1:])))
