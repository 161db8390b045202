"""How a training run ends: a time limit says so and --resume finishes the schedule exactly;
Ctrl-C exits with status 130 and keeps the checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import write_cls_recipe

_recipe = write_cls_recipe


def _epochs(run) -> list[str]:
    with (run / "history.csv").open() as fh:
        return [row["epoch"] for row in csv.DictReader(fh)]


def test_time_limit_stops_between_epochs_says_so_and_resume_finishes_exactly(cli, color_classes, tmp_path):
    full = _recipe(tmp_path, "full.yaml")
    assert cli("cls", "train", color_classes, "--recipe", full, "--out", tmp_path / "full").code == 0

    limited = _recipe(tmp_path, "limited.yaml", max_minutes=1e-6)  # spent after every epoch
    run = tmp_path / "limited"
    res = cli("cls", "train", color_classes, "--recipe", limited, "--out", run)
    assert res.code == 0, res.err
    said = "max_minutes (1e-06) reached after epoch 1 of 2"
    assert said in res.err.replace("\n", " ")
    assert said in json.loads((run / "results.json").read_text())["stopped_early"]
    assert json.loads((run / "results.json").read_text())["epochs_trained"] == 1
    assert said in (run / "changes.txt").read_text().replace("\n", " ")  # the run folder says it too
    assert _epochs(run) == ["1"]
    # a run folder that lost its recipe.yaml is refused (the default recipe would be another run)
    (run / "recipe.yaml").rename(tmp_path / "kept.yaml")
    before = (run / "last.ckpt").read_bytes()
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 2 and "recipe.yaml: is missing: --resume continues the recipe" in " ".join(res.err.split())
    assert (run / "last.ckpt").read_bytes() == before and not (run / "recipe.yaml").exists()
    (tmp_path / "kept.yaml").rename(run / "recipe.yaml")
    # each invocation gets the limit again and runs one more whole epoch: here the last
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 0, res.err
    assert "stopped_early" not in json.loads((run / "results.json").read_text())
    assert json.loads((run / "results.json").read_text())["epochs_trained"] == 2
    assert _epochs(run) == ["1", "2"]
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the limited and resumed run differs from the full one"


def test_a_run_that_fails_says_so_in_its_folder_runs_and_report(cli, color_classes, tmp_path, monkeypatch):
    """An error in epoch 2 (after epoch 1's checkpoint): the console's line is also in failed.json
    and changes.txt, `vislab runs` and the report say it; a refused --resume leaves that as it is,
    and one that finishes the run makes it a finished run."""
    from vislab.engine.classification import ClassifierModule
    from vislab.pipelines.runs import run_row
    from vislab.report import _run_notes
    from vislab.runfolders import read_run

    step, when = ClassifierModule.training_step, {"epoch": 1}

    def failing(self, batch, batch_idx):
        if self.current_epoch == when["epoch"]:
            raise RuntimeError(f"boom in epoch {self.current_epoch + 1}\nsecond line")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", failing)
    run, recipe = tmp_path / "run", _recipe(tmp_path, "r.yaml")
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", run)
    line = "internal error: RuntimeError: boom in epoch 2"
    assert res.code == 1 and f"vislab: {line} (rerun with --debug" in res.err
    assert json.loads((run / "failed.json").read_text()) == {"commands": 1, "error": line}
    assert (run / "changes.txt").read_text().splitlines()[-1] == f"stopped: {line}"
    assert run_row(run).state == f"stopped: {line}; last.ckpt: --resume continues it"
    assert f"Unfinished: training stopped: {line} (1 epoch in history.csv)" in _run_notes(run, read_run(run))[0]
    # a resume that fails the same way: its own record, and its own line at the end of changes.txt
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 1 and json.loads((run / "failed.json").read_text()) == {"commands": 2, "error": line}
    lines = (run / "changes.txt").read_text().splitlines()
    assert lines[-1] == f"stopped: {line}" and lines.count(f"stopped: {line}") == 2
    # the same command again in a folder whose run failed before its first checkpoint starts afresh; failing
    # again, it is recorded again
    fresh, when["epoch"] = tmp_path / "fresh", 0
    for _ in range(2):
        assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", fresh).code == 1
        assert json.loads((fresh / "failed.json").read_text()) == {
            "commands": 1, "error": "internal error: RuntimeError: boom in epoch 1"}
        assert (fresh / "changes.txt").read_text().splitlines()[-1] == "stopped: internal error: RuntimeError: boom in epoch 1"
    monkeypatch.setattr(ClassifierModule, "training_step", step)
    other = tmp_path / "other"
    other.mkdir()
    (other / "0_0.png").write_bytes((color_classes / "0_0.png").read_bytes())
    assert cli("cls", "train", other, "--out", run, "--resume").code == 2  # another data folder: refused
    assert run_row(run).state == f"stopped: {line}; last.ckpt: --resume continues it"
    assert cli("cls", "train", color_classes, "--out", run, "--resume").code == 0
    assert run_row(run).state == "finished" and json.loads((run / "results.json").read_text())["epochs_trained"] == 2


def _finite_weights(path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_loss_that_stops_being_a_number_stops_the_run_before_a_checkpoint_holds_it(cli, color_classes, tmp_path,
                                                                                     monkeypatch):
    """Epoch 2's third batch made of infinities: its loss is NaN, its update breaks the weights,
    and the run stops there with one line (status 1), recorded like any failure; last.ckpt and
    best.ckpt hold weights that are all numbers. With the per-batch check off (an accelerator
    reads every 16th batch), a save after the bad step is refused just the same, and the last
    save kept is the batch before it."""
    from vislab.engine.callbacks import FiniteLoss
    from vislab.engine.classification import ClassifierModule
    from vislab.pipelines.runs import run_row

    step = ClassifierModule.training_step

    def blowing_up(self, batch, batch_idx):
        x, *rest = batch
        return step(self, (x * float("inf") if (self.current_epoch, batch_idx) == (1, 2) else x, *rest), batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", blowing_up)
    line = "training diverged: the training loss became nan at epoch 2, batch 3"
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", epochs=3), "--out", run)
    assert res.code == 1 and f"vislab: {line} (learning rate " in res.err and "--lr" in res.err
    assert json.loads((run / "failed.json").read_text())["error"].startswith(line)
    assert run_row(run).state.startswith(f"stopped: {line}") and _epochs(run) == ["1"]
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    assert _finite_weights(run / "last.ckpt") and _finite_weights(run / "best.ckpt")

    # saves after every batch (96 images, batch 16: 6 a epoch), the batch check off: the save after step 9 refused
    monkeypatch.setattr(FiniteLoss, "on_train_batch_end", lambda self, *args, **kwargs: None)
    run = tmp_path / "saves"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "s.yaml", epochs=3, checkpoint_minutes=1e-9),
              "--out", run)
    assert res.code == 1 and "vislab: training diverged: the weights stopped being numbers in epoch 2 (its last " \
                             "training loss: nan)" in res.err
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 8
    assert _finite_weights(run / "last.ckpt")


def test_a_loss_that_is_no_number_with_weights_that_are_trains_on():
    """A step whose loss is NaN or infinite but whose weights stay numbers (a float16 overflow
    the gradient scaler skipped, a batch with nothing to learn) is no divergence; weights that
    are no numbers are, after a batch and at a save."""
    from types import SimpleNamespace

    from vislab.engine.callbacks import FiniteLoss
    from vislab.errors import Diverged

    net = torch.nn.Linear(2, 2)
    progress = SimpleNamespace(is_last_batch=False)
    trainer = SimpleNamespace(callback_metrics={"train_loss_step": torch.tensor(float("inf"))}, current_epoch=0,
                              optimizers=[torch.optim.SGD(net.parameters(), lr=0.5)],
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    module = SimpleNamespace(device=torch.device("cpu"), parameters=net.parameters)
    check = FiniteLoss()
    check.on_train_batch_end(trainer, module, None, None, 4)  # weights are numbers: trains on
    check.on_save_checkpoint(trainer, module, {"state_dict": net.state_dict()})
    with torch.no_grad():
        net.bias[1] = float("nan")
    with pytest.raises(Diverged, match=r"^training diverged: the training loss became inf at epoch 1, batch 5 "
                                       r"\(learning rate 0.5\); training stopped there"):
        check.on_train_batch_end(trainer, module, None, None, 4)
    trainer.callback_metrics["train_loss_step"] = torch.tensor(0.25)  # a finite loss, the update broke the weights
    check.on_train_batch_end(trainer, module, None, None, 4)  # the loss alone is read after a batch
    with pytest.raises(Diverged, match=r"the weights stopped being numbers in epoch 1 \(its last training loss: 0.25\)"):
        check.on_save_checkpoint(trainer, module, {"state_dict": net.state_dict()})


def test_max_minutes_flag_stops_and_a_resume_may_change_it(cli, color_classes, tmp_path):
    """--max-minutes is the recipe's max_minutes from the command line; a --resume may give
    another (a guard of that invocation), and without one keeps the run's."""
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", epochs=3), "--out", run,
              "--max-minutes", "1e-6")
    assert res.code == 0 and "max_minutes (1e-06) reached after epoch 1 of 3" in " ".join(res.err.split())
    assert yaml.safe_load((run / "recipe.yaml").read_text())["max_minutes"] == 1e-6
    res = cli("cls", "train", color_classes, "--out", run, "--resume")  # the run's own guard again
    assert res.code == 0 and "reached after epoch 2 of 3" in " ".join(res.err.split())
    res = cli("cls", "train", color_classes, "--out", run, "--resume", "--max-minutes", "0")  # 0: no guard
    assert res.code == 0, res.err
    assert "--max-minutes 0: no time guard (the recipe's max_minutes 1e-06 is not applied)" in " ".join(res.err.split())
    assert _epochs(run) == ["1", "2", "3"] and "stopped_early" not in json.loads((run / "results.json").read_text())
    new = tmp_path / "new"  # a new run's flag 0 lifts its recipe's guard alike
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "g.yaml", epochs=2, max_minutes=1e-6),
              "--out", new, "--max-minutes", "0")
    assert res.code == 0 and _epochs(new) == ["1", "2"] and "no time guard" in (new / "changes.txt").read_text()


