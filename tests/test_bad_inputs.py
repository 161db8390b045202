"""Bad inputs found by probing the command line: each gets one line naming the file (or flag) and
the problem, before any data is decoded or a run folder is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import yaml
from PIL import Image

from vislab.errors import VislabError


def _one_line(res) -> str:
    """The error line: the last of stderr (the lines before it are settings and data info)."""
    assert res.code == 2 and "Traceback" not in res.err and res.err.count("vislab: error:") == 1, res.err
    last = res.err.rstrip("\n").split("\n")[-1]
    assert last.startswith("vislab: error: ")
    return last


def test_single_class_image_folder_is_refused(cli, tmp_path):
    d = tmp_path / "tree" / "cat"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "run"
    err = _one_line(cli("cls", "train", tmp_path / "tree", "--recipe", "cls-fast", "--out", out, "--epochs", 1))
    assert err == (f"vislab: error: {tmp_path / 'tree'}: all 4 images are of one class (cat); a classifier trains on "
                   "at least 2")
    assert not (out / "last.ckpt").exists()
    # a data set's root with its train/ split alone: that one 'class' is a split, and the error says what to pass
    (tmp_path / "tree" / "cat").rename(tmp_path / "dog")
    (tmp_path / "tree" / "train").mkdir()
    (tmp_path / "dog").rename(tmp_path / "tree" / "train" / "dog")
    err = _one_line(cli("cls", "train", tmp_path / "tree", "--recipe", "cls-fast", "--out", out, "--epochs", 1))
    assert err == (f"vislab: error: {tmp_path / 'tree'}: all 4 images are of one class (train); a classifier trains on "
                   f"at least 2; its subfolder train/ is a split: pass the folder of one split (e.g. "
                   f"{tmp_path / 'tree' / 'train'})")


def test_model_and_weights_are_checked_before_the_data(cli, tmp_path):
    missing = tmp_path / "no-such-folder"  # never read: the model/weights checks come first
    out = tmp_path / "run"
    err = _one_line(cli("cls", "train", missing, "--recipe", "cls-fast", "--model", "resnet9_xz", "--out", out))
    assert err.startswith("vislab: error: --model: unknown model 'resnet9_xz' (closest: resnet9_xs")
    err = _one_line(cli("cls", "train", missing, "--recipe", "cls-fast", "--weights", tmp_path / "w.pt", "--out", out))
    assert f"{tmp_path / 'w.pt'}: weights file not found (set by --weights)" in err
    (tmp_path / "empty-run").mkdir()  # --weights RUN takes the run's checkpoint: there is none
    err = _one_line(cli("cls", "train", missing, "--recipe", "cls-fast", "--weights", tmp_path / "empty-run", "--out", out))
    assert f"{tmp_path / 'empty-run'}: is not a run folder (it holds no recipe.yaml, best.ckpt or last.ckpt)" in err
    assert not out.exists()


def test_weights_that_do_not_fit_are_refused_before_the_data(cli, tmp_path):
    from vislab.config import load_recipe
    from vislab.models import build_model

    missing = tmp_path / "no-such-folder"  # never read when the weights are refused
    out = tmp_path / "run"
    torch.save(build_model("cifar_resnet20", num_classes=3).state_dict(), tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    for task, recipe in (("cls", "cls-fast"), ("seg", "seg-fast")):
        err = _one_line(cli(task, "train", missing, "--recipe", recipe, "--weights", tmp_path / "other.pt", "--out", out))
        assert f"{tmp_path / 'other.pt'}: " in err, err
        assert "no weight of this model is in this file" in err or "weights of another architecture" in err, err
    (tmp_path / "other-run").mkdir()  # a run folder: the words name its checkpoint file, not the folder
    torch.save(torch.load(tmp_path / "other.pt"), tmp_path / "other-run" / "best.ckpt")
    err = _one_line(cli("seg", "train", missing, "--recipe", "seg-fast", "--weights", tmp_path / "other-run", "--out", out))
    assert f"{tmp_path / 'other-run' / 'best.ckpt'}: " in err and "in this file" in err, err
    # a vislab checkpoint of another task's model: said as such
    torch.save({"state_dict": {f"net.{k}": v for k, v in torch.load(tmp_path / "other.pt").items()},
                "vislab": {"task": "cls", "model": "cifar_resnet20", "num_classes": 3}}, tmp_path / "cls-run.ckpt")
    err = _one_line(cli("seg", "train", missing, "--recipe", "seg-fast", "--weights", tmp_path / "cls-run.ckpt",
                        "--out", out))
    assert f"{tmp_path / 'cls-run.ckpt'}: is a checkpoint of a cls cifar_resnet20 run, and no weight of this model is " \
           "in it" in err, err
    err = _one_line(cli("cls", "train", missing, "--recipe", "cls-fast", "--weights", tmp_path / "junk.pt", "--out", out))
    assert f"{tmp_path / 'junk.pt'}: not a readable PyTorch weights file" in err
    assert not out.exists()
    # the recipe's own architecture with a head for 3 classes passes the check (the head is skipped
    # at load): the next error is the data folder's
    own = build_model(load_recipe("cls-fast").model, num_classes=3)
    torch.save(own.state_dict(), tmp_path / "own.pt")
    err = _one_line(cli("cls", "train", missing, "--recipe", "cls-fast", "--weights", tmp_path / "own.pt", "--out", out))
    assert str(missing) in err and "own.pt" not in err, err


def test_foreign_state_dict_is_refused_through_the_cli(cli, color_classes, tmp_path):
    from vislab.models import build_model

    torch.save(build_model("cifar_resnet20", num_classes=3).state_dict(), tmp_path / "other.pt")
    err = _one_line(cli("cls", "train", color_classes, "--recipe", "cls-fast", "--weights", tmp_path / "other.pt",
                        "--epochs", 1, "--out", tmp_path / "run"))
    assert "other.pt: no weight of this model is in this file" in err


def test_weights_with_another_head_train_and_are_reported_once(cli, color_classes, tmp_path):
    from vislab.models import build_model

    # the early check loads the file quietly; the run's own load reports the skipped head once
    torch.save(build_model("resnet9_xs", num_classes=5).state_dict(), tmp_path / "five.pt")
    res = cli("cls", "train", color_classes, "--recipe", "cls-fast", "--weights", tmp_path / "five.pt",
              "--epochs", 1, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    assert res.err.count("skipped (shape)") == 1, res.err


def test_recipe_file_errors_name_the_file_even_when_a_flag_sets_the_field(cli, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "resnet9_xs", "epochs": "four"}))
    err = _one_line(cli("cls", "train", tmp_path, "--recipe", r, "--epochs", 1, "--out", tmp_path / "run"))
    assert err.startswith(f"vislab: error: {r}: recipe field epochs must be an integer >= 1, got 'four'")
    r.write_text(yaml.safe_dump({"task": "cls", "model": "resnet9_xs", "channels_last": [1, 2]}))
    err = _one_line(cli("cls", "train", tmp_path, "--recipe", r, "--out", tmp_path / "run"))
    assert f"{r}: recipe field channels_last must be true or false, got [1, 2]" in err


def test_text_fields_are_checked_before_the_data(cli, tmp_path):
    missing = tmp_path / "no-such-folder"  # never read: the recipe's checks come first
    out = tmp_path / "run"
    err = _one_line(cli("seg", "train", missing, "--recipe", "seg-fast", "--loss", "ce+focal", "--out", out))
    assert err == "vislab: error: --loss: must be one of ce, dice, lovasz or a sum like ce+dice, got 'ce+focal'"
    for name, value, rule in (("optimizer", "lamb", "one of sgd, adamw, adam"),
                              ("scheduler", "step", "one of cosine, constant, poly"),
                              ("class_weights", "median", "inverse-sqrt-frequency (or null: none)")):
        r = tmp_path / f"{name}.yaml"
        r.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", name: value}))
        err = _one_line(cli("seg", "train", missing, "--recipe", r, "--out", out))
        assert err == f"vislab: error: {r}: recipe field {name} must be {rule}, got {value!r}"
    assert not out.exists()


def test_output_files_are_checked_before_any_work(cli, tmp_path):
    """A folder where an output file goes is refused before the checkpoint is even read."""
    folder = tmp_path / "taken"
    folder.mkdir()
    none = tmp_path / "none.ckpt"
    for args in (("cls", "eval", none, tmp_path, "--json", folder), ("cls", "predict", none, tmp_path, folder),
                 ("cls", "tsne", none, tmp_path, "--out", folder), ("export", none, folder),
                 ("seg", "score", none, tmp_path, "--json", folder), ("report", tmp_path, "--out", folder)):
        assert _one_line(cli(*args)) == f"vislab: error: {folder}: is a folder, but a file is needed here", args
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _one_line(cli("cls", "eval", none, tmp_path, "--json", blocker / "m.json"))
    assert err == f"vislab: error: {blocker}: is a file, but a folder is needed here"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]  # nothing else written


def test_outputs_never_replace_an_input_a_run_record_or_another_kind_of_file(cli, tmp_path):
    """An output named like an input, a run's record or checkpoint, or an existing file of another
    kind is refused before any work, and the file is left as it was; a command's own earlier output
    is replaced as usual (nothing to refuse, the command goes on to its inputs)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("task: cls\n")
    records = {name: f"{name} of the run\n" for name in ("best.ckpt", "results.json", "history.csv", "best.offsets.json")}
    for name, text in records.items():
        (run / name).write_text(text)
    ckpt, labels, onnx = tmp_path / "m.ckpt", tmp_path / "labels.csv", tmp_path / "old.onnx"
    for f in (ckpt, labels, onnx):
        f.write_text(f"{f.name} kept\n")
    imgs = tmp_path / "imgs"
    gt, table = tmp_path / "val_gt.csv", tmp_path / "points.csv"
    gt.write_text("filename,label\n0_450.png,0\n")  # the course's ground truth: a predictions CSV must not replace it
    table.write_bytes(b"\xff\xfeimage_id,label\n")  # not UTF-8: shown escaped
    record = f"is a record of the run folder {run}; write the output to another file"
    an_input = "is an input of this command; write the output to another file"
    other = "exists and is not an earlier output of this command (its first line is"
    cases = [
        (("cls", "predict", run, imgs, gt), gt, f"{other} 'filename,label', not 'image_id,label'); refusing to replace"),
        (("cls", "tsne", run, imgs, "--out", tmp_path / "points.pdf"), table,
         f"{other} '\\xff\\xfeimage_id,label', not 'image_id,label,x,y')"),
        (("cls", "predict", run, imgs, run / "best.ckpt"), run / "best.ckpt", record),
        (("cls", "predict", run, imgs, run / "history.csv"), run / "history.csv", record),
        (("cls", "eval", run, imgs, "--json", run / "results.json"), run / "results.json", record),
        (("seg", "score", run, imgs, "--json", run / "best.offsets.json"), run / "best.offsets.json", record),
        (("cls", "predict", ckpt, imgs, ckpt), ckpt, an_input),
        (("cls", "eval", ckpt, imgs, "--labels", labels, "--json", labels), labels, an_input),
        (("cls", "tsne", ckpt, imgs, "--labels", labels, "--out", tmp_path / "labels.png"), labels, an_input),
        (("export", f"{run},{onnx}", onnx), onnx, an_input),
        (("seg", "eval", imgs, imgs, "--json", labels), labels, "exists and is not a .json file; refusing to replace"),
        (("report", run, "--out", tmp_path / "r.html", "--screenshot", labels), labels,
         "exists and is not a .png file; refusing to replace"),
    ]
    for args, target, words in cases:
        assert _one_line(cli(*args)).startswith(f"vislab: error: {target}: {words}"), args
    for name, text in records.items():
        assert (run / name).read_text() == text
    for f in (ckpt, labels, onnx):
        assert f.read_text() == f"{f.name} kept\n"
    assert gt.read_text() == "filename,label\n0_450.png,0\n" and table.read_bytes() == b"\xff\xfeimage_id,label\n"
    # an earlier output of the same kind is replaced: a JSON vislab wrote (its first key says so) goes
    # on to the work, as do an empty file and an earlier predictions CSV (CRLF line ends, a byte-order
    # mark); someone else's JSON is refused and kept
    earlier = tmp_path / "scores.json"
    for text in ('{\n "written_by": "vislab",\n "miou": 0.5\n}', ""):
        earlier.write_text(text)
        assert _one_line(cli("seg", "eval", imgs, imgs, "--json", earlier)).startswith(f"vislab: error: {imgs}")
    for text in ("{}", '{"miou": 0.5, "written_by": "vislab"}', "[1, 2]"):
        earlier.write_text(text)
        assert _one_line(cli("seg", "eval", imgs, imgs, "--json", earlier)) == (
            f'vislab: error: {earlier}: exists and is a JSON file vislab did not write (it does not start with '
            '{"written_by": "vislab"); refusing to replace it (choose another name, or delete it first)'), text
        assert earlier.read_text() == text
    for text in (b"\xef\xbb\xbfimage_id,label\r\na.png,cat\r\n", b""):
        earlier = tmp_path / "preds.csv"
        earlier.write_bytes(text)
        assert _one_line(cli("cls", "predict", ckpt, imgs, earlier)).startswith(f"vislab: error: {imgs}"), text


