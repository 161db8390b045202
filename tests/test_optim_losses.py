"""Optimisation and losses against independent expectations: schedule shapes by hand, weight
decay only on weights of two or more dimensions, losses against direct formulas."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from vislab.config import Recipe
from vislab.data.seg_classes import IGNORE
from vislab.engine.base import decay_groups
from vislab.engine.losses import build_loss, inverse_sqrt_frequency
from vislab.engine.optim import ScheduleWarp, build_optimization, rescale_schedule


def _lrs(scheduler: str, *, epochs: int, spe: int, warmup: float, lr: float = 1.0) -> list[float]:
    """The learning rate each optimiser step uses."""
    p = torch.nn.Parameter(torch.zeros(1))
    r = Recipe(task="cls", model="simple_cnn", lr=lr, epochs=epochs, scheduler=scheduler, warmup_epochs=warmup,
               optimizer="sgd")
    opt = build_optimization([p], r, steps_per_epoch=spe)
    sched = opt["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(epochs * spe):
        out.append(opt["optimizer"].param_groups[0]["lr"])
        opt["optimizer"].step()
        sched.step()
    return out


def test_schedule_shapes_by_hand():
    # 2 epochs of 5 steps, 1 warm-up epoch: 1/5 .. 5/5, then half a cosine over the 5 last steps
    cos = _lrs("cosine", epochs=2, spe=5, warmup=1.0)
    assert cos[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert cos[5:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)])
    const = _lrs("constant", epochs=2, spe=4, warmup=0.5, lr=0.3)
    assert const == pytest.approx([0.15, 0.3] + [0.3] * 6)
    poly = _lrs("poly", epochs=1, spe=4, warmup=0.0)
    assert poly == pytest.approx([(1 - k / 4) ** 0.9 for k in range(4)])


def test_rescaled_schedule_keeps_the_fraction_done():
    state = {"last_epoch": 30, "_step_count": 31}
    assert rescale_schedule(state, 12, 6) and state == {"last_epoch": 15, "_step_count": 16}
    assert not rescale_schedule(state, 6, 6) and state["last_epoch"] == 15


def test_schedule_warp_by_hand():
    """A 100-step schedule cut at step 40 to end at 70: steps 40..70 run through 40..100 of the
    original (2 per step); cut again at 55 (original 70) to end at 60: 30 original steps in 5."""
    w = ScheduleWarp(100)
    assert [w(s) for s in (0, 37, 100)] == [0, 37, 100]
    w.replan(40, 70)
    assert [w(s) for s in (10, 40, 55, 70)] == pytest.approx([10, 40, 70, 100])
    w.replan(55, 60)
    assert [w(s) for s in (50, 55, 57, 60)] == pytest.approx([60, 70, 82, 100])
    assert ScheduleWarp(100, [(40, 70)]).rescaled(0.5).knots == [(20, 35)]
    with pytest.raises(ValueError, match="precedes"):
        w.replan(50, 58)
    # through the optimiser: 2 epochs of 5 cosine steps cut after the first epoch to end with it
    p = torch.nn.Parameter(torch.zeros(1))
    warp = ScheduleWarp(10)
    opt = build_optimization([p], Recipe(task="cls", model="simple_cnn", lr=1.0, epochs=2, optimizer="sgd"),
                             steps_per_epoch=5, warp=warp)
    lrs = []
    for step in range(8):
        if step == 4:
            warp.replan(4, 8)  # 6 original steps left in 4: 1.5 each
        lrs.append(opt["optimizer"].param_groups[0]["lr"])
        opt["optimizer"].step()
        opt["lr_scheduler"]["scheduler"].step()
    want = [0.5 * (1 + math.cos(math.pi * s / 10)) for s in (0, 1, 2, 3)]
    # the rate of step 4 was set when step 3 ended, before the cut; from step 5 on it is warped
    want += [0.5 * (1 + math.cos(math.pi * 4 / 10))] + [0.5 * (1 + math.cos(math.pi * (4 + 1.5 * k) / 10))
                                                        for k in (1, 2, 3)]
    assert lrs == pytest.approx(want)
    assert 0.5 * (1 + math.cos(math.pi * warp(8) / 10)) == pytest.approx(0.0)


def test_weight_decay_leaves_biases_and_norms_alone():
    """One SGD step with zero gradients: only decayed parameters move, by lr * wd * value."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 2))
    net[0].weight.requires_grad_(False)  # frozen: in no group
    for p in net.parameters():
        p.data.fill_(1.0)
    groups = decay_groups(net, 0.1)
    assert sum(len(g["params"]) for g in groups) == 5
    opt = build_optimization(groups, Recipe(task="cls", model="simple_cnn", lr=0.5, optimizer="sgd", momentum=0.0,
                                            weight_decay=0.1), steps_per_epoch=1)["optimizer"]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n: float(p.data.flatten()[0]) for n, p in net.named_parameters()}
    assert moved == pytest.approx({"0.weight": 1.0, "0.bias": 1.0, "1.weight": 1.0, "1.bias": 1.0,
                                   "3.weight": 1.0 - 0.5 * 0.1, "3.bias": 1.0})
    assert len(decay_groups(net, 0.0)) == 1  # no decay at all: one group


def _soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """smp's multiclass Dice by its formula: per class 1 - 2 sum(p t) / (sum p + sum t) over the
    labelled pixels, averaged over the classes present in the target."""
    keep = target != IGNORE
    p = logits.softmax(1).permute(1, 0, 2, 3)[:, keep]  # (C, labelled pixels)
    t = F.one_hot(target[keep], logits.shape[1]).T.float()
    inter, card = (p * t).sum(1), (p + t).sum(1)
    dice = 1 - 2 * inter / card.clamp_min(1e-7)
    return (dice * (t.sum(1) > 0)).mean()