def test_ctrl_c_exits_130_and_keeps_the_checkpoint(cli, color_classes, tmp_path):
    """While it trains, `vislab runs` shows the run's process and a second training of the run is
    refused; Ctrl-C: exit 130, the checkpoint kept, the run shown as interrupted."""
    from vislab.pipelines.runs import run_row

    recipe = _recipe(tmp_path, "r.yaml", epochs=50, checkpoint_minutes=1e-6)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # a shell's background job starts with SIGINT ignored, and Python keeps an inherited SIG_IGN:
    # the child gets the default disposition back, as in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "vislab", "cls", "train", str(color_classes), "--recipe",
                             str(recipe), "--out", str(run)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "last.ckpt").is_file():
        time.sleep(0.05)
    time.sleep(0.5)
    assert run_row(run).state.startswith(f"running: process {proc.pid}, since ")
    from vislab.report import _run_notes
    from vislab.runfolders import read_run

    note = _run_notes(run, read_run(run))[0]  # no --resume offered: it would be refused while the run trains
    assert note.startswith(f"Unfinished: running: process {proc.pid}, since ") and "--resume" not in note
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 2 and f"{run}: another vislab is training this run (running: process {proc.pid}" in res.err
    assert proc.poll() is None, "premise: still training when interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "vislab: interrupted" in err and "--resume" in err
    assert (run / "last.ckpt").is_file() and not (run / "results.json").exists()
    assert not (run / "running.json").exists()  # the process said it ended
    assert run_row(run).state == "stopped: interrupted; last.ckpt: --resume continues it"


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(color_classes, tmp_path):
    """Interrupted inside its first epoch (slow steps at 256 px, no mid-epoch checkpoints): exit 130,
    no --resume advice (it would find no last.ckpt), and the same command then starts afresh."""
    recipe = _recipe(tmp_path, "r.yaml", epochs=1, image_size=256)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vislab", "cls", "train", str(color_classes), "--recipe", str(recipe),
               "--out", str(run)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "recipe.yaml").is_file():  # written just before fit starts
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    said = " ".join(err.split())
    assert "before its first checkpoint, so there is nothing to resume" in said and "continues it" not in said
    assert not (run / "last.ckpt").exists()
    assert json.loads((run / "failed.json").read_text()) == {"commands": 1, "error": "interrupted"}
    from conftest import run_vislab  # the same command again (in this process: no second start-up)

    assert run_vislab(*command[3:-2], "--epochs", "1", "--image-size", "32", "--out", run) == 0
    assert not (run / "failed.json").exists()  # the earlier attempt's record went with its other records


def test_ctrl_c_while_the_budget_times_its_steps_says_nothing_was_written(cli, color_classes, tmp_path, monkeypatch):
    """Interrupted in the budget's probe (before fit): exit 130, one line that says there is nothing
    to resume, and no run folder (it is written after the probe)."""
    from vislab.engine import budget

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(budget, "seconds_per_step", interrupted)
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml"), "--out", run, "--budget", "1")
    assert res.code == 130
    assert (f"vislab: interrupted ({run}: before training started; no checkpoint was written, so run the same "
            "command again)") in " ".join(res.err.split())
    assert not run.exists()


def test_atomic_writes_never_touch_the_process_umask(tmp_path, monkeypatch):
    """Setting the umask to read it races with threads creating files meanwhile."""
    from vislab.io import atomic_write_text, process_umask

    mask = os.umask(0o027)
    try:
        def refuse(_mask):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", refuse)
        assert process_umask() == 0o027
        atomic_write_text("x", tmp_path / "f.txt")
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(mask)


def test_budget_epochs_by_hand():
    from vislab.config import Recipe
    from vislab.engine.budget import budget_epochs

    r = Recipe(task="cls", epochs=30, budget_minutes=1.0)
    # an epoch: 1.1 x (10 steps x 0.5 s + 3 held-out batches x 0.5 s / 3) + 1.9 s = 7.95 s; 60 s hold
    # 7.55 epochs: 8 epochs of 7.5 s, each 2.45 s of evaluation and writes + 9 steps of 0.55 s
    got, line = budget_epochs(r, 0.5, 10, 3, epoch_overhead=1.9)
    assert (got.epochs, got.limit_train_batches) == (8, 9) and "about 8.0 s per epoch" in line
    assert "epochs 30 -> 8 of 9 of their 10 batches" in line
    assert "at 0.5 s per training step measured here (10 steps" in line
    _, compiled = budget_epochs(Recipe(task="cls", epochs=30, budget_minutes=1.0, compile=True), 0.5, 10, 3,
                                epoch_overhead=1.9)  # the probe ran an eager copy: the line says so
    assert "at 0.5 s per training step measured here without torch.compile (10 steps" in compiled
    # 60 s hold 2.02 epochs of 29.7 s: two whole ones
    got, line = budget_epochs(r, 2.4, 10, 3, epoch_overhead=0.66)
    assert (got.epochs, got.limit_train_batches) == (2, None) and "epochs 30 -> 2:" in line
    # a recipe that limits its batches itself: whole epochs only
    got, _ = budget_epochs(Recipe(task="cls", epochs=30, budget_minutes=1.0, limit_train_batches=10), 0.5, 10, 3,
                           epoch_overhead=1.9)
    assert (got.epochs, got.limit_train_batches) == (7, 10)
    # a measured held-out forward pass (0.4 s at twice the training pixels) replaces a third of a
    # step: an epoch is 1.1 x (10 x 0.5 s + 3 x 2 x 0.4 s) + 1.36 s = 9.5 s; 60 s hold 6.3 epochs:
    # 7 epochs, each 4.0 s of evaluation and writes + 8 steps of 0.55 s (a third of a step: 8 epochs)
    got, line = budget_epochs(r, 0.5, 10, 3, epoch_overhead=1.36, forward_seconds=0.4, eval_scale=2.0)
    assert (got.epochs, got.limit_train_batches) == (7, 8) and "about 9.5 s per epoch" in line
    assert "3 held-out batches per epoch at 0.8 s each" in line
    assert budget_epochs(r, 0.5, 10, 3, epoch_overhead=1.36, eval_scale=2.0)[0].epochs == 8
    tiny = budget_epochs(Recipe(task="cls", budget_minutes=0.001), 0.5, 10, 3)[0]
    assert (tiny.epochs, tiny.limit_train_batches) == (1, 1)  # at least one epoch of one batch
    # a planned run shorter than the warm-up (2 epochs, as above) is said; one as long is not
    warm = Recipe(task="cls", epochs=30, budget_minutes=1.0, warmup_epochs=2.5)
    _, line = budget_epochs(warm, 2.4, 10, 3, epoch_overhead=0.66)
    assert line.endswith("; warning: warmup_epochs 2.5 is longer than these 2 epochs, so the learning rate never "
                         "reaches lr")
    _, line = budget_epochs(dataclasses.replace(warm, warmup_epochs=2.0), 2.4, 10, 3, epoch_overhead=0.66)
    assert "warning" not in line


def _budget_keeps_its_plan(monkeypatch):
    """The budget's re-planning keeps the epochs planned, at epoch ends and inside epochs (its own
    tests drive it)."""
    from vislab.engine.callbacks import BudgetKeeper

    from vislab.pipelines import training

    monkeypatch.setattr(BudgetKeeper, "epochs_that_fit", lambda self, module, done, planned, *a, **k: planned)
    monkeypatch.setattr(BudgetKeeper, "cut_step", lambda self, *a, **k: None)
    monkeypatch.setattr(training, "UNDERRUN", 0.0)  # these tiny runs end inside any budget (its own test says so)


def test_budget_sets_the_epochs_before_the_run_and_resume_keeps_them(cli, color_classes, tmp_path, monkeypatch):
    import re

    _budget_keeps_its_plan(monkeypatch)

    recipe = _recipe(tmp_path, "r.yaml", epochs=50)
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--budget", "0.1")
    assert res.code == 0, res.err
    line = next(ln for ln in (run / "changes.txt").read_text().splitlines() if "--budget 0.1 min" in ln)
    epochs = int(re.search(r"epochs 50 -> (\d+)", line).group(1))
    assert yaml.safe_load((run / "recipe.yaml").read_text())["epochs"] == epochs == len(_epochs(run))
    assert cli("cls", "train", color_classes, "--out", run, "--resume").code == 0  # no second measurement
    assert len(_epochs(run)) == epochs and (run / "changes.txt").read_text().count("--budget 0.1 min at") == 1
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / "bad", "--budget", "0")
    assert res.code == 2 and "--budget: must be > 0" in res.err


def test_a_budgeted_run_that_runs_over_says_so(cli, color_classes, tmp_path, monkeypatch):
    from vislab.pipelines import training

    assert training.budget_overrun(10, 630.0) is None  # 5 % over: within
    assert "training took 10.6 min, 106 % of it;" in training.budget_overrun(10, 636.0)
    assert "training took 0.1 min, 108 % of it;" in training.budget_overrun(0.1, 6.5)  # a minute's tenth hid it
    # a run of a few seconds is "over" a threshold of 1 % of its budget: the line reaches the console,
    # changes.txt (after the budget's own line) and results.json
    monkeypatch.setattr(training, "OVERRUN", 0.01)
    _budget_keeps_its_plan(monkeypatch)
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", epochs=50), "--out", run,
              "--budget", "0.1")
    assert res.code == 0, res.err
    assert "warning: --budget 0.1 min: training took" in (res.err + res.out).replace("\n", " ")
    lines = (run / "changes.txt").read_text().splitlines()
    assert "--budget 0.1 min at" in lines[-2] and lines[-1].startswith("--budget 0.1 min: training took")
    assert json.loads((run / "results.json").read_text())["changes"][-1] == lines[-1]


