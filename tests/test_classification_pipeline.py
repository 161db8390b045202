"""P1 end to end through the CLI: train, eval, predict on label-free names, t-SNE, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vislab.errors import VislabError

from conftest import REAL, requires_real


def _tiny_recipe(tmp_path, **kw):
    r = {"task": "cls", "model": "cifar_resnet20", "epochs": 2, "batch_size": 16, "lr": 0.05,
         "holdout": 0.2, "warmup_epochs": 0.0, "seed": 0}
    r.update(kw)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory):
    """The tiny recipe trained once per module, on a folder of the same images as ``color_classes``."""
    from conftest import run_vislab, write_color_classes

    root = tmp_path_factory.mktemp("cls-trained")
    data = write_color_classes(root / "train")
    assert run_vislab("cls", "train", data, "--recipe", _tiny_recipe(root), "--out", root / "run", "--val-dir", data) == 0
    return root / "run"


@pytest.fixture
def trained(_trained_once, tmp_path):
    """A run folder of its own for each test (a copy: a test may add to it)."""
    return Path(shutil.copytree(_trained_once, tmp_path / "run"))


def test_run_folder_contents(trained):
    for name in ("best.ckpt", "last.ckpt", "recipe.yaml", "command.txt", "history.csv", "metrics.csv", "results.json"):
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader((trained / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # best.ckpt's epoch: the first with the best held-out score (a later tie does not replace it)
    scores = [float(r["holdout_acc"]) for r in rows]
    assert json.loads((trained / "results.json").read_text())["best_epoch"] == scores.index(max(scores)) + 1
    assert {"train_loss", "holdout_acc", "lr", "seconds"} <= set(rows[0])
    assert list((trained / "tensorboard").glob("events.*"))
    ckpt = torch.load(trained / "last.ckpt", weights_only=True)
    assert {"state_dict", "optimizer_states", "lr_schedulers", "epoch", "rng", "vislab"} <= set(ckpt)
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"])
    assert ckpt["vislab"]["num_classes"] == 3 and ckpt["vislab"]["task"] == "cls"


def test_eval_matches_predictions(cli, trained, color_classes, tmp_path):
    ev = cli("cls", "eval", trained / "best.ckpt", color_classes, "--json", tmp_path / "m.json")
    assert ev.code == 0, ev.err
    metrics = json.loads((tmp_path / "m.json").read_text())
    # an independent count from the predictions CSV
    res = cli("cls", "predict", trained / "best.ckpt", color_classes, tmp_path / "p.csv")
    assert res.code == 0, res.err
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    correct = sum(int(r[0].split("_")[0]) == int(r[1]) for r in rows[1:])
    assert metrics["accuracy"] == pytest.approx(correct / 120, abs=1e-6)
    assert f"accuracy: {metrics['accuracy']:.4f}" in ev.out  # the printed number is the JSON's
    assert " ".join(res.out.split()) == f"wrote 120 predictions to {tmp_path / 'p.csv'}"
    again = cli("cls", "predict", trained / "best.ckpt", color_classes, tmp_path / "p.csv")  # replaced, and said
    assert " ".join(again.out.split()) == f"wrote 120 predictions to {tmp_path / 'p.csv'} (replacing an earlier prediction there)"
    from vislab.metrics import wilson_interval

    lo, hi = wilson_interval(correct, 120)
    got = metrics["accuracy_interval"]
    assert (got["low"], got["high"]) == pytest.approx((lo, hi), abs=1e-6) and got["level"] == 0.95
    assert f"95% interval of the accuracy: {lo:.4f}-{hi:.4f} (Wilson score over 120 images)" in " ".join(ev.out.split())
    assert metrics["top5"] is None and "top-5" not in ev.out  # 3 classes: every label is in the top 5
    assert metrics["accuracy"] > 0.6  # three colour classes are easy
    assert metrics["classes_without_images"] == [] and "no row for" not in ev.out
    subset = tmp_path / "subset"  # no image of class 2: its row is missing, and said
    subset.mkdir()
    for f in color_classes.glob("[01]_*.png"):
        shutil.copy(f, subset / f.name)
    ev = cli("cls", "eval", trained, subset, "--json", tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["classes_without_images"] == [2]
    assert f"no row for 1 of the model's 3 classes (2): none of the images of {subset} is of that class" in \
        " ".join(ev.out.split())


def test_predict_on_label_free_names(cli, trained, color_classes, tmp_path):
    test = tmp_path / "test"
    test.mkdir()
    names = {}
    for i, f in enumerate(sorted(color_classes.glob("*.png"))[::7]):
        new = f"img{i:03d}{'x' if i % 2 else ''}.png"
        shutil.copy(f, test / new)
        names[new] = f.name
    res = cli("cls", "predict", trained, test, tmp_path / "out" / "pred.csv")
    assert res.code == 0, res.err
    rows = list(csv.reader((tmp_path / "out" / "pred.csv").open()))
    assert rows[0] == ["image_id", "label"]
    ids = [r[0] for r in rows[1:]]
    assert ids == sorted(names) and all(r[1].isdigit() and int(r[1]) < 3 for r in rows[1:])
    # the same image under a labelled name gets the same prediction
    cli("cls", "predict", trained, color_classes, tmp_path / "all.csv")
    by_name = {r[0]: r[1] for r in csv.reader((tmp_path / "all.csv").open())}
    assert all(by_name[names[r[0]]] == r[1] for r in rows[1:])
    # one image file: a CSV of its row, the same prediction as in its folder's
    one = sorted(names)[1]
    res = cli("cls", "predict", trained, test / one, tmp_path / "one.csv")
    assert res.code == 0, res.err
    assert list(csv.reader((tmp_path / "one.csv").open())) == [["image_id", "label"], [one, by_name[names[one]]]]
    from conftest import write_png

    odd = tmp_path / "odd.png"  # one image of another size: the resize line names the file, not its folder
    write_png(odd, np.zeros((30, 40, 3), np.uint8))
    res = cli("cls", "predict", trained, odd, tmp_path / "odd.csv")
    assert res.code == 0 and f"{odd}: not 32x32 (width x height); resized" in " ".join(res.err.split())


def test_tsne_outputs(cli, trained, color_classes, tmp_path):
    res = cli("cls", "tsne", trained, color_classes, "--out", tmp_path / "t.png")
    assert res.code == 0, res.err
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == 120 and {"image_id", "label", "x", "y"} == set(rows[0])
    pts = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    # trained features: each class's points lie closer to their own centre than to others'
    cents = np.stack([pts[labels == c].mean(0) for c in range(3)])
    nearest = np.argmin(((pts[:, None] - cents[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.8
    assert "perplexity" not in res.err  # 120 images allow 30 (at most (120 - 1) / 3)
    few = tmp_path / "few"
    few.mkdir()
    for c in range(3):
        for i in range(3):
            shutil.copy(color_classes / f"{c}_{i}.png", few / f"{c}_{i}.png")
    res = cli("cls", "tsne", trained, few, "--out", tmp_path / "f.png")
    assert res.code == 0 and "setting: --perplexity 30 -> 2.67: 9 images allow at most (n - 1) / 3" in " ".join(res.err.split())
    # without --out: into the run folder, where `vislab report` looks (given the folder or a checkpoint in it)
    assert cli("cls", "tsne", trained, few).code == 0 and (trained / "tsne.png").is_file()
    assert len(list(csv.DictReader((trained / "tsne.csv").open()))) == 9
    (trained / "tsne.png").unlink()
    assert cli("cls", "tsne", trained / "last.ckpt", few).code == 0 and (trained / "tsne.png").is_file()
    # the figure's format follows its name; an extension no format has is refused before any work
    assert cli("cls", "tsne", trained, few, "--out", tmp_path / "f.pdf").code == 0
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert cli("cls", "tsne", trained, few, "--out", tmp_path / "f.jpg").code == 0
    assert (tmp_path / "f.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG start-of-image marker
    res = cli("cls", "tsne", trained, tmp_path / "nowhere", "--out", tmp_path / "f.gif")
    assert res.code == 2 and "f.gif: a figure is written as .png, .pdf, .svg or .jpg, and .gif is none" in " ".join(res.err.split())


def test_same_seed_same_weights(cli, color_classes, tmp_path):
    recipe = _tiny_recipe(tmp_path, epochs=1)
    for run in ("a", "b"):
        assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / run).code == 0
    a = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_finished_run_changes_nothing(cli, color_classes, tmp_path):
    run, val = tmp_path / "r", tmp_path / "val"
    shutil.copytree(color_classes, val)
    assert cli("cls", "train", color_classes, "--recipe", _tiny_recipe(tmp_path, epochs=1), "--out", run,
               "--val-dir", val).code == 0
    before = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    recorded = json.loads((run / "results.json").read_text())
    predictions = (run / "val_predictions.csv").read_bytes()
    for f in sorted(val.iterdir())[:10]:  # the folder changed since: the recorded results still stand, as said
        f.unlink()
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 0, res.err
    assert "--resume: nothing left to train" in " ".join(res.err.split())
    assert "--resume: nothing left to train" in (run / "changes.txt").read_text()  # said in the run folder too
    after = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    kept = json.loads((run / "results.json").read_text())  # the validation it ended with stays recorded
    assert kept["val"] == recorded["val"] and kept["train_seconds"] == recorded["train_seconds"]
    assert kept["holdout_acc"] == recorded["holdout_acc"] is not None  # not the null of a piece that ran no epoch
    assert (run / "val_predictions.csv").read_bytes() == predictions
    shutil.copytree(color_classes, val, dirs_exist_ok=True)
    # a record written at another step (an earlier piece's) is not this state's: measured again
    (run / "results.json").write_text(json.dumps({**kept, "global_step": kept["global_step"] - 1}))
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 0 and "its results are measured again" in " ".join(res.err.split())
    # no --val-dir this time: the one the run started with is taken, and said
    assert f"--resume: --val-dir {val.resolve()}, as the run started" in " ".join(res.err.split())
    assert json.loads((run / "results.json").read_text())["val"] == recorded["val"]
    res = cli("cls", "train", color_classes, "--out", run, "--resume", "--lr", "0.5")
    said = " ".join(res.err.split())
    assert res.code == 2 and ("drop --lr (or start a new run from what it learnt, with those settings: --recipe "
                              f"{run / 'recipe.yaml'} --weights {run} --out NEW_FOLDER)") in said
    res = cli("cls", "train", color_classes, "--out", run, "--resume", "--model", "simple_cnn")
    said = " ".join(res.err.split())  # another network cannot start from the run's weights: no such way is offered
    assert res.code == 2 and said.endswith("drop --model") and "--weights" not in said
    # the way it suggests works: a new run starts from the run's weights with the other setting
    new = tmp_path / "new"
    res = cli("cls", "train", color_classes, "--out", new, "--lr", "0.5", "--recipe", run / "recipe.yaml", "--weights", run,
              "--epochs", "1")
    assert res.code == 0, res.err
    assert json.loads((new / "results.json").read_text())["epochs"] == 1 and \
        yaml.safe_load((new / "recipe.yaml").read_text())["lr"] == 0.5
    res = cli("cls", "train", color_classes, "--recipe", _tiny_recipe(tmp_path), "--out", run)
    assert res.code == 2 and "already holds checkpoints" in res.err
    # another training folder (one image fewer) is not the run's data; a copy of its own is
    other, copy = tmp_path / "other", tmp_path / "copy"
    shutil.copytree(color_classes, other)
    shutil.copytree(color_classes, copy)
    gone = sorted(other.iterdir())[0]
    gone.unlink()
    res = cli("cls", "train", other, "--out", run, "--resume")
    assert res.code == 2 and res.err.strip().endswith(
        f"vislab: error: {other}: is not the data {run / 'last.ckpt'} was trained on (1 gone ({gone.name})); "
        "--resume continues a run on the training folder it started with")
    (run / "train_items.txt.gz").rename(tmp_path / "items.gz")  # a run folder of an older vislab: no record
    res = cli("cls", "train", other, "--out", run, "--resume")
    assert res.code == 2 and "was trained on (other files or labels);" in res.err
    (tmp_path / "items.gz").rename(run / "train_items.txt.gz")
    assert cli("cls", "train", copy, "--out", run, "--resume").code == 0


def test_resume_needs_no_weights_file(cli, color_classes, tmp_path):
    """A resume takes every weight from its checkpoint: the recipe's --weights file may be gone."""
    from vislab.models import build_model

    weights = tmp_path / "start.pt"
    torch.save(build_model("cifar_resnet20", num_classes=3).state_dict(), weights)
    run = tmp_path / "r"
    res = cli("cls", "train", color_classes, "--recipe", _tiny_recipe(tmp_path, epochs=1), "--weights", weights,
              "--out", run)
    assert res.code == 0, res.err
    before = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    weights.unlink()
    res = cli("cls", "train", color_classes, "--out", run, "--resume")
    assert res.code == 0, res.err
    after = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the finished run keeps its records: another --val-dir is refused, not scored into them
    val = tmp_path / "val"
    val.mkdir()
    for name in ("0_0.png", "1_0.png", "2_0.png"):
        shutil.copy(color_classes / name, val / name)
    results = (run / "results.json").read_text()
    res = cli("cls", "train", "--out", run, "--resume", "--val-dir", val)
    assert res.code == 2 and res.err.strip() == (
        f"vislab: error: {val}: --val-dir: {run} finished its schedule with no validation folder, and a resume keeps "
        f"what it recorded; score this folder with `vislab cls eval {run} {val}`")
    res = cli("cls", "train", "--out", run, "--resume", "--val-dir", tmp_path / "gone")  # no advice to score it
    assert res.code == 2 and res.err.strip() == f"vislab: error: {tmp_path / 'gone'}: --val-dir: folder not found"
    assert (run / "results.json").read_text() == results and not (run / "val_predictions.csv").exists()


