"""Real-image tasks: the datasets they read and their datamodules (docs/realdata.md).

Each task is a LightningDataModule built by ``adamgap.train.build_datamodule`` from the
``data.*`` keys that ``adamgap.config.TASKS`` lists for it; Definition 3.1 itself
(``synthetic``) lives in the core, ``adamgap.data``.
"""