def test_a_budgeted_run_that_ends_far_inside_its_budget_says_so(cli, color_classes, tmp_path, monkeypatch):
    """Re-plans add epochs up to twice the first plan: a run whose first steps ran much slower than
    the rest can end far inside its budget, and says so, with the cap when it is the reason."""
    from vislab.pipelines import training

    assert training.budget_underrun(10, 480.0, 3, 6) is None  # 80 %: filled
    assert training.budget_underrun(10, 300.0, 4, 6) == "--budget 10 min: training took 5.0 min, 50 % of it"
    assert training.budget_underrun(10, 300.0, 6, 6) == (
        "--budget 10 min: training took 5.0 min, 50 % of it; re-plans add epochs up to twice the first plan, and it "
        "trained all 6 (its first steps, which planned it, ran slower than the rest): --epochs sets more")
    assert "a progressive resize's re-plans only take epochs away" in training.budget_underrun(10, 300.0, 4, None)
    # a real run: planned as 2 epochs by a probe that says a step takes 1 s; the few real
    # seconds it trains are far inside 1 min, and the keeper (epoch ends only here) adds no epochs
    from vislab.engine import budget
    from vislab.engine.callbacks import BudgetKeeper

    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: 1.0)
    monkeypatch.setattr(budget, "seconds_per_forward", lambda *a, **k: 1.0 / 3)
    monkeypatch.setattr(budget, "checkpoint_seconds", lambda module: 0.0)
    monkeypatch.setattr(BudgetKeeper, "epochs_that_fit", lambda self, module, done, planned, *a, **k: planned)
    monkeypatch.setattr(BudgetKeeper, "cut_step", lambda self, *a, **k: None)
    monkeypatch.setattr(BudgetKeeper, "more_epochs", lambda self, *a, **k: None)
    monkeypatch.setattr(BudgetKeeper, "partial_end", lambda self, *a, **k: None)
    monkeypatch.setattr(BudgetKeeper, "last_part", lambda self, *a, **k: None)
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", model="simple_cnn", epochs=50,
                                                                  batch_size=8), "--out", run, "--budget", "0.5")
    assert res.code == 0, res.err
    lines = (run / "changes.txt").read_text().splitlines()
    results = json.loads((run / "results.json").read_text())
    share = 100 * results["train_seconds"] / 30
    assert lines[-1] == f"--budget 0.5 min: training took {results['train_seconds'] / 60:.1f} min, {share:.0f} % of it"
    assert results["changes"][-1] == lines[-1] and f"warning: {lines[-1]}" in " ".join(res.err.split())
    # a run that max_minutes stopped says that instead (it trained 1 of its epochs, not "all" of them)
    stopped = tmp_path / "stopped"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "s.yaml", model="simple_cnn", epochs=50,
                                                                  batch_size=8, max_minutes=1e-6),
              "--out", stopped, "--budget", "0.5")
    assert res.code == 0 and "max_minutes (1e-06) reached after epoch 1" in " ".join(res.err.split()), res.err
    assert "training took" not in (stopped / "changes.txt").read_text()


def _planned_budget(monkeypatch, seconds_per_epoch: float) -> None:
    """A budget plan that does not depend on this machine: 1 s per step, no checkpoint cost, and
    a clock by which every epoch takes ``seconds_per_epoch``."""
    import itertools

    from vislab.engine import budget
    from vislab.engine.callbacks import BudgetKeeper

    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: 1.0)
    monkeypatch.setattr(budget, "seconds_per_forward", lambda *a, **k: 1.0 / 3)  # a held-out batch: a third of a step
    monkeypatch.setattr(budget, "checkpoint_seconds", lambda module: 0.0)
    from vislab.pipelines import training

    # the overrun line compares real wall time with the budget: on a loaded machine these tiny
    # runs take longer than their planned clock says, or far shorter (their own test drives those lines)
    monkeypatch.setattr(training, "OVERRUN", 1e9)
    monkeypatch.setattr(training, "UNDERRUN", 0.0)
    ticks = itertools.count()
    monkeypatch.setattr(BudgetKeeper, "clock", staticmethod(lambda: next(ticks) * seconds_per_epoch))


def test_a_slower_machine_ends_a_budgeted_run_earlier_with_the_whole_schedule(cli, color_classes, tmp_path,
                                                                              monkeypatch):
    """120 images, 24 held out (2 batches), 2 batches per epoch: an epoch is planned at
    1.1 x (2 + 2/3) s = 2.93 s, so 15 s hold 5 epochs. Each epoch then takes 5 s: after epoch 1,
    10 s are left, 2 epochs fit, and the cosine ends with epoch 3. A run stopped after each
    epoch and resumed (without a new plan) ends identical to the uninterrupted one."""
    recipe = _recipe(tmp_path, "r.yaml", epochs=50, limit_train_batches=2)
    _planned_budget(monkeypatch, 5.0)
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--budget", "0.25")
    assert res.code == 0, res.err
    lines = (run / "changes.txt").read_text().splitlines()
    assert "epochs 50 -> 5:" in lines[-2]
    assert lines[-1] == ("--budget 0.25 min: epochs 5 -> 3 after epoch 1 (0.1 min so far, 5 s per epoch: slower than "
                         "planned); the learning-rate schedule now ends with epoch 3")
    assert "warning: --budget 0.25 min: epochs 5 -> 3" in " ".join(res.err.split())
    assert _epochs(run) == ["1", "2", "3"]
    results = json.loads((run / "results.json").read_text())
    assert results["changes"][-1] == lines[-1] and results["epochs"] == 3
    with (run / "history.csv").open() as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh)]
    assert lrs[-1] < 1e-9 < lrs[0]  # the schedule reached its end; unplanned, epoch 3 of 5 ends at 0.35 x lr
    assert cli("cls", "train", color_classes, "--out", run, "--resume").code == 0
    assert _epochs(run) == ["1", "2", "3"]  # the re-plan travels in the checkpoint

    _planned_budget(monkeypatch, 5.0)
    piecewise = tmp_path / "piecewise"
    stopping = _recipe(tmp_path, "s.yaml", epochs=50, limit_train_batches=2, max_minutes=1e-6)
    assert cli("cls", "train", color_classes, "--recipe", stopping, "--out", piecewise, "--budget", "0.25").code == 0
    assert _epochs(piecewise) == ["1"]
    for expected in (["1", "2"], ["1", "2", "3"]):
        assert cli("cls", "train", color_classes, "--out", piecewise, "--resume").code == 0
        assert _epochs(piecewise) == expected
    a = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(piecewise / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the stopped and resumed run differs from the whole one"


def test_a_budgeted_run_that_speeds_up_gets_its_epochs_back_and_more(cli, color_classes, tmp_path, monkeypatch):
    """Planned as above: 5 epochs in 15 s. Epoch 1 takes 5 s (the cores were shared): 10 s left at
    5 s per epoch, 2 more fit (the last one needs only three quarters of it) -> 3 epochs. Then
    2 s, then 1 s, then 0.9 s per epoch, and an epoch is added when it fits whole: after epoch 2,
    8 s left at 3.5 s per epoch, 2.3 more -> 4; after epoch 3, 7 s at 2.67 s, 2.6 more -> 5, the
    first plan; after epoch 4, 6 s at 2.25 s, 2.7 more -> 6 (beyond the first plan); then 7 and
    8; after epoch 7, 3.1 s at 1.7 s: 1.8 more, not 2, so still 8. The schedule stretches with
    each re-plan and still decays once, to 0 at the last epoch."""
    from vislab.engine import budget
    from vislab.engine.callbacks import BudgetKeeper

    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: 1.0)
    monkeypatch.setattr(budget, "seconds_per_forward", lambda *a, **k: 1.0 / 3)  # a held-out batch: a third of a step
    monkeypatch.setattr(budget, "checkpoint_seconds", lambda module: 0.0)
    from vislab.pipelines import training

    monkeypatch.setattr(training, "OVERRUN", 1e9)  # real wall time is not the clock read here
    monkeypatch.setattr(training, "UNDERRUN", 0.0)
    readings = iter([0.0, 5.0, 7.0, 8.0, 9.0, 10.0, 11.0, 11.9, 12.8])
    monkeypatch.setattr(BudgetKeeper, "clock", staticmethod(lambda: next(readings)))
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", epochs=50, limit_train_batches=2),
              "--out", run, "--budget", "0.25")
    assert res.code == 0, res.err
    lines = (run / "changes.txt").read_text().splitlines()
    assert "epochs 50 -> 5:" in lines[-7]
    assert lines[-6].startswith("--budget 0.25 min: epochs 5 -> 3 after epoch 1 (0.1 min so far, 5 s per epoch: "
                                "slower than planned)")
    assert lines[-5] == ("--budget 0.25 min: epochs 3 -> 4 after epoch 2 (0.1 min so far, 4 s per epoch: faster than "
                         "planned); the learning-rate schedule now ends with epoch 4")
    assert [line.split(" after ")[0] for line in lines[-4:]] == [
        f"--budget 0.25 min: epochs {n} -> {n + 1}" for n in range(4, 8)]
    assert _epochs(run) == [str(n) for n in range(1, 9)]
    with (run / "history.csv").open() as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh)]
    assert lrs[-1] < 1e-9 < min(lrs[:-1]) and lrs == sorted(lrs, reverse=True)  # one decay, ending at 0
    assert json.loads((run / "results.json").read_text())["epochs"] == 8


def test_a_run_its_budget_extended_resumes_past_its_first_plan(cli, color_classes, tmp_path, monkeypatch):
    """Planned at 2.93 s per epoch, 9 s hold 3 epochs; each epoch then takes 1 s, so after epoch
    1 (8 s left) the plan doubles to 6. The run is stopped after every epoch and resumed: the
    pieces after epoch 3 (the recipe's epochs in recipe.yaml) still train, up to epoch 6, and the
    schedule ends there."""
    from vislab.engine import budget
    from vislab.engine.callbacks import BudgetKeeper

    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: 1.0)
    monkeypatch.setattr(budget, "seconds_per_forward", lambda *a, **k: 1.0 / 3)  # a held-out batch: a third of a step
    monkeypatch.setattr(budget, "checkpoint_seconds", lambda module: 0.0)
    clock = {"now": 0.0}

    def tick() -> float:  # a piece reads the clock as it starts and as its one epoch ends: 1 s apart
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(BudgetKeeper, "clock", staticmethod(tick))
    from vislab.pipelines import training

    monkeypatch.setattr(training, "UNDERRUN", 0.0)  # real wall time is not the clock read here
    run = tmp_path / "run"
    stopping = _recipe(tmp_path, "s.yaml", epochs=50, limit_train_batches=2, max_minutes=1e-6)
    assert cli("cls", "train", color_classes, "--recipe", stopping, "--out", run, "--budget", "0.15").code == 0
    lines = (run / "changes.txt").read_text().splitlines()
    assert "epochs 50 -> 3:" in lines[-3] and lines[-2].startswith("--budget 0.15 min: epochs 3 -> 6 after epoch 1")
    # of the 6 epochs planned by then (the budget's re-plan ran at the same epoch end)
    assert lines[-1].startswith("warning: max_minutes (1e-06) reached after epoch 1 of 6: ")
    assert yaml.safe_load((run / "recipe.yaml").read_text())["epochs"] == 3
    for n in range(2, 8):
        assert cli("cls", "train", color_classes, "--out", run, "--resume").code == 0
        assert _epochs(run) == [str(e) for e in range(1, min(n, 6) + 1)]
    with (run / "history.csv").open() as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh)]
    assert lrs[-1] < 1e-9 < min(lrs[:-1]) and lrs == sorted(lrs, reverse=True)
    assert json.loads((run / "results.json").read_text())["epochs"] == 6


