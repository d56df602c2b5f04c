"""What keeps a run safe and visible while it trains: its run directory and lock, checkpoints
and resume, divergence stops, Slurm requeue, the W&B run (docs/reliability.md)."""
