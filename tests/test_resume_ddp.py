"""Interruption and scale-out: SIGKILL + --resume equals an uninterrupted run; 2-process DDP on
CPU (gloo) equals one process with the doubled batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml


def _vislab(*args: str, env: dict | None = None) -> subprocess.Popen:
    base = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vislab", *map(str, args)], env={**base, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _done(proc: subprocess.Popen) -> str:
    """The output of a vislab process started by :func:`_vislab`, once it has exited with 0."""
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def _run(*args: str) -> str:
    return _done(_vislab(*args))


def _in_process(cli, *args) -> str:
    """A vislab command run in this process (``cli_one_thread``): what it printed, once it exited with 0."""
    res = cli(*args)
    assert res.code == 0, res.err
    return res.out + res.err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.ckpt", weights_only=True)["state_dict"]


def _recipe(tmp_path: Path, **kw) -> Path:
    r = {"task": "cls", "model": "cifar_resnet20", "epochs": 3, "batch_size": 8, "lr": 0.05, "holdout": 0.2,
         "seed": 3, "label_smoothing": 0.1}
    r.update(kw)
    p = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def test_sigkill_after_epoch_then_resume_is_bit_identical(color_classes, tmp_path, cli_one_thread):
    """Kill once epoch 1's checkpoint exists (epoch 2 under way), resume: same weights as no kill.

    Mixup, cutmix and the weight average are on: their draws and state must survive too."""
    recipe = _recipe(tmp_path, mixup=0.2, cutmix=1.0, ema=0.9)

    run = tmp_path / "killed"
    proc = _vislab("cls", "train", color_classes, "--recipe", recipe, "--out", run)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "last.ckpt").is_file():  # renamed into place: complete
        time.sleep(0.02)
    # and rows of epoch 2 are on disk: a resume must not log them twice
    while time.time() < deadline and max(_logged_steps(run), default=0) < 14:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from vislab.pipelines.runs import run_row  # the process could not say it ended: its record says it was killed

    assert run_row(run).state == (f"killed: process {proc.pid} ended without a word (a kill signal, the machine out "
                                  "of memory, a crash, a shutdown); last.ckpt: --resume continues it")
    from vislab.report import _run_notes
    from vislab.runfolders import read_run

    assert _run_notes(run, read_run(run))[0].startswith(f"Unfinished: killed: process {proc.pid} ended without a word")
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0 and {"torch", "numpy", "python"} <= set(ckpt["rng"])
    assert max(_logged_steps(run)) >= 14, "premise: rows logged after the checkpoint"
    _in_process(cli_one_thread, "cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / "full")  # no kill
    out = _in_process(cli_one_thread, "cls", "train", color_classes, "--out", run, "--resume")
    assert "--resume: continues with epoch 2 of 3, " in out  # the console says where, and the run folder
    assert "--resume: continues with epoch 2 of 3, " in (run / "changes.txt").read_text()
    assert run_row(run).state == "finished" and not (run / "running.json").exists()
    full, resumed = _weights(tmp_path / "full"), _weights(run)
    assert any(k.startswith("ema.module.") for k in full)
    assert all(torch.equal(full[k], resumed[k]) for k in full), "resumed weights differ"
    # the same metrics per epoch, and the learning rate at every logged step: nothing repeated or skipped
    assert _columns(tmp_path / "full" / "history.csv", drop="seconds") == _columns(run / "history.csv", drop="seconds")
    assert _lr_steps(tmp_path / "full") == _lr_steps(run)
    # metrics.csv: no row twice, and every row one of the uninterrupted run's
    rows = [tuple(sorted(r.items())) for r in _columns(run / "metrics.csv", drop="")]
    assert len(rows) == len(set(rows)) and set(rows) <= {tuple(sorted(r.items()))
                                                         for r in _columns(tmp_path / "full" / "metrics.csv", drop="")}


def test_sigkill_mid_epoch_then_resume_continues_with_the_next_batch(color_classes, tmp_path, cli_one_thread):
    """last.ckpt written mid-epoch (checkpoint_minutes) holds the loader position: a run killed in
    the middle of epoch 2 and resumed ends bit-identical to an uninterrupted one. The 90 training
    items are not a multiple of the batch: each epoch trains on 11 batches and leaves 2 items out."""
    recipe = _recipe(tmp_path, mixup=0.2, ema=0.9, checkpoint_minutes=1e-6, holdout=0.25)  # a save after every step
    steps = 90 // 8  # training batches per epoch

    run = tmp_path / "killed"
    proc = _vislab("cls", "train", color_classes, "--recipe", recipe, "--out", run)
    deadline, step = time.time() + 300, 0
    while time.time() < deadline and step < steps + 3:
        time.sleep(0.05)
        try:
            step = torch.load(run / "last.ckpt", weights_only=True)["global_step"]
        except (FileNotFoundError, RuntimeError, EOFError):
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert steps < ckpt["global_step"] < 2 * steps, "premise: killed in the middle of epoch 2"
    _in_process(cli_one_thread, "cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / "full")  # no kill
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "items": (ckpt["global_step"] - steps) * 8}]
    out = _in_process(cli_one_thread, "cls", "train", color_classes, "--out", run, "--resume")
    said = f"--resume: continues in epoch 2 of 3, after {(ckpt['global_step'] - steps) * 8} of its 88 training items, "
    assert said in " ".join(out.split())
    full, resumed = _weights(tmp_path / "full"), _weights(run)
    assert all(torch.equal(full[k], resumed[k]) for k in full), "resumed weights differ"
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 3 * steps
    assert _lr_steps(tmp_path / "full") == _lr_steps(run)
    assert _held_out(tmp_path / "full") == _held_out(run)


def _logged_steps(run: Path) -> list[int]:
    import csv

    try:
        return [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("step")]
    except (FileNotFoundError, KeyError, ValueError):
        return []


def _columns(path: Path, *, drop: str) -> list[dict]:
    import csv

    return [{k: v for k, v in row.items() if k != drop} for row in csv.DictReader(path.open())]


def _held_out(run: Path) -> list[dict]:
    """Epoch, held-out scores and learning rate per history row. A resume in the middle of an
    epoch leaves that epoch's training averages covering only the batches after the resume."""
    return [{k: v for k, v in row.items() if k.startswith(("epoch", "holdout", "lr"))}
            for row in _columns(run / "history.csv", drop="seconds")]