def test_budget_re_plans_at_most_double_the_first_plan():
    """A run far faster than its probe said adds epochs up to twice the first plan, no more."""
    from types import SimpleNamespace

    from vislab.engine.callbacks import BudgetKeeper

    keeper = BudgetKeeper(1.0, most=8)  # 60 s; planned 4 epochs, each takes 1 s
    now = iter(range(100))
    keeper.clock = lambda: float(next(now))  # type: ignore[method-assign]
    trainer = SimpleNamespace(current_epoch=0, max_epochs=4, is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    module = SimpleNamespace(replan=lambda epochs: setattr(trainer, "max_epochs", epochs))
    keeper.on_train_start(trainer, module)
    keeper.on_train_epoch_end(trainer, module)  # 1 s per epoch, 59 s left: 8, the cap
    assert trainer.max_epochs == 8


def test_a_resumed_budgeted_run_is_held_to_what_is_left_of_its_budget(cli, color_classes, tmp_path, monkeypatch):
    """15 s of budget, planned as 5 epochs (as above); the run is stopped after every epoch and
    resumed. Its first epoch takes 2 s, the later ones 4 s each. Counting every piece, after
    epoch 3 the run has trained 10 s at 3.3 s per epoch, so one more epoch fits: the schedule
    ends with epoch 4. (Counting only the resumed process's own 4 s, all 5 would seem to fit.)"""
    from vislab.engine import budget
    from vislab.engine.callbacks import BudgetKeeper

    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: 1.0)
    monkeypatch.setattr(budget, "seconds_per_forward", lambda *a, **k: 1.0 / 3)  # a held-out batch: a third of a step
    monkeypatch.setattr(budget, "checkpoint_seconds", lambda module: 0.0)
    clock = {"now": 0.0, "step": 2.0}  # every reading advances by "step": an epoch (two readings) takes that long

    def tick() -> float:
        clock["now"] += clock["step"]
        return clock["now"]

    monkeypatch.setattr(BudgetKeeper, "clock", staticmethod(tick))
    run = tmp_path / "run"
    stopping = _recipe(tmp_path, "s.yaml", epochs=50, limit_train_batches=2, max_minutes=1e-6)
    assert cli("cls", "train", color_classes, "--recipe", stopping, "--out", run, "--budget", "0.25").code == 0
    assert _epochs(run) == ["1"] and "epochs 50 -> 5:" in (run / "changes.txt").read_text()
    clock["step"] = 4.0
    lefts = []
    for expected in (["1", "2"], ["1", "2", "3"], ["1", "2", "3", "4"], ["1", "2", "3", "4"]):
        res = cli("cls", "train", color_classes, "--out", run, "--resume")
        assert res.code == 0
        assert _epochs(run) == expected
        said = re.findall(r"--resume: continues with epoch (\d) of \d, ([\d.]+) min trained before; "
                          r"--budget 0.25 min: ([\d.]+) min left", " ".join(res.err.split()))
        lefts += said[-1:] if "resume: nothing left" not in res.err else []  # its own: the last
    # at each resume, by this clock: 2 s, 6 s and 10 s trained, 13, 9 and 5 s of the 15 left; the finished run says none
    assert lefts == [("2", "0.0", "0.2"), ("3", "0.1", "0.1"), ("4", "0.2", "0.1")]
    replan = ("--budget 0.25 min: epochs 5 -> 4 after epoch 3 (0.2 min so far, 3 s per epoch: slower than "
              "planned); the learning-rate schedule now ends with epoch 4")
    result = json.loads((run / "results.json").read_text())
    assert result["epochs"] == 4
    # the first piece's plan, each piece's time-limit stop, the resumed re-plan, the last piece's "nothing left"
    recorded = (run / "changes.txt").read_text().splitlines()
    assert result["changes"] == recorded and recorded.count(replan) == 1
    stops = [line for line in recorded if line.startswith("warning: max_minutes (1e-06) reached after epoch")]
    # epoch 4 ended the schedule; the stop after epoch 3 counts the epochs its re-plan left
    assert [line.split(":")[1].split("after epoch ")[1] for line in stops] == ["1 of 7", "2 of 5", "3 of 4"]
    assert recorded[-1].startswith("--resume: nothing left to train")