def test_last_checkpoint_is_the_last_epoch_when_the_best_came_earlier(cli, color_classes, tmp_path):
    run = tmp_path / "r"
    assert cli("cls", "train", color_classes, "--recipe", _tiny_recipe(tmp_path, epochs=4), "--out", run).code == 0
    acc = [float(r["holdout_acc"]) for r in csv.DictReader((run / "history.csv").open())]
    best_epoch = acc.index(max(acc))  # the first epoch reaching the maximum is the one kept
    assert best_epoch < 3, f"premise: the easy data is solved before the last epoch ({acc})"
    last = torch.load(run / "last.ckpt", weights_only=True)
    best = torch.load(run / "best.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (3, 4 * (96 // 16))
    assert best["epoch"] == best_epoch
    res = cli("cls", "train", color_classes, "--out", run, "--resume")  # nothing left to train
    assert res.code == 0, res.err
    assert len(list(csv.DictReader((run / "history.csv").open()))) == 4


def test_resume_without_checkpoint_exits_2(cli, color_classes, tmp_path):
    res = cli("cls", "train", color_classes, "--out", tmp_path / "fresh", "--resume")
    assert res.code == 2
    assert res.err.strip() == f"vislab: error: {tmp_path / 'fresh'}: --resume: no such run folder"
    (tmp_path / "empty").mkdir()
    said = {"fresh": "--resume: no such run folder", "empty": "--resume found no last.ckpt in this run folder"}
    for task, run in (("cls", "fresh"), ("cls", "empty"), ("seg", "empty")):  # no TRAIN_DIR: the same line
        res = cli(task, "train", "--out", tmp_path / run, "--resume")
        assert res.code == 2 and res.err.strip() == f"vislab: error: {tmp_path / run}: {said[run]}"
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "empty" / "recipe.yaml").write_text("task: cls\n")  # as a run stopped before its first checkpoint
    res = cli("cls", "train", "--out", tmp_path / "empty", "--resume")
    assert res.code == 2 and res.err.strip().endswith(
        "stopped before its first checkpoint, so run the same command without --resume (it starts afresh)")


