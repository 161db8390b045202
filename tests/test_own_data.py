"""A user's own classification data end to end: an ImageFolder tree with class names and mixed
sizes, and a flat folder with a labels CSV: train (no recipe), eval, predict (names in the CSV),
t-SNE, report and ONNX export; option values checked before any work."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_vislab

NAMES = ("red", "green", "blue")  # class c: channel c bright


def _colour_image(rng: np.random.Generator, c: int, hw: tuple[int, int]) -> Image.Image:
    img = rng.integers(0, 90, size=(*hw, 3), dtype=np.uint8)
    img[..., c] += 140
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> dict[str, Path]:
    """train/<name>/ (PNG 32 px and JPEG 40x48), val/<name>/, and label-free test/ images."""
    root = tmp_path_factory.mktemp("named")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 6)):
        for c, name in enumerate(NAMES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                if i % 4 == 3:
                    _colour_image(rng, c, (40, 48)).save(d / f"photo {i}.jpg", quality=95)
                else:
                    _colour_image(rng, c, (32, 32)).save(d / f"img{i}.png")
    (root / "test").mkdir()
    truth = {}
    for i in range(9):
        c = i % 3
        _colour_image(rng, c, (32, 32)).save(root / "test" / f"t{i}.png")
        truth[f"t{i}.png"] = NAMES[c]
    (root / "truth.json").write_text(json.dumps(truth))
    (root / "test" / "notes.txt").write_text("not an image\n")
    return {"root": root, "train": root / "train", "val": root / "val", "test": root / "test"}


@pytest.fixture(scope="module")
def named_run(named, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "named"
    code = run_vislab("cls", "train", named["train"], "--model", "resnet9_xs", "--epochs", "3",
                      "--batch-size", "16", "--out", run, "--val-dir", named["val"])
    assert code == 0
    return run


def test_imagefolder_run_keeps_names(named, named_run):
    ckpt = torch.load(named_run / "best.ckpt", map_location="cpu", weights_only=True)
    meta = ckpt["vislab"]
    assert meta["class_names"] == sorted(NAMES) and meta["stored_hw"] == [32, 32] and meta["layout"] == "imagefolder"
    results = json.loads((named_run / "results.json").read_text())
    assert results["class_names"] == sorted(NAMES) and results["val"]["images"] == 18
    # no recipe normalisation: the training images' own statistics, said in the run folder
    changes = (named_run / "changes.txt").read_text()
    assert "the training images' own per-channel statistics" in changes
    assert "the training images' own per-channel statistics" in " ".join(results["changes"])


def test_predict_writes_class_names(named, named_run, tmp_path, cli):
    res = cli("cls", "predict", named_run, named["test"], tmp_path / "pred.csv", "--engine", "torch")
    assert res.code == 0, res.err
    assert " ".join(res.err.split()).count("skipped 1 file(s) that are not") == 1  # said once (notes.txt)
    rows = list(csv.DictReader((tmp_path / "pred.csv").open()))
    truth = json.loads((named["root"] / "truth.json").read_text())
    assert [r["image_id"] for r in rows] == sorted(truth)
    assert {r["label"] for r in rows} <= set(NAMES)
    assert sum(r["label"] == truth[r["image_id"]] for r in rows) >= 7  # the colour task is easy
    # eval on the tree shows the names; t-SNE's CSV and legend use them
    res = cli("cls", "eval", named_run, named["val"])
    assert res.code == 0 and "0 blue" in res.out and "2 red" in res.out
    res = cli("cls", "tsne", named_run, named["val"], "--out", tmp_path / "t.png", "--perplexity", "5")
    assert res.code == 0
    labels = {r["label"] for r in csv.DictReader((tmp_path / "t.csv").open())}
    assert labels == set(NAMES)


def test_report_and_export_carry_names(named_run, tmp_path, cli):
    res = cli("report", named_run, "--out", tmp_path / "r.md", "--format", "md")
    assert res.code == 0, res.err
    page = (tmp_path / "r.md").read_text()
    assert "0.7000" not in page  # the course's baselines are not shown for another data set
    assert "reference numbers are left out: the run trained on images of its own (imagefolder layout)" in page
    pytest.importorskip("onnxruntime")
    res = cli("export", named_run, tmp_path / "m.onnx")
    assert res.code == 0, res.err
    from vislab.export import OnnxNet

    assert OnnxNet(tmp_path / "m.onnx").meta["class_names"] == sorted(NAMES)
    res = cli("cls", "predict", tmp_path / "m.onnx", named_run.parent, tmp_path / "p.csv")  # no images at the top
    assert res.code == 2


def test_report_figures_name_the_classes(named_run, tmp_path):
    from vislab.report import build_report

    data = json.loads((named_run / "results.json").read_text())
    assert data["val"]["class_names"] == sorted(NAMES)
    page = build_report([named_run], tmp_path / "r.html", fmt="html", title="t")
    assert Path(page).is_file()


def test_flat_folder_with_labels_csv(tmp_path, cli):
    rng = np.random.default_rng(3)
    d = tmp_path / "flat"
    d.mkdir()
    rows = ["filename,label"]
    for i in range(30):
        c = i % 3
        _colour_image(rng, c, (32, 32)).save(d / f"shot_{i:03d}.png")
        rows.append(f"shot_{i:03d}.png,{NAMES[c]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    res = cli("cls", "train", d, "--labels", tmp_path / "labels.csv", "--model", "resnet9_xs", "--epochs", "1",
              "--out", tmp_path / "run", "--holdout", "0")
    assert res.code == 0, res.err
    meta = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=True)["vislab"]
    assert meta["class_names"] == sorted(NAMES) and meta["layout"] == "csv"
    res = cli("cls", "eval", tmp_path / "run", d, "--labels", tmp_path / "labels.csv")
    assert res.code == 0 and "30 images)" in res.out
    # the batch (default larger than 30 images) shrank to the data, and the run says so
    assert "batch size" in (tmp_path / "run" / "changes.txt").read_text()
    # relabelled in the CSV: a resume on it is refused, the change named by class names, not ids
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text("\n".join(rows).replace(f"shot_001.png,{NAMES[1]}", f"shot_001.png,{NAMES[2]}") + "\n")
    res = cli("cls", "train", d, "--labels", relabelled, "--out", tmp_path / "run", "--resume")
    assert res.code == 2
    assert f"(1 with a changed label (shot_001.png: {NAMES[1]} -> {NAMES[2]}))" in " ".join(res.err.split())


def test_cls_predict_never_replaces_a_labels_csv_that_reads_like_its_output(tmp_path, cli):
    """A labels CSV with the header `image_id,label` reads exactly like `cls predict`'s output: the
    one the run was trained with and one inside the folder predicted are refused, untouched; an
    earlier prediction elsewhere is replaced as usual."""
    rng = np.random.default_rng(5)
    d = tmp_path / "flat"
    d.mkdir()
    rows = ["image_id,label"] + [f"shot_{i:03d}.png,{NAMES[i % 3]}" for i in range(12)]
    for i in range(12):
        _colour_image(rng, i % 3, (32, 32)).save(d / f"shot_{i:03d}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    res = cli("cls", "train", d, "--labels", labels, "--model", "resnet9_xs", "--epochs", "1", "--out",
              tmp_path / "run", "--holdout", "0")
    assert res.code == 0, res.err
    inside = tmp_path / "test"  # a test folder that carries its own labels file
    shutil.copytree(d, inside)
    shutil.copy(labels, inside / "truth.csv")
    for out_csv, why in ((labels, f"is the labels file {tmp_path / 'run'} was trained with (its inputs.json)"),
                         (inside / "truth.csv", f"exists inside the data folder {inside.resolve()}")):
        before = out_csv.read_bytes()
        res = cli("cls", "predict", tmp_path / "run", inside, out_csv)
        assert res.code == 2 and f"{out_csv}: {why}" in " ".join(res.err.split()), res.err
        assert out_csv.read_bytes() == before
    shutil.copy(labels, tmp_path / "pred.csv")  # an earlier prediction (same form) outside: replaced
    res = cli("cls", "predict", tmp_path / "run", inside, tmp_path / "pred.csv")
    assert res.code == 0 and "(replacing an earlier prediction there)" in " ".join(res.out.split())
    assert (tmp_path / "pred.csv").read_text().splitlines()[0] == "image_id,label"
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 13


def test_tiny_folder_trains_with_a_smaller_batch(tmp_path, cli):
    d = tmp_path / "tiny"
    d.mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        _colour_image(rng, i % 2, (32, 32)).save(d / f"{i % 2}_{i}.png")
    res = cli("cls", "train", d, "--model", "resnet9_xs", "--epochs", "1", "--batch-size", "64", "--holdout", "0",
              "--out", tmp_path / "run")
    assert res.code == 0, res.err
    assert "batch size 64 -> 4: only 4 training images" in (tmp_path / "run" / "changes.txt").read_text()
    assert "batch size 64 -> 4" in res.err and (tmp_path / "run" / "last.ckpt").is_file()


@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "0", "--epochs: must be an integer >= 1, got 0"),
    ("--batch-size", "0", "--batch-size: must be an integer >= 1, got 0"),
    ("--lr", "-0.1", "--lr: must be a number > 0, got -0.1"),
    ("--holdout", "1.5", "--holdout: must be in [0, 1) (the held-out fraction of the training folder), got 1.5"),
    ("--image-size", "-3", "--image-size: must be an integer >= 1 (0: the images' own size), got -3"),
    ("--workers", "-1", "--workers: must be an integer >= 0, got -1"),
    ("--ema", "1.0", "--ema: must be in [0, 1) (a decay such as 0.999; 0 turns it off), got 1.0"),
    ("--mixup", "-1", "--mixup: must be >= 0 (a Beta parameter; 0 turns it off), got -1.0"),
])
def test_option_values_checked_before_any_work(color_classes, tmp_path, cli, flag, value, message):
    res = cli("cls", "train", color_classes, flag, value, "--out", tmp_path / "run")
    assert res.code == 2 and res.err == f"vislab: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_recipe_file_value_names_the_file(color_classes, tmp_path, cli):
    bad = tmp_path / "r.yaml"
    bad.write_text("task: cls\nmodel: resnet9_xs\nepochs: 0\n")
    res = cli("cls", "train", color_classes, "--recipe", bad, "--out", tmp_path / "run")
    assert res.code == 2 and res.err == f"vislab: error: {bad}: recipe field epochs must be an integer >= 1, got 0\n"


def test_flags_switch_off_what_a_recipe_turns_on(tmp_path):
    from vislab.cli import _recipe

    r, notes, given = _recipe("seg-fcn32s-seed", tmp_path / "run", False, "seg", weights="none", snapshot=(),
                              model="lraspp_mobilenet_v3_large")
    assert r.weights is None and r.snapshot == () and r.model == "lraspp_mobilenet_v3_large" and notes == []
    # what the run records of its command: the recipe's name and the flags given
    assert given == {"recipe": "seg-fcn32s-seed",
                     "flags": {"weights": "none", "snapshot": (), "model": "lraspp_mobilenet_v3_large"}}
    assert _recipe("cls-cpu", tmp_path / "run", False, "cls", image_size=0)[0].image_size is None
    assert _recipe("cls-cpu", tmp_path / "run", False, "cls")[0].weights == "imagenet"
    # and the offline build then needs no download
    from vislab.models import build_model

    assert build_model(r.model, num_classes=7, weights=r.weights) is not None


def test_normalisation_follows_the_weights(tmp_path):
    from vislab.config import Recipe
    from vislab.models import IMAGENET_MEAN
    from vislab.pipelines.classification import resolve_settings

    images = torch.full((8, 3, 4, 4), 51, dtype=torch.uint8)  # 0.2 everywhere
    idx = torch.arange(8)
    lite, _ = resolve_settings(Recipe(model="efficientnet_lite0", weights="imagenet", batch_size=4), images, idx)
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    tv, _ = resolve_settings(Recipe(model="resnet18", weights="imagenet", batch_size=4), images, idx)
    assert tv.mean == tuple(round(v, 4) for v in IMAGENET_MEAN)
    scratch, notes = resolve_settings(Recipe(model="resnet18", batch_size=4), images, idx)
    assert scratch.mean == (0.2, 0.2, 0.2) and "own per-channel statistics" in notes[0]
    explicit, notes = resolve_settings(Recipe(model="resnet18", weights="imagenet", mean=(0.1,) * 3, std=(0.3,) * 3,
                                              batch_size=4, holdout=0.0), images, idx)
    assert explicit.mean == (0.1,) * 3 and notes == []


def test_no_done_without_a_checkpoint(tmp_path):
    """A fit that wrote nothing (no step ran) is an error, never a result naming a missing file."""
    from vislab.engine.trainer import fit_and_select
    from vislab.errors import VislabError

    class NoSteps:  # what Lightning leaves behind when not one batch was trained
        is_global_zero, global_step, checkpoint_callback, callback_metrics = True, 0, None, {}

        def fit(self, *args, **kwargs) -> None:
            pass

    with pytest.raises(VislabError, match="training ended without writing a checkpoint \\(0 optimiser steps ran\\)"):
        fit_and_select(NoSteps(), None, None, tmp_path, None, metric="holdout_acc")


def test_a_folder_read_before_and_after_training_is_described_once(color_classes, tmp_path, cli, capsys):
    """The validation folder is read before training (to fail early) and again to score it: what
    vislab notices of it (other sizes, a stray file) is said once per command. Outside a command,
    info_once says every time."""
    from vislab.log import info_once, once_each

    val = tmp_path / "val"
    val.mkdir()
    for f in sorted(color_classes.iterdir())[::4]:
        Image.open(f).resize((40, 40)).save(val / f.name)
    (val / "notes.txt").write_text("not an image")
    res = cli("cls", "train", color_classes, "--model", "cifar_resnet20", "--epochs", "1", "--out", tmp_path / "run",
              "--val-dir", val)
    said = " ".join(res.err.split())
    assert res.code == 0 and json.loads((tmp_path / "run" / "results.json").read_text())["val"]["images"] == 30
    assert said.count(f"{val}: 30 of 30 images are not 32x32 (width x height); they are resized") == 1
    assert said.count(f"{val}: skipped 1 file(s) that are not") == 1
    capsys.readouterr()
    for _ in range(2):
        with once_each():
            info_once("a line")
            info_once("a line")
    info_once("a line")
    assert capsys.readouterr().err.count("a line") == 3  # once in each of two commands, then outside any
    from vislab.log import quiet

    with once_each():  # a line held back (a check before the real read) is said by the real read
        with quiet():
            info_once("held")
        info_once("held")
    assert capsys.readouterr().err.count("held") == 1
