"""adamgap: the Adam-vs-GD generalization gap of Zou, Cao, Li & Gu (ICLR 2023), as a benchmark.

The package is layered; a module imports only from its own layer or lower ones
(``tests/test_layout.py`` checks it):

- the paper's core, here: the config schema, Definition 3.1's data, the patch CNN, the
  objective, the LightningModule, the optimizers, the alignment callback, figures;
- ``tasks`` (real-image data) and ``runtime`` (run directories, checkpoints, divergence,
  requeue, W&B), each on the core;
- ``train`` and ``cli``: one run, from all of the above;
- ``experiments``: sweeps over grids and seeds, local or on Slurm;
- ``analysis`` (reports, the benchmark) and ``theory`` (the paper's claims as checks).
"""

__version__ = "0.1.0"
