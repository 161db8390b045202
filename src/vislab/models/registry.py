"""The single model registry: every family registers its builders here by name.

A builder has the signature ``builder(*, num_classes: int, weights: str | None) -> nn.Module``.
``weights`` is ``None`` (random init), ``"imagenet"`` (the library's pretrained enum, needs
internet once) or a path to a local state_dict.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from torch import nn

from vislab.errors import VislabError

Builder = Callable[..., nn.Module]
Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, its task and its default input size (C, H, W)."""

    name: str
    builder: Builder
    task: str  # "cls" or "seg"
    input_size: tuple[int, int, int]
    description: str
    norm: Normalization | None = None  # (mean, std) its pretrained weights expect; None: ImageNet's

    @property
    def course_classes(self) -> int:
        """The class count of the course problem of the model's task (P1: 50, P2: 7), the default
        head of an architecture table."""
        return COURSE_CLASSES[self.task]

    @property
    def pretrained_norm(self) -> Normalization:
        """The input normalisation of the model's pretrained weights (ImageNet statistics unless
        the family says otherwise, e.g. EfficientNet-Lite's [-1, 1] scaling)."""
        return self.norm or (IMAGENET_MEAN, IMAGENET_STD)


COURSE_CLASSES = {"cls": 50, "seg": 7}

_REGISTRY: dict[str, ModelEntry] = {}
# Prefix families resolve any name after the colon (``timm:resnet18``, ``smp:unet:resnet34``).
_PREFIXES: dict[str, Callable[[str], ModelEntry]] = {}


def register(
    name: str, *, task: str, input_size: tuple[int, int, int], description: str = "",
    norm: Normalization | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator adding a builder under ``name``; a second entry under the same name is refused."""

    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        _REGISTRY[name] = ModelEntry(name, fn, task, input_size, doc, norm)
        return fn

    return wrap


def register_prefix(prefix: str, resolver: Callable[[str], ModelEntry]) -> None:
    """Register a family reached as ``prefix:rest`` (e.g. ``timm:``)."""
    if prefix in _PREFIXES:
        raise ValueError(f"model prefix {prefix!r} is already registered")
    _PREFIXES[prefix] = resolver


def list_models(pattern: str = "*", *, task: str | None = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (and ``task``), sorted."""
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and task in (None, e.task)
    )


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; an unknown name lists the valid choices."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXES:
        return _PREFIXES[prefix](rest)
    import difflib

    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise VislabError(None, f"unknown model {name!r} ({hint}`vislab models` lists the {len(_REGISTRY)} names, "
                            f"and {', '.join(f'{p}:NAME' for p in sorted(_PREFIXES))} take other libraries' models)")


def build_model(name: str, *, num_classes: int, weights: str | None = None) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered name (``vgg16_bn``) or a prefixed one (``timm:resnet18``).
        num_classes: width of the classifier / number of segmentation classes.
        weights: ``None``, ``"imagenet"`` or a local state_dict path.

    Example:
        >>> m = build_model("cifar_resnet20", num_classes=10)
        >>> m(torch.zeros(2, 3, 32, 32)).shape  # torch.Size([2, 10])
    """
    entry = get_entry(name)
    return entry.builder(num_classes=num_classes, weights=weights)