def test_outputs_never_join_a_data_folder_or_a_runs_snapshots(cli, tmp_path, color_classes):
    """A figure inside the command's data folder (it would replace an image, or be read as one more:
    a t-SNE PNG) and any output inside a run's snapshots/ (what `seg progress` reads back) are
    refused before any work; a CSV or JSON there is an output like any other."""
    run = tmp_path / "run"
    (run / "snapshots" / "epoch_001").mkdir(parents=True)
    (run / "recipe.yaml").write_text("task: seg\n")
    truth = run / "snapshots" / "0010_mask.png"
    truth.write_bytes(b"the saved ground truth")
    image = color_classes / "0_7.png"
    before = image.read_bytes()
    notes = color_classes / "notes.csv"  # the user's table beside the images: protected as anywhere else
    notes.write_text("name,remark\n")
    replaces = f"lies inside the data folder {color_classes.resolve()} and would replace one of its images"
    joins = f"lies inside the data folder {color_classes.resolve()} and would be read as one more of its images"
    other = "exists and is not an earlier output of this command"
    snaps = f"lies inside snapshots/ of the run folder {run.resolve()}, which the run wrote and reads back"
    cases = [
        (("cls", "tsne", run, color_classes, "--out", image), image, replaces),
        (("cls", "tsne", run, color_classes, "--out", color_classes / "fig.png"), color_classes / "fig.png", joins),
        (("cls", "predict", run, color_classes, notes), notes, other),
        (("cls", "predict", run, color_classes, color_classes / "p.csv"), None, None),
        (("cls", "eval", run, color_classes, "--json", notes.with_suffix(".json")), None, None),
        (("seg", "score", run, color_classes, "--json", notes), notes, "exists and is not a .json file"),
        (("seg", "eval", run, color_classes, "--json", color_classes / "0_1.png"), color_classes / "0_1.png", replaces),
        (("seg", "progress", run, "--out", truth), truth, snaps),
        (("seg", "progress", run, "--out", run / "snapshots" / "epoch_001" / "new.png"),
         run / "snapshots" / "epoch_001" / "new.png", snaps),
    ]
    for args, target, words in cases:
        line = _one_line(cli(*args))
        if words is None:  # a new CSV or JSON beside the images joins no data: the command goes on to its inputs
            assert "lies inside" not in line and str(run) in line, args
        else:
            assert line.startswith(f"vislab: error: {target}: {words}"), args
    assert image.read_bytes() == before and truth.read_bytes() == b"the saved ground truth"
    assert sorted(p.name for p in color_classes.iterdir() if not p.name.endswith(".png")) == ["notes.csv"]
    assert sorted(p.name for p in (run / "snapshots").rglob("*")) == ["0010_mask.png", "epoch_001"]
    # beside the run's records (the report's usual place) is fine: the command goes on to its inputs
    assert "lies inside" not in _one_line(cli("seg", "progress", run, "--out", run / "masks.png"))  # no epoch yet
    # the folders the run was trained and validated on (inputs.json) are data folders of its figures too
    train, val = tmp_path / "trainset", tmp_path / "valset"
    for d in (train, val):
        d.mkdir()
        shutil.copy(image, d / "0_7.png")
    (run / "inputs.json").write_text(json.dumps({"train_dir": str(train.resolve()), "val_dir": str(val.resolve())}))
    for args, target, words in [
        (("cls", "tsne", run, color_classes, "--out", train / "t.png"), train / "t.png", "would be read as one more"),
        (("cls", "tsne", run / "best.ckpt", color_classes, "--out", val / "0_7.png"), val / "0_7.png", "would replace"),
        (("seg", "progress", run, "--out", val / "0_7.png"), val / "0_7.png", "would replace"),
        (("report", run, "--out", tmp_path / "r.html", "--screenshot", train / "s.png"), train / "s.png",
         "would be read as one more"),
    ]:
        data = train if target.parent == train else val
        assert _one_line(cli(*args)).startswith(f"vislab: error: {target}: lies inside the data folder "
                                                f"{data.resolve()} and {words}"), args
    assert [p.name for p in train.iterdir()] == ["0_7.png"] and (val / "0_7.png").read_bytes() == before


