"""The second-last layer of a classifier: the input of its final ``nn.Linear``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def final_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (its classifier)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


@contextmanager
def penultimate(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the classifier's input features while the context is open.

    Example:
        >>> with penultimate(model) as feats:
        ...     model(x)
        >>> feats[0].shape  # (N, in_features)
    """
    store: list[torch.Tensor] = []
    handle = final_linear(model).register_forward_hook(
        lambda mod, inp, out: store.append(inp[0].detach().flatten(1))
    )
    try:
        yield store
    finally:
        handle.remove()