def _lr_steps(run: Path) -> list[tuple[str, str]]:
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    key = next(k for k in rows[0] if k.startswith("lr-SGD"))  # lr-SGD/pg1: the first parameter group
    steps = [(r["step"], r[key]) for r in rows if r[key]]
    assert steps, "no learning-rate rows"
    return steps  # in file order: a row logged twice is a difference


def test_sigkill_during_saves_never_leaves_a_partial_checkpoint(color_classes, tmp_path, cli_one_thread):
    """Kill while a checkpoint is being written (its temporary file exists): last.ckpt still loads,
    and --resume removes the temporary and finishes the run."""
    recipe = _recipe(tmp_path, epochs=2, holdout=0.1, checkpoint_minutes=1e-6)  # a save after every step
    run = tmp_path / "run"
    proc = _vislab("cls", "train", color_classes, "--recipe", recipe, "--out", run)
    deadline, caught = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None and not caught:
        if (run / "last.ckpt").is_file():
            caught = [p.name for p in run.iterdir() if p.name.startswith(".last.ckpt.")]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught, "premise: killed while a checkpoint was being written"
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")], "premise: the write's temporary is left"
    torch.load(run / "last.ckpt", weights_only=True)
    _in_process(cli_one_thread, "cls", "train", color_classes, "--out", run, "--resume")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 1


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_process_ddp_equals_one_process_with_double_batch(color_classes, tmp_path, cli_one_thread):
    """simple_cnn has no BatchNorm or dropout: DDP with batch 8 x 2 ranks == 1 process, batch 16."""
    one = _recipe(tmp_path, model="simple_cnn", epochs=2, batch_size=16, label_smoothing=0.0)
    two = _recipe(tmp_path, model="simple_cnn", epochs=2, batch_size=8, label_smoothing=0.0)
    _run("cls", "train", color_classes, "--recipe", two, "--out", tmp_path / "two", "--accelerator", "cpu",
         "--devices", "2", "--strategy", "ddp")
    _in_process(cli_one_thread, "cls", "train", color_classes, "--recipe", one, "--out", tmp_path / "one",
                "--accelerator", "cpu")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    ha = (tmp_path / "one" / "history.csv").read_text().splitlines()
    hb = (tmp_path / "two" / "history.csv").read_text().splitlines()
    acc = [line.split(",")[1] for line in ha[1:]], [line.split(",")[1] for line in hb[1:]]
    assert acc[0] == acc[1]  # held-out accuracy reduced by summing counts across the 2 ranks


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_time_budget_is_dropped_with_a_line_when_two_processes_train(color_classes, tmp_path):
    """Each process would time its own steps before they can talk and could plan another number
    of batches (one then waits for the other's gradients for ever): the budget is dropped, said on
    the console and in changes.txt, and the recipe's epochs run. A batch larger than each
    process's share of the training split shrinks to it, also said (else no step would run)."""
    import re

    recipe = _recipe(tmp_path, model="simple_cnn", epochs=2, budget_minutes=0.5, batch_size=10_000)
    run = tmp_path / "two"
    out = _run("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--accelerator", "cpu",
               "--devices", "2", "--strategy", "ddp")
    said = ("budget_minutes 0.5 dropped: a time budget is planned from one process's timing and this run has "
            "2 processes; the recipe's 2 epochs run instead (--epochs sets them)")
    assert said in " ".join(out.split())
    lines = (run / "changes.txt").read_text().splitlines()
    assert said in lines
    n = int(re.search(r"only \d+ training images per process \((\d+) over 2 processes\)", "\n".join(lines)).group(1))
    per = f"batch size 10000 -> {n // 2}: only {n // 2} training images per process ({n} over 2 processes)"
    assert per in lines and yaml.safe_load((run / "recipe.yaml").read_text())["batch_size"] == n // 2
    assert sum("batch size" in line for line in lines) == 1  # one line: the split's share, not the split first
    assert [r["epoch"] for r in _columns(run / "history.csv", drop="seconds")] == ["1", "2"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_resume_with_two_processes_keeps_the_schedule_on_samples_seen(color_classes, tmp_path, cli_one_thread):
    """Epoch 1 on one process, killed, resumed on two: each process now takes half the steps per
    epoch, and the learning rate at every epoch end is the uninterrupted one-process run's."""
    recipe = _recipe(tmp_path, model="simple_cnn", epochs=3, scheduler="cosine")
    run = tmp_path / "killed"
    proc = _vislab("cls", "train", color_classes, "--recipe", recipe, "--out", run, "--accelerator", "cpu")
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "last.ckpt").is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 0
    _in_process(cli_one_thread, "cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / "full",
                "--accelerator", "cpu")  # no kill
    out = _run("cls", "train", color_classes, "--out", run, "--resume", "--devices", "2", "--strategy", "ddp")
    lrs = [[float(r["lr"]) for r in _columns(d / "history.csv", drop="seconds")] for d in (tmp_path / "full", run)]
    assert len(lrs[1]) == 3 and lrs[1][-1] < 1e-3 * lrs[1][0]
    assert lrs[0] == pytest.approx(lrs[1], abs=1e-9)
    assert "6 steps per epoch per process instead of 12" in out


