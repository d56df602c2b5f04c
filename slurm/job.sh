# Sourced by the slurm/*.sbatch scripts (from the repository root): the site's setup, then what
# every adamgap job step needs. Cluster-specific settings come from the environment, which
# sbatch passes on to the job (--export=ALL, its default):
#   ADAMGAP_SETUP   shell lines run first, e.g. "module load cuda/12.4; source ~/venvs/adamgap/bin/activate"
#   ADAMGAP_PYTHON  the interpreter (default: python, after ADAMGAP_SETUP)
eval "${ADAMGAP_SETUP:-}"
PYTHON=${ADAMGAP_PYTHON:-python}
# torch's CPU threads: the CPUs Slurm gave each task, not every core of the node
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# Every rank and every restart of a requeued job must name the same run directory: the job id
# stays the same across requeues (adamgap/train.py reads ADAMGAP_RUN_STAMP).
export ADAMGAP_RUN_STAMP=slurm-$SLURM_JOB_ID
# A requeued job (SLURM_RESTART_COUNT > 0) continues from its last checkpoint.
resume=()
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
  resume=(run.resume=true)
  echo "adamgap: restart ${SLURM_RESTART_COUNT} of job $SLURM_JOB_ID: resuming"
fi
