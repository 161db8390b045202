"""Test-time augmentation for both tasks: a network's class probabilities averaged over views
of the input (mirror images, turns); dense (per-pixel) outputs are turned back first."""

from __future__ import annotations

from typing import Callable

import torch

from vislab.errors import VislabError

View = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _d4(k: int, mirror: bool) -> View:
    def there(x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x.flip(-1) if mirror else x, k, (-2, -1))

    def back(y: torch.Tensor) -> torch.Tensor:
        z = torch.rot90(y, -k, (-2, -1))
        return z.flip(-1) if mirror else z

    return there, back


VIEWS: dict[str, list[View]] = {
    "none": [_d4(0, False)],
    "flip": [_d4(0, False), _d4(0, True)],
    "d4": [_d4(k, m) for m in (False, True) for k in range(4)],
}
"""Each TTA mode: (input transform, inverse for a dense output) per view."""


def check_tta(tta: str, allowed: tuple[str, ...] = tuple(VIEWS)) -> None:
    """Refuse an unknown mode (one line naming the choices)."""
    if tta not in allowed:
        raise VislabError(None, f"unknown --tta {tta!r}; choose {' or '.join(allowed)}")


def averaged_probs(model: torch.nn.Module, x: torch.Tensor, tta: str, *, dense: bool,
                   autocast: bool = False) -> torch.Tensor:
    """Softmax over dim 1 of ``model``'s output, averaged over the views of ``tta``.

    ``dense``: the output is a map (N, C, H, W) that each view's inverse turns back; otherwise
    (N, C) class scores, which the views do not move.
    """
    check_tta(tta)
    total = None
    for there, back in VIEWS[tta]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(there(x))
        p = out.float().softmax(1)
        p = back(p) if dense else p
        total = p if total is None else total + p
    assert total is not None
    return total / len(VIEWS[tta])