def test_inputs_too_small_for_the_network_are_refused_with_the_smallest_it_takes(cli, color_classes, tmp_path):
    from vislab.models.input_side import smallest_side, takes_side

    # a 3x3 convolution without padding, then two 2x2 pools: side s leaves (s - 2) // 4 pixels,
    # so 6 is the smallest side (by hand: 6 -> 4 -> 2 -> 1, and 5 -> 3 -> 1 -> 0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.MaxPool2d(2),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten())
    assert not takes_side(net, 5) and takes_side(net, 6) and net.training  # its mode is restored
    assert smallest_side(net) == 6 and smallest_side(net, 5) == 6 and smallest_side(net, 40) == 41
    out = tmp_path / "run"
    err = _one_line(cli("cls", "train", color_classes, "--model", "resnet9_xs", "--image-size", 4,
                        "--epochs", 1, "--out", out))
    assert err == "vislab: error: image_size 4: resnet9_xs pools a 4x4 input below one pixel; it takes inputs of at least 8x8"
    assert not out.exists()
    assert cli("cls", "train", color_classes, "--model", "resnet9_xs", "--epochs", 1, "--out", out).code == 0
    err = _one_line(cli("cls", "eval", out, color_classes, "--image-size", 7))
    assert err == "vislab: error: --image-size 7: resnet9_xs pools a 7x7 input below one pixel; it takes inputs of at least 8x8"
    assert cli("cls", "eval", out, color_classes, "--image-size", 8).code == 0


def test_an_image_file_for_a_folder_says_to_put_it_in_one(cli, tmp_path):
    """Predict reads one image file as well as a folder; what needs labels (training, scoring)
    says the image wants a folder; a mask is no image to predict."""
    from conftest import write_png

    img = tmp_path / "one.png"
    write_png(img, np.zeros((32, 32, 3), np.uint8))
    said = f"{img}: is an image file, but a folder of images is needed here (put the image in a folder of its own)"
    from vislab.data.layouts import find_items
    from vislab.data.segmentation import list_unlabelled

    items = find_items(img, labelled=False)  # cls predict's
    assert (items.root, items.files, items.ids, items.labels) == (tmp_path, [img], ["one.png"], None)
    assert list_unlabelled(img) == [img]  # seg predict's
    for read in (lambda: find_items(img, labelled=True), lambda: find_items(img, labelled=False, labels_csv=img)):
        with pytest.raises(VislabError) as err:
            read()
        assert str(err.value) == said
    assert _one_line(cli("seg", "eval", img, tmp_path)) == f"vislab: error: {said}"
    write_png(tmp_path / "0001_mask.png", np.zeros((32, 32, 3), np.uint8))
    assert list_unlabelled(tmp_path / "0001_mask.png") == [tmp_path / "0001_mask.png"]  # an image so named
    write_png(tmp_path / "0001_sat.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(VislabError, match=r"0001_mask.png: is a mask \(\*_mask, beside its image\), not an image to "
                                          r"predict$"):
        list_unlabelled(tmp_path / "0001_mask.png")
    (tmp_path / "0001_sat.png").unlink()
    (tmp_path / "notes.txt").write_text("x")
    for read in (lambda p: find_items(p, labelled=False), list_unlabelled):  # a file of another kind
        with pytest.raises(VislabError) as err:
            read(tmp_path / "notes.txt")
        assert str(err.value) == (f"{tmp_path / 'notes.txt'}: is a file, but neither an image vislab reads "
                                  "(.png, .jpg, .jpeg, .bmp, .webp) nor a folder of them")
    for read in (find_items, list_unlabelled):  # a missing file: not found, and not called a folder
        with pytest.raises(VislabError) as err:
            read(tmp_path / "gone.png", **({"labelled": False} if read is find_items else {}))
        assert str(err.value) == f"{tmp_path / 'gone.png'}: not found"


def test_an_unwritable_output_folder_is_named_before_any_work(cli, tmp_path, monkeypatch):
    """Permission is checked where the output goes (the nearest existing folder) before the inputs
    are read; simulated, as the tests may run as root, whom no permission stops."""
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    ckpt = locked / "best.ckpt"
    ckpt.write_bytes(b"not read: the output's folder is checked first")
    none = tmp_path / "none.ckpt"
    for args in (("cls", "eval", none, tmp_path, "--json", locked / "m.json"),
                 ("cls", "tsne", none, tmp_path, "--out", locked / "deeper" / "t.png"),
                 ("seg", "calibrate", ckpt, tmp_path, "--split", "all")):
        assert _one_line(cli(*args)) == f"vislab: error: {locked}: cannot write here (permission denied)", args
    assert sorted(p.name for p in locked.iterdir()) == ["best.ckpt"]


