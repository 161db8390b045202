"""Settings a recipe leaves open that both training pipelines decide the same way."""

from __future__ import annotations

from typing import Callable, Sequence

from vislab.config import Recipe
from vislab.errors import VislabError

Stats = tuple[Sequence[float], Sequence[float]]


def resolve_normalisation(recipe: Recipe, from_scratch: Callable[[], Stats], scratch_why: str) -> tuple[Recipe, str | None]:
    """The input normalisation: the recipe's ``mean``/``std``; else, with pretrained weights, the
    statistics those weights were trained with (ImageNet's, EfficientNet-Lite's [-1, 1], a timm
    model's config: :attr:`ModelEntry.pretrained_norm`); else ``from_scratch()``. Returns the
    recipe with both set and a line saying where they came from (None when the recipe set them).
    """
    from vislab.models import get_entry

    if (recipe.mean is None) != (recipe.std is None):
        raise VislabError(None, "recipe sets one of mean and std; set both or neither")
    if recipe.mean is not None:
        return recipe, None
    if recipe.weights is not None:
        mean, std = get_entry(recipe.model).pretrained_norm
        why = f"the normalisation of {recipe.model}'s pretrained weights"
    else:
        mean, std = from_scratch()
        why = scratch_why
    recipe = recipe.with_overrides(mean=tuple(round(float(v), 4) for v in mean),
                                   std=tuple(round(float(v), 4) for v in std))
    return recipe, f"mean {list(recipe.mean)} and std {list(recipe.std)}: {why} (the recipe sets none)"