def test_losses_against_their_formulas_ignore_labelled_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, :2] = IGNORE
    keep = target != IGNORE
    ce = -logits.log_softmax(1).gather(1, target.clamp_max(3)[:, None])[:, 0][keep].mean()
    assert float(build_loss("ce")(logits, target)) == pytest.approx(float(ce), rel=1e-5)
    assert float(build_loss("dice")(logits, target)) == pytest.approx(float(_soft_dice(logits, target)), rel=1e-4)
    assert float(build_loss("ce+dice")(logits, target)) == pytest.approx(float(ce + _soft_dice(logits, target)),
                                                                        rel=1e-4)
    # class weights: each pixel's term weighted by its class, normalised by the weights' sum
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    wt = w[target.clamp_max(3)][keep]
    terms = -logits.log_softmax(1).gather(1, target.clamp_max(3)[:, None])[:, 0][keep]
    got = build_loss("ce", class_weights=w)(logits, target)
    assert float(got) == pytest.approx(float((wt * terms).sum() / wt.sum()), rel=1e-5)
    # a module holding a loss pickles (ddp_spawn starts its processes so): the copy computes the same
    summed = build_loss("ce+dice+lovasz", class_weights=w)
    assert float(pickle.loads(pickle.dumps(summed))(logits, target)) == pytest.approx(float(summed(logits, target)))
    # Lovasz of a perfect prediction is 0; of a confident wrong one, larger than of a hedged one
    perfect = F.one_hot(target.clamp_max(3), 4).permute(0, 3, 1, 2).float() * 20
    lov = build_loss("lovasz")
    assert float(lov(perfect, target)) == pytest.approx(0.0, abs=1e-5)
    assert float(lov(-perfect, target)) > float(lov(torch.zeros_like(perfect), target)) > 0
    # a batch with every pixel left out (a crop of an ignored region): a loss of 0 with zero gradients, for every
    # loss and sum (torch's mean over no pixel is NaN; smp's Lovasz an empty tensor, which backward refuses)
    left_out = torch.full_like(target, IGNORE)
    for spec in ("ce", "dice", "lovasz", "ce+dice+lovasz"):
        x = logits.clone().requires_grad_(True)
        loss = build_loss(spec, class_weights=w)(x, left_out)
        loss.backward()
        assert loss.dim() == 0 and float(loss) == 0.0 and float(x.grad.abs().max()) == 0.0, spec
    with pytest.raises(Exception, match="unknown loss 'ce\\+focal'"):
        build_loss("ce+focal")


def test_inverse_sqrt_frequency_by_hand():
    w = inverse_sqrt_frequency(torch.tensor([64, 16, 0, 4]))
    raw = [1 / math.sqrt(64 / 84), 1 / math.sqrt(16 / 84), 0.0, 1 / math.sqrt(4 / 84)]
    mean = (raw[0] + raw[1] + raw[3]) / 3
    assert w.tolist() == pytest.approx([r / mean for r in raw])
    # the course: a last class outside the mIoU (unknown) is left at 1, however rare; the shares
    # and the mean are those of the scored classes alone
    w = inverse_sqrt_frequency(torch.tensor([50, 30, 20, 1]), scored=3)
    raw = [1 / math.sqrt(50 / 100), 1 / math.sqrt(30 / 100), 1 / math.sqrt(20 / 100)]
    assert w.tolist() == pytest.approx([r / (sum(raw) / 3) for r in raw] + [1.0])


def test_a_replan_after_a_resume_on_more_processes_cuts_at_the_schedulers_step():
    """Epoch 1 ran on one process (12 steps), epochs 2.. on two (6 steps each): after epoch 2 the
    rescaled scheduler has taken 12 steps of 6 per epoch, while Lightning's global_step counts
    12 + 6 = 18. A re-plan to 4 epochs (24 steps) must stretch the 6 original steps left over
    steps 12..24; cut at 18 the schedule would reach its end at step 18, a whole epoch early."""
    from types import SimpleNamespace

    from vislab.engine.base import VislabModule

    warp = ScheduleWarp(18)  # 3 epochs of 6 steps, as the resume rescaled it
    trainer = SimpleNamespace(global_step=18, fit_loop=SimpleNamespace(max_epochs=3))
    module = SimpleNamespace(schedule_warp=warp, steps_per_epoch=6, trainer=trainer, replanned_epochs=None,
                             lr_schedulers=lambda: SimpleNamespace(last_epoch=12))
    module.schedule_step = VislabModule.schedule_step.fget(module)  # the scheduler's count: 12
    VislabModule.replan(module, 4)  # type: ignore[arg-type]
    assert warp.knots == [(12, 24)] and trainer.fit_loop.max_epochs == 4 and module.replanned_epochs == 4
    assert [warp(s) for s in (12, 18, 24)] == pytest.approx([12, 15, 18])
    assert module.stop_step is None  # the last epoch runs to its end


def test_the_recipe_checks_know_the_names_the_engine_builds():
    from vislab import config
    from vislab.engine.losses import LOSSES
    from vislab.engine.optim import LR_RULES, OPTIMIZERS, SCHEDULERS

    assert set(config.OPTIMIZER_NAMES) == set(OPTIMIZERS) == set(LR_RULES)
    assert set(config.SCHEDULER_NAMES) == set(SCHEDULERS)
    assert set(config.LOSS_NAMES) == set(LOSSES)
