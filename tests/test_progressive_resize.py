"""Progressive resizing (``resize_from``): the side schedule, what the network is fed, and the time
budget's plan and re-plan for epochs that cost more as they grow."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
import yaml

from vislab.config import FieldError, Recipe, check_applies
from vislab.data.classification import progressive_sides


def test_sides_by_hand():
    # 10 epochs: the last quarter (2) at 192; epoch e < 8 at 128 + 64 e / 8, to the nearest 16 from 128
    # (e = 1: 8 -> 0 steps; 2: 16 -> 1; 3: 24 -> 1.5 -> 2 (even); 4: 32 -> 2; 5: 40 -> 2.5 -> 2 (even);
    # 6: 48 -> 3; 7: 56 -> 3.5 -> 4)
    assert progressive_sides(128, 192, 10) == [128, 128, 144, 160, 160, 160, 176, 192, 192, 192]
    assert progressive_sides(32, 64, 4) == [32, 48, 48, 64]
    assert progressive_sides(32, 64, 3) == [32, 48, 64]
    assert progressive_sides(128, 192, 1) == [192]  # one epoch: the full side
    assert progressive_sides(100, 200, 2) == [100, 200]
    assert progressive_sides(120, 130, 5) == [120, 120, 120, 120, 130]  # under half a step of growth until the end
    assert progressive_sides(96, 96, 3) == [96, 96, 96]


def test_recipe_checks():
    check_applies(Recipe(task="cls", image_size=64, resize_from=32))
    with pytest.raises(FieldError, match="resize_from grows the training side to image_size, and image_size is not set"):
        check_applies(Recipe(task="cls", resize_from=32))
    with pytest.raises(FieldError, match=r"resize_from must be at most image_size \(64\), got 96"):
        check_applies(Recipe(task="cls", image_size=64, resize_from=96))
    with pytest.raises(FieldError, match="resize_from applies to cls training only"):
        check_applies(Recipe(task="seg", resize_from=32))
    with pytest.raises(FieldError, match="resize_from must be an integer >= 1"):
        Recipe(task="cls", image_size=64, resize_from=0)


def test_budget_plan_with_growing_epochs_by_hand():
    """10 steps per epoch; every step of an n-epoch schedule costs 0.5 s but the last epoch's 1 s;
    3 held-out batches priced at a third of the 1-s step: an epoch's fixed part is 1.1 s. n whole
    epochs: 11 x (0.5 (n - 1) + 1) + 1.1 n = 6.6 n + 5.5 s. 60 s: 8 epochs are 58.3 s (58.7 with the
    5 % stretch), so 9 epochs; their steps average 1.1 x 5 / 9 = 0.611 s with the 10 %, and
    (60 / 9 - 1.1) / 0.611 = 9.1: 9 of the 10 batches."""
    from vislab.engine.budget import budget_epochs

    r = Recipe(task="cls", epochs=30, budget_minutes=1.0)
    costs = lambda n: [0.5] * (n - 1) + [1.0]  # noqa: E731
    got, line = budget_epochs(r, 1.0, 10, 3, epoch_steps=costs, how="two timings")
    assert (got.epochs, got.limit_train_batches) == (9, 9)
    assert line.startswith("epochs 30 -> 9 of 9 of their 10 batches") and "at two timings (10 steps" in line
    # a recipe that limits its own batches gets the most whole epochs: 6.6 n + 5.5 <= 60 -> 8
    limited = Recipe(task="cls", epochs=30, budget_minutes=1.0, limit_train_batches=10)
    assert budget_epochs(limited, 1.0, 10, 3, epoch_steps=costs)[0].epochs == 8


def test_keeper_replans_with_the_modules_epoch_costs():
    """Budget 60 s, 6 epochs planned, the first took 10 s. Equal epochs: 5 more fit (50 s left).
    If the last epoch of any schedule costs 3 units: 6 epochs need 7 more units (70 s), 5 need 6
    (60 s), both over 50 s + a quarter of that last epoch (7.5 s); 4 need 5 (50 s): the schedule
    ends with epoch 4."""
    from vislab.engine.callbacks import BudgetKeeper

    trainer = SimpleNamespace(current_epoch=0, max_epochs=6, is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    last3 = lambda n: [1.0] * (n - 1) + [3.0]  # noqa: E731
    equal = lambda n: [1.0] * n  # noqa: E731
    # (the module's weights, the keeper's own (the plan's timings: they take precedence), re-plans)
    for weights, given, expected in ((None, None, []), (last3, None, [4]), (None, last3, [4]), (last3, equal, [])):
        keeper = BudgetKeeper(1.0, weights=given)
        now = iter([0.0, 10.0])
        keeper.clock = lambda: next(now)  # type: ignore[method-assign]
        calls: list[int] = []
        module = SimpleNamespace(replan=calls.append, **({"epoch_weights": weights} if weights else {}))
        keeper.on_train_start(trainer, module)
        keeper.on_train_epoch_end(trainer, module)
        assert calls == expected


def _recipe(tmp_path, **kw):
    r = {"task": "cls", "model": "cifar_resnet20", "batch_size": 16, "lr": 0.05, "holdout": 0.2, "seed": 1,
         "image_size": 64, "resize_from": 32, **kw}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _sides(run) -> list[float]:
    with (run / "history.csv").open() as fh:
        return [float(row["train_side"]) for row in csv.DictReader(fh)]


def test_training_feeds_the_scheduled_sides_and_keeps_the_full_one(cli, color_classes, tmp_path):
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, epochs=4), "--out", run)
    assert res.code == 0, res.err
    assert _sides(run) == [32.0, 48.0, 48.0, 64.0]  # the batches the network was fed, epoch by epoch
    meta = torch.load(run / "last.ckpt", weights_only=False)["vislab"]
    assert meta["image_size"] == 64 and meta["recipe"]["resize_from"] == 32  # evaluated at the full side
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, epochs=2), "--out", tmp_path / "bad",
              "--resize-from", "80")
    assert res.code == 2 and "--resize-from: must be at most image_size (64), got 80" in res.err
    # one epoch trains at the full side (no epoch is left to grow over): run as told, and said
    one = tmp_path / "one"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, epochs=4), "--out", one, "--epochs", "1",
              "--limit-batches", "1")
    said = "resize_from 32 unused: a 1-epoch schedule trains at image_size 64 throughout"
    assert res.code == 0 and f"setting: {said}" in " ".join(res.err.split()), res.err
    assert _sides(one) == [64.0] and any(line.startswith(said) for line in (one / "changes.txt").read_text().splitlines())


def test_budget_times_both_sides(cli, color_classes, tmp_path, monkeypatch):
    """96 training images (6 batches of 16), 24 held out (2 batches). Timed: 1 s a step at 32 px,
    4 s at 64 px (48 px interpolated in pixels: 1 + 3 x (48^2 - 32^2) / (64^2 - 32^2) = 2.25 s).
    Held-out pass per epoch: 1.1 x 2 x 4 / 3 = 2.93 s. 3 epochs at [32, 48, 64]: 1.1 x 6 x 7.25 +
    3 x 2.93 = 56.65 s; 2 epochs at [32, 64]: 38.9 s. A budget of 54 s: 2 epochs stretched by 5 %
    are 39.8 s, short; so 3 epochs of (18 - 2.93) / (1.1 x 7.25 / 3) = 5.67: 5 of the 6 batches."""
    from vislab.engine import budget
    from vislab.engine.callbacks import BudgetKeeper

    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, side=None, **k: 1.0 if side == 32 else 4.0)
    monkeypatch.setattr(budget, "seconds_per_forward", lambda *a, **k: 4.0 / 3)  # at 64 px, a third of a step
    monkeypatch.setattr(budget, "checkpoint_seconds", lambda module: 0.0)
    monkeypatch.setattr(BudgetKeeper, "epochs_that_fit", lambda self, module, done, planned, *a, **k: planned)
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, epochs=50), "--out", run, "--budget", "0.9")
    assert res.code == 0, res.err
    line = next(ln for ln in (run / "changes.txt").read_text().splitlines() if "--budget" in ln)
    assert line.startswith("epochs 50 -> 3 of 5 of their 6 batches"), line
    assert "1 s per training step at 32 px and 4 s at 64 px measured here" in line
    assert _sides(run) == [32.0, 48.0, 64.0]


def test_a_budget_never_adds_epochs_to_a_progressive_resize(cli, color_classes, tmp_path, monkeypatch):
    """Planned as above (3 epochs at 32, 48, 64 px), but each epoch then takes 0.1 s: a plain run
    would get epochs added; here more epochs would move the ramp later and train the last epochs
    below 64 px again, so a progressive resize's re-plans only shorten it, and its sides only grow."""
    from vislab.engine import budget
    from vislab.engine.callbacks import BudgetKeeper

    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, side=None, **k: 1.0 if side == 32 else 4.0)
    monkeypatch.setattr(budget, "seconds_per_forward", lambda *a, **k: 4.0 / 3)  # at 64 px, a third of a step
    monkeypatch.setattr(budget, "checkpoint_seconds", lambda module: 0.0)
    ticks = iter(range(100))
    monkeypatch.setattr(BudgetKeeper, "clock", staticmethod(lambda: 0.1 * next(ticks)))
    from vislab.pipelines import training

    monkeypatch.setattr(training, "UNDERRUN", 0.0)  # real wall time is not the clock read here
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, epochs=50), "--out", run, "--budget", "0.9")
    assert res.code == 0, res.err
    lines = (run / "changes.txt").read_text().splitlines()
    assert lines[-1].startswith("epochs 50 -> 3 of 5 of their 6 batches") and "--budget 0.9 min:" not in " ".join(lines)
    assert _sides(run) == [32.0, 48.0, 64.0]