def test_option_values_are_refused_with_their_flag(cli, tmp_path):
    missing = tmp_path / "no-such-folder"
    out = tmp_path / "run"
    cases = [
        (("seg", "predict", tmp_path / "none.ckpt", missing, out, "--batch-size", "0"), "--batch-size: must be > 0, got 0"),
        (("cls", "train", missing, "--out", out, "--devices", "abc"),
         "--devices: must be auto, a count >= 1, -1 (all) or a list of distinct device ids like 0,1, got 'abc'"),
        (("cls", "train", missing, "--out", out, "--devices", "0,1,0"),
         "--devices: must be auto, a count >= 1, -1 (all) or a list of distinct device ids like 0,1, got '0,1,0'"),
        (("seg", "train", missing, "--out", out, "--snapshot", "0001,0002,0001"),
         "--snapshot: must be a list that names each once, got ('0001', '0002', '0001')"),
        (("cls", "train", missing, "--out", out, "--accelerator", "tpuz"),
         "--accelerator: must be one of auto, cpu, gpu, cuda, mps, tpu, xla, got 'tpuz'"),
        (("cls", "train", missing, "--out", out, "--data", tmp_path),
         "--data: names the course data folder used when no TRAIN_DIR is given; drop one of them"),
        (("seg", "calibrate", tmp_path / "none.ckpt", missing, "--data", tmp_path),
         "--data: names the course data folder used when no PAIRS_DIR is given; drop one of them"),
        (("cls", "train", missing, "--out", out, "--val-labels", tmp_path / "v.csv"),
         "--val-labels: labels a --val-dir; give one, or drop it"),
        (("cls", "tsne", tmp_path / "none.ckpt", missing, "--out", tmp_path / "t.png", "--seed", "-1"),
         "--seed: must be >= 0, got -1"),
        (("summary", "cifar_resnet20", "--num-classes", "0"), "--num-classes: must be >= 1, got 0"),
        (("summary", "cifar_resnet20", "--input", "1", "32", "32"),
         "--input: must be 3 H W with H, W >= 1 (RGB), got 1 32 32"),
        (("seg", "progress", tmp_path, "--out", tmp_path / "m.png", "--epochs", "1,x"),
         "--epochs: '1,x' is not a comma-separated list of epoch numbers"),
        (("seg", "progress", tmp_path, "--out", tmp_path / "m.png", "--epochs", "1,5,1"),
         "--epochs: '1,5,1' lists epoch 1 twice"),
        (("report", tmp_path, "--format", "md", "--out", tmp_path / "r.md", "--screenshot", tmp_path / "r.png"),
         "--screenshot: renders the HTML page; drop it, or write the page as HTML (--out NAME.html)"),
    ]
    for args, line in cases:
        assert _one_line(cli(*args)) == f"vislab: error: {line}", args
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_pick_device_names_the_flag():
    import pytest

    from vislab.errors import VislabError
    from vislab.models.checkpoints import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(VislabError, match=r"--device: 'gpu0' is not a device; use cpu, cuda or cuda:N"):
        pick_device("gpu0")
    with pytest.raises(VislabError, match=r"--device: 'meta': vislab runs on cpu, cuda or mps devices"):
        pick_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(VislabError, match=r"--device: 'cuda:3': this machine has no CUDA GPU"):
            pick_device("cuda:3")
    else:
        with pytest.raises(VislabError, match=r"numbered from 0"):
            pick_device(f"cuda:{torch.cuda.device_count()}")


def test_pick_device_takes_a_ranks_own_gpu(monkeypatch):
    """A command run in one process of a multi-GPU launch picks that process's GPU (LOCAL_RANK),
    not all of them the first; without a rank, "cuda"."""
    from vislab.models.checkpoints import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device(None) == torch.device("cuda")
    for rank, want in (("2", torch.device("cuda", 2)), ("0", torch.device("cuda", 0)), ("7", torch.device("cuda"))):
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert pick_device(None) == want
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == torch.device("cpu")


def test_commands_of_one_run_refuse_a_list_of_runs(cli, tmp_path):
    runs = f"{tmp_path / 'a'},{tmp_path / 'b'}"
    for args, why in [(("cls", "tsne", runs, tmp_path), "a t-SNE shows the second-last layer of one network"),
                      (("seg", "progress", runs), "the masks shown are one run's snapshots"),
                      (("summary", runs), "an architecture table shows one network")]:
        assert _one_line(cli(*args)) == f"vislab: error: {runs}: names several runs, and {why}; give one run"
    err = _one_line(cli("cls", "train", tmp_path, "--teacher", "", "--out", tmp_path / "run"))
    assert err == "vislab: error: --teacher is empty; give a value (see `vislab cls train --help`)"
    err = _one_line(cli("cls", "train", tmp_path, "--teacher", f"{tmp_path / 'a'},", "--out", tmp_path / "run"))
    assert err == f"vislab: error: --teacher: '{tmp_path / 'a'},': an empty name in the comma-separated list of models"
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_recipe_and_names_the_saved_one(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18"}))
    (run / "last.ckpt").write_bytes(b"")  # something to resume (read after the recipe is checked)
    err = _one_line(cli("cls", "train", tmp_path / "none", "--out", run, "--recipe", "cls-fast", "--resume"))
    assert err == (f"vislab: error: {run}: --resume continues the recipe saved in the run folder; drop --recipe (or "
                   f"start a new run from what it learnt, with those settings: --recipe cls-fast --weights {run} "
                   "--out NEW_FOLDER)")
    err = _one_line(cli("cls", "train", tmp_path / "none", "--out", run, "--resume"))
    assert err == f"vislab: error: {run / 'recipe.yaml'}: is a seg recipe; `vislab cls train` needs a cls recipe"
    # a new run: the recipe's task is checked before its model (a cls model in a seg recipe)
    r = tmp_path / "seg.yaml"
    r.write_text(yaml.safe_dump({"task": "seg", "model": "resnet9_xs"}))
    err = _one_line(cli("cls", "train", tmp_path / "none", "--out", tmp_path / "new", "--recipe", r))
    assert err == f"vislab: error: {r}: is a seg recipe; `vislab cls train` needs a cls recipe"


def test_a_network_the_recipe_cannot_build_leaves_no_run_folder(cli, color_classes, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "freeze": ["nosuch.module"]}))
    out = tmp_path / "run"
    err = _one_line(cli("cls", "train", color_classes, "--recipe", r, "--out", out))
    assert "freeze: cifar_resnet20 has no submodule 'nosuch.module'" in err and not out.exists()
    err = _one_line(cli("cls", "train", color_classes, "--recipe", r, "--out", out, "--strategy", "bogus"))
    assert "cannot train with accelerator 'auto', devices 'auto', strategy 'bogus' here:" in err and not out.exists()


def test_ensemble_members_are_files_not_spellings(tmp_path):
    import pytest

    from vislab.errors import VislabError
    from vislab.models.ensemble import members

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.ckpt").write_bytes(b"x")
    (run / "last.ckpt").write_bytes(b"x")
    assert members(f"{run},{run / 'last.ckpt'}") == [str(run), str(run / "last.ckpt")]  # two checkpoints
    with pytest.raises(VislabError, match="are the same model"):
        members(f"{run},{run / 'best.ckpt'}")
    with pytest.raises(VislabError, match="are the same model"):
        members(f"{run / 'best.ckpt'},{tmp_path}/run/../run/best.ckpt")