def test_a_cache_path_that_is_a_file_is_refused(cli, color_classes, tmp_path, monkeypatch):
    """$VISLAB_CACHE naming a file: one line, the file left as it was (before, nothing was cached
    and every read decoded again without a word)."""
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    monkeypatch.setenv("VISLAB_CACHE", str(blocker))
    for command in (("cache", "list"), ("cls", "train", color_classes, "--out", tmp_path / "run", "--epochs", "1")):
        res = cli(*command)
        assert res.code == 2 and res.err == (f"vislab: error: {blocker}: is a file, but the cache needs a folder "
                                             "($VISLAB_CACHE, default ~/.cache/vislab); point VISLAB_CACHE at a folder\n")
    assert blocker.read_text() == "mine" and not (tmp_path / "run").exists()


def test_bad_checkpoints_are_named(cli, trained, color_classes, tmp_path):
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes((trained / "best.ckpt").read_bytes()[:5000])
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    seg = tmp_path / "seg.ckpt"
    ck = torch.load(trained / "best.ckpt", weights_only=True)
    ck["vislab"]["task"] = "seg"
    torch.save(ck, seg)
    pickled = tmp_path / "model.pt"  # a whole module, not tensors: refused by weights_only loading
    torch.save(torch.nn.Linear(2, 2), pickled)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": ck["state_dict"], "vislab": {"task": "cls"}}, bare)
    future = tmp_path / "future.ckpt"
    ck["vislab"].update(task="cls", format=99)
    torch.save(ck, future)
    ck["vislab"]["format"] = 1
    unknown = tmp_path / "unknown.ckpt"
    ck["vislab"].update(task="cls", model="no_such_net")
    torch.save(ck, unknown)
    cases = {trunc: "not a readable checkpoint (not a PyTorch file, or a truncated one",
             plain: "a plain state_dict", seg: "is a seg checkpoint",
             pickled: "it holds Python objects, not only tensors", text: "not a PyTorch file",
             bare: "its vislab metadata lacks model, num_classes",
             future: "written by a newer vislab (checkpoint format 99; this one reads up to 1)",
             unknown: "trained with model 'no_such_net', which this vislab cannot build: unknown model"}
    for path, message in cases.items():
        res = cli("cls", "predict", path, color_classes, tmp_path / "x.csv")
        assert res.code == 2 and message in res.err and str(path) in res.err, res.err
        assert len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def test_label_outside_model_range(cli, trained, tmp_path, monkeypatch):
    d = tmp_path / "v"
    d.mkdir()
    from conftest import write_png

    write_png(d / "7_0.png", np.zeros((32, 32, 3), np.uint8))
    from vislab.data import classification

    real, decoded = classification.decoded_images, []
    monkeypatch.setattr(classification, "decoded_images", lambda *a, **k: decoded.append(1) or real(*a, **k))
    res = cli("cls", "eval", trained, d)
    assert res.code == 2 and "outside the model's 0..2" in res.err and "7_0.png" in res.err
    assert not decoded  # refused from the names, before any image is decoded (or cached)


