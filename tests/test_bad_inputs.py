"""Bad inputs found by probing the command line: each gets one line naming the file (or flag) and
the problem, before any data is decoded or a run folder is written."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from PIL import Image


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
    assert f"{tmp_path / 'tree'}: all 4 images are of one class (cat)" in err
    assert not (out / "last.ckpt").exists()


def test_model_and_weights_are_checked_before_the_data(cli, tmp_path):
    missing = tmp_path / "no-such-folder"  # never read: the model/weights checks come first
    out = tmp_path / "run"
    err = _one_line(cli("cls", "train", missing, "--recipe", "cls-fast", "--model", "resnet9_xz", "--out", out))
    assert err.startswith("vislab: error: --model: unknown model 'resnet9_xz' (closest: resnet9_xs")
    err = _one_line(cli("cls", "train", missing, "--recipe", "cls-fast", "--weights", tmp_path / "w.pt", "--out", out))
    assert f"{tmp_path / 'w.pt'}: weights file not found (set by --weights)" in err
    assert not out.exists()


def test_foreign_state_dict_is_refused_through_the_cli(cli, color_classes, tmp_path):
    from vislab.models import build_model

    torch.save(build_model("cifar_resnet20", num_classes=3).state_dict(), tmp_path / "other.pt")
    err = _one_line(cli("cls", "train", color_classes, "--recipe", "cls-fast", "--weights", tmp_path / "other.pt",
                        "--epochs", 1, "--out", tmp_path / "run"))
    assert "other.pt: only " in err and "weight tensors are in this file" in err


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
