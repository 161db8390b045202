"""Distillation: `cls train --teacher RUN[,RUN]` learns from the teachers' probabilities."""

from __future__ import annotations

import csv
import json
import math
import pickle
import shutil

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
    # per pixel (N, C, H, W), the kept pixels only: the two above as pixels of one image, and a
    # third, dropped (its term, log(1 + e^2), would move the mean)
    pix = torch.tensor([[[[2.0, 0.0, -2.0]], [[0.0, 0.0, 0.0]]]])  # (1, 2, 1, 3)
    probs = torch.tensor([[[[1.0, 0.5, 1.0]], [[0.0, 0.5, 0.0]]]])
    keep = torch.tensor([[[True, True, False]]])
    assert float(soft_target_loss(pix, probs, keep)) == pytest.approx(expected, abs=1e-6)
    assert float(soft_target_loss(pix, probs, torch.zeros_like(keep))) == 0.0


def test_teacher_settings_that_cannot_work():
    with pytest.raises(FieldError, match="teacher gives soft targets per image, which mixup/cutmix would mix"):
        check_applies(Recipe(task="cls", teacher=("runs/t",), mixup=0.2))
    with pytest.raises(FieldError, match="distill weights the teacher's soft targets, and there is no teacher"):
        check_applies(Recipe(task="cls", distill=0.9))
    check_applies(Recipe(task="seg", teacher=("runs/t",), distill=0.7))  # a segmenter distils per pixel
    with pytest.raises(FieldError, match="distill weights the teacher's soft targets, and there is no teacher"):
        check_applies(Recipe(task="seg", distill=0.9))


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
    assert "distillation: soft targets from" in res.err and "; its accuracy on the training images" in res.err
    assert json.loads((tmp_path / "student" / "results.json").read_text())["teacher"] == [str(tmp_path / "liar")]
    res = cli("cls", "train", color_classes, "--out", tmp_path / "student", "--resume")  # trains nothing
    assert res.code == 0 and "nothing left to train" in " ".join(res.err.split())
    assert "distillation: soft targets from" not in res.err  # so the teacher reads no image
    teacher = _predicted(cli, tmp_path / "liar", color_classes, tmp_path / "t.csv")
    student = _predicted(cli, tmp_path / "student", color_classes, tmp_path / "s.csv")
    assert sum(t == p for t, p in teacher) / len(teacher) < 0.2  # the liar names the classes its way
    assert sum(a[1] == b[1] for a, b in zip(teacher, student)) / len(student) > 0.9
    assert sum(t == p for t, p in student) / len(student) < 0.2  # and not the folder's labels
    # a resume goes on with the teacher it started with: one trained on or replaced since is refused
    from vislab.io import file_digest
    from vislab.models.checkpoints import checkpoint_file, checkpoint_meta

    recorded = checkpoint_meta(tmp_path / "student" / "last.ckpt")["teacher_digests"]
    assert recorded == [file_digest(checkpoint_file(tmp_path / "liar"))]
    assert cli("cls", "train", color_classes, "--recipe", r, "--out", tmp_path / "honest").code == 0
    shutil.copy(checkpoint_file(tmp_path / "honest"), checkpoint_file(tmp_path / "liar"))
    res = cli("cls", "train", color_classes, "--out", tmp_path / "student", "--resume")
    assert res.code == 2 and " ".join(res.err.split()).startswith(
        f"vislab: error: {tmp_path / 'liar'}: is not the teacher {tmp_path / 'student' / 'last.ckpt'} distilled from "
        "(its checkpoint changed since the run started: trained on, or replaced)"), res.err
    shutil.rmtree(tmp_path / "liar")
    res = cli("cls", "train", color_classes, "--out", tmp_path / "student", "--resume")
    assert res.code == 2 and " ".join(res.err.split()) == (
        f"vislab: error: {tmp_path / 'liar'}: a teacher this run distils from: no such run folder or checkpoint; "
        "--resume goes on with the teachers the run started with")