@requires_real
def test_short_real_training_beats_chance_realdata(cli, tmp_path):
    """5 real classes x 200 images, 8 epochs of ResNet-9-XS: far above the 0.2 of chance."""
    src = REAL / "p1_data" / "train_50"
    d = tmp_path / "slice"
    d.mkdir()
    for c in range(5):
        for i in range(200):
            shutil.copy(src / f"{c}_{i}.png", d / f"{c}_{i}.png")
    recipe = _tiny_recipe(tmp_path, model="resnet9_xs", epochs=8, batch_size=32, lr=0.05, holdout=0.2, warmup_epochs=1.0,
                          channels_last=True, label_smoothing=0.1)
    res = cli("cls", "train", d, "--recipe", recipe, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["holdout_acc"] > 0.32  # chance is 0.20; 200 held-out images give a std of ~0.03


def test_batchnorm_over_few_values_is_said(cli, color_classes, tmp_path):
    """cifar_resnet20 at 8 px: its third stage (stride 4 overall) sees 2 x 2 maps, so at batch 1 its 7
    BatchNorm layers there (features.9-11, two each, and features.9's shortcut) normalise each
    channel over 1 x 2 x 2 = 4 values; at batch 2, over 8, and nothing is said."""
    recipe = _tiny_recipe(tmp_path, epochs=1, batch_size=1, image_size=8)
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / "thin")
    assert res.code == 0, res.err
    line = ("warning: 7 BatchNorm layer(s) normalise each channel over fewer than 8 values in a training batch, "
            "the fewest 4 (net.features.10.bn1: input 1 x 64 x 2 x 2)")
    assert line in " ".join(res.err.split())
    assert [ln for ln in (tmp_path / "thin" / "changes.txt").read_text().splitlines() if "BatchNorm" in ln][0].startswith(line)
    res = cli("cls", "train", color_classes, "--recipe", _tiny_recipe(tmp_path, epochs=1, batch_size=2, image_size=8),
              "--out", tmp_path / "two")
    assert res.code == 0 and "BatchNorm" not in res.err


