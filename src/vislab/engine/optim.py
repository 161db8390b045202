"""Optimisers and learning-rate schedules, chosen by name from lookup tables.

Schedules are torch's ``LambdaLR`` over optimiser steps, sized from a step count the data module
computes (not Lightning's ``estimated_stepping_batches``, which has lost the loader state on
resume). A step is a fraction of an epoch that depends on the process count, so a run resumed
with another count has its step counter rescaled (:func:`rescale_schedule`): the schedule
follows the samples seen.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from vislab.config import Recipe
from vislab.errors import VislabError


def _sgd(params: Iterable, r: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.momentum > 0)


def _adamw(params: Iterable, r: Recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)


def _adam(params: Iterable, r: Recipe) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)


OPTIMIZERS: dict[str, Callable[[Iterable, Recipe], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adamw": _adamw,
    "adam": _adam,
}


# (reference learning rate, at this global batch, exponent of the batch ratio): SGD scales
# linearly with the batch (Goyal et al. 2017), Adam-family optimisers with its square root (as in
# timm's train.py). Used when a recipe leaves ``lr`` unset.
LR_RULES: dict[str, tuple[float, int, float]] = {
    "sgd": (0.1, 256, 1.0),
    "adamw": (4e-3, 256, 0.5),  # 2e-3 at a batch of 64 (bench/bench_defaults.py: 1e-3 under-trained in 4 epochs)
    "adam": (4e-3, 256, 0.5),
}


def scaled_lr(optimizer: str, global_batch: int) -> float:
    """The default peak learning rate of ``optimizer`` for ``global_batch`` images per step."""
    if optimizer not in LR_RULES:
        raise VislabError(None, f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    base, ref, power = LR_RULES[optimizer]
    return base * (global_batch / ref) ** power


def rescaled_lr(optimizer: str, lr: float, from_batch: int, to_batch: int) -> float:
    """``lr``, chosen for ``from_batch`` images per step, carried to ``to_batch`` by the power of
    ``optimizer``'s rule in :data:`LR_RULES` (linear for SGD, square root for Adam/AdamW).

    Example:
        >>> round(rescaled_lr("sgd", 0.08, 256, 32), 6), round(rescaled_lr("adamw", 0.002, 16, 64), 6)
        (0.01, 0.004)
    """
    scaled_lr(optimizer, from_batch)  # an unknown optimizer: its one line
    return lr * (to_batch / from_batch) ** LR_RULES[optimizer][2]


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _constant(step: int, total: int, warmup: int) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


def _poly(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return (1.0 - min(1.0, (step - warmup) / max(1, total - warmup))) ** 0.9


SCHEDULERS: dict[str, Callable[[int, int, int], float]] = {
    "cosine": _cosine,
    "constant": _constant,
    "poly": _poly,
}


class ScheduleWarp:
    """A schedule re-planned to end earlier or later: ``knots`` of (step, new last step). From each
    knot on, the steps up to its new end run through what was left of the schedule at that step, linearly,
    so the learning rate stays continuous and reaches the schedule's end at the new last step.
    Maps an optimiser step to the original schedule's (fractional) step; no knots: identity."""

    def __init__(self, total: int, knots: Iterable[tuple[int, int]] = ()) -> None:
        self.total = total
        self.knots: list[tuple[int, int]] = [(int(a), int(b)) for a, b in knots]

    def replan(self, at: int, new_total: int) -> None:
        """From step ``at`` on, finish at step ``new_total`` instead."""
        if self.knots and at < self.knots[-1][0]:
            raise ValueError(f"re-plan at step {at} precedes the one at {self.knots[-1][0]}")
        self.knots.append((int(at), int(new_total)))

    def __call__(self, step: float) -> float:
        start, mapped, end = 0, 0.0, self.total  # the current piece runs (start, mapped) -> (end, total)
        for at, new_end in self.knots:
            if step < at:
                break
            mapped += (self.total - mapped) * (at - start) / max(1, end - start)
            start, end = at, new_end
        return mapped + (self.total - mapped) * (step - start) / max(1, end - start)

    def rescaled(self, ratio: float) -> "ScheduleWarp":
        """The same warp in steps ``ratio`` times as many per epoch (another process count)."""
        return ScheduleWarp(int(round(self.total * ratio)),
                            [(int(round(a * ratio)), int(round(b * ratio))) for a, b in self.knots])


def build_optimization(params: Iterable, recipe: Recipe, *, steps_per_epoch: int,
                       warp: ScheduleWarp | None = None) -> dict:
    """Optimiser and per-step scheduler for ``configure_optimizers``; ``warp`` (read at every
    step, so a re-plan during training takes effect at once) maps steps onto the schedule."""
    if recipe.optimizer not in OPTIMIZERS:
        raise VislabError(None, f"unknown optimizer {recipe.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if recipe.scheduler not in SCHEDULERS:
        raise VislabError(None, f"unknown scheduler {recipe.scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    if recipe.lr is None:
        raise VislabError(None, "recipe lr is unset; the pipeline resolves it with scaled_lr before training")
    opt = OPTIMIZERS[recipe.optimizer](params, recipe)
    total = max(1, steps_per_epoch * recipe.epochs)
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    fn = SCHEDULERS[recipe.scheduler]
    sched = LambdaLR(opt, lambda step: fn(warp(step) if warp is not None else step, total, warmup))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def rescale_schedule(state: dict, saved_steps_per_epoch: int, steps_per_epoch: int) -> bool:
    """Convert a saved ``LambdaLR`` state from ``saved_steps_per_epoch`` to ``steps_per_epoch``
    (another process count): its step counter keeps the fraction of the run done, so the
    learning rate continues where the samples seen put it. Returns whether anything changed."""
    if saved_steps_per_epoch == steps_per_epoch or saved_steps_per_epoch <= 0:
        return False
    ratio = steps_per_epoch / saved_steps_per_epoch
    done = int(state["last_epoch"])
    state["last_epoch"] = int(round(done * ratio))
    if "_step_count" in state:
        state["_step_count"] = state["last_epoch"] + 1
    return True