def test_budget_keeper_keeps_a_plan_on_time_and_stops_when_nothing_fits():
    """The decision alone, on a stand-in trainer: on time keeps the plan, far over stops now."""
    from types import SimpleNamespace

    from vislab.engine.callbacks import BudgetKeeper

    said = []
    keeper = BudgetKeeper(1.0, record=said.append)
    now = iter([0.0, 10.0, 200.0])
    keeper.clock = lambda: next(now)  # type: ignore[method-assign]
    calls = []
    trainer = SimpleNamespace(current_epoch=0, max_epochs=6, is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    module = SimpleNamespace(replan=calls.append)
    keeper.on_train_start(trainer, module)
    keeper.on_train_epoch_end(trainer, module)  # 10 s per epoch, 50 s left for 5: on time
    assert calls == [] and said == []
    trainer.current_epoch = 1
    keeper.on_train_epoch_end(trainer, module)  # 200 s for 2 epochs: past the budget
    assert calls == [2] and said[0].endswith("training ends now")


def test_a_resumed_piece_appends_only_the_setting_lines_not_yet_recorded(tmp_path):
    """The first piece writes its lines; a resumed piece that decides one new setting (say another
    precision on another machine) adds that line once, after the earlier ones, and repeats nothing."""
    from vislab.config import Recipe
    from vislab.engine.run_folder import prepare_run_folder, read_changes

    run, recipe = tmp_path / "run", Recipe(task="cls", model="resnet18")
    assert prepare_run_folder(run, recipe, resume=False, command="first", changes=["a", "b"]) is None
    torch.save({"stand-in": torch.zeros(1)}, run / "last.ckpt")  # readable: a resume checks that first
    for _ in range(2):
        assert prepare_run_folder(run, recipe, resume=True, command="again", changes=["b", "c"]) == run / "last.ckpt"
        assert read_changes(run) == ["a", "b", "c"]
    from vislab.engine.run_folder import add_change

    add_change(run, "--resume: nothing left to train")  # a second resume of a finished run says it again
    add_change(run, "--resume: nothing left to train")
    assert read_changes(run) == ["a", "b", "c", "--resume: nothing left to train"]
    # the run's command first, then each resumed piece's
    assert (run / "command.txt").read_text() == "first\nagain\nagain\n"
    # a piece started from Python (no command line) still gets its line
    prepare_run_folder(run, recipe, resume=True, command="", changes=[])
    assert (run / "command.txt").read_text().splitlines()[3] == "(a call from Python: no command line)"


def test_a_damaged_results_file_is_read_as_none_and_said(tmp_path, monkeypatch):
    """read_results: {} for a folder without results.json (nothing said); the recorded dict; a file
    cut short or holding no object reads as {} with a line naming the file and why."""
    import vislab.log
    from vislab.engine.run_folder import read_results

    said: list[str] = []
    monkeypatch.setattr(vislab.log, "info", said.append)
    assert read_results(tmp_path) == {} and said == []
    (tmp_path / "results.json").write_text(json.dumps({"global_step": 7}))
    assert read_results(tmp_path) == {"global_step": 7} and said == []
    (tmp_path / "results.json").write_text('{"global_step": 7, "val')  # a copy cut short
    assert read_results(tmp_path) == {}
    assert said == [f"{tmp_path / 'results.json'}: not valid JSON; read as no recorded results"]
    (tmp_path / "results.json").write_text("[1, 2]")
    assert read_results(tmp_path) == {} and said[-1].endswith("results.json: not a JSON object; read as no recorded results")


def test_the_budget_times_a_step_in_the_recipes_precision():
    """The step timing that plans a budget runs the network as training will: a bf16-mixed recipe
    under bfloat16 autocast, on a CPU too (its speed there can differ from fp32 several-fold)."""
    from types import SimpleNamespace

    from vislab.engine.budget import seconds_per_step, step_precision

    assert step_precision("bf16-mixed", "cpu") == (torch.bfloat16, True)
    assert step_precision("16-mixed", "cuda") == (torch.float16, True)
    assert step_precision("16-mixed", "cpu") == (torch.bfloat16, True)  # what Lightning runs it as on CPUs
    assert step_precision("bf16-true", "cpu") == (torch.bfloat16, False)
    assert step_precision("64-true", "cpu") == (torch.float64, False)
    assert step_precision("32-true", "cuda") == (None, False)

    seen: list[tuple[bool, torch.dtype]] = []  # (autocast on, output dtype) of every forward pass
    modes: list[tuple[bool, bool]] = []  # (training mode, gradients on) of every forward pass

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(12, 3)

        def forward(self, x):
            out = self.lin(x.flatten(1))
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
            modes.append((self.training, torch.is_grad_enabled()))
            return out

    batches = [(torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(3)]
    for precision, expected in (("32", (False, torch.float32)), ("bf16-mixed", (True, torch.bfloat16)),
                                ("bf16-true", (False, torch.bfloat16))):
        seen.clear()
        module = SimpleNamespace(net=Probe(), task="cls", prepare=lambda x: x,
                                 recipe=SimpleNamespace(precision=precision, crop_size=None))
        assert seconds_per_step(module, batches, torch.device("cpu"), steps=2) > 0
        assert seen == [expected] * 3, precision  # one warm-up step and two timed ones
        assert module.net.lin.weight.dtype == torch.float32  # a copy ran: the module's network is untouched
    seen.clear()  # the trainer's precision, when given, is the one timed
    assert seconds_per_step(module, batches, torch.device("cpu"), steps=2, precision="64-true") > 0
    assert seen == [(False, torch.float64)] * 3
    # a split of one batch (a tiny folder): the warm-up step is the timing; of none: one clear line
    assert seconds_per_step(module, batches[:1], torch.device("cpu"), steps=2) > 0
    from vislab.errors import VislabError

    with pytest.raises(VislabError, match="no batch to time a step on"):
        seconds_per_step(module, [], torch.device("cpu"), steps=2)
    # a held-out batch is timed as held_out_logits runs it: the evaluated network without gradients,
    # outside a mixed precision's autocast, in a *-true precision's dtype
    from vislab.engine.budget import seconds_per_forward

    for precision, expected in (("32", (False, torch.float32)), ("bf16-mixed", (False, torch.float32)),
                                ("bf16-true", (False, torch.bfloat16))):
        seen.clear()
        modes.clear()
        evaluated = Probe()
        module = SimpleNamespace(net=Probe(), eval_net=evaluated, task="cls", prepare=lambda x: x,
                                 recipe=SimpleNamespace(precision=precision, crop_size=None))
        assert seconds_per_forward(module, batches, torch.device("cpu"), reps=2) > 0
        assert seen == [expected] * 3, precision  # one warm-up pass and two timed ones
        assert modes == [(False, False)] * 3  # in eval mode, without gradients
        assert evaluated.training and evaluated.lin.weight.dtype == torch.float32  # a copy ran, in eval mode
    with pytest.raises(VislabError, match="no batch to time a held-out pass on"):
        seconds_per_forward(module, [], torch.device("cpu"))


def test_a_mid_epoch_save_carries_the_epochs_time_so_far():
    """A checkpoint written 9 s into the third epoch (mid-epoch saves are on by default) holds all
    the seconds trained, not only those up to the last epoch end: a run resumed from it is not
    given back the part of an epoch it had already spent."""
    from types import SimpleNamespace

    from vislab.engine.callbacks import BudgetKeeper

    keeper = BudgetKeeper(10.0)
    now = iter([100.0, 110.0, 120.0, 129.0, 129.0])
    keeper.clock = lambda: next(now)  # type: ignore[method-assign]
    trainer = SimpleNamespace(current_epoch=0, max_epochs=50, is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    module = SimpleNamespace(replan=lambda epochs: None, epoch_weights=lambda n: [1.0] * n)
    keeper.on_train_start(trainer, module)  # 100
    for epoch in (0, 1):  # epoch ends at 110 and 120
        trainer.current_epoch = epoch
        keeper.on_train_epoch_start(trainer, module)
        keeper.on_train_epoch_end(trainer, module)
    assert keeper.state_dict()["spent_s"] == 20.0  # saved at an epoch end
    keeper.on_train_epoch_start(trainer, module)
    assert keeper.state_dict()["spent_s"] == 29.0  # saved 9 s into epoch 3
    resumed = BudgetKeeper(10.0)
    keeper.tail = 1.5  # and the last held-out pass's seconds, which price the next one
    resumed.load_state_dict(keeper.state_dict())  # the clock reads 129 once more
    assert resumed.before == resumed.spent == 29.0 and resumed.tail == 1.5


def test_a_resume_takes_the_inputs_the_run_started_with(cli, color_classes, tmp_path, monkeypatch):
    """The command repeated with --resume added, or --resume alone: the folders, labels and recipe
    the run started with (inputs.json) are taken, said in one line; a flag repeating the saved
    value is no change, another value still is; each piece's command is kept."""
    import yaml

    from conftest import write_color_classes

    val = write_color_classes(tmp_path / "val", per_class=4)
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "batch_size": 16,
                                 "holdout": 0.2}))
    run = tmp_path / "run"
    # a batch larger than the data: the run trains with fewer (said), and the flag's own value is kept
    first = ("cls", "train", color_classes, "--recipe", r, "--out", run, "--val-dir", val, "--batch-size", 500,
             "--epochs", 1)
    res = cli(*first)
    assert res.code == 0 and "batch size 500 -> " in " ".join(res.err.split())
    assert json.loads((run / "inputs.json").read_text()) == {
        "train_dir": str(color_classes.resolve()), "val_dir": str(val.resolve()), "labels": None,
        "val_labels": None, "recipe": str(r.resolve()), "flags": {"epochs": 1, "batch_size": 500}}
    (run / "results.json").unlink()  # as if the run had been stopped after its last checkpoint
    monkeypatch.chdir(tmp_path)  # nowhere near the course data, which a train command with no TRAIN_DIR would take
    res = cli("cls", "train", "--out", run, "--resume")
    assert res.code == 0, res.err
    assert f"--resume: TRAIN_DIR {color_classes.resolve()}, --val-dir {val.resolve()}, as the run started (from " \
        f"{run / 'inputs.json'})" in " ".join(res.err.split())
    assert "val_accuracy" in json.loads((run / "results.json").read_text())  # the validation folder was scored
    res = cli(*first, "--resume")  # the same command again: the same recipe, epochs and batch size are no change
    assert res.code == 0, res.err
    res = cli(*first[:-1], 2, "--resume")
    assert res.code == 2 and "drop --epochs" in res.err
    res = cli("cls", "train", "--recipe", "cls-fast", "--out", run, "--resume")
    assert res.code == 2 and "drop --recipe" in res.err
    lines = (run / "command.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[1] == f"vislab cls train --out {run} --resume"
    assert cli("report", run, "--out", tmp_path / "r.md").code == 0
    page = (tmp_path / "r.md").read_text()
    assert f"Command: `{lines[0]}`" in page and f"Resumed with: {lines[1]}" in page
    # the validation folder moved away: the resume goes on without it, said; a missing training folder is named
    val.rename(tmp_path / "val-moved")
    res = cli("cls", "train", "--out", run, "--resume")
    assert res.code == 0 and f"--resume: the run's --val-dir {val.resolve()} is gone; not taken" in " ".join(res.err.split())
    color_classes.rename(tmp_path / "train-moved")
    res = cli("cls", "train", "--out", run, "--resume")
    assert res.code == 2 and f"{color_classes.resolve()}: not found: the run started with it as TRAIN_DIR" in \
        " ".join(res.err.split())
    (run / "inputs.json").write_text("[1, 2]")
    res = cli("cls", "train", "--out", run, "--resume")
    assert res.code == 2 and f"{run / 'inputs.json'}: is not the record vislab writes" in " ".join(res.err.split())


def test_a_resumed_run_counts_the_seconds_of_every_piece(cli, color_classes, tmp_path, monkeypatch):
    """results.json's train_seconds is the run's, not its last piece's: the seconds trained so far
    travel in the checkpoint (a clock that says 1000 s per reading makes the first piece's unmistakable)."""
    import itertools

    from vislab.engine.callbacks import TrainingClock

    ticks = itertools.count(0, 1000)
    monkeypatch.setattr(TrainingClock, "clock", staticmethod(lambda: float(next(ticks))))
    run = tmp_path / "run"
    limited = _recipe(tmp_path, "limited.yaml", max_minutes=1e-6)  # one epoch per invocation
    assert cli("cls", "train", color_classes, "--recipe", limited, "--out", run).code == 0
    spent = torch.load(run / "last.ckpt", weights_only=True)["callbacks"]["TrainingClock"]["spent_s"]
    first = json.loads((run / "results.json").read_text())["train_seconds"]
    assert spent >= 1000 and first < 1000  # the piece's own wall seconds, then the clock's
    monkeypatch.setattr(TrainingClock, "clock", staticmethod(time.monotonic))
    assert cli("cls", "train", color_classes, "--out", run, "--resume").code == 0
    total = json.loads((run / "results.json").read_text())["train_seconds"]
    assert spent < total < spent + 600  # the first piece's clock plus the second piece's seconds
    assert cli("cls", "train", color_classes, "--out", run, "--resume").code == 0  # finished: nothing to add
    assert json.loads((run / "results.json").read_text())["train_seconds"] == total


def test_a_resume_from_a_checkpoint_without_the_clock_says_so(cli, color_classes, tmp_path):
    """A checkpoint of an older vislab holds no seconds trained: the resume line says it does not
    know them, instead of "0.0 min trained before"."""
    run = tmp_path / "run"
    assert cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "l.yaml", max_minutes=1e-6),
               "--out", run).code == 0
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"].pop("TrainingClock")["spent_s"] > 0
    torch.save(ckpt, run / "last.ckpt")
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 0, res.err
    assert ("--resume: continues with epoch 2 of 2, the minutes trained before are not in the checkpoint (an older "
            "vislab's)") in " ".join(res.err.split())