def test_a_teacher_of_other_classes_is_refused(cli, color_classes, tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    for f in color_classes.iterdir():
        if not f.name.startswith("2_"):
            (two / f.name).write_bytes(f.read_bytes())
    r = _recipe(tmp_path, "r.yaml")
    assert cli("cls", "train", two, "--recipe", r, "--out", tmp_path / "t2", "--epochs", "1").code == 0
    res = cli("cls", "train", color_classes, "--recipe", r, "--out", tmp_path / "s", "--teacher", tmp_path / "t2")
    said = " ".join(res.err.split())
    assert res.code == 2 and "t2: teacher has 2 classes (class ids); the training folder has 3 classes (class ids)" in said
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_a_teacher_that_trained_on_the_students_held_out_images_is_said(cli, color_classes, tmp_path):
    """The student's held-out images must be ones its teacher never trained on for its held-out
    score to be honest: a teacher of another split, or of another folder, is said in changes.txt
    (and once on the console); the teacher's split given to the student (--split-seed), or a
    student that holds nothing out, is not."""
    r = tmp_path / "h.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "batch_size": 16,
                                 "lr": 0.05, "holdout": 0.2, "seed": 0}))
    assert cli("cls", "train", color_classes, "--recipe", r, "--out", tmp_path / "t").code == 0

    def student(name: str, *flags: str, teacher: str = "t") -> tuple[str, str]:
        res = cli("cls", "train", color_classes, "--recipe", r, *flags, "--teacher", tmp_path / teacher,
                  "--out", tmp_path / name)
        assert res.code == 0, res.err
        changes = tmp_path / name / "changes.txt"
        return " ".join(res.err.split()), changes.read_text() if changes.exists() else ""

    said, changes = student("other", "--seed", "1")
    line = ("held out (fraction, split seed) (0.2, 0), the student (0.2, 1) (--holdout 0.2 --split-seed 0 would "
            "share its split): it trained on ")
    assert line in said and said.count("warning: teacher") == 1 and "setting: warning" not in said and line in changes
    seen = int(changes.split(line)[1].split(" of the student's 24 held-out images, so")[0])  # 8 of each class's 40
    assert 0 < seen <= 24
    said, changes = student("same", "--seed", "1", "--split-seed", "0")
    assert "warning: teacher" not in said + changes
    # one seeded order per class, of which a split holds out the first items: a smaller fraction holds out
    # items the teacher held out too, a larger one 4 more of each class
    said, changes = student("smaller", "--seed", "1", "--holdout", "0.1", "--split-seed", "0")
    assert "warning: teacher" not in said + changes
    said, changes = student("larger", "--seed", "1", "--holdout", "0.3", "--split-seed", "0")
    assert "--split-seed 0 would share its split): it trained on 12 of the student's 36 held-out images, so " in changes
    said, changes = student("none", "--seed", "1", "--holdout", "0.01")  # 0.4 of each class's 40: none
    assert "holdout 0.01 -> 0" in said and "it trained on some" not in said + changes
    fewer = tmp_path / "fewer"  # the same split rule, on a folder less one image
    shutil.copytree(color_classes, fewer)
    (fewer / "0_7.png").unlink()
    assert cli("cls", "train", fewer, "--recipe", r, "--out", tmp_path / "t_fewer").code == 0
    said, changes = student("elsewhere", teacher="t_fewer")
    assert "t_fewer was trained on another folder than the student's: it trained on some" in changes


