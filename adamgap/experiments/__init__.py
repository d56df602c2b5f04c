"""Many runs: sweeps over grids and seeds (spec, cells, launchers, aggregation, statistics),
locally or as Slurm job arrays (docs/cluster.md)."""