def test_batchnorm_check_counts_batch_statistics_and_leaves_compiled_networks_alone():
    """Counted: layers in training mode and layers without running statistics (batch statistics in
    eval mode too); not counted: eval mode with running statistics. A compiled network gets no hooks
    (adding and removing them would make torch.compile compile it again). A failed batch is said."""
    from types import SimpleNamespace

    from vislab.engine.callbacks import ThinBatchNorm

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3, track_running_stats=False),
                                   torch.nn.BatchNorm1d(3))

    trainer = SimpleNamespace(world_size=1, is_global_zero=True)
    lines: list[str] = []
    m = net().eval()
    check = ThinBatchNorm(lines.append)
    check.on_train_batch_start(trainer, m, None, 0)
    m[:2](torch.randn(1, 3, 2, 3))  # 6 values: only the layer without running statistics counts
    m[2](torch.randn(5, 3))  # 5 values, eval mode with running statistics: not counted
    check.on_exception(trainer, m, RuntimeError("the batch failed"))
    assert lines == ["warning: 1 BatchNorm layer(s) normalise each channel over fewer than 8 values in a training "
                     "batch, the fewest 6 (1: input 1 x 3 x 2 x 3); statistics of so few are mostly noise and "
                     "training may diverge: a larger batch_size or training crop/image size (and resize_from, "
                     "where the recipe grows the size) gives them more"]
    assert not any(layer._forward_pre_hooks for layer in m)  # removed
    m = net().train()
    check = ThinBatchNorm(lines.append)
    check.on_train_batch_start(trainer, m, None, 0)
    m[2](torch.randn(5, 3))
    check.on_train_batch_end(trainer, m, None, None, 0)
    assert "the fewest 5 (2: input 5 x 3)" in lines[-1] and lines[-1].startswith("warning: 1 BatchNorm layer(s)")
    m = net().train()
    m.compile()  # lazy: nothing compiles before a forward
    ThinBatchNorm(lines.append).on_train_batch_start(trainer, m, None, 0)
    assert not any(layer._forward_pre_hooks for layer in m)


