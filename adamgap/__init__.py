"""adamgap: the Adam-vs-GD generalization gap of Zou, Cao, Li & Gu (ICLR 2023), as a benchmark."""

__version__ = "0.1.0"