def test_a_file_that_is_no_checkpoint_is_named_where_a_model_is_read(cli, tmp_path):
    """`summary` of a path and `--against` read a model's metadata first: a text file there is
    one line naming it (both were internal errors)."""
    note = tmp_path / "notes.txt"
    note.write_text("not a model\n")
    assert _one_line(cli("summary", note)) == (
        f"vislab: error: {note}: not a readable checkpoint (not a PyTorch file, or a truncated one: RuntimeError); "
        "`summary` takes a registry name, a run folder or a checkpoint")
    for task, cmd in (("cls", "eval"), ("seg", "score")):
        line = _one_line(cli(task, cmd, note, tmp_path, "--against", note))
        assert line.startswith(f"vislab: error: {note}: not a readable checkpoint") and \
            line.endswith("--against compares two trained models"), line
    plain = tmp_path / "plain.pt"  # a torch file, but no vislab checkpoint
    torch.save({"w": torch.zeros(2)}, plain)
    assert _one_line(cli("cls", "eval", plain, tmp_path, "--against", plain)) == (
        f"vislab: error: {plain}: not a vislab checkpoint (no vislab metadata: a plain state_dict?); --against "
        "compares two trained models")


def test_broken_run_records_are_named_by_report(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("task: [\n")
    assert _one_line(cli("report", run, "--out", tmp_path / "r.html")) == \
        f"vislab: error: {run / 'recipe.yaml'}: not valid YAML (line 2, column 1: expected the node content, but found '<stream end>')"
    (run / "recipe.yaml").write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20"}))
    (run / "results.json").write_text("{not json")
    assert _one_line(cli("report", run, "--out", tmp_path / "r.html")) == \
        f"vislab: error: {run / 'results.json'}: not valid JSON"
    (run / "results.json").write_text("{}")
    hist = run / "history.csv"
    for text, words in (("epoch,holdout_acc\ngarbage,0.5\n", "line 2: epoch 'garbage' where epoch 1 belongs"),
                        ("epoch,holdout_acc\n1,0.5\n2,x\n", "line 3: holdout_acc 'x' is not a number"),
                        ("epoch,train_acc,train_loss,lr,garbage,\x00\x01\n1,2,3,4\n",
                         "line 1 is not the header vislab writes (epoch, then metric names)"),
                        ("epoch,train_acc,train_loss\n1,0.5\n", "line 2 has fewer cells than the header"),
                        ("epoch,train_acc\n1,0.5,7\n", "line 2 has more cells than the header"),
                        ("epoch,train_acc\n1,0.5\n3,0.6\n", "line 3: epoch '3' where epoch 2 belongs")):
        hist.write_text(text)
        assert _one_line(cli("report", run, "--out", tmp_path / "r.html")).startswith(f"vislab: error: {hist}: {words}")
        assert not (tmp_path / "r.html").exists()
    hist.write_text("epoch,train_acc,holdout_acc\n1,0.5,\n2,0.6,0.55\n")  # a cell an epoch did not log is empty
    assert cli("report", run, "--out", tmp_path / "r.html").code == 0
    (tmp_path / "r.html").unlink()
    # the predictions the report takes its confused pairs from: the file and its line are named
    (run / "history.csv").unlink()
    val = {"accuracy": 0.5, "per_class": {"0": 1.0, "1": 0.0}, "confusion": [[1, 0], [1, 0]]}
    (run / "results.json").write_text(json.dumps({"val": val, "val_dir": str(tmp_path)}))
    preds = run / "val_predictions.csv"
    for text, words in (("image_id,label,pred\na.png,0,0\nb.png,1,cat\n", "line 3: pred 'cat' is not a class id 0-1"),
                        ("image_id,label,pred\na.png,2,0\n", "line 2: label '2' is not a class id 0-1"),
                        ("image_id,label\na.png,0\n", "line 2: no pred (its columns: image_id,label,pred)")):
        preds.write_text(text)
        assert _one_line(cli("report", run, "--out", tmp_path / "r.html")) == f"vislab: error: {preds}: {words}"
    preds.write_bytes(b"image_id,label,pred\n\xff\xfe,0,0\n")
    assert _one_line(cli("report", run, "--out", tmp_path / "r.html")).startswith(
        f"vislab: error: {preds}: not a readable CSV (UnicodeDecodeError")
    assert not (tmp_path / "r.html").exists()
    # whole, but one image gone from the validation folder: said, and the page is written without it
    preds.write_text("image_id,label,pred\na.png,0,0\nb.png,1,0\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    res = cli("report", run, "--out", tmp_path / "r.html")
    assert res.code == 0 and (tmp_path / "r.html").is_file(), res.err
    assert (f"{run}: images of val_predictions.csv not found under {tmp_path} (e.g. b.png: 1 of those the confused "
            "pairs looked at)") in " ".join(res.err.split())
    assert "Most confused pairs" not in (tmp_path / "r.html").read_text()


def test_a_precision_lightning_changes_is_said_and_recorded(cli, color_classes, tmp_path, recwarn):
    import pytest

    if torch.cuda.is_available():
        pytest.skip("float16 autocast runs as asked on a GPU")
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "batch_size": 32,
                                 "holdout": 0.0}))
    res = cli("cls", "train", color_classes, "--recipe", r, "--out", tmp_path / "run", "--precision", "16-mixed",
              "--limit-batches", "1")
    assert res.code == 0, res.err
    line = "precision 16-mixed runs as bf16-mixed: float16 autocast needs a GPU"
    assert line in " ".join(res.err.split()) and line in (tmp_path / "run" / "changes.txt").read_text()
    # said once, in vislab's words: Lightning's own warning of the same change is not repeated
    assert not [w for w in recwarn if "AMP with fp16 is not supported" in str(w.message)]


def test_demo_names_its_flag_and_its_folder(cli, tmp_path):
    data = tmp_path / "hw1_data"
    data.mkdir()
    assert _one_line(cli("demo", "--data", data, "--epochs", "0", "--out", tmp_path / "d")) == \
        "vislab: error: --epochs: must be an integer >= 1, got 0"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "last.ckpt").write_bytes(b"x")
    assert _one_line(cli("demo", "--data", data, "--out", tmp_path / "d")) == \
        f"vislab: error: {tmp_path / 'd'}: holds a previous run; the demo trains into a fresh --out"


