"""Validation files that are copies of training files: found by their bytes (not names), and said
by a training run as a warning in its changes."""

from __future__ import annotations

import shutil

from conftest import write_color_classes

from vislab.data.overlap import copies, copies_line


def test_copies_are_found_by_bytes_not_by_names_or_sizes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x.png").write_bytes(b"12345")
    (a / "y.png").write_bytes(b"abcde")  # the size of a training file, other bytes
    (a / "z.png").write_bytes(b"unique")
    (b / "renamed.png").write_bytes(b"12345")
    (b / "other.png").write_bytes(b"54321")
    (b / "z.png").write_bytes(b"not z")  # the same name, other bytes
    ours, theirs = sorted(a.iterdir()), sorted(b.iterdir())
    assert copies(ours, theirs) == [(a / "x.png", b / "renamed.png")]
    assert copies(ours, ours) == [(f, f) for f in ours]  # one folder given twice: every file
    assert copies([], theirs) == [] and copies(ours, []) == []
    line = copies_line(ours, theirs, what="images")
    assert line == (f"warning: 1 of 3 validation images are copies (the same bytes) of training files "
                    f"(e.g. {a / 'x.png'} = {b / 'renamed.png'}): the validation score counts images the model "
                    "trained on")
    assert copies_line([a / "z.png"], theirs, what="images") is None
    # the very files (--val-dir names the training folder): said as such, not as copies of themselves
    assert copies_line(ours, ours, what="images") == (
        f"warning: --val-dir reads 3 of the training images themselves (e.g. {a / 'x.png'}): the validation score "
        "counts images the model trained on; pass a folder of other images")
    # files of one size beyond the first block: alike in it, or not, and copies or not
    big = bytes(range(256)) * 400  # 100 KiB
    (a / "big1.bmp").write_bytes(big)
    (a / "big2.bmp").write_bytes(big[:-1] + b"x")  # the same first 64 KiB, another end
    (b / "big3.bmp").write_bytes(big)
    (b / "big4.bmp").write_bytes(b"y" + big[1:])
    assert copies([a / "big1.bmp", a / "big2.bmp"], [b / "big3.bmp", b / "big4.bmp"]) == [(a / "big1.bmp", b / "big3.bmp")]


def test_a_training_run_says_validation_images_copied_from_training(cli, tmp_path):
    train = write_color_classes(tmp_path / "train", per_class=8)
    val = tmp_path / "val"
    val.mkdir()
    for c in range(3):
        shutil.copy(train / f"{c}_0.png", val / f"{c}_100.png")  # copied, and renamed as course names are
    shutil.copy(train / "1_1.png", val / "1_101.png")
    (val / "2_102.png").write_bytes((train / "2_2.png").read_bytes()[:-1] + b"\x00")  # not a copy: said nowhere
    res = cli("cls", "train", train, "--model", "resnet9_xs", "--epochs", 1, "--limit-batches", 1,
              "--val-dir", val, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    said = " ".join(res.err.split())
    want = (f"warning: 4 of 5 validation images are copies (the same bytes) of training files (e.g. "
            f"{val.resolve() / '0_100.png'} = {train.resolve() / '0_0.png'})")
    assert want in (tmp_path / "run" / "changes.txt").read_text()
    assert "warning: 4 of 5 validation images are copies (the same bytes) of training files" in said


def test_a_segmentation_run_says_validation_pairs_copied_from_training(cli, tmp_path):
    import yaml

    from test_own_seg_data import make_index_set

    train = make_index_set(tmp_path / "train", 6)
    val = make_index_set(tmp_path / "val", 2, seed=1)
    for sub, suffix in (("images", "jpg"), ("masks", "png")):  # a training pair copied in under another stem
        shutil.copy(train / sub / f"t03.{suffix}", val / sub / f"t01.{suffix}")
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2,
                                 "holdout": 0.34}))
    res = cli("seg", "train", train, "--recipe", r, "--val-dir", val, "--out", tmp_path / "run", "--limit-batches", 1,
              "--snapshot", "")
    assert res.code == 0, res.err
    want = (f"warning: 1 of 2 validation images are copies (the same bytes) of training files (e.g. "
            f"{val / 'images' / 't01.jpg'} = {train / 'images' / 't03.jpg'})")
    assert want in (tmp_path / "run" / "changes.txt").read_text()
    assert "warning: 1 of 2 validation images are copies (the same bytes) of training files" in " ".join(res.err.split())
