"""lab: a research workbench for label-efficient deep learning in JAX."""

__version__ = "0.1.0"
