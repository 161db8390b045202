"""The smallest square input a network takes: pooling shrinks an input below one pixel and
PyTorch fails deep inside the forward pass, so a too-small side is found and named up front."""

from __future__ import annotations

import torch
from torch import nn

from vislab.errors import VislabError

LARGEST_PROBED = 1024


def takes_side(net: nn.Module, side: int) -> bool:
    """Whether ``net`` runs on one zero image of ``side`` x ``side`` (evaluation mode, no gradients;
    the net's mode is restored)."""
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, side, side, device=next(net.parameters()).device))
        return True
    except RuntimeError:
        return False
    finally:
        net.train(training)


def smallest_side(net: nn.Module, above: int = 1) -> int | None:
    """The smallest side above ``above`` that ``net`` takes (doubling, then bisection), or None when
    none up to :data:`LARGEST_PROBED` does (the net fails for another reason)."""
    lo, hi = above, max(above * 2, 2)
    while not takes_side(net, hi):
        if hi >= LARGEST_PROBED:
            return None
        lo, hi = hi, min(hi * 2, LARGEST_PROBED)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if takes_side(net, mid) else (mid, hi)
    return hi


def check_side(net: nn.Module, side: int, *, model: str, setting: str) -> None:
    """Refuse ``side`` when ``net`` cannot take it, naming the smallest it can; a net that fails at
    every side is left to fail in the run with its own error."""
    if takes_side(net, side):
        return
    least = smallest_side(net, side)
    if least is not None:
        raise VislabError(None, f"{setting} {side}: {model} pools a {side}x{side} input below one pixel; "
                                f"it takes inputs of at least {least}x{least}")
