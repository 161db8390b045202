"""Distillation: `cls train --teacher RUN[,RUN]` learns from the teachers' probabilities."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml

from vislab.config import FieldError, Recipe, check_applies
from vislab.engine.losses import soft_target_loss


def test_soft_target_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert float(soft_target_loss(logits, targets)) == pytest.approx(expected, abs=1e-6)


def test_teacher_settings_that_cannot_work():
    with pytest.raises(FieldError, match="teacher gives soft targets per image, which mixup/cutmix would mix"):
        check_applies(Recipe(task="cls", teacher=("runs/t",), mixup=0.2))
    with pytest.raises(FieldError, match="distill weights the teacher's soft targets, and there is no teacher"):
        check_applies(Recipe(task="cls", distill=0.9))
    with pytest.raises(FieldError, match="teacher applies to cls training only"):
        check_applies(Recipe(task="seg", teacher=("runs/t",)))


def _recipe(tmp_path, name):
    # no held-out split: the last epoch is the model (selecting on the true labels would pick the
    # epoch that follows a lying teacher least)
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 5, "batch_size": 16,
                                 "lr": 0.05, "holdout": 0.0, "seed": 0}))
    return p


def _predicted(cli, run, folder, out):
    assert cli("cls", "predict", run, folder, out).code == 0
    rows = list(csv.DictReader(out.open()))
    return [(int(r["image_id"].split("_")[0]), int(r["label"])) for r in rows]


def test_a_student_follows_its_teacher(cli, color_classes, tmp_path):
    """A teacher trained on shifted labels (class c called c+1 mod 3): a student with --distill 1
    learns the teacher's naming, not the folder's labels."""
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for f in color_classes.iterdir():
        c, i = f.stem.split("_")
        (shifted / f"{(int(c) + 1) % 3}_{i}.png").write_bytes(f.read_bytes())
    r = _recipe(tmp_path, "r.yaml")
    assert cli("cls", "train", shifted, "--recipe", r, "--out", tmp_path / "liar").code == 0
    res = cli("cls", "train", color_classes, "--recipe", r, "--out", tmp_path / "student", "--teacher",
              tmp_path / "liar", "--distill", "1")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "student" / "results.json").read_text())["teacher"] == [str(tmp_path / "liar")]
    teacher = _predicted(cli, tmp_path / "liar", color_classes, tmp_path / "t.csv")
    student = _predicted(cli, tmp_path / "student", color_classes, tmp_path / "s.csv")
    assert sum(t == p for t, p in teacher) / len(teacher) < 0.2  # the liar names the classes its way
    assert sum(a[1] == b[1] for a, b in zip(teacher, student)) / len(student) > 0.9
    assert sum(t == p for t, p in student) / len(student) < 0.2  # and not the folder's labels


def test_a_teacher_of_other_classes_is_refused(cli, color_classes, tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    for f in color_classes.iterdir():
        if not f.name.startswith("2_"):
            (two / f.name).write_bytes(f.read_bytes())
    r = _recipe(tmp_path, "r.yaml")
    assert cli("cls", "train", two, "--recipe", r, "--out", tmp_path / "t2", "--epochs", "1").code == 0
    res = cli("cls", "train", color_classes, "--recipe", r, "--out", tmp_path / "s", "--teacher", tmp_path / "t2")
    assert res.code == 2 and "t2: teacher has 2 classes" in res.err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_a_teacher_that_trained_on_the_students_held_out_images_is_said(cli, color_classes, tmp_path):
    """The student's held-out images must be ones its teacher never trained on for its held-out
    score to be honest: a teacher of another split is said on the console and in changes.txt; the
    teacher's split seed given to the student (--split-seed) is not."""
    r = tmp_path / "h.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "batch_size": 16,
                                 "lr": 0.05, "holdout": 0.2, "seed": 0}))
    assert cli("cls", "train", color_classes, "--recipe", r, "--out", tmp_path / "t").code == 0
    res = cli("cls", "train", color_classes, "--recipe", r, "--seed", "1", "--teacher", tmp_path / "t",
              "--out", tmp_path / "other")
    assert res.code == 0, res.err
    said = "held out (fraction, split seed) (0.2, 0), the student (0.2, 1): it trained on some of the student's held-out"
    assert said in " ".join(res.err.split())
    assert said in (tmp_path / "other" / "changes.txt").read_text()
    res = cli("cls", "train", color_classes, "--recipe", r, "--seed", "1", "--split-seed", "0", "--teacher",
              tmp_path / "t", "--out", tmp_path / "same")
    assert res.code == 0, res.err
    assert "split seed" not in res.err
    changes = tmp_path / "same" / "changes.txt"
    assert not changes.exists() or "split seed" not in changes.read_text()