def test_a_new_run_in_a_folder_of_a_run_without_checkpoints_keeps_none_of_its_records(cli, color_classes, tmp_path):
    """A run stopped before its first checkpoint leaves its recipe and lines; the run started
    afresh there (as its message says to) must not report the earlier run's settings as its own."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("task: cls\n")
    (run / "changes.txt").write_text("--budget 1 min: epochs 3 -> 3 (the earlier run's plan)\n")
    (run / "results.json").write_text("{}")
    (run / "metrics.csv").write_text("epoch,step,loss\n0,0,9.9\n")
    (run / "snapshots" / "epoch_001").mkdir(parents=True)  # the earlier run's masks
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", epochs=1), "--out", run)
    assert res.code == 0, res.err
    changes = (run / "changes.txt").read_text() if (run / "changes.txt").exists() else ""
    assert "earlier run's plan" not in changes
    assert "earlier run's plan" not in json.dumps(json.loads((run / "results.json").read_text()))
    assert not (run / "snapshots").exists() and "9.9" not in (run / "metrics.csv").read_text() \
        if (run / "metrics.csv").exists() else not (run / "snapshots").exists()


def _simulated_machine(monkeypatch, seconds_per_batch, held_out_seconds: float = 1.0) -> None:
    """A budget plan as :func:`_planned_budget`'s, and a clock that training batch b of epoch e
    moves on by ``seconds_per_batch(e, b)`` and an epoch's end (its held-out pass) by
    ``held_out_seconds``: the machine the budget keeper sees, batch by batch."""
    from vislab.engine.callbacks import BudgetKeeper

    _planned_budget(monkeypatch, 0.0)
    now = {"t": 0.0}
    monkeypatch.setattr(BudgetKeeper, "clock", staticmethod(lambda: now["t"]))
    batch_end, epoch_end = BudgetKeeper.on_train_batch_end, BudgetKeeper.on_train_epoch_end

    def on_batch(self, trainer, module, *args, **kwargs):
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # 1-based: this one counted
        now["t"] += seconds_per_batch(trainer.current_epoch + 1, batch)
        batch_end(self, trainer, module, *args, **kwargs)

    def on_epoch(self, trainer, module):
        now["t"] += held_out_seconds
        epoch_end(self, trainer, module)

    monkeypatch.setattr(BudgetKeeper, "on_train_batch_end", on_batch)
    monkeypatch.setattr(BudgetKeeper, "on_train_epoch_end", on_epoch)


@pytest.mark.parametrize("slow_epoch, pace, said, steps", [
    # epoch 3 at 2 s per batch: its batch 1 ends at 20 s, batch 4 at 26 s; 4 more batches and the
    # held-out second end at 35 s, past 1.05 x 30 s: the budget runs out after (30 - 26 - 1) // 2 = 1
    # more batch, so the run ends after batch 5 (at 28 s, 29 s with its held-out pass)
    (3, 2.0, "in epoch 3 of 4, at batch 4 of 8 (0.4 min so far, 2 s per batch over its last 3 batches: slower than "
             "planned), the run and its learning-rate schedule now end after batch 5 of epoch 3", 8 + 8 + 5),
    # epoch 2 at 2.5 s per batch: at its batch 4 (19 s) it ends at 30 s, with no time for a quarter of
    # another epoch: the schedule now ends with epoch 2, which fits
    (2, 2.5, "in epoch 2 of 4, at batch 4 of 8 (0.3 min so far, 2.5 s per batch over its last 3 batches: slower than "
             "planned), the run and its learning-rate schedule now end with epoch 2", 8 + 8),
])
def test_a_budget_holds_inside_an_epoch_that_slows_down(cli, color_classes, tmp_path, monkeypatch, slow_epoch,
                                                       pace, said, steps):
    """96 training images in 12 batches of 8, 3 held-out batches: planned at 1 s per step, an
    epoch costs 1.1 x (12 + 3 / 3) = 14.3 s, so 30 s are 3 epochs of (10 - 1.1) // 1.1 = 8 of the
    12 batches. Every batch then takes 1 s and each held-out pass 1 s (9 s an epoch: after epoch 1
    the plan gains 2 batches of a fourth, as in the test below), except in one epoch that slows
    down. The run ends inside its budget with the learning rate at the schedule's end, says where
    on the console and in changes.txt, and a --resume finds it finished."""
    _simulated_machine(monkeypatch, lambda epoch, batch: pace if epoch == slow_epoch else 1.0)
    run = tmp_path / "run"
    recipe = _recipe(tmp_path, "r.yaml", model="simple_cnn", epochs=50, batch_size=8)
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--budget", "0.5")
    assert res.code == 0, res.err
    lines = (run / "changes.txt").read_text().splitlines()
    assert lines[-3].startswith("epochs 50 -> 3 of 8 of their 12 batches (a fresh shuffle each): --budget 0.5 min")
    assert lines[-2].startswith("--budget 0.5 min: epochs 3 -> 3 + 2 batches after epoch 1")
    assert lines[-1] == f"--budget 0.5 min: {said}"
    assert f"warning: --budget 0.5 min: {said}" in " ".join(res.err.split())  # it ends earlier than planned
    assert f"setting: {lines[-2]}" in " ".join(res.err.split())  # it trains longer: no warning
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == steps and results["epochs"] == results["epochs_trained"] == slow_epoch
    assert results["changes"][-1] == lines[-1]
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, slow_epoch + 1)]
    assert float(rows[-1]["lr"]) < 1e-9 < float(rows[-2]["lr"])  # the schedule reached its end where the run did
    with (run / "metrics.csv").open() as fh:  # the shortened epoch was evaluated too
        assert sum(bool(row.get("holdout_acc")) for row in csv.DictReader(fh)) == slow_epoch
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 0, res.err
    assert "--resume: nothing left to train" in " ".join(res.err.split())
    assert json.loads((run / "results.json").read_text())["global_step"] == steps


def test_a_slowdown_in_the_middle_of_the_last_epoch_is_seen_at_once(cli, color_classes, tmp_path, monkeypatch):
    """96 training images in batches of 2: planned at 1 s per step and 12 held-out batches at a third
    of a second, an epoch costs 1.1 x (48 + 4) = 57.2 s, so 2 min are 3 epochs of 32 batches. Each
    batch takes 1 s and each held-out pass 1 s (33 s an epoch), until batch 21 of epoch 3 (ending at
    66 + 20 = 86 s), after which every batch takes 4 s. Timed over its last 3 batches, the pace is
    (94 - 85) / 3 = 3 s at batch 22 (end 94 + 10 x 3 + 1 = 125 s, within 1.05 x 120 s) and 4 s at
    batch 23 (98 s; end 135 s): there the run is cut to end after (120 - 98 - 1) // 4 = 5 more
    batches, at 118 s, with five batches left for its learning rate to reach the schedule's end.
    Timed over the whole epoch, the pace would pass for 1.9 s until batch 28, and the cut come
    there, with the learning rate in the middle of its schedule. (Before the slowdown, after epoch 1,
    the 87 s left held two epochs and 20 batches of a fourth; at batch 21 of epoch 3, timed at
    (90 - 84) / 3 = 2 s, epoch 3 would end at 113 s, with less than a quarter of another epoch
    left, so the fourth was dropped and epoch 3 became the last again.)"""
    _simulated_machine(monkeypatch, lambda epoch, batch: 4.0 if (epoch, batch) >= (3, 21) else 1.0)
    run = tmp_path / "run"
    recipe = _recipe(tmp_path, "r.yaml", model="simple_cnn", epochs=50, batch_size=2)
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--budget", "2")
    assert res.code == 0, res.err
    lines = (run / "changes.txt").read_text().splitlines()
    assert lines[-4].startswith("epochs 50 -> 3 of 32 of their 48 batches (a fresh shuffle each): --budget 2 min")
    assert lines[-3].endswith("the learning-rate schedule now ends after batch 20 of epoch 4")
    assert lines[-2] == ("--budget 2 min: in epoch 3 of 4, at batch 21 of 32 (1.5 min so far, 2 s per batch over its "
                         "last 3 batches: slower than planned), the run and its learning-rate schedule now end with "
                         "epoch 3")
    assert lines[-1] == ("--budget 2 min: in epoch 3 of 3, at batch 23 of 32 (1.6 min so far, 4 s per batch over its "
                         "last 3 batches: slower than planned), the run and its learning-rate schedule now end after "
                         "batch 28 of epoch 3")
    assert json.loads((run / "results.json").read_text())["global_step"] == 32 + 32 + 28
    with (run / "history.csv").open() as fh:
        assert float(list(csv.DictReader(fh))[-1]["lr"]) < 1e-9  # the schedule's end, where the run ended
    with (run / "metrics.csv").open() as fh:  # logged every 10 steps: step 89 is two batches after the cut
        lrs = {int(r["step"]): float(r["lr-SGD/pg1"]) for r in csv.DictReader(fh) if r.get("lr-SGD/pg1")}
    assert max(lrs) == 89 and 0 < lrs[89] < lrs[79]


def test_the_budget_cut_by_hand():
    """:meth:`BudgetKeeper.cut_step` and the epoch-end floor, on numbers worked by hand (a 30 s budget)."""
    from types import SimpleNamespace

    from vislab.engine.callbacks import BudgetKeeper

    keeper = BudgetKeeper(0.5)
    keeper.tail = 1.0
    # the last epoch: 26 s so far, 4 batches left at 2 s: ends at 35 s > 31.5 s; (30 - 26 - 1) // 2 = 1 more
    assert keeper.cut_step(100, 4, 26.0, 2.0, True, 8) == 101
    assert keeper.cut_step(100, 4, 22.0, 2.0, True, 8) is None  # ends at 31 s: within 1.05 x the budget
    assert keeper.cut_step(100, 4, 30.5, 2.0, True, 8) == 100  # past the budget already: ends now
    # an earlier epoch: ends at 21 s, 9 s left of the 8 x 2 + 1 = 17 s of another: more than a quarter
    assert keeper.cut_step(100, 2, 16.0, 2.0, False, 8) is None
    # ends at 27 s, 3 s < 4.25 s left: this epoch becomes the last, ending where it would (at most its end)
    assert keeper.cut_step(100, 2, 22.0, 2.0, False, 8) == 102
    module = SimpleNamespace(epoch_weights=lambda n: [1.0] * n)
    # 2 of 6 epochs done in 20 s (10 s each), 10 s left: one more fits
    assert keeper.epochs_that_fit(module, 2, 6, 20.0) == 3
    # in 25 s (12.5 s each), 5 s left: not three quarters of one (9.4 s), but a quarter (3.1 s)
    assert keeper.epochs_that_fit(module, 2, 6, 25.0) == 2
    assert keeper.epochs_that_fit(module, 2, 6, 25.0, can_cut=True) == 3
    assert keeper.epochs_that_fit(module, 2, 6, 28.0, can_cut=True) == 2  # 2 s < a quarter of 14 s
    from vislab.engine.callbacks import _so_far  # a tiny run's lines do not read "0.0 min so far"

    assert (_so_far(0.17), _so_far(2.9), _so_far(5.0), _so_far(98.0)) == (
        "0.17 s so far", "2.9 s so far", "0.1 min so far", "1.6 min so far")


def _simulated_run(cli, color_classes, tmp_path, monkeypatch, seconds_per_batch, budget: str, batch_size: int = 8,
                   out: str = "run"):
    """A ``simple_cnn`` run of the 96 training images in batches of ``batch_size`` with
    ``--budget budget`` on :func:`_simulated_machine`; returns its folder and changes.txt lines."""
    _simulated_machine(monkeypatch, seconds_per_batch)
    run = tmp_path / out
    recipe = _recipe(tmp_path, "r.yaml", model="simple_cnn", epochs=50, batch_size=batch_size)
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--budget", budget)
    assert res.code == 0, res.err
    return run, (run / "changes.txt").read_text().splitlines()


def test_a_budget_fills_its_time_with_part_of_one_more_epoch():
    """The seg-default run of docs/RESULTS.md by hand: 60 min planned as 3 epochs of 171 batches;
    epoch 1 took 966 s, 36 s of them its held-out pass, so a batch takes 930 / 171 = 5.44 s. Two
    more epochs fit (1,932 s of the 2,634 left), a fourth whole one does not (2,898 s), and the
    666 s left after the third, less a held-out pass, hold 122 batches: the run gets 122 batches of
    a fourth epoch (before, it ended 11 minutes early). Epoch 2 (934 s) leaves 133 batches for the
    part, within a tenth of an epoch of 122: the plan is kept. Epoch 3 ends at 3,300 s: 264 s left
    hold 42 batches at 6.22 s, less than a quarter of an epoch (42.75). Ending now would leave the
    learning rate mid-schedule, so the part shrinks to those 42 batches instead."""
    from types import SimpleNamespace

    from vislab.engine.callbacks import BudgetKeeper

    said = []
    keeper = BudgetKeeper(60.0, record=said.append, most=6)
    keeper.tail = 36.0
    now = iter([0.0, 966.0, 1900.0, 3300.0])
    keeper.clock = lambda: next(now)  # type: ignore[method-assign]
    trainer = SimpleNamespace(current_epoch=0, max_epochs=3, num_training_batches=171, is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    plans = []

    def replan(epochs, end_step=None):
        plans.append((epochs, end_step))
        trainer.max_epochs, module.stop_step = epochs, end_step

    module = SimpleNamespace(steps_per_epoch=171, stop_step=None, epoch_weights=lambda n: [1.0] * n, replan=replan)
    keeper.on_train_start(trainer, module)
    keeper.on_train_epoch_end(trainer, module)
    assert plans == [(4, 3 * 171 + 122)]
    assert said == ["--budget 60 min: epochs 3 -> 3 + 122 batches after epoch 1 (16.1 min so far, 966 s per epoch: faster than "
                    "planned); the learning-rate schedule now ends after batch 122 of epoch 4"]
    trainer.current_epoch = 1
    keeper.on_train_epoch_end(trainer, module)
    assert len(plans) == 1
    trainer.current_epoch = 2
    keeper.on_train_epoch_end(trainer, module)
    assert plans[-1] == (4, 3 * 171 + 42)
    assert said[-1] == ("--budget 60 min: epochs 3 + 122 batches -> 3 + 42 batches after epoch 3 (55.0 min so far, 1100 s "
                        "per epoch: slower than planned); the learning-rate schedule now ends after batch 42 of epoch 4")
    # with not one batch left before the budget (and its held-out pass), training ends now
    keeper.clock = lambda: 3560.0  # type: ignore[method-assign]
    trainer.current_epoch, trainer.max_epochs, module.stop_step = 2, 4, 3 * 171 + 122
    keeper.on_train_epoch_end(trainer, module)
    assert plans[-1] == (3, None) and said[-1].endswith("slower than planned); training ends now")
    # a progressive resize's epochs differ: no part of an epoch, whole epochs as before
    resized = BudgetKeeper(60.0, most=6, weights=lambda n: [1.0 + i for i in range(n)])
    assert resized._equal_epochs(module, 4) is False and keeper._equal_epochs(module, 4) is True


def test_a_budgeted_run_that_is_faster_than_its_probe_trains_part_of_one_more_epoch(cli, color_classes, tmp_path,
                                                                                    monkeypatch):
    """96 training images in 12 batches of 8, 3 held-out batches, 30 s: planned 3 epochs of 8
    batches (as below). Every batch takes 1 s and a held-out pass 1 s: after epoch 1 (9 s), two
    more take 18 s and the 2 s left after a held-out pass hold 2 batches, a quarter of an epoch:
    the run trains 8 + 8 + 8 + 2 steps, its learning rate reaching the schedule's end at the last,
    and a --resume finds it finished."""
    run, lines = _simulated_run(cli, color_classes, tmp_path, monkeypatch, lambda epoch, batch: 1.0, "0.5")
    assert lines[-2].startswith("epochs 50 -> 3 of 8 of their 12 batches (a fresh shuffle each): --budget 0.5 min")
    assert lines[-1] == ("--budget 0.5 min: epochs 3 -> 3 + 2 batches after epoch 1 (0.1 min so far, 9 s per epoch: faster than "
                         "planned); the learning-rate schedule now ends after batch 2 of epoch 4")
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == 26 and results["epochs"] == results["epochs_trained"] == 4
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    assert float(rows[-1]["lr"]) < 1e-9 < float(rows[-2]["lr"])
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 0, res.err
    assert "--resume: nothing left to train" in " ".join(res.err.split())
    assert json.loads((run / "results.json").read_text())["global_step"] == 26


def test_a_one_epoch_plan_that_runs_faster_gets_part_of_another_inside_its_epoch(cli, color_classes, tmp_path,
                                                                                 monkeypatch):
    """96 training images in 12 batches of 8, 3 held-out batches, 15 s: planned at 1 s per step,
    1.1 x (12 + 1) = 14.3 s an epoch (its held-out pass 1.1 s), so one epoch, whose end leaves no
    epoch-end re-plan. Each batch takes 0.75 s and a held-out pass 1 s. At batch 4 (3 s, the first
    timed over 3 batches) the epoch will end at 9 s, 10.1 s with the planned held-out pass: the
    4.9 s left hold not a whole epoch (10.1 s) but, less a held-out pass, 5 batches, so the plan
    becomes 1 epoch and 5 batches of a second. Epoch 1 then ends at 10 s: 5 s left, less the
    measured pass, hold 5 batches, as planned, and the run ends at 14.75 s with 17 steps. (Before
    the plan's held-out pass was counted here, the plan became 1 + 8 batches and then, at the
    epoch's end, 1 + 5: it priced the pass at 0 s until an epoch had ended.)"""
    run, lines = _simulated_run(cli, color_classes, tmp_path, monkeypatch, lambda epoch, batch: 0.75, "0.25")
    assert lines[-2].startswith("epochs 50 -> 1: --budget 0.25 min")
    assert lines[-1] == ("--budget 0.25 min: in epoch 1 of 1, at batch 4 of 12 (0.1 min so far, 0.75 s per batch over its "
                         "last 3 batches: faster than planned), the run and its learning-rate schedule now end after "
                         "batch 5 of epoch 2")
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == 17 and results["epochs"] == results["epochs_trained"] == 2
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["epoch"] for row in rows] == ["1", "2"] and float(rows[-1]["lr"]) < 1e-9 < float(rows[0]["lr"])
    # whole epochs first: at 0.5 s per batch the 9 s left after epoch 1 (ending at 6 s) hold a whole
    # second epoch (6 s), twice the first plan and so the most a budget adds
    fast, lines = _simulated_run(cli, color_classes, tmp_path, monkeypatch, lambda epoch, batch: 0.5, "0.25", out="fast")
    assert lines[-1].endswith("faster than planned), the run and its learning-rate schedule now end with epoch 2")
    assert json.loads((fast / "results.json").read_text())["global_step"] == 24