def test_a_moved_run_folder_keeps_its_best_checkpoint_record(tmp_path):
    """Resumed from a run folder moved elsewhere, the checkpoint record keeps its best score and
    paths, read under the new folder (Lightning's own drops them with a warning, and the next
    epoch would replace best.ckpt whatever its score); it files its state under Lightning's key."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    from vislab.engine.trainer import FolderCheckpoint, MidEpochCheckpoint

    old, new = tmp_path / "old", tmp_path / "new"
    kw = {"filename": "best", "monitor": "holdout_acc", "mode": "max", "save_top_k": 1}
    saved = ModelCheckpoint(dirpath=old, **kw)
    saved.best_model_score, saved.best_model_path = torch.tensor(0.9), str(saved.dirpath) + "/best.ckpt"
    saved.best_k_models, saved.last_model_path = {saved.best_model_path: torch.tensor(0.9)}, ""
    state = saved.state_dict()
    mine = FolderCheckpoint(dirpath=new, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "dirpath has changed" warning
        mine.load_state_dict(state)
    assert mine.best_model_score == torch.tensor(0.9)
    assert mine.best_model_path == str(Path(mine.dirpath) / "best.ckpt")
    assert list(mine.best_k_models) == [mine.best_model_path]
    plain = ModelCheckpoint(dirpath=new, **kw)
    with pytest.warns(UserWarning, match="dirpath has changed"):
        plain.load_state_dict(state)
    assert plain.best_model_score is None  # what the fix is for
    assert mine.state_key == plain.state_key  # checkpoints of earlier vislab runs hold their state under it
    assert MidEpochCheckpoint(dirpath=new, train_time_interval=None, **kw).state_key.startswith("MidEpochCheckpoint{")


def test_crash_during_validation_then_resume_validates_that_epoch(color_classes, tmp_path, monkeypatch):
    """A mid-epoch save never happens on an epoch's last batch: a run that dies in the epoch's
    validation resumes before that batch, so the validation, its history row and the chance
    to become best.ckpt are not lost."""
    from vislab.config import Recipe
    from vislab.engine.classification import ClassifierModule
    from vislab.pipelines.classification import train

    r = Recipe(task="cls", model="simple_cnn", epochs=2, batch_size=16, lr=0.05, holdout=0.2, seed=0,
               checkpoint_minutes=1e-6)
    train(color_classes, r, out_dir=tmp_path / "full")

    class Crash(Exception):
        pass

    def crash(self):
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(ClassifierModule, "on_validation_start", crash, raising=False)
        with pytest.raises(Crash):
            train(color_classes, r, out_dir=tmp_path / "run")
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == 96 // 16 - 1
    train(color_classes, r, out_dir=tmp_path / "run", resume=True)
    assert _held_out(tmp_path / "run") == _held_out(tmp_path / "full")
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "run")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_metrics_csv_keeps_its_rows_when_a_new_column_arrives_and_the_rewrite_dies(tmp_path, monkeypatch):
    """Lightning rewrites metrics.csv when a column is added; a death during it must lose nothing,
    and a writer opened on the file later (a resume) appends under the widened header."""
    import csv

    from vislab.engine.trainer import ResumableCSVLogger

    def rows() -> list[dict[str, str]]:
        with (tmp_path / "metrics.csv").open(newline="") as fh:
            return list(csv.DictReader(fh))

    first = ResumableCSVLogger(tmp_path, name="", version="").experiment
    first.log_metrics({"lr": 0.1}, step=0)
    first.log_metrics({"lr": 0.2}, step=1)
    first.save()
    assert rows() == [{"lr": "0.1", "step": "0"}, {"lr": "0.2", "step": "1"}]

    first.log_metrics({"val_acc": 0.5}, step=1)
    with monkeypatch.context() as m:
        m.setattr(csv.DictWriter, "writerows", lambda *a: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(OSError):
            first.save()
    assert rows() == [{"lr": "0.1", "step": "0"}, {"lr": "0.2", "step": "1"}]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]

    first.save()
    assert rows() == [{"lr": "0.1", "step": "0", "val_acc": ""}, {"lr": "0.2", "step": "1", "val_acc": ""},
                      {"lr": "", "step": "1", "val_acc": "0.5"}]
    resumed = ResumableCSVLogger(tmp_path, name="", version="").experiment
    resumed.log_metrics({"lr": 0.3}, step=2)
    resumed.save()
    assert [(r["step"], r["lr"], r["val_acc"]) for r in rows()] == [
        ("0", "0.1", ""), ("1", "0.2", ""), ("1", "", "0.5"), ("2", "0.3", "")]