def test_course_script_hw1_1(trained, color_classes, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(root / "scripts" / "hw1_1.sh"), str(color_classes), str(tmp_path / "p.csv"),
                           str(trained / "best.ckpt")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == ["image_id", "label"] and len(rows) == 121


def test_frozen_layers_keep_their_weights_through_training(cli, color_classes, tmp_path):
    from vislab.models import build_model

    torch.manual_seed(3)
    start = build_model("cifar_resnet20", num_classes=3).state_dict()
    torch.save(start, tmp_path / "start.pt")
    assert isinstance(build_model("cifar_resnet20", num_classes=3).features[1], torch.nn.BatchNorm2d)
    recipe = _tiny_recipe(tmp_path, weights=str(tmp_path / "start.pt"), freeze=["features.0", "features.1"])
    res = cli("cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    trained = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in start.items():
        frozen_weight = k.startswith(("features.0.", "features.1.")) and "running" not in k and "num_batches" not in k
        assert torch.equal(trained["net." + k], v) == frozen_weight, k
    # the frozen BatchNorm's statistics adapted to the data (documented: only weights are frozen)
    assert not torch.equal(trained["net.features.1.running_mean"], start["features.1.running_mean"])
    opt_state = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    n_params = len(start) - sum(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in start)
    # the optimiser holds every parameter but the frozen conv weight and BN weight and bias
    assert sum(len(g["params"]) for g in opt_state["param_groups"]) == n_params - 3
    # the architecture table of the run (summary and report) counts them as not trainable
    net = build_model("cifar_resnet20", num_classes=3)
    frozen = sum(p.numel() for m in (net.features[0], net.features[1]) for p in m.parameters())
    total = sum(p.numel() for p in net.parameters())
    res = cli("summary", tmp_path / "run")
    assert res.code == 0, res.err
    assert f"Trainable params: {total - frozen:,}" in res.out and f"Non-trainable params: {frozen:,}" in res.out
    assert cli("report", tmp_path / "run", "--out", tmp_path / "r.md").code == 0
    assert f"Non-trainable params: {frozen:,}" in (tmp_path / "r.md").read_text()


def test_freeze_names_a_missing_layer():
    from vislab.config import Recipe
    from vislab.engine.classification import ClassifierModule


    with pytest.raises(VislabError, match="freeze: cifar_resnet20 has no submodule 'blocks.0' "
                                          r"\(top-level ones: features, dropout, fc\)"):
        ClassifierModule(Recipe(model="cifar_resnet20", freeze=("blocks.0",)).to_dict(), 3, steps_per_epoch=1)


def test_flip_tta_is_mirror_invariant_and_exact_on_symmetric_images():
    from vislab.models import build_model
    from vislab.pipelines.cls_predict import infer

    torch.manual_seed(0)
    model = build_model("simple_cnn", num_classes=5).eval()
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 40}
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    plain, _ = infer(model, meta, x)
    a, _ = infer(model, meta, x, tta="flip")
    b, _ = infer(model, meta, x.flip(-1), tta="flip")
    assert torch.allclose(a, b, atol=1e-5)  # an image and its mirror get the same scores
    assert not torch.allclose(a, plain.log_softmax(1), atol=1e-3)  # and the views did differ
    sym = torch.cat([x[..., :16], x[..., :16].flip(-1)], dim=-1)  # mirror-symmetric images
    s_plain, _ = infer(model, meta, sym)
    s_tta, _ = infer(model, meta, sym, tta="flip")
    assert torch.allclose(s_tta, s_plain.log_softmax(1), atol=1e-5)
    with pytest.raises(VislabError, match="unknown --tta 'd4'"):
        infer(model, meta, x, tta="d4")


def test_shift_views_translate_with_reflected_edges_by_hand():
    from vislab.models.tta import VIEWS, shift_step

    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    assert shift_step(x) == 2 and shift_step(x[..., :8, :8]) == 1  # 8 / 16 rounds to 0: at least 1 px
    keys = [(dy, dx, m) for m in (False, True) for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))]
    down = dict(zip(keys, VIEWS["shift"]))
    v = down[(1, 0, False)][0](x)
    assert v.shape == x.shape
    assert torch.equal(v[..., :30, :], x[..., 2:, :])  # row i shows row i + 2
    assert torch.equal(v[..., 30, :], x[..., 30, :]) and torch.equal(v[..., 31, :], x[..., 29, :])  # reflected
    left = down[(0, -1, True)][0](x)  # mirrored, then column j shows column j - 2
    assert torch.equal(left[..., :, 2:], x.flip(-1)[..., :, :30])
    assert torch.equal(left[..., :, 0], x.flip(-1)[..., :, 2]) and torch.equal(down[(0, 0, False)][0](x), x)