def test_a_run_interrupted_after_its_budget_cut_resumes_to_the_same_end(cli, color_classes, tmp_path, monkeypatch):
    """The first case above, with a checkpoint after every batch: interrupted as its last batch
    (step 21) ends, the run's last checkpoint is the one written after the cut (step 20), and it
    carries the step the run ends at; resumed, the run stops there, identical to the whole run."""
    from vislab.engine.callbacks import BudgetKeeper

    _simulated_machine(monkeypatch, lambda epoch, batch: 2.0 if epoch == 3 else 1.0)
    recipe = _recipe(tmp_path, "r.yaml", model="simple_cnn", epochs=50, batch_size=8, checkpoint_minutes=1e-6)
    whole, piece = tmp_path / "whole", tmp_path / "piece"
    assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", whole, "--budget", "0.5").code == 0
    simulated = BudgetKeeper.on_train_batch_end

    def interrupted(self, trainer, module, *args, **kwargs):
        if trainer.global_step == 21:
            raise KeyboardInterrupt
        simulated(self, trainer, module, *args, **kwargs)

    monkeypatch.setattr(BudgetKeeper, "on_train_batch_end", interrupted)
    assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", piece, "--budget", "0.5").code == 130
    saved = torch.load(piece / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 20 and saved["vislab"]["replanned"]["stop"] == 21
    monkeypatch.setattr(BudgetKeeper, "on_train_batch_end", simulated)
    res = cli("cls", "train", color_classes, "--out", piece, "--resume")
    assert res.code == 0, res.err
    assert "continues in epoch 3 of 3, after 32 of its 64 training items" in " ".join(res.err.split())
    results = [json.loads((run / "results.json").read_text()) for run in (whole, piece)]
    assert results[0]["global_step"] == results[1]["global_step"] == 21
    a, b = (torch.load(run / "last.ckpt", weights_only=True)["state_dict"] for run in (whole, piece))
    assert all(torch.equal(a[k], b[k]) for k in a), "the interrupted and resumed run differs from the whole one"



def test_a_cut_made_while_the_cores_were_shared_is_undone_when_they_are_free(cli, color_classes, tmp_path,
                                                                             monkeypatch):
    """96 training images in batches of 2, 12 held-out batches, 1 min: planned at 1 s per step,
    1.1 x (48 + 4) = 57.2 s an epoch (its held-out pass 4.4 s), so one epoch of all 48 batches. In
    epoch 1, batches 5 to 12 take 3 s (the cores shared); every other batch 0.5 s, a held-out pass
    1 s. The budget cuts the epoch as the pace rises (at batch 8, 14 s: (60 - 14 - 4.4) // 3 = 13
    more, to batch 21), then gives the batches back as it falls: at batch 13 (26.5 s; over its
    last 4 batches (26.5 - 17) / 4 = 2.375 s each), the 8 batches left and the planned held-out
    pass end at 49.9 s, and the 10.1 s after them hold 4 of the 27 cut, a window's worth: the
    epoch now ends after batch 25. By batch 16 (28 s, 0.5 s a batch) the whole epoch and, less a
    held-out pass, 14 batches of a second fit again; in epoch 2, with the pass measured at 1 s,
    the part grows to 28 batches and the run ends at 60 s."""
    run, lines = _simulated_run(cli, color_classes, tmp_path, monkeypatch,
                                lambda epoch, batch: 3.0 if epoch == 1 and 5 <= batch <= 12 else 0.5, "1", batch_size=2)
    first = next(i for i, line in enumerate(lines) if line.startswith("epochs 50 -> 1: --budget 1 min"))
    said = lines[first + 1:]
    assert said[2].endswith("slower than planned), the run and its learning-rate schedule now end after batch 21 of "
                            "epoch 1 instead of batch 25")
    assert said[3] == ("--budget 1 min: in epoch 1 of 1, at batch 13 of 48 (0.4 min so far, 2.38 s per batch over its "
                       "last 4 batches: faster than planned), the run and its learning-rate schedule now end after "
                       "batch 25 of epoch 1 instead of batch 21")
    assert said[6].endswith("faster than planned), the run and its learning-rate schedule now end after batch 14 of "
                            "epoch 2 instead of batch 39")
    assert said[7].endswith("now end after batch 28 of epoch 2 instead of batch 14") and len(said) == 8
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == results["epochs_trained"] == 2 and results["global_step"] > 48
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["epoch"] for row in rows] == ["1", "2"] and float(rows[-1]["lr"]) < 1e-9 < float(rows[0]["lr"])
    # by the simulated clock: 4 x 0.5 + 8 x 3 + 36 x 0.5 + 1 s for epoch 1, then 0.5 s a batch and 1 s
    spent = 45.0 + 0.5 * (results["global_step"] - 48) + 1.0
    assert results["global_step"] == 48 + 28 and spent == 60.0



