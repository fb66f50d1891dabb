"""advsample: uncertainty-based adversarial sampling for machine-learned interatomic potentials."""

__version__ = "0.1.0"
