"""The optimizer atlas: every installed optimizer through one tuning protocol, on one side of
the gap or the other (docs/atlas/protocol.md; adamgap/experiments/atlas.py).

    python scripts/atlas.py sweep.jobs=2                      # runs/atlas -> docs/atlas
    python scripts/atlas.py --only adan heavyball:SOAP        # some optimizers
    python scripts/atlas.py sweep.launcher=slurm sweep.slurm.partition=cpu   # a job array per
                                                              # stage: run again when it ended
    python scripts/atlas.py --report                          # rewrite docs/atlas from runs/atlas

Resumable: a second run skips what finished and retries what failed. Exit 0 when the report
was written, 1 while Slurm jobs are pending, 2 on bad input.
"""

import sys

from adamgap.startup import collector_paused, exit_status

with collector_paused():  # torch and Lightning load faster without the garbage collector
    from adamgap.analysis.atlas_report import main

if __name__ == "__main__":
    sys.exit(exit_status(main(sys.argv[1:])))