def test_settings_a_run_would_ignore_or_fail_on_are_refused_up_front(cli, color_classes, tmp_path):
    """Each of these used to train silently without the setting, or to fail mid-run with an
    internal error: now one line, and no run folder."""
    out = tmp_path / "run"

    def recipe(**fields) -> str:
        p = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
        p.write_text(yaml.safe_dump({"task": "cls", "model": "simple_cnn", "epochs": 1, "batch_size": 8, **fields}))
        return str(p)

    cases = [
        ((recipe(), "--distill", "0.5"), "--distill: weights the teacher's soft targets, and there is no teacher"),
        ((recipe(), "--model", "smp:unet:resnet18"), "--model: smp:unet:resnet18 is a seg model; a cls run needs a cls model"),
        ((recipe(optimizer="adamw", momentum=0.1),), "field momentum is SGD's; adamw has its own betas"),
        ((recipe(extra={"foo": 1}),), "field extra is read by nothing in vislab, so foo would be ignored"),
        ((recipe(mean=[0.5, 0.5]),), "recipe field mean must be three numbers in [0, 1]"),
        ((recipe(std=[0, 0, 0]),), "recipe field std must be three numbers in (0, 1]"),
        ((recipe(pad=32),), "pad 32: reflect padding must be smaller than the stored images' side (32x32, width x height)"),
        ((recipe(pad=4), "--image-size", "2"),
         "--image-size: image_size 2 is too small for the recipe's pad 4: the random crop's reflect padding must be smaller"),
        ((recipe(freeze=["features", "hidden", "fc"]),), "cover every parameter of simple_cnn; nothing would train"),
    ]
    for args, message in cases:
        res = cli("cls", "train", color_classes, "--recipe", *args, "--out", out)
        assert message in " ".join(_one_line(res).split()), (args, res.err)
        assert not out.exists(), args
    # sizes are width x height, as in the segmentation messages: images 48 wide and 24 high
    wide = tmp_path / "wide"
    for c in ("a", "b"):
        (wide / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (48, 24), (90 * i, 40, 200 if c == "a" else 0)).save(wide / c / f"{i}.png")
    Image.new("RGB", (30, 30)).save(wide / "a" / "square.png")
    res = cli("cls", "train", wide, "--recipe", recipe(pad=24), "--out", out)
    said = " ".join(res.err.split())
    assert f"{wide}: 1 of 7 images are not 48x24 (width x height)" in said
    assert "pad 24: reflect padding must be smaller than the stored images' side (48x24, width x height)" in said


def test_a_corrupt_last_checkpoint_is_named_before_a_resume(cli, color_classes, tmp_path):
    run = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "cls", "model": "simple_cnn", "epochs": 1, "batch_size": 16,
                                      "lr": 0.05, "holdout": 0.2}))
    assert cli("cls", "train", color_classes, "--recipe", recipe, "--out", run).code == 0
    whole = (run / "last.ckpt").read_bytes()
    (run / "last.ckpt").write_bytes(whole[:1000])
    events = sorted((run / "tensorboard").rglob("*"))
    err = _one_line(cli("cls", "train", color_classes, "--out", run, "--resume"))
    assert err.startswith(f"vislab: error: {run / 'last.ckpt'}: not a readable checkpoint (not a PyTorch file, "
                          "or a truncated one"), err
    assert err.endswith("--resume continues from it")
    assert sorted((run / "tensorboard").rglob("*")) == events  # nothing started


def test_yaml_with_a_repeated_key_or_nothing_in_it_is_refused(cli, tmp_path):
    """PyYAML keeps the last of a repeated key; an empty file would train the defaults."""
    from vislab.data.seg_classes import parse_classes

    twice = tmp_path / "twice.yaml"
    twice.write_text("task: cls\nmodel: simple_cnn\nmixup: 0.2\nmixup: 0\n")
    err = _one_line(cli("cls", "train", tmp_path, "--recipe", twice, "--out", tmp_path / "run"))
    assert err == f"vislab: error: {twice}: not valid YAML (line 4, column 1: key 'mixup' appears twice)"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    err = _one_line(cli("cls", "train", tmp_path, "--recipe", empty, "--out", tmp_path / "run"))
    assert err.startswith(f"vislab: error: {empty}: empty recipe") and not (tmp_path / "run").exists()
    with pytest.raises(VislabError, match=r"key \(0, 0, 0\) appears twice"):  # a colour as a key, twice
        parse_classes("classes:\n  a: [1, 2, 3]\nextra_colors:\n  [0, 0, 0]: a\n  [0, 0, 0]: ignore\n", tmp_path / "classes.yaml")