def test_shift_tta_averages_ten_views_at_the_stored_size():
    import torch.nn.functional as F

    from vislab.models import build_model
    from vislab.pipelines.cls_predict import infer

    torch.manual_seed(0)
    model = build_model("simple_cnn", num_classes=5).eval()
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 40}
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    got, _ = infer(model, meta, x, tta="shift")
    # a second implementation: every view cut from one reflect-padded copy, resized, scored
    src = (x.float() / 255 - 0.5) / 0.25
    total = torch.zeros(4, 5)
    for img in (src, src.flip(-1)):
        padded = F.pad(img, (2, 2, 2, 2), mode="reflect")
        for oy, ox in ((2, 2), (0, 2), (4, 2), (2, 0), (2, 4)):
            view = padded[..., oy : oy + 32, ox : ox + 32]
            with torch.no_grad():
                total += model(F.interpolate(view, size=(40, 40), mode="bilinear", align_corners=False)).softmax(1)
    assert torch.allclose(got, (total / 10).log(), atol=1e-5)
    mirrored, _ = infer(model, meta, x.flip(-1), tta="shift")
    assert torch.allclose(got, mirrored, atol=1e-5)  # the views of an image and its mirror coincide
    plain, _ = infer(model, meta, x)
    assert not torch.allclose(got, plain.log_softmax(1), atol=1e-3)


def test_held_out_eval_scores_exactly_the_images_training_held_out(cli, trained, color_classes, tmp_path):
    res = cli("cls", "eval", trained, color_classes, "--held-out", "--json", tmp_path / "h.json")
    assert res.code == 0, res.err
    other = tmp_path / "other"  # the training folder less one image: its split is not the run's
    shutil.copytree(color_classes, other)
    (other / "0_7.png").unlink()
    res = cli("cls", "eval", trained, other, "--held-out")
    assert res.code == 2 and f"{other}: --held-out: not the folder the run was trained on (1 gone (0_7.png))" in res.err
    tree = tmp_path / "tree"  # class folders, for a model that knows only numbered labels
    for c, name in enumerate(("red", "green", "blue")):
        (tree / name).mkdir(parents=True)
        shutil.copy(color_classes / f"{c}_0.png", tree / name / "a.png")
    res = cli("cls", "eval", trained, tree)
    assert res.code == 2 and f"{tree}: gives class folders, but the model was trained on numbered labels" in res.err
    flat = tmp_path / "flat"  # and names in a labels CSV, likewise
    flat.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(color_classes / "0_0.png", flat / name)
    (tmp_path / "names.csv").write_text("a.png,red\nb.png,blue\n")
    res = cli("cls", "eval", trained, flat, "--labels", tmp_path / "names.csv")
    assert res.code == 2 and f"{flat}: gives class names in {tmp_path / 'names.csv'}, but the model" in res.err
    got = json.loads((tmp_path / "h.json").read_text())
    assert got["images"] == 24 and got["held_out"] == {"fraction": 0.2, "seed": 0}  # 8 of each class's 40
    assert got["tta"] == "none"  # the record says how it was scored
    assert cli("cls", "eval", trained, color_classes, "--held-out", "--tta", "flip", "--json", tmp_path / "f.json").code == 0
    assert json.loads((tmp_path / "f.json").read_text())["tta"] == "flip"
    best = max(float(r["holdout_acc"]) for r in csv.DictReader((trained / "history.csv").open()))
    assert got["accuracy"] == pytest.approx(best, abs=1e-6)  # the score training computed on them
    r = yaml.safe_load((trained / "recipe.yaml").read_text())
    r["holdout"] = 0.0
    (tmp_path / "h0.yaml").write_text(yaml.safe_dump(r))
    assert cli("cls", "train", color_classes, "--recipe", tmp_path / "h0.yaml", "--epochs", "1", "--out", tmp_path / "r0").code == 0
    res = cli("cls", "eval", tmp_path / "r0", color_classes, "--held-out")
    assert res.code == 2 and "r0" in res.err and "held no training images out (its recipe's holdout is 0)" in res.err
    res = cli("cls", "eval", f"{trained},{tmp_path / 'r0'}", color_classes, "--held-out")
    assert res.code == 2 and "holdout is 0" in res.err
    r.update(holdout=0.2, seed=1)
    (tmp_path / "s1.yaml").write_text(yaml.safe_dump(r))
    assert cli("cls", "train", color_classes, "--recipe", tmp_path / "s1.yaml", "--epochs", "1", "--out", tmp_path / "s1").code == 0
    res = cli("cls", "eval", f"{trained},{tmp_path / 's1'}", color_classes, "--held-out")
    assert res.code == 2 and "s1" in res.err and "(0.2, 1), the first run (0.2, 0): not the same images" in res.err
    # another seed on the first run's split (--split-seed 0): scored on the same held-out images,
    # alone (as its training scored them) and in an ensemble with the first run
    assert cli("cls", "train", color_classes, "--recipe", tmp_path / "s1.yaml", "--split-seed", "0", "--epochs", "1",
               "--out", tmp_path / "s1p0").code == 0
    assert yaml.safe_load((tmp_path / "s1p0" / "recipe.yaml").read_text())["split_seed"] == 0
    res = cli("cls", "eval", tmp_path / "s1p0", color_classes, "--held-out", "--json", tmp_path / "s.json")
    assert res.code == 0, res.err
    alone = json.loads((tmp_path / "s.json").read_text())
    assert alone["images"] == 24 and alone["held_out"] == {"fraction": 0.2, "seed": 0}
    best = max(float(r["holdout_acc"]) for r in csv.DictReader((tmp_path / "s1p0" / "history.csv").open()))
    assert alone["accuracy"] == pytest.approx(best, abs=1e-6)
    res = cli("cls", "eval", f"{trained},{tmp_path / 's1p0'}", color_classes, "--held-out")
    assert res.code == 0, res.err


