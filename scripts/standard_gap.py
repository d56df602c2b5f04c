"""Run the standard-gap protocol (Wilson et al. 2017): per optimizer the step size with the
lowest final training loss on a grid, then several seeds, with and without augmentation
(adamgap/experiments/standard_gap.py; docs/realcnn.md).

    python scripts/standard_gap.py fmnist --out sweeps/standard_gap_fmnist          # this CPU
    python scripts/standard_gap.py cifar10 --out sweeps/standard_gap_cifar10 --jobs 1 \
        data.root=/data trainer.accelerator=gpu                                      # a GPU
    python scripts/report.py sweeps/standard_gap_fmnist --out docs/realcnn

NAME: fmnist | cifar10 | cifar10_resnet; key=value overrides apply to every run. The same
command resumes an interrupted protocol. Exit status: 0 done, 2 bad input.
"""

import sys

from adamgap.startup import collector_paused, exit_status

with collector_paused():  # torch and Lightning load faster without the garbage collector
    from adamgap.experiments.standard_gap import main

if __name__ == "__main__":
    sys.exit(exit_status(main(sys.argv[1:])))
