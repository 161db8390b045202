"""Several trained models as one: their class probabilities averaged (each model with its own
input size, normalisation and test-time augmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vislab.errors import VislabError


def members(spec: str | Path) -> list[str]:
    """The checkpoints (or run folders, or ONNX files) of ``spec``: one path, or several joined
    by commas (``runs/a,runs/b``)."""
    parts = [p.strip() for p in str(spec).split(",")]
    if not all(parts):
        raise VislabError(str(spec), "an empty name in the comma-separated list of models")
    if len(set(parts)) < len(parts):
        raise VislabError(str(spec), "a model is listed twice")
    return parts


def check_same_classes(metas: list[dict[str, Any]], paths: list[str], *, keys: tuple[str, ...]) -> None:
    """Every member must predict the same classes (the first member's ``keys`` values)."""
    first = [metas[0].get(k) for k in keys]
    for meta, path in zip(metas[1:], paths[1:]):
        if [meta.get(k) for k in keys] != first:
            raise VislabError(path, f"predicts other classes than {paths[0]} "
                                    f"({', '.join(f'{k}: {meta.get(k)}' for k in keys)}); an ensemble needs the same classes")