def test_held_out_scores_run_in_full_precision_under_mixed_precision_training():
    """A bf16-mixed run's held-out batches are scored outside its autocast, as ``eval`` scores them:
    the logits equal the fp32 network's exactly, while the same call inside autocast would not."""
    from vislab.config import Recipe
    from vislab.engine.classification import ClassifierModule

    torch.manual_seed(0)
    module = ClassifierModule(Recipe(task="cls", model="cifar_resnet20").to_dict(), 5, steps_per_epoch=1).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        fp32 = module.eval_net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = module.eval_net(x)
            held = module.held_out_logits(x)
    assert inside.dtype == torch.bfloat16 and not torch.equal(inside.float(), fp32)  # autocast was on
    assert held.dtype == torch.float32 and torch.equal(held, fp32)

    # and the validation step scores with it: its accuracy is the fp32 logits' accuracy
    seen = []
    module.held_out_logits = lambda t: seen.append(t) or fp32  # type: ignore[method-assign]
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        module.validation_step((x, y, torch.arange(6)), 0)
    assert len(seen) == 1 and seen[0] is x
    assert module.holdout_acc.compute().item() == pytest.approx((fp32.argmax(1) == y).float().mean().item())


def test_a_fine_tune_of_a_run_keeps_its_normalisation(cli, trained, color_classes, tmp_path):
    """--weights RUN: the inputs are scaled as the run's network learnt them (its own statistics,
    here the training images'), not by the model's library weights; said and recorded."""
    first = torch.load(trained / "best.ckpt", weights_only=True)["vislab"]
    assert first["mean"] != [0.485, 0.456, 0.406]  # trained from scratch on its images' statistics
    run = tmp_path / "tuned"
    res = cli("cls", "train", color_classes, "--recipe", _tiny_recipe(tmp_path, epochs=1), "--weights", trained,
              "--out", run)
    assert res.code == 0, res.err
    said = f"the normalisation of the run it starts from ({trained})"
    assert said in " ".join(res.err.split()) and said in (run / "changes.txt").read_text()
    tuned = torch.load(run / "best.ckpt", weights_only=True)["vislab"]
    assert tuned["mean"] == pytest.approx(first["mean"], abs=1e-4) and tuned["std"] == pytest.approx(first["std"], abs=1e-4)


def test_a_class_without_training_images_is_said(cli, tmp_path):
    """Course names <class>_<n>.png: classes 0 and 2 only make a 3-class model whose class 1 is
    never trained; the run says so in one line."""
    from conftest import write_color_classes

    full = write_color_classes(tmp_path / "full", per_class=8)
    gap = tmp_path / "gap"
    gap.mkdir()
    for f in full.iterdir():
        if not f.name.startswith("1_"):
            (gap / f.name).write_bytes(f.read_bytes())
    res = cli("cls", "train", gap, "--recipe", _tiny_recipe(tmp_path, epochs=1), "--out", tmp_path / "run")
    assert res.code == 0, res.err
    line = "warning: 1 of 3 classes have no training images (1): the model never learns them"
    assert line in " ".join(res.err.split()) and line in (tmp_path / "run" / "changes.txt").read_text()
