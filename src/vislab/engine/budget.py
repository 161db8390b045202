"""A time budget's measurements and plan: the seconds of a training step, a held-out pass and a
checkpoint write, timed on the run's own device, and the epochs that fit in ``--budget``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl

from vislab.config import Recipe
from vislab.errors import VislabError


def step_precision(precision: str, device_type: str) -> tuple[Any, bool]:
    """(dtype other than float32 or None, whether it runs as autocast) of a Lightning precision
    on a device: "bf16-mixed" autocasts to bfloat16, "16-mixed" to float16 on GPUs (Lightning
    turns it into bf16-mixed on CPUs), "bf16-true"/"16-true"/"64" cast the whole network; 32:
    (None, False)."""
    import torch

    if precision.startswith("64"):
        return torch.float64, False
    half = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    if half is None or precision.endswith("-true"):
        return half, False
    if device_type == "cpu" and half is torch.float16:
        half = torch.bfloat16
    return half, True


def seconds_per_step(module: pl.LightningModule, loader: Any, device: Any, *, steps: int = 5,
                     side: int | None = None, precision: str | None = None) -> float:
    """Wall seconds of one training step (forward, backward, optimiser step) of a copy of
    ``module``'s network in ``precision`` (the trainer's, default the recipe's) on ``loader``'s
    first batches: the median of ``steps`` steps after one warm-up step (the fastest step
    under-estimated a 2-core epoch by a fifth); the warm-up step itself when the loader has only
    one batch. The module, its weights and the global RNG states are left as they were.
    ``side``: a classifier's batches at that input side instead of its own."""
    import time

    import torch

    half, amp = step_precision(str(precision or module.recipe.precision), device.type)
    net, cast = _probe_copy(module.net, device, None if amp else half)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    batches = iter(loader)
    times, warm_up = [], None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                break
            batch = [b.to(device) if hasattr(b, "to") else b for b in batch]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x, y = _probe_input(module, batch, side, cast)
            with torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=amp):
                out = net(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y.long(), ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first step warms caches and allocators
                times.append(time.perf_counter() - t0)
            else:
                warm_up = time.perf_counter() - t0
    if warm_up is None:
        raise VislabError(None, "--budget: the training split has no batch to time a step on")
    return sorted(times)[len(times) // 2] if times else warm_up


def _probe_copy(net: Any, device: Any, cast: Any) -> tuple[Any, Any]:
    """A timing probe's copy of ``net`` on ``device`` and the dtype its input takes: ``cast`` for
    "-true" and 64 precisions (the whole network in that dtype), None under autocast or fp32."""
    import copy

    copied = copy.deepcopy(net).to(device)
    return (copied if cast is None else copied.to(cast)), cast


def _probe_input(module: pl.LightningModule, batch: list, side: int | None, cast: Any) -> tuple[Any, Any]:
    """A timing probe's network input and targets from a training batch on the device: the
    on-device augmentation left out, except a segmenter's crop size; ``cast``: the input dtype."""
    x, y = batch[0], batch[1]
    crop = module.recipe.crop_size if module.task == "seg" else None
    if crop:
        x, y = x[..., :crop, :crop], y[..., :crop, :crop]
    x = module.prepare(x) if side is None else module.prepare(x, side)
    return (x if cast is None else x.to(cast)), y


def seconds_per_forward(module: pl.LightningModule, loader: Any, device: Any, *, reps: int = 2,
                        precision: str | None = None) -> float:
    """Wall seconds of one held-out forward pass over ``loader``'s first batch (the median of
    ``reps`` after a warm-up): a copy of the evaluated network in eval mode, without gradients
    and outside a ``*-mixed`` precision's autocast, as :meth:`VislabModule.held_out_logits` runs
    it (a ``*-true`` precision's dtype kept). The budget prices the held-out batches with it."""
    import time

    import torch

    half, amp = step_precision(str(precision or module.recipe.precision), device.type)
    net, cast = _probe_copy(module.eval_net, device, None if amp else half)
    net.eval()
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise VislabError(None, "--budget: the training split has no batch to time a held-out pass on") from None
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
        x, _ = _probe_input(module, [b.to(device) if hasattr(b, "to") else b for b in batch], None, cast)
        for _ in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def resize_step_costs(module: pl.LightningModule, loader: Any, device: Any, end_seconds: float,
                      precision: str | None = None) -> tuple[Callable[[int], list[float]] | None, str]:
    """For a progressive resize (``resize_from``), the seconds of a step in each epoch of an
    n-epoch schedule, from one more timing at the first side (``end_seconds``: the timing at
    ``image_size``; sides between, interpolated in pixels), and how they were measured; else
    (None, "")."""
    from vislab.data.classification import progressive_sides

    r = module.recipe
    if not hasattr(module, "sides") or r.resize_from is None or r.image_size is None or r.resize_from == r.image_size:
        return None, ""
    s0, s1, t1 = r.resize_from, r.image_size, end_seconds
    t0 = seconds_per_step(module, loader, device, side=s0, precision=precision)

    def at(side: int) -> float:
        return t0 + (t1 - t0) * (side ** 2 - s0 ** 2) / (s1 ** 2 - s0 ** 2)

    how = (f"{t0:.3g} s per training step at {s0} px and {t1:.3g} s at {s1} px measured here (progressive resizing: "
           "the sides between interpolated in pixels)")
    return (lambda n: [at(side) for side in progressive_sides(s0, s1, n)]), how


def checkpoint_seconds(module: pl.LightningModule) -> float:
    """Wall seconds to write one full checkpoint of ``module``, measured by saving its weights
    (times 3: Adam-family optimisers keep two more tensors per weight) to a temporary file."""
    import tempfile
    import time

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        torch.save(module.state_dict(), Path(tmp) / "probe.pt")
        return 3 * (time.perf_counter() - t0)


def epoch_tail_seconds(step_seconds: float, holdout_batches: int, *, eval_scale: float = 1.0,
                       epoch_overhead: float = 0.0, forward_seconds: float | None = None) -> float:
    """The seconds an epoch spends after its last training step, as :func:`budget_epochs` prices
    them: the held-out evaluation (``holdout_batches`` forward passes of ``forward_seconds``, else a
    third of a step, times ``eval_scale``, plus 10 % for loading and logging) and ``epoch_overhead``."""
    forward = step_seconds / 3 if forward_seconds is None else forward_seconds
    return 1.1 * holdout_batches * eval_scale * forward + epoch_overhead


def budget_epochs(recipe: Recipe, step_seconds: float, steps_per_epoch: int, holdout_batches: int, *,
                  eval_scale: float = 1.0, epoch_overhead: float = 0.0,
                  epoch_steps: Callable[[int], list[float]] | None = None, how: str = "",
                  forward_seconds: float | None = None) -> tuple[Recipe, str]:
    """The recipe with ``epochs`` (and, when whole epochs would leave much of the time unused, a
    number of batches per epoch) set to fill ``budget_minutes`` of training, and a line saying how.

    An epoch costs its steps, the held-out evaluation (per batch, a forward pass of a training
    batch, ``forward_seconds`` as measured by :func:`seconds_per_forward` or else a third of a
    step, times ``eval_scale``, the evaluated pixels per training pixel), 10 % of both for data
    loading and logging, and ``epoch_overhead`` (the epoch's checkpoint writes). If the budget holds x
    full epochs, the run gets ceil(x - 0.05) epochs of as many batches as fit (each epoch a fresh
    shuffle, so 1.9 epochs' worth is two epochs of 95 % of the batches, not one); a recipe that
    limits its batches itself gets whole epochs. At least one epoch of one batch.

    ``epoch_steps(n)`` gives the seconds of a step in each epoch of an n-epoch schedule whose
    epochs differ (a progressive resize; ``how`` says how they were measured); by default every
    step takes ``step_seconds``, which also prices the held-out evaluation.
    """
    import math

    assert recipe.budget_minutes is not None
    budget = recipe.budget_minutes * 60
    steps_of = epoch_steps or (lambda n: [step_seconds] * n)
    fixed = epoch_tail_seconds(step_seconds, holdout_batches, eval_scale=eval_scale, epoch_overhead=epoch_overhead,
                               forward_seconds=forward_seconds)

    def full(n: int) -> float:  # seconds of n whole epochs
        return 1.1 * steps_per_epoch * sum(steps_of(n)) + n * fixed

    epoch_s = full(1) if epoch_steps is None else full(recipe.epochs) / recipe.epochs
    timed = how or f"{step_seconds:.3g} s per training step measured here"
    if recipe.compile:  # the probe runs an eager copy of the network
        timed += " without torch.compile"
    held_out = f"{holdout_batches} held-out batches per epoch"
    if holdout_batches and forward_seconds is not None:
        held_out += f" at {forward_seconds * eval_scale:.3g} s each"
    per_epoch = f"at {timed} ({steps_per_epoch} steps and " \
                f"{held_out}, {epoch_overhead:.1f} s of checkpoint writes: " \
                f"about {epoch_s:.1f} s per epoch{'' if epoch_steps is None else ' on average'})"
    if epoch_steps is None:  # equal epochs: in closed form
        most = max(1, int(budget // epoch_s))
        fewest = max(1, math.ceil(budget / epoch_s - 0.05))
    else:  # epochs that differ with their number (at most 1,000)
        fits = [n for n in range(1, 1001) if full(n) <= budget]
        most = max(fits or [1])
        fewest = next((n for n in range(1, 1001) if full(n) * (n + 0.05) / n >= budget), 1000)
    if recipe.limit_train_batches is not None:
        return recipe.with_overrides(epochs=most), f"epochs {recipe.epochs} -> {most}: --budget " \
                                                   f"{recipe.budget_minutes:g} min {per_epoch}{_warmup_past(recipe, most)}"
    epochs = fewest  # the fewest epochs whose full length, stretched by 5 % of an epoch, reaches the budget
    step_cost = 1.1 * (step_seconds if epoch_steps is None else sum(steps_of(epochs)) / epochs)  # on average
    batches = min(steps_per_epoch, max(1, int((budget / epochs - fixed) // step_cost)))
    line = f"epochs {recipe.epochs} -> {epochs}"
    if batches < steps_per_epoch:
        line += f" of {batches} of their {steps_per_epoch} batches (a fresh shuffle each)"
        recipe = recipe.with_overrides(limit_train_batches=batches)
    return recipe.with_overrides(epochs=epochs), \
        f"{line}: --budget {recipe.budget_minutes:g} min {per_epoch}{_warmup_past(recipe, epochs)}"


def _warmup_past(recipe: Recipe, epochs: int) -> str:
    """The end of a budget line whose planned run is shorter than the recipe's warm-up."""
    if recipe.warmup_epochs <= epochs:
        return ""
    return f"; warning: warmup_epochs {recipe.warmup_epochs:g} is longer than these {epochs} epochs, so the " \
           "learning rate never reaches lr"