def test_images_of_more_than_8_bits_are_scaled_or_refused_never_clipped(tmp_path):
    """Pillow's RGB conversion of a 16-bit grey PNG clips every value above 255 to white. A
    classification folder reads it scaled to 8 bits (value / 257) and says so; the segmentation
    tiles' reader (read_rgb) and a float image refuse it by name."""
    from PIL import Image

    from vislab.data.images import SIXTEEN_BITS, decode_fitted, read_rgb

    path = tmp_path / "deep.png"
    values = np.array([[0, 257, 33000, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(values).save(path)
    rgb, key = decode_fitted(path, (4, 4))
    assert key == (4, 4, SIXTEEN_BITS)
    assert rgb[..., 0].tolist() == [[0, 1, 128, 255]] * 4 and (rgb[..., 0] == rgb[..., 2]).all()  # 33000 / 257 = 128.4
    with pytest.raises(VislabError, match="vislab reads 8 bits per channel"):
        read_rgb(path)
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(VislabError, match="F image of more than 8 bits"):
        decode_fitted(tmp_path / "float.tif", (4, 4))
    # 32-bit integers beyond 16 bits would be clipped: refused
    Image.fromarray(np.full((4, 4), 200_000, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(VislabError, match="I image with values outside 0..65535: not 16-bit grey"):
        decode_fitted(tmp_path / "wide.tif", (4, 4))
    # a truncated 16-bit PNG breaks while it is read: named, as an 8-bit one is
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:2000])
    with pytest.raises(VislabError, match="cut.png: not a decodable image"):
        decode_fitted(tmp_path / "cut.png", (64, 64))


def test_exif_orientation_is_read_from_headers_and_applied_once(tmp_path):
    """A 16-bit grey image keeps its orientation through the conversion to 8 bits; an orientation
    value outside 2..8 (0 is written by some software) turns nothing and is not counted."""
    from PIL import Image

    from vislab.data.images import SIXTEEN_BITS, UPRIGHT, decode_fitted, shown_size

    def exif(value: int) -> bytes:
        e = Image.Exif()
        e[0x0112] = value
        return e.tobytes()

    values = np.zeros((10, 20), np.uint16)  # stored 20 wide, 10 high; the left column bright
    values[:, 0] = 65535
    Image.fromarray(values).save(tmp_path / "deep.png", exif=exif(6))
    assert shown_size(tmp_path / "deep.png") == (20, 10)
    rgb, key = decode_fitted(tmp_path / "deep.png", (20, 10))
    assert key == (20, 10, SIXTEEN_BITS, UPRIGHT)
    assert rgb[0, :, 0].tolist() == [255] * 10 and rgb[1:, :, 0].max() == 0  # turned clockwise: the left column on top
    for value in (0, 9, 1):
        Image.new("RGB", (20, 10)).save(tmp_path / f"o{value}.jpg", exif=exif(value))
        assert shown_size(tmp_path / f"o{value}.jpg") == (10, 20)
        assert decode_fitted(tmp_path / f"o{value}.jpg", (10, 20))[1] == (10, 20)


def _png_16_bit_colour(path, values: np.ndarray, colour_type: int = 2) -> None:
    """A 16-bit RGB PNG written by hand (Pillow writes none): signature, IHDR (bit depth 16, colour
    type 2; 4 for grey + alpha), one zlib IDAT of filter-0 rows of big-endian samples, IEND."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_colour_and_animations_are_read_and_said(tmp_path):
    """A 16-bit colour PNG is read by the high byte of each value (Pillow's rule, checked against
    values >> 8) and an animation by its first frame; decode_fitted says both, so a folder can."""
    from PIL import Image

    from vislab.data.images import FRAMES, SIXTEEN_BIT_COLOUR, decode_fitted

    values = np.random.default_rng(0).integers(0, 65536, (4, 6, 3)).astype(np.uint16)
    _png_16_bit_colour(tmp_path / "deep.png", values)
    rgb, key = decode_fitted(tmp_path / "deep.png", (4, 6))
    assert key == (4, 6, SIXTEEN_BIT_COLOUR) and np.array_equal(rgb, (values >> 8).astype(np.uint8))
    grey = np.stack([values[..., 0], np.full((4, 6), 65535, np.uint16)], -1)  # 16-bit grey + opaque alpha: not colour
    _png_16_bit_colour(tmp_path / "la.png", grey, colour_type=4)
    assert SIXTEEN_BIT_COLOUR not in decode_fitted(tmp_path / "la.png", (4, 6))[1]
    frames = [Image.new("RGB", (6, 4), (10 * i, 20, 30)) for i in range(1, 4)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    rgb, key = decode_fitted(tmp_path / "anim.png", (4, 6))
    assert key == (4, 6, FRAMES) and (rgb[..., 0] == 10).all()
    Image.new("RGB", (6, 4), (1, 2, 3)).save(tmp_path / "plain.png")
    assert decode_fitted(tmp_path / "plain.png", (4, 6))[1] == (4, 6)


def test_a_classification_folder_shows_photos_upright_and_reads_16_bit_grey(cli, tmp_path):
    """A photo whose EXIF orientation turns it (a phone held upright) is decoded as a viewer shows
    it, and sized so; a 16-bit grey image is read, not refused; the console counts both."""
    from PIL import Image

    from vislab.data.classification import load_folder

    d = tmp_path / "photos"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 24), (200 if c == "a" else 10, 60 * i, 0)).save(d / c / f"{i}.png")
    # stored 24 wide and 16 high, left half red, with orientation 6 (turn 90 degrees clockwise to show)
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:, :12, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(d / "a" / "phone.jpg", exif=exif.tobytes(), quality=100)
    Image.fromarray(np.full((24, 16), 40000, dtype=np.uint16)).save(d / "b" / "scan.png")
    _png_16_bit_colour(d / "b" / "deep.png", np.full((24, 16, 3), 40000, np.uint16))
    data = load_folder(d, labelled=True, use_cache=False)
    assert tuple(data.images.shape[-2:]) == (24, 16)  # every image 16 wide, 24 high as shown: none resized
    phone = data.images[data.files.index("a/phone.jpg")]
    # turned clockwise, the stored left half (red) is the top half as shown
    assert phone[0, :10].float().mean() > 200 and phone[0, 14:].float().mean() < 50
    scan = data.images[data.files.index("b/scan.png")]
    assert (scan == round(40000 / 257)).all()
    res = cli("cls", "train", d, "--model", "resnet9_xs", "--epochs", 1, "--limit-batches", 1, "--out", tmp_path / "run")
    said = " ".join(res.err.split())
    assert res.code == 0, res.err
    assert f"{d}: 1 of 7 images turned upright by their EXIF orientation" in said
    assert f"{d}: 1 of 7 images are 16-bit grey; read as 8 bits (value / 257)" in said
    assert f"{d}: 1 of 7 images are 16-bit colour; read as 8 bits (the high byte of each value)" in said
    assert "are not 16x24" not in said


def test_a_folder_given_for_a_labels_or_classes_file_is_called_a_folder(tmp_path):
    from conftest import write_png

    from vislab.data.layouts import find_items
    from vislab.data.seg_classes import load_classes

    flat = tmp_path / "flat"
    flat.mkdir()
    write_png(flat / "a.png", np.zeros((4, 4, 3), np.uint8))
    cases = [(lambda: find_items(flat, labelled=True, labels_csv=flat), f"{flat}: is a folder, but a labels CSV file is needed"),
             (lambda: find_items(flat, labelled=True, labels_csv=tmp_path / "x.csv"), f"{tmp_path / 'x.csv'}: labels CSV file not found"),
             (lambda: load_classes(flat), f"{flat}: is a folder, but a classes file (classes.yaml) is needed"),
             (lambda: load_classes(tmp_path / "c.yaml"), f"{tmp_path / 'c.yaml'}: classes file not found")]
    for read, said in cases:
        with pytest.raises(VislabError) as err:
            read()
        assert str(err.value) == said


def test_transparent_images_are_read_as_stored_and_counted(capsys, tmp_path):
    """The alpha of an image with transparent pixels is dropped (the colour stored under them is
    read, as torchvision's ImageFolder reads it) and the console counts such images; an alpha
    channel that is opaque everywhere, or none, is not counted."""
    from PIL import Image

    from vislab.data.classification import load_folder

    d = tmp_path / "data"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True)
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(d / "a" / "clear.png")  # transparent everywhere
    Image.new("RGBA", (8, 8), (40, 50, 60, 255)).save(d / "a" / "opaque.png")  # an alpha, but opaque
    Image.new("LA", (8, 8), (70, 128)).save(d / "b" / "half.png")  # grey, half transparent
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 200, 100, 0] + [0] * 762)
    pal.save(d / "b" / "keyed.png", transparency=1)  # a palette whose colour 1 is transparent
    Image.new("RGB", (8, 8), (1, 2, 3)).save(d / "b" / "plain.png")
    capsys.readouterr()
    data = load_folder(d, labelled=True, use_cache=False)
    said = " ".join(capsys.readouterr().err.split())
    assert f"{d}: 3 of 5 images have transparent pixels; their alpha is dropped" in said
    colour = {f: data.images[i][:, 0, 0].tolist() for i, f in enumerate(data.files)}
    assert colour == {"a/clear.png": [10, 20, 30], "a/opaque.png": [40, 50, 60], "b/half.png": [70, 70, 70],
                      "b/keyed.png": [200, 100, 0], "b/plain.png": [1, 2, 3]}


def test_broken_snapshots_and_a_missing_run_are_named_by_progress(cli, tmp_path):
    """A snapshot cut short or emptied is named (it was an internal error), as is a missing run."""
    from vislab.data.palette import PALETTE

    run = tmp_path / "run"
    (run / "snapshots" / "epoch_001").mkdir(parents=True)
    labels = np.random.default_rng(0).integers(0, 6, (64, 64))
    Image.fromarray(PALETTE.numpy()[labels]).save(run / "snapshots" / "0001_mask.png")
    Image.fromarray(PALETTE.numpy()[labels]).save(run / "snapshots" / "epoch_001" / "0001.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(run / "snapshots" / "0001_sat.jpg")
    assert cli("seg", "progress", run, "--out", tmp_path / "ok.png").code == 0
    (run / "snapshots" / "epoch_002").mkdir()  # an epoch whose file is gone: an empty cell, said
    res = cli("seg", "progress", run, "--out", tmp_path / "ok.png", "--epochs", "1,2")
    assert res.code == 0 and "1 snapshot file missing, shown as empty cells (e.g. 0001.png of epoch_002)" in \
        " ".join(res.err.split())
    (run / "snapshots" / "epoch_002").rmdir()
    pred = run / "snapshots" / "epoch_001" / "0001.png"
    pred.write_bytes(pred.read_bytes()[:100])
    line = _one_line(cli("seg", "progress", run, "--out", tmp_path / "m.png"))
    assert str(pred) in line and "not a decodable image" in line
    (run / "snapshots" / "0001_mask.png").write_bytes(b"")
    line = _one_line(cli("seg", "progress", run, "--out", tmp_path / "m.png", "--epochs", "1"))
    assert str(run / "snapshots" / "0001_mask.png") in line or str(pred) in line
    line = _one_line(cli("seg", "progress", tmp_path / "none", "--out", tmp_path / "m.png"))
    assert line.endswith(f"{tmp_path / 'none'}: no such run folder")
    empty = tmp_path / "empty"
    (empty / "snapshots" / "epoch_001").mkdir(parents=True)
    line = _one_line(cli("seg", "progress", empty, "--out", tmp_path / "m.png"))  # was an internal error
    assert line.endswith(f"{empty / 'snapshots'}: holds no snapshot images (STEM_sat.*): the run saved no snapshot pairs")


def test_progress_titles_say_the_epochs_shown():
    from vislab.viz.progress import pick_stages, stage_words

    assert stage_words(pick_stages([1, 2, 3, 4, 5]), chosen=False) == "early, middle, final (epochs 1, 3, 5)"
    assert stage_words(pick_stages([1]), chosen=False) == "epoch 1 (only 1 saved)"
    assert stage_words(pick_stages([3, 7]), chosen=False) == "epochs 3, 7 (only 2 saved)"
    assert stage_words([2, 9], chosen=True) == "epochs 2, 9"


def test_summary_refuses_an_input_the_network_pools_away(cli):
    line = _one_line(cli("summary", "resnet9_xs", "--input", "3", "4", "4"))
    assert "--input 4: resnet9_xs pools a 4x4 input below one pixel; it takes inputs of at least 8x8" in line
    assert cli("summary", "resnet9_xs", "--input", "3", "8", "8").code == 0


def test_a_recipe_that_is_not_utf8_and_an_absent_accelerator_are_one_line(cli, color_classes, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: cls\nmodel: resnet9_xs\n", encoding="utf-16")
    line = _one_line(cli("cls", "train", color_classes, "--recipe", recipe, "--out", tmp_path / "a"))
    assert line.endswith(f"{recipe}: not UTF-8 text (save the recipe as UTF-8)")
    line = _one_line(cli("cls", "train", color_classes, "--model", "resnet9_xs", "--accelerator", "tpu",
                         "--out", tmp_path / "b"))
    assert "a package it needs is missing" in line and "accelerator 'tpu'" in line and not (tmp_path / "b").exists()


def test_a_run_goes_into_its_own_folder_only(cli, color_classes, tmp_path):
    """Not into the data it trains on (its files would become data), nor over a folder of files
    that are no run's (results.json, metrics.csv would be replaced or appended to)."""
    line = _one_line(cli("cls", "train", color_classes, "--model", "resnet9_xs", "--out", color_classes / "run"))
    assert f"lies inside the data folder {color_classes.resolve()}" in line
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text("{}")
    line = _one_line(cli("cls", "train", color_classes, "--model", "resnet9_xs", "--out", mine))
    assert "holds results.json but no recipe.yaml" in line and (mine / "results.json").read_text() == "{}"
    logged = tmp_path / "logged"  # a folder made for the run, its log already there (`| tee logged/train.log`)
    logged.mkdir()
    (logged / "train.log").write_text("started\n")
    assert cli("cls", "train", color_classes, "--model", "resnet9_xs", "--epochs", "1", "--out", logged).code == 0
    assert (logged / "train.log").read_text() == "started\n" and (logged / "recipe.yaml").is_file()
    assert not (color_classes / "run").exists()
    runs = tmp_path / "runs"  # the folder of the runs: a run there would hide them from `vislab runs` and `report`
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "recipe.yaml").write_text("task: cls\n")
    line = _one_line(cli("cls", "train", color_classes, "--model", "resnet9_xs", "--out", runs))
    assert line == (f"vislab: error: {runs}: holds 1 run folder(s) (e.g. a/): a run needs a folder of its own; "
                    f"give --out {runs / 'NAME'}")
    assert sorted(p.name for p in runs.iterdir()) == ["a"]


def test_outputs_never_replace_a_runs_validation_predictions(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("task: cls\n")
    (run / "val_predictions.csv").write_text("image_id,label,pred\n")
    imgs = tmp_path / "imgs"  # beside the run: an output in the images' folder is refused for that first
    for cmd in (("cls", "predict", tmp_path / "ckpt", imgs, run / "val_predictions.csv"),
                ("cls", "tsne", tmp_path / "ckpt", imgs, "--out", run / "val_predictions.png")):
        line = _one_line(cli(*cmd))
        assert "val_predictions.csv" in line
    assert (run / "val_predictions.csv").read_text() == "image_id,label,pred\n"


def test_a_path_with_a_comma_that_exists_is_one_model(tmp_path):
    from vislab.models.ensemble import members

    odd = tmp_path / "x,y"
    odd.mkdir()
    assert members(str(odd)) == [str(odd)]
    assert members(f"{tmp_path / 'a'},{tmp_path / 'b'}") == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_a_truncated_jpeg_header_is_called_undecodable(tmp_path):
    """Pillow's decoding errors are OSErrors without an errno: not "cannot read file (OSError)"."""
    from vislab.data.images import image_size

    f = tmp_path / "0002_sat.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(f)
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(VislabError, match="0002_sat.jpg: not a decodable image"):
        image_size(f)


def test_seg_eval_with_its_folders_swapped_is_refused(cli, tmp_path):
    """A data folder given as the predictions (xxxx_sat.jpg beside xxxx_mask.png) would have its
    ground truth scored as predictions: refused, naming the folder."""
    from vislab.data.palette import PALETTE

    data, pred = tmp_path / "val", tmp_path / "pred"
    data.mkdir()
    pred.mkdir()
    labels = np.random.default_rng(0).integers(0, 6, (512, 512))
    Image.fromarray(PALETTE.numpy()[labels]).save(data / "0000_mask.png")
    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(data / "0000_sat.jpg")
    Image.fromarray(PALETTE.numpy()[labels]).save(pred / "0000.png")
    assert cli("seg", "eval", pred, data).code == 0
    line = _one_line(cli("seg", "eval", data, pred))
    assert line.startswith(f"vislab: error: {data}: holds satellite images (e.g. 0000_sat.jpg)")
    # a prediction of another size than its ground truth is named, with the file it must match
    Image.fromarray(PALETTE.numpy()[labels[:256, :128]]).save(pred / "0000.png")
    assert _one_line(cli("seg", "eval", pred, data)) == (f"vislab: error: {pred / '0000.png'}: mask is 128x256, "
                                                         "expected 512x512 like its ground truth 0000_mask.png")


def test_images_where_a_model_goes_are_named_as_such(cli, color_classes, tmp_path):
    """`cls predict IMAGES RUN OUT`: the images folder (or one image, or a tree of class folders) in
    the model's place is named as such."""
    res = cli("cls", "predict", color_classes, tmp_path / "run", tmp_path / "p.csv")
    assert _one_line(res) == (f"vislab: error: {color_classes}: is not a run folder (it holds no recipe.yaml, best.ckpt "
                              "or last.ckpt) (it holds images: a model's run folder or checkpoint goes here)")
    res = cli("seg", "score", color_classes / "0_0.png", color_classes)
    assert _one_line(res) == (f"vislab: error: {color_classes / '0_0.png'}: is an image, not a checkpoint (a model's run "
                              "folder or checkpoint goes here)")
    assert not (tmp_path / "p.csv").exists()
    tree = tmp_path / "tree"  # class folders: their images are seen too
    (tree / "cat").mkdir(parents=True)
    shutil.copy(color_classes / "0_0.png", tree / "cat" / "a.png")
    assert _one_line(cli("cls", "eval", tree, color_classes)).endswith("(it holds images: a model's run folder or "
                                                                       "checkpoint goes here)")
