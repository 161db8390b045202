"""Model registry: ``build_model(name, num_classes=..., weights=...)`` and ``list_models()``.

Families register by explicit import below.
"""

from vislab.models import classifiers, efficientnet_lite, fcn, segmenters  # noqa: F401  (registration)
from vislab.models.features import penultimate
from vislab.models.registry import IMAGENET_MEAN, IMAGENET_STD, build_model, get_entry, list_models

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_model", "get_entry", "list_models", "penultimate"]
