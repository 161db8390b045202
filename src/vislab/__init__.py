"""vislab: train, evaluate and explain small-image classifiers and land-cover segmenters."""

__version__ = "0.1.0"
