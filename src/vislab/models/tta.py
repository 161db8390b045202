"""Test-time augmentation for both tasks: a network's class probabilities averaged over views
of the input (mirror images, turns, small translations); dense (per-pixel) outputs are turned back first."""

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


def shift_step(x: torch.Tensor) -> int:
    """The translation of the ``shift`` views: 1/16 of the shorter side (2 px of a 32-px image),
    at least 1 px."""
    return max(1, round(min(x.shape[-2:]) / 16))


def _no_inverse(y: torch.Tensor) -> torch.Tensor:
    raise VislabError(None, "--tta shift is for class scores only: a translated map has no exact inverse")


def _shift(dy: int, dx: int, mirror: bool) -> View:
    """Translate by (dy, dx) steps of :func:`shift_step`, the edge reflected in (as the training
    crops pad); optionally mirror first. For class scores only."""
    def there(x: torch.Tensor) -> torch.Tensor:
        x = x.flip(-1) if mirror else x
        if dy == dx == 0:
            return x
        d = shift_step(x)
        h, w = x.shape[-2:]
        xp = torch.nn.functional.pad(x, (d, d, d, d), mode="reflect")
        return xp[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]

    return there, _no_inverse


VIEWS: dict[str, list[View]] = {
    "none": [_d4(0, False)],
    "flip": [_d4(0, False), _d4(0, True)],
    "d4": [_d4(k, m) for m in (False, True) for k in range(4)],
    "shift": [_shift(dy, dx, m) for m in (False, True)
              for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))],
}
"""Each TTA mode: (input transform, inverse for a dense output) per view."""

DENSE_MODES = ("none", "flip", "d4")
"""The modes whose views a per-pixel output can be turned back from."""


def check_tta(tta: str, allowed: tuple[str, ...] = DENSE_MODES) -> None:
    """Refuse an unknown mode (one line naming the choices)."""
    if tta not in allowed:
        raise VislabError(None, f"unknown --tta {tta!r}; choose {' or '.join(allowed)}")


def averaged_probs(model: torch.nn.Module, x: torch.Tensor, tta: str, *, dense: bool,
                   autocast: bool = False,
                   prepare: Callable[[torch.Tensor], torch.Tensor] | None = None, groups: int = 1) -> torch.Tensor:
    """Softmax over dim 1 of ``model``'s output, averaged over the views of ``tta``.

    ``dense``: the output is a map (N, C, H, W) that each view's inverse turns back; otherwise
    (N, C) class scores, which the views do not move. ``prepare`` (e.g. a resize) is applied to
    each view before the model. ``groups``: dim 1 holds that many models' class scores one
    after the other (an exported ensemble's member logits); the softmax is over each one's own.
    """
    check_tta(tta, DENSE_MODES if dense else tuple(VIEWS))
    total = None
    for there, back in VIEWS[tta]:
        v = there(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(prepare(v) if prepare is not None else v)
        out = out.float()
        p = out.softmax(1) if groups == 1 else \
            out.reshape(out.shape[0], groups, -1, *out.shape[2:]).softmax(2).reshape(out.shape)
        p = back(p) if dense else p
        total = p if total is None else total + p
    assert total is not None
    return total / len(VIEWS[tta])