def test_a_segmenter_distils_from_its_tiles_soft_maps():
    """With distill 1 the training loss is the cross-entropy against the soft maps of the batch's
    own tiles (chosen by sample index), resized to the tile, mirrored as the image was and summing
    to 1 again after uint8 rounding; padding (IGNORE) pixels do not count. The maps are no part
    of the student's weights."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from vislab.data.seg_classes import IGNORE
    from vislab.engine.segmentation import SegmenterModule

    torch.manual_seed(0)
    recipe = Recipe(task="seg", model="smp:fpn:resnet18", weights=None, distill=1.0, teacher=("t",),
                    crop_size=None, rot90=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    module = SegmenterModule(recipe.to_dict(), 7, steps_per_epoch=1)
    maps = [(torch.rand(7, 16, 16).softmax(0) * 255).round().to(torch.uint8) for _ in range(3)]
    module.teacher_targets = maps
    module._trainer = SimpleNamespace(training=True, current_epoch=0)
    raw = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    y = torch.randint(0, 7, (2, 64, 64), dtype=torch.uint8)
    y[:, :, 48:] = IGNORE  # padding
    idx = torch.tensor([2, 0])
    x, yy, _, soft = module.on_after_batch_transfer((raw, y, idx, torch.tensor([[64, 64]] * 2)), 0)
    module._trainer = None
    for i, tile in enumerate(idx.tolist()):  # the ids show the sample's mirroring (colours are jittered)
        flips = [[], [-1], [-2], [-1, -2]]
        k = [j for j, d in enumerate(flips) if torch.equal(yy[i], y[i].long().flip(d))][0]
        want = F.interpolate(maps[tile].float()[None] / 255, size=(64, 64), mode="bilinear", align_corners=False)[0]
        want = (want / want.sum(0, keepdim=True)).flip(flips[k])
        assert torch.allclose(soft[i], want, atol=1e-5)
        assert float(soft[i].sum(0).sub(1).abs().max()) < 1e-5
    torch.manual_seed(1)  # the same dropout draws in the student's two forwards
    got = module.training_step((x, yy, idx, soft), 0).detach()
    with torch.no_grad():
        torch.manual_seed(1)
        logp = module.net(x).log_softmax(1)
    per_pixel = -(soft * logp).sum(1)
    assert float(got) == pytest.approx(float(per_pixel[yy != IGNORE].mean()), rel=1e-4)
    assert float(got) != pytest.approx(float(per_pixel.mean()), rel=1e-3)  # the padding would move it
    assert set(module.state_dict()) == set(SegmenterModule(recipe.to_dict(), 7, steps_per_epoch=1).state_dict())


def test_seg_train_with_teachers(cli, tmp_path):
    """`seg train --teacher RUN`: trains, records its teachers, says a teacher of another split;
    the teacher reads each whole training tile once, at its evaluation scale; a teacher of other
    classes is refused before anything is written."""
    from test_own_seg_data import make_index_set

    train = make_index_set(tmp_path / "train", 8)
    r = tmp_path / "s.yaml"
    r.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 4,
                                 "lr": 0.003, "optimizer": "adamw", "holdout": 0.25, "seed": 2}))
    assert cli("seg", "train", train, "--recipe", r, "--out", tmp_path / "t", "--epochs", "1").code == 0
    t_recipe = yaml.safe_load((tmp_path / "t" / "recipe.yaml").read_text())
    (tmp_path / "half.yaml").write_text(yaml.safe_dump({**t_recipe, "infer_scale": 0.5}))
    assert cli("seg", "train", train, "--recipe", tmp_path / "half.yaml", "--out", tmp_path / "t_half").code == 0
    # the soft maps are the teacher's probabilities over each whole training tile at its own
    # evaluation scale: their argmax is the mask `seg predict` writes, at 1/4 of the side
    from vislab.data.seg_classes import IGNORE, load_classes
    from vislab.engine.segmentation import SegmentationData
    from vislab.pipelines.segmentation import MAP_STRIDE, _load_teachers, _teacher_maps
    from vislab.pipelines.settings import AtTrainingStart

    desc = load_classes(train / "classes.yaml")
    student = Recipe(task="seg", teacher=(str(tmp_path / "t_half"),), holdout=0.25, seed=2)
    import vislab.pipelines.segmentation as seg_pipeline

    data = SegmentationData(train, student, expected=None, classes=desc)
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(seg_pipeline, "info", said.append)
        maps = _teacher_maps(_load_teachers(student, desc), data, student, device=torch.device("cpu"))
    assert len(maps) == len(data.train_pairs) == 6
    assert cli("seg", "predict", tmp_path / "t_half", train / "images", tmp_path / "pred").code == 0
    # the line gives the teacher's mIoU on the training tiles: that of the masks `seg predict` writes
    from vislab.metrics import confusion_matrix

    conf = sum(confusion_matrix(desc.read_mask(pair.mask)[0], desc.read_mask(tmp_path / "pred" / f"{pair.stem}.png")[0],
                                desc.num_classes, ignore_index=IGNORE) for pair in data.train_pairs)
    (line,) = said
    assert float(line.split("its mIoU on the training tiles ")[1][:6]) == pytest.approx(desc.miou(conf), abs=0.01)
    agree = []
    for m, pair in zip(maps, data.train_pairs):
        ids = desc.read_mask(tmp_path / "pred" / f"{pair.stem}.png")[0]
        assert m.shape[-2:] == tuple(-(-v // MAP_STRIDE) for v in ids.shape)
        assert float(m.float().sum(0).sub(255).abs().max()) <= 4  # probabilities, rounded to 1/255
        small = ids[MAP_STRIDE // 2::MAP_STRIDE, MAP_STRIDE // 2::MAP_STRIDE]
        agree.append(float((m.argmax(0)[:small.shape[0], :small.shape[1]] == small).float().mean()))
    assert sum(agree) / len(agree) > 0.95, agree
    # the same weights (training ignores infer_scale) read at scale 1 give other maps: the scale is applied
    a = torch.load(tmp_path / "t" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "t_half" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    whole = student.with_overrides(teacher=(str(tmp_path / "t"),))
    at_one = _teacher_maps(_load_teachers(whole, desc), data, whole, device=torch.device("cpu"))
    assert [m.shape for m in at_one] == [m.shape for m in maps]
    assert max(float((m.float() - n.float()).abs().max()) for m, n in zip(maps, at_one)) > 2
    # as the module holds them until training starts: a function of the device that survives the
    # pickling of ddp_spawn, makes the same maps and lets its teachers go
    made = AtTrainingStart(_teacher_maps, _load_teachers(student, desc), data=data, recipe=student)
    again = pickle.loads(pickle.dumps(made))(torch.device("cpu"))
    assert len(again) == len(maps) and all(torch.equal(m, n) for m, n in zip(again, maps))
    made(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="made already"):
        made(torch.device("cpu"))
    res = cli("seg", "train", train, "--recipe", r, "--seed", "3", "--teacher", tmp_path / "t", "--distill", "0.7",
              "--out", tmp_path / "student")
    assert res.code == 0, res.err
    said = " ".join(res.err.split())
    assert f"distillation: soft targets per pixel from {tmp_path / 't'} (weight 0.7; its mIoU on the training tiles " in said
    assert "held out (fraction, split seed) (0.25, 2), the student (0.25, 3)" in said
    # the teacher's targets reach the loss: the same run without one trains otherwise
    assert cli("seg", "train", train, "--recipe", r, "--seed", "3", "--out", tmp_path / "alone").code == 0
    loss = [[row["train_loss"] for row in csv.DictReader((tmp_path / run / "history.csv").open())]
            for run in ("student", "alone")]
    assert loss[0] != loss[1]
    assert json.loads((tmp_path / "student" / "results.json").read_text())["teacher"] == [str(tmp_path / "t")]
    assert yaml.safe_load((tmp_path / "student" / "recipe.yaml").read_text())["distill"] == 0.7
    other = tmp_path / "other"  # the same images, a class renamed
    shutil.copytree(train, other)
    desc = yaml.safe_load((other / "classes.yaml").read_text())
    desc["classes"][1]["name"] = "track"
    (other / "classes.yaml").write_text(yaml.safe_dump(desc))
    assert cli("seg", "train", other, "--recipe", r, "--out", tmp_path / "t2").code == 0
    res = cli("seg", "train", train, "--recipe", r, "--teacher", tmp_path / "t2", "--out", tmp_path / "s2")
    assert res.code == 2 and "t2: teacher predicts other classes (background, track, water, field)" in " ".join(res.err.split())
    assert not (tmp_path / "s2").exists()


def test_a_distilled_run_resumes_exactly_and_a_finished_one_makes_no_maps(cli, tmp_path, monkeypatch):
    """A distillation run stopped after its first epoch and resumed makes the teachers' maps again
    and ends with the weights of the run that was never stopped; the resume of a finished run
    trains nothing and so reads no tile through the teachers; the maps' time is not training time."""
    import time

    from test_own_seg_data import make_index_set

    from vislab.pipelines import segmentation

    train = make_index_set(tmp_path / "train", 8)
    base = {"task": "seg", "model": "smp:fpn:resnet18", "epochs": 2, "batch_size": 4, "lr": 0.003,
            "optimizer": "adamw", "holdout": 0.25, "seed": 2, "snapshot": []}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({**base, "epochs": 1}))
    assert cli("seg", "train", train, "--recipe", tmp_path / "t.yaml", "--out", tmp_path / "t").code == 0
    student = {**base, "teacher": [str(tmp_path / "t")], "distill": 0.5}
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(student))
    (tmp_path / "limited.yaml").write_text(yaml.safe_dump({**student, "max_minutes": 1e-6}))
    made = segmentation._teacher_maps

    def slow_maps(*args, **kwargs):
        time.sleep(6)
        return made(*args, **kwargs)
    monkeypatch.setattr(segmentation, "_teacher_maps", slow_maps)
    t0 = time.perf_counter()
    assert cli("seg", "train", train, "--recipe", tmp_path / "full.yaml", "--out", tmp_path / "full").code == 0
    wall = time.perf_counter() - t0
    assert json.loads((tmp_path / "full" / "results.json").read_text())["train_seconds"] < wall - 6
    monkeypatch.setattr(segmentation, "_teacher_maps", made)
    run = tmp_path / "limited"
    res = cli("seg", "train", train, "--recipe", tmp_path / "limited.yaml", "--out", run)
    assert res.code == 0 and "reached after epoch 1 of 2" in " ".join(res.err.split())
    passes = "training tiles through the teachers"
    res = cli("seg", "train", train, "--out", run, "--resume")
    assert res.code == 0, res.err
    assert " ".join(res.err.split()).count(passes) == 1
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the stopped and resumed student differs from the whole one"
    res = cli("seg", "train", train, "--out", run, "--resume")
    assert res.code == 0, res.err
    said = " ".join(res.err.split())
    assert "nothing left to train" in said and passes not in said


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_segmenter_distils_on_two_spawned_processes(cli, tmp_path):
    """`--strategy ddp_spawn` pickles the module to start its processes: with a teacher's maps
    waiting to be made and the CE + Dice loss it trains, each process making its own maps."""
    import os
    import subprocess
    import sys

    from test_own_seg_data import make_index_set

    train = make_index_set(tmp_path / "train", 8)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(
        {"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2, "lr": 0.003, "optimizer": "adamw",
         "holdout": 0.25, "seed": 2, "snapshot": [], "loss": "ce+dice", "accelerator": "cpu"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def vislab(*args, recipe: bool = True) -> str:
        proc = subprocess.run([sys.executable, "-m", "vislab", "seg", "train", str(train),
                               *(["--recipe", str(tmp_path / "t.yaml")] if recipe else []), *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return " ".join(proc.stderr.split())
    res = cli("seg", "train", train, "--recipe", tmp_path / "t.yaml", "--out", tmp_path / "t")  # in-process: no start-up
    assert res.code == 0, res.err
    spawned = ("--devices", "2", "--strategy", "ddp_spawn")
    said = vislab("--teacher", tmp_path / "t", "--out", tmp_path / "s", *spawned)
    assert said.count("training tiles through the teachers") == 2
    history = list(csv.DictReader((tmp_path / "s" / "history.csv").open()))
    assert [row["epoch"] for row in history] == ["1"]
    # what the spawned processes learnt reaches the results (Lightning hands back only the weights,
    # the best checkpoint's path and callback_metrics): 6 training pairs, 3 per process, batch 2
    result = json.loads((tmp_path / "s" / "results.json").read_text())
    assert result["global_step"] == 1 and result["epochs"] == 1
    assert result["holdout_miou"] == pytest.approx(float(history[0]["holdout_miou"]), abs=1e-6)
    # the resume of the finished run knows it trained nothing: no maps, the recorded results kept
    said = vislab("--out", tmp_path / "s", "--resume", *spawned, recipe=False)
    assert "nothing left to train" in said and "training tiles through the teachers" not in said
    assert json.loads((tmp_path / "s" / "results.json").read_text())["holdout_miou"] == result["holdout_miou"]
