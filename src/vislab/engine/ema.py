"""An exponential moving average (EMA) of a network's weights, kept beside the trained one."""

from __future__ import annotations

import copy

import torch


class WeightEMA(torch.nn.Module):
    """``module`` holds ``decay``-weighted averages of the trained network's parameters and
    buffers (BatchNorm statistics included), updated after every optimiser step.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average
    follows the network closely at first instead of remembering its random head for thousands
    of steps. Integer buffers (BatchNorm's batch counters) are copied.

    Kept by hand rather than timm's ``ModelEmaV3`` or Lightning's weight averaging because exact
    resume needs the update count inside the checkpoint, and inference reads plain state_dicts:
    ``ModelEmaV3`` keeps no step (its warm-up depends on a step the caller passes), and
    Lightning's ``WeightAveraging`` callback swaps the average into the checkpoint's state_dict
    and moves the trained weights to another key, which every reader of checkpoints (predict,
    export, --weights) would have to undo. Here ``updates`` is a buffer beside ``ema.module.*``,
    so the average and its warm-up resume bit-identically (tests/test_resume_ddp.py).
    """

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.module = copy.deepcopy(net).requires_grad_(False)
        self.register_buffer("updates", torch.tensor(0, dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = int(self.updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        """Move the average towards ``net`` by ``1 - current_decay()``."""
        d = self.current_decay()
        mine, theirs = self.module.state_dict(), net.state_dict()
        if mine.keys() != theirs.keys():
            raise RuntimeError("WeightEMA.update: the network's layout differs from the averaged copy")
        floats_a, floats_b = [], []
        for key, a in mine.items():
            b = theirs[key].to(a.device)
            if a.is_floating_point():
                floats_a.append(a)
                floats_b.append(b.to(a.dtype))
            else:
                a.copy_(b)
        if floats_a:
            torch._foreach_lerp_(floats_a, floats_b, 1.0 - d)
        self.updates += 1
