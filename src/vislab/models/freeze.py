"""Freezing named submodules of a network: what a recipe's ``freeze`` field does in training,
and what an architecture table of the trained network counts as not trainable."""

from __future__ import annotations

import torch

from vislab.errors import VislabError


def freeze_prefixes(net: torch.nn.Module, prefixes: tuple[str, ...], *, model: str) -> list[torch.nn.Module]:
    """Stop gradients to the submodules named by ``prefixes`` (``"blocks.0"`` is ``blocks.0`` and
    everything under it) and return them.

    Only the parameters are frozen: BatchNorm layers inside keep training mode, so their running
    statistics adapt to the new images (upsampled 32 px photos, satellite tiles) while their
    weights stay ImageNet's. With the leading layers frozen autograd neither stores their
    activations nor runs their backward pass: the cheap way to fine-tune at a higher resolution
    on a CPU.
    """
    named = dict(net.named_modules())
    frozen = []
    for prefix in prefixes:
        if prefix not in named or prefix == "":
            raise VislabError(None, f"freeze: {model} has no submodule {prefix!r} "
                                    f"(top-level ones: {', '.join(n for n, _ in net.named_children())})")
        frozen.append(named[prefix])
        for p in named[prefix].parameters():
            p.requires_grad_(False)
    if prefixes and not any(p.requires_grad for p in net.parameters()):
        raise VislabError(None, f"freeze: {', '.join(prefixes)} cover every parameter of {model}; nothing would train")
    return frozen