def _keeper_run(keeper, epochs: int, batches: int, pace, tail: float) -> tuple[float, int, int]:
    """Drive ``keeper`` through a run of ``epochs`` planned epochs of ``batches`` batches on a
    clock that batch b of epoch e moves by ``pace(e, b)`` and an epoch's end by ``tail``, with a
    module whose re-plans set where the run ends. Returns (seconds, steps trained, steps planned)."""
    from types import SimpleNamespace

    now = {"t": 0.0}
    keeper.clock = lambda: now["t"]  # type: ignore[method-assign]
    progress = SimpleNamespace(processed=0)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=epochs, num_training_batches=batches, is_global_zero=True,
                              should_stop=False, strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(
                                  current=progress))))

    def replan(n, end_step=None):
        trainer.max_epochs, module.stop_step = n, end_step

    module = SimpleNamespace(steps_per_epoch=batches, stop_step=None, schedule_step=0, replan=replan,
                             epoch_weights=lambda n: [1.0] * n)
    keeper.on_train_start(trainer, module)
    while trainer.current_epoch < trainer.max_epochs and not trainer.should_stop:
        keeper.on_train_epoch_start(trainer, module)
        for b in range(1, batches + 1):
            now["t"] += pace(trainer.current_epoch + 1, b)
            module.schedule_step += 1
            progress.processed = b
            keeper.on_train_batch_end(trainer, module)
            if trainer.should_stop:
                break
        now["t"] += tail
        keeper.on_train_epoch_end(trainer, module)
        trainer.current_epoch += 1
    planned = module.stop_step if module.stop_step is not None else trainer.max_epochs * batches
    return now["t"], module.schedule_step, planned


def test_a_part_epoch_added_and_taken_back_does_not_flap_on_a_noisy_machine():
    """3 planned epochs of 100 batches at 1 s +- 10 % (a seeded draw per batch), no held-out pass,
    budgets that leave 20 to 30 s after three epochs, about the quarter of an epoch that adds a
    part. A part is added at MIN_SHARE and taken back only below MIN_SHARE - HYSTERESIS, so the
    re-plans of a run stay few (before the hysteresis: up to 25 in one run, each a console line);
    every run ends inside its budget's tolerance, and where its schedule ends."""
    import random

    from vislab.engine.callbacks import BudgetKeeper

    counts = []
    for seed in range(12):
        for extra in (20, 24, 26, 30):
            draw = random.Random(seed)
            said: list[str] = []
            budget = 300 + extra
            keeper = BudgetKeeper(budget / 60, record=said.append, most=6)
            seconds, steps, planned = _keeper_run(keeper, 3, 100, lambda e, b: draw.uniform(0.9, 1.1), 0.0)
            assert steps == planned and seconds <= 1.05 * budget, (seed, extra, said)
            counts.append(len(said))
    assert max(counts) <= 3, counts


def test_a_run_trained_on_the_cpu_is_validated_on_the_cpu(cli, color_classes, tmp_path, monkeypatch):
    """`--accelerator cpu` keeps a GPU free on purpose: the validation after training runs on the
    CPU too (asked by name, not left to the default, which is the GPU when there is one)."""
    from vislab.pipelines import classification

    asked = []
    evaluate = classification.evaluate

    def spy(*args, **kwargs):
        asked.append(kwargs.get("device"))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(classification, "evaluate", spy)
    recipe = _recipe(tmp_path, "r.yaml", model="simple_cnn", epochs=1)
    for accelerator, device in (("cpu", "cpu"), ("auto", None)):
        res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / accelerator, "--val-dir",
                  color_classes, "--accelerator", accelerator, "--limit-batches", "1")
        assert res.code == 0, res.err
        assert asked[-1] == device


def test_a_class_thin_in_the_training_split_is_said(cli, tmp_path):
    """3 images of class 3, half of them held out: fewer than 3 train, which the warning says
    (counting the training split, not the folder), on the console and in changes.txt."""
    from conftest import write_png

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for c, n in ((0, 12), (1, 12), (2, 12), (3, 3)):
        for i in range(n):
            write_png(data / f"{c}_{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    run = tmp_path / "run"
    res = cli("cls", "train", data, "--recipe", _recipe(tmp_path, "r.yaml", epochs=1, holdout=0.5), "--out", run)
    assert res.code == 0, res.err
    said = re.search(r"warning: 1 class with fewer than 3 training images: 3 \((\d) images?, e\.g\. \S+\)",
                     " ".join(res.err.split()))
    assert said and int(said.group(1)) < 3 and "setting: warning" not in res.err
    assert said.group(0) in (run / "changes.txt").read_text()


def test_a_resume_with_another_val_dir_records_it(cli, color_classes, tmp_path):
    """A stopped run resumed with another --val-dir is measured on it: inputs.json records that one
    (a later --resume takes it, and a finished run's resume is no longer refused for it)."""
    other = tmp_path / "other"
    shutil.copytree(color_classes, other)
    for f in sorted(other.iterdir())[:30]:
        f.unlink()
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", epochs=2), "--out", run,
              "--val-dir", color_classes, "--max-minutes", "1e-6")
    assert res.code == 0 and "reached after epoch 1 of 2" in " ".join(res.err.split())
    res = cli("cls", "train", color_classes, "--out", run, "--resume", "--val-dir", other, "--max-minutes", "0")
    assert res.code == 0, res.err
    line = (f"--resume: --val-dir {other.resolve()} (the run started with {color_classes.resolve()}): the results are "
            "measured on it, and inputs.json records it")
    assert line in " ".join(res.err.split()) and line in (run / "changes.txt").read_text().splitlines()
    results = json.loads((run / "results.json").read_text())
    assert results["val"]["images"] == len(list(other.iterdir())) and line in results["changes"]
    assert json.loads((run / "inputs.json").read_text())["val_dir"] == str(other.resolve())
    res = cli("cls", "train", color_classes, "--out", run, "--resume")  # finished: nothing to train, the record kept
    assert res.code == 0 and f"--resume: --val-dir {other.resolve()}, as the run started" in " ".join(res.err.split())
    assert json.loads((run / "results.json").read_text())["val"] == results["val"]
    res = cli("cls", "train", color_classes, "--out", run, "--resume", "--val-dir", color_classes)
    assert res.code == 2 and f"finished its schedule with {other.resolve()}" in " ".join(res.err.split())


def _flat_with_labels(color_classes: Path, tmp_path: Path, name: str) -> tuple[Path, Path, list[Path]]:
    """Every 10th image of ``color_classes`` as ``flat/v<i>.png``, and a labels CSV ``name`` for them."""
    flat = tmp_path / "flat"
    flat.mkdir()
    names = sorted(color_classes.iterdir())[::10]
    for i, f in enumerate(names):
        shutil.copy(f, flat / f"v{i}.png")
    labels = tmp_path / name
    labels.write_text("filename,label\n" + "".join(f"v{i}.png,{f.name.split('_')[0]}\n" for i, f in enumerate(names)))
    return flat, labels, names


def test_a_resume_leaves_the_labels_of_another_validation_folder(cli, color_classes, tmp_path):
    """The run's --val-labels label its own --val-dir: a resume given another folder does not apply
    them to it (said), and a finished run's resume refuses other labels as it refuses another folder."""
    flat, labels, _ = _flat_with_labels(color_classes, tmp_path, "l1.csv")
    run = tmp_path / "run"
    res = cli("cls", "train", color_classes, "--recipe", _recipe(tmp_path, "r.yaml", epochs=2), "--out", run,
              "--val-dir", flat, "--val-labels", labels, "--max-minutes", "1e-6")
    assert res.code == 0, res.err
    res = cli("cls", "train", color_classes, "--out", run, "--resume", "--val-dir", color_classes)
    said = " ".join(res.err.split())
    assert res.code == 0 and (f"--resume: the run's --val-labels {labels.resolve()} is not taken: it labels "
                              f"{flat.resolve()}, and --val-dir is {color_classes}") in said, said
    assert json.loads((run / "results.json").read_text())["val"]["images"] == len(list(color_classes.iterdir()))
    recorded = json.loads((run / "inputs.json").read_text())
    assert recorded["val_dir"] == str(color_classes.resolve()) and recorded["val_labels"] is None
    other = tmp_path / "l2.csv"
    other.write_text(labels.read_text())
    res = cli("cls", "train", color_classes, "--out", run, "--resume", "--val-labels", other)
    assert res.code == 2 and " ".join(res.err.split()) == (
        f"vislab: error: {other}: --val-labels: {run} finished its schedule with no labels file, and a resume keeps "
        f"what it recorded; score this folder with `vislab cls eval {run} {color_classes.resolve()} --labels {other}`")


def test_a_resume_under_data_checks_and_labels_the_folder_it_scores(cli, color_classes, tmp_path):
    """With --data the course folders are the run's: a finished run's resume is refused for its
    val_50 when the run was scored elsewhere (it said the results were measured there while keeping
    the old ones), and the --val-labels a resume gives are kept (they were dropped)."""
    data = tmp_path / "hw1_data" / "p1_data"
    shutil.copytree(color_classes, data / "train_50")
    shutil.copytree(color_classes, data / "val_50")
    other = tmp_path / "va2"
    shutil.copytree(color_classes, other)
    run = tmp_path / "run"
    recipe = _recipe(tmp_path, "r.yaml", epochs=1)
    assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--val-dir", other).code == 0
    results = (run / "results.json").read_text()
    res = cli("cls", "train", "--data", tmp_path / "hw1_data", "--out", run, "--resume")
    assert res.code == 2 and f"--val-dir: {run} finished its schedule with {other.resolve()}" in " ".join(res.err.split())
    assert (run / "results.json").read_text() == results
    # a stopped run resumed under --data with a flat --val-dir and its labels
    flat, labels, names = _flat_with_labels(color_classes, tmp_path, "lf.csv")
    stopped = tmp_path / "stopped"
    res = cli("cls", "train", "--data", tmp_path / "hw1_data", "--recipe", _recipe(tmp_path, "s.yaml", epochs=2),
              "--out", stopped, "--max-minutes", "1e-6")
    assert res.code == 0, res.err
    res = cli("cls", "train", "--data", tmp_path / "hw1_data", "--out", stopped, "--resume", "--val-dir", flat,
              "--val-labels", labels, "--max-minutes", "0")
    assert res.code == 0, res.err
    assert json.loads((stopped / "results.json").read_text())["val"]["images"] == len(names)
    # labels for a run that scores no folder: what they label is asked for (the advice named the folder None)
    plain = tmp_path / "plain"
    assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", plain).code == 0
    res = cli("cls", "train", color_classes, "--out", plain, "--resume", "--val-labels", labels)
    assert res.code == 2 and res.err.strip() == "vislab: error: --val-labels: labels a --val-dir; give one, or drop it"
