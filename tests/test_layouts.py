"""Classification layouts (course names, ImageFolder trees, flat folder + labels CSV), the size
rule for folders of mixed sizes and formats, and the memory-mapped decode cache."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.data.classification import image_stats, load_folder
from vislab.data.images import fitted_size
from vislab.data.layouts import find_items, thin_classes
from vislab.errors import VislabError

from conftest import write_png


def _img(path: Path, value: int = 0, hw: tuple[int, int] = (32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, np.full((*hw, 3), value, np.uint8))
    return path


def test_imagefolder_tree_matches_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = tmp_path / "tree"
    for cls, n in (("zebra", 2), ("cat", 3), ("Dog", 1)):
        for i in range(n):
            _img(root / cls / f"img{i}.png", i)
    _img(root / "cat" / "deeper" / "x.png")  # nested folders belong to their class, as in torchvision
    _img(root / ".ipynb_checkpoints" / "junk.png")  # hidden folders are not classes
    _img(root / "__MACOSX" / "cat" / "._img0.png")  # nor what a macOS zip leaves beside the data
    _img(root / "zebra" / "__MACOSX" / "img9.png")  # inside a class either
    items = find_items(root, labelled=True)
    assert items.layout == "imagefolder"
    skip = lambda c: c.startswith(".") or c == "__MACOSX"  # noqa: E731
    ref = ImageFolder(str(root))  # torchvision takes those folders as classes; vislab does not
    ref_classes = [c for c in ref.classes if not skip(c)]
    assert items.class_names == ref_classes == ["Dog", "cat", "zebra"]
    ref_pairs = sorted((Path(p).relative_to(root).as_posix(), ref.classes[t])
                       for p, t in ref.samples if not skip(ref.classes[t]) and "__MACOSX" not in p)
    mine = sorted((i, items.class_names[lab]) for i, lab in zip(items.ids, items.labels))
    assert mine == ref_pairs and "cat/deeper/x.png" in items.ids


def test_csv_labels_names_and_integers(tmp_path):
    d = tmp_path / "flat"
    for name in ("b.png", "a.jpg", "c.png"):
        _img(d / name)
    (tmp_path / "names.csv").write_text("filename,label\na.jpg,owl\nb.png,cat\nc.png,owl\n")
    items = find_items(d, labelled=True, labels_csv=tmp_path / "names.csv")
    assert items.layout == "csv" and items.class_names == ["cat", "owl"]
    assert dict(zip(items.ids, items.labels)) == {"a.jpg": 1, "b.png": 0, "c.png": 1}
    (tmp_path / "ints.csv").write_text("a.jpg,4\nb.png,0\nc.png,2\n")  # a header is optional
    items = find_items(d, labelled=True, labels_csv=tmp_path / "ints.csv")
    assert items.class_names is None and items.labels == [4, 0, 2] and items.num_classes == 5
    # a trained model's names fix the ids, whatever the order in this folder
    items = find_items(d, labelled=True, labels_csv=tmp_path / "names.csv", class_names=["owl", "cat", "emu"])
    assert dict(zip(items.ids, items.labels)) == {"a.jpg": 0, "b.png": 1, "c.png": 0}


@pytest.mark.parametrize("rows,message", [
    ("a.png,cat\n", r"b\.png: has no row in .*labels\.csv \(3 images without a label\)"),
    ("a.png,cat\nb.png,dog\nzz.png,dog\n", r"labels\.csv: lists zz\.png, which is not an image in"),
    ("a.png,cat\nb.png,dog\na.png,dog\n", r"labels\.csv: a\.png is listed twice with different labels"),
    ("a.png\nb.png,dog\n", r"labels\.csv: expected rows filename,label \(line 1 has one column\)"),
    ("a.png,0\nb.png,1\nc.png,10\nd.png,1.0\n", r"labels\.csv: line 4: label '1\.0' is not an integer like most rows"),
    ("filename,label\na.png,0\nb.png,1\nc.png,x\nd.png,2\n", r"labels\.csv: line 4: label 'x' is not an integer like most rows"),
    ("image,class\na.png,0\nb.png,1\nc.png,1\nd.png,0\n", r"labels\.csv: line 1 \(image,class\) is neither a header"),
    ("a.png,cat\nb.png, \nc.png,dog\nd.png,cat\n", r"labels\.csv: line 2 \(b\.png, \) has an empty label"),
    ("a.png,cat\n,dog\nc.png,dog\nd.png,cat\n", r"labels\.csv: line 2 \(,dog\) has an empty file name"),
    ("a.png,cat\nb.png,dog,x\nc.png,dog\nd.png,cat\n", r"labels\.csv: expected rows filename,label \(line 2 has 3 "
                                                         r"columns: b\.png,dog,x\)"),
])
def test_csv_errors_name_the_file(tmp_path, rows, message):
    d = tmp_path / "flat"
    for n in "abcd":
        _img(d / f"{n}.png")
    (tmp_path / "labels.csv").write_text(rows)
    with pytest.raises(VislabError, match=message):
        find_items(d, labelled=True, labels_csv=tmp_path / "labels.csv")


def test_csv_rows_a_spreadsheet_writes_are_read(tmp_path, capsys):
    """Trailing empty cells, ./ before a name and a row given twice alike (said) are read as meant."""
    d = tmp_path / "flat"
    for n in "abc":
        _img(d / f"{n}.png")
    (tmp_path / "labels.csv").write_text("filename,label,\n./a.png,cat,\nb.png,dog,\nc.png,cat,\nb.png,dog,\n")
    items = find_items(d, labelled=True, labels_csv=tmp_path / "labels.csv")
    assert dict(zip(items.ids, items.labels)) == {"a.png": 0, "b.png": 1, "c.png": 0}
    assert "labels.csv: 1 row(s) repeat an earlier one (the same file and label); each file counts once" in \
        " ".join(capsys.readouterr().err.split())


def test_numbers_for_a_model_that_knows_names_are_refused(tmp_path):
    """Course names or integer labels for a model trained on class names: the numbers would meet
    its names in alphabetical order, by chance (the reverse is refused as well)."""
    course = tmp_path / "course"
    for lab in (0, 1, 2):
        _img(course / f"{lab}_0.png")
    for labels_csv in (None, tmp_path / "ints.csv"):
        (tmp_path / "ints.csv").write_text("0_0.png,1\n1_0.png,1\n2_0.png,0\n")
        with pytest.raises(VislabError, match=r"gives numbered labels .* but the model knows its classes by name "
                                              r"\('cat' \.\.\.\); label these images by class name") as err:
            find_items(course, labelled=True, labels_csv=labels_csv, class_names=["cat", "dog", "owl"])
        assert str(labels_csv or course) in str(err.value)


def test_numbers_among_mostly_names_are_names(tmp_path):
    """Class names such as "10" and "2" beside named classes read as names (sorted as text, as
    class folders 10/ and 2/ would be), not as a mix of ids and names."""
    d = tmp_path / "flat"
    for n in "abcd":
        _img(d / f"{n}.png")
    (tmp_path / "labels.csv").write_text("filename,label\na.png,cat\nb.png,10\nc.png,dog\nd.png,2\n")
    items = find_items(d, labelled=True, labels_csv=tmp_path / "labels.csv")
    assert items.class_names == ["10", "2", "cat", "dog"]
    assert dict(zip(items.ids, items.labels)) == {"a.png": 2, "b.png": 0, "c.png": 3, "d.png": 1}


def test_layout_errors(tmp_path):
    both = tmp_path / "both"
    _img(both / "0_0.png")
    _img(both / "cat" / "x.png")
    with pytest.raises(VislabError, match=re.escape(f"{both}: ambiguous layout: 1 images directly inside and 1 subfolders")):
        find_items(both, labelled=True)
    odd = tmp_path / "odd"
    _img(odd / "dog.png")
    with pytest.raises(VislabError, match="dog.png: file name is not <label>_<index> .*pass --labels FILE.csv"):
        find_items(odd, labelled=True)
    tree = tmp_path / "tree"
    _img(tree / "cat" / "x.png")
    (tree / "dog").mkdir()
    (tree / "dog" / "notes.txt").write_text("no images")
    (tree / "emu").mkdir()
    with pytest.raises(VislabError, match=re.escape(f"{tree / 'dog'}: class folder holds no images")):
        find_items(tree, labelled=True)
    with pytest.raises(VislabError, match="class 'cat' is not one of the model's 2 classes"):
        find_items(_only_cat(tmp_path), labelled=True, class_names=["owl", "emu"])
    # unlabelled: a tree is read with relative ids
    items = find_items(_only_cat(tmp_path), labelled=False)
    assert items.ids == ["cat/x.png"] and items.labels is None


def test_dangling_links_and_link_loops_are_refused_by_name(tmp_path):
    """A link to no file, named like an image, would drop that image from a predictions CSV or a
    score without a word; a link to a folder above reads its images twice. Both are refused, by
    every reader: classification (flat and tree), segmentation pairs and images to predict."""
    from vislab.data.images import list_images
    from vislab.data.segmentation import list_pairs, list_unlabelled

    flat = tmp_path / "flat"
    _img(flat / "0_0.png")
    (flat / "1_9.png").symlink_to(tmp_path / "nowhere.png")
    said = re.escape(f"{flat / '1_9.png'}: is a link to {tmp_path / 'nowhere.png'}, which does not exist")
    for labelled in (True, False):
        with pytest.raises(VislabError, match=said):
            find_items(flat, labelled=labelled)
    with pytest.raises(VislabError, match=said):
        list_images(flat)
    (flat / "1_9.png").unlink()
    (flat / "again").symlink_to(flat)  # a loop: the folder inside itself
    with pytest.raises(VislabError, match=re.escape(f"{flat / 'again'}: is a link to {flat}, which holds this "
                                                    "folder: a loop")):
        find_items(flat, labelled=False)
    (flat / "again").unlink()
    (flat / "again").symlink_to(tmp_path)  # the folder above, a loop too
    with pytest.raises(VislabError, match="which holds this folder: a loop"):
        find_items(flat, labelled=False)
    (flat / "again").unlink()
    (flat / "more").symlink_to(_only_cat(tmp_path))  # a link to another folder is read like a folder
    assert find_items(flat, labelled=False).ids == ["0_0.png", "more/cat/x.png"]
    # deeper down too, where a class folder's link is followed, and one to a folder read already is refused
    tree = tmp_path / "tree"
    _img(tree / "cat" / "a.png")
    _img(tmp_path / "extra" / "b.png")
    (tree / "cat" / "more").symlink_to(tmp_path / "extra")
    assert find_items(tree, labelled=True).ids == ["cat/a.png", "cat/more/b.png"]
    (tree / "dog").mkdir()
    (tree / "dog" / "cats").symlink_to(tree / "cat")  # the cat images again, labelled dog
    with pytest.raises(VislabError, match=re.escape(f"{tree / 'dog' / 'cats'}: is {tree / 'cat'} again (a link to a "
                                                    "folder read already, or a loop)")):
        find_items(tree, labelled=True)
    (tree / "dog" / "cats").unlink()
    (tree / "dog" / "up").symlink_to(tree)  # a loop below the top folder
    with pytest.raises(VislabError, match=re.escape(f"{tree / 'dog' / 'up'}: is {tree} again")):
        find_items(tree, labelled=False)

    seg = tmp_path / "seg"
    _img(seg / "0000_sat.png")
    _img(seg / "0000_mask.png")
    _img(seg / "0001_sat.png")
    (seg / "0001_mask.png").symlink_to(tmp_path / "gone.png")  # not "has no mask": the link is named
    said = re.escape(f"{seg / '0001_mask.png'}: is a link to {tmp_path / 'gone.png'}, which does not exist")
    for read in (list_pairs, list_unlabelled):
        with pytest.raises(VislabError, match=said):
            read(seg)


def _only_cat(tmp_path: Path) -> Path:
    root = tmp_path / "only_cat"
    _img(root / "cat" / "x.png")
    return root


def test_fitted_size_by_hand():
    assert fitted_size((48, 64), (32, 32)) == (32, 43)  # shorter side 48 -> 32, 64 * 2/3 = 42.7
    assert fitted_size((100, 50), (32, 32)) == (64, 32)
    assert fitted_size((16, 16), (32, 32)) == (32, 32)  # small images are enlarged
    assert fitted_size((32, 64), (32, 32)) == (32, 64)  # already covers: only cropped


def test_mixed_sizes_and_formats(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    for i in range(3):  # the most common size: 32 x 32
        write_png(d / f"0_{i}.png", np.full((32, 32, 3), 10 * i, np.uint8))
    # 32 high, 64 wide, column j holds 3j: covers 32x32 as it is, so only the centre crop acts
    cols = np.tile((np.arange(64) * 3).astype(np.uint8)[None, :, None], (32, 1, 3))
    write_png(d / "1_0.png", cols)
    # 64 x 128 in stripes 8 px wide: halved to 32 x 64, then the centre 32 columns
    stripes = np.repeat((np.arange(16) * 15).astype(np.uint8), 8)
    Image.fromarray(np.tile(stripes[None, :, None], (64, 1, 3))).save(d / "1_1.bmp")
    Image.fromarray(np.full((40, 40), 77, np.uint8), mode="L").save(d / "2_0.jpg", quality=100)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17  # alpha is dropped, the colour stays
    Image.fromarray(rgba, mode="RGBA").save(d / "2_1.webp", lossless=True)
    pal = Image.new("P", (32, 32))
    pal.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    pal.paste(1, (0, 0, 32, 32))
    pal.save(d / "2_2.png")
    data = load_folder(d, labelled=True)
    by = dict(zip(data.files, data.images))
    assert data.images.shape == (8, 3, 32, 32)
    assert torch.equal(by["1_0.png"][0, 0], torch.arange(16, 48) * 3)
    got = by["1_1.bmp"][0, 5].tolist()  # output column k is halved column 16 + k: stripe (16 + k) // 4
    for k in (1, 2, 5, 6, 9, 10, 29, 30):  # stripe interiors are exact after a bilinear halving
        assert got[k] == ((16 + k) // 4) * 15
    assert by["2_0.jpg"].unique().tolist() == [77]
    assert by["2_1.webp"][:, 0, 0].tolist() == [200, 0, 0]
    assert by["2_2.png"][:, 3, 3].tolist() == [12, 34, 56]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    # an explicit size (a trained model's) fits every image to it
    assert load_folder(d, labelled=True, size=(16, 24)).images.shape == (8, 3, 16, 24)


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


_TOUCH = """
import sys, torch
from pathlib import Path
from vislab.data.classification import load_folder

def anon():
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("RssAnon:"))

use_cache = sys.argv[2] == "cache"
before = anon()
data = load_folder(sys.argv[1], labelled=True, use_cache=use_cache)
total = sum(int(data.images[i : i + 10].max()) for i in range(0, len(data.images), 10))  # touch every page
print(anon() - before, total)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_cache_is_memory_mapped_not_process_memory(tmp_path):
    """In a fresh process (a long-lived one reuses freed memory): touching every image of the
    cached folder leaves the process's anonymous memory far below the array's size, while the
    in-memory decode of the same folder grows by about that size."""
    import subprocess
    import sys

    d = tmp_path / "many"
    d.mkdir()
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    for i in range(1200):  # 1200 x 3 x 96 x 96 = 33 MB decoded
        write_png(d / f"{i % 3}_{i}.png", np.roll(tile, i, axis=1))
    size_kb = 1200 * 3 * 96 * 96 // 1024
    assert load_folder(d, labelled=True).images.shape == (1200, 3, 96, 96)  # builds the cache

    def grown(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _TOUCH, str(d), mode], capture_output=True, text=True, check=True)
        kb, total = map(int, out.stdout.split())
        assert total > 0
        return kb

    assert grown("cache") < size_kb / 4
    assert grown("memory") > size_kb * 0.8


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(1)
    imgs = torch.from_numpy(rng.integers(0, 256, (300, 3, 8, 8), dtype=np.uint8))
    idx = torch.arange(0, 300, 2)
    mean, std = image_stats(imgs, idx, chunk=7)
    x = imgs.numpy()[::2].astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-6)


def test_seg_from_scratch_normalises_with_its_training_tiles_statistics(tmp_path):
    """Tiles of several sizes: every training pixel counts once (not a mean of tile means), the
    held-out tiles not at all; a run from scratch records them in its recipe."""
    from PIL import Image

    from test_own_seg_data import make_index_set
    from vislab.config import Recipe
    from vislab.data.seg_classes import find_classes
    from vislab.engine.segmentation import SegmentationData

    d = make_index_set(tmp_path / "d", 8)
    data = SegmentationData(d, Recipe(task="seg", holdout=0.25, seed=1), expected=None, classes=find_classes(d))
    pixels = np.concatenate([np.asarray(Image.open(p.image).convert("RGB"), np.float64).reshape(-1, 3) / 255
                             for p in data.train_pairs])
    mean, std = data.pixel_stats()
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-5)
    held = np.concatenate([np.asarray(Image.open(p.image).convert("RGB"), np.float64).reshape(-1, 3) / 255
                           for p in data.pairs])
    assert not np.allclose(mean, held.mean(0), rtol=1e-4)  # all pairs would give another mean


def test_declared_torchvision_decodes_every_listed_format():
    """The minimum torchvision in pyproject.toml must decode every suffix vislab lists: WebP and
    16-bit PNG decoding arrived in torchvision 0.20 (its release notes), with torch 2.5."""
    import re
    from pathlib import Path

    from vislab.data.images import IMAGE_SUFFIXES

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    low = {m.group(1): tuple(int(v) for v in m.group(2).split(".")) for d in deps
           if (m := re.match(r"(torch|torchvision)>=([\d.]+)", d.replace(" ", "")))}
    if ".webp" in IMAGE_SUFFIXES:
        assert low["torchvision"] >= (0, 20) and low["torch"] >= (2, 5), low


def test_unlabelled_mixed_folder_reads_every_image_and_says_what_it_skipped(tmp_path, capsys):
    d = tmp_path / "mixed"
    _img(d / "a.png")
    _img(d / "t.png")  # after sub/ by name: the rows are sorted by image_id, as predict promises
    _img(d / "sub" / "b.png")
    _img(d / "sub" / "c.png")
    (d / "sub" / "notes.txt").write_text("not an image")
    (d / "photo.tif").write_bytes(b"II*\x00")  # a format vislab does not read
    items = find_items(d, labelled=False)
    assert items.ids == ["a.png", "sub/b.png", "sub/c.png", "t.png"]
    assert items.files == [d / i for i in items.ids]
    err = " ".join(capsys.readouterr().err.split())
    assert "skipped 2 file(s)" in err and "photo.tif" in err
    assert "2 images directly inside and 2 in 1 subfolder(s)" in err


def test_numbered_class_folders_match_labels_by_number(tmp_path):
    """Folders 0/ 1/ ... 10/ get ids in text order (0, 1, 10, 2, ...), as in torchvision; a course
    file 2_0.png or a CSV label 2 then means the folder named 2, not the third id."""
    names = [str(i) for i in range(11)]
    tree = tmp_path / "tree"
    for n in names:
        _img(tree / n / "x.png")
    class_names = find_items(tree, labelled=True).class_names
    assert class_names == sorted(names)  # text order
    course = tmp_path / "course"
    for lab in (2, 10, 0):
        _img(course / f"{lab}_0.png")
    items = find_items(course, labelled=True, class_names=class_names)
    assert {i: class_names[lab] for i, lab in zip(items.ids, items.labels)} == {"0_0.png": "0", "10_0.png": "10", "2_0.png": "2"}
    (tmp_path / "l.csv").write_text("0_0.png,7\n10_0.png,10\n2_0.png,2\n")
    items = find_items(course, labelled=True, labels_csv=tmp_path / "l.csv", class_names=class_names)
    assert [class_names[lab] for lab in items.labels] == ["7", "10", "2"]
    _img(course / "11_0.png")
    with pytest.raises(VislabError, match="label 11 is not one of the model's 11 classes"):
        find_items(course, labelled=True, class_names=class_names)


def test_csv_with_a_byte_order_mark(tmp_path):
    d = tmp_path / "flat"
    _img(d / "a.png")
    _img(d / "b.png")
    (tmp_path / "excel.csv").write_bytes("filename,label\r\na.png,cat\r\nb.png,dog\r\n".encode("utf-8-sig"))
    items = find_items(d, labelled=True, labels_csv=tmp_path / "excel.csv")
    assert items.class_names == ["cat", "dog"] and items.labels == [0, 1]


def test_ids_and_names_are_shown_apart():
    """A class name that is a number other than its id is quoted, so "2 '10'" reads as id 2 of the
    class folder 10/, not as two ids; a name equal to the id is not repeated."""
    from vislab.data.layouts import id_and_name

    names = ["0", "1", "10", "2", "cat"]
    assert [id_and_name(c, names) for c in range(5)] == ["0", "1", "2 '10'", "3 '2'", "4 cat"]
    assert id_and_name(7, None) == "7"


def test_a_folders_own_classes_file_is_not_a_skipped_file(tmp_path, capsys):
    from vislab.data.images import say_skipped

    say_skipped(tmp_path, ["classes.yaml"])
    assert capsys.readouterr().err == ""  # a segmentation set's description, not a stray file
    say_skipped(tmp_path, ["classes.yaml", "notes.txt"])
    err = " ".join(capsys.readouterr().err.split())
    assert "skipped 1 file(s)" in err and "notes.txt" in err


def test_a_label_beyond_the_model_names_its_own_file(tmp_path):
    """Labels 7, 8 and 9 for a model of classes 0..2: the first such file in id order is named with
    its own label, and the count and the largest label are said (the file once named was the first
    one, with the largest label, 9, which was not its own)."""
    from vislab.data.classification import load_for_model

    for name in ("7_450.png", "8_450.png", "9_451.png", "0_450.png"):
        _img(tmp_path / "val" / name)
    with pytest.raises(VislabError, match=re.escape(f"{tmp_path / 'val' / '7_450.png'}: label 7 is outside the "
                                                    "model's 0..2 (3 images so labelled; the largest label is 9)")):
        load_for_model(tmp_path / "val", class_names=None, num_classes=3)


def test_a_folder_of_splits_is_refused_and_a_class_named_like_one_is_read(tmp_path):
    """train/ and val/ read as the classes of a tree would make each split a class (and the
    validation images training ones): refused with the folders to pass instead."""
    photos = tmp_path / "photos"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _img(photos / split / c / "0.png")
    with pytest.raises(VislabError) as err:
        find_items(photos, labelled=True)
    assert str(err.value) == (f"{photos}: its subfolders train/, val/ are splits, not classes: pass the folder of "
                              f"one split (e.g. {photos / 'train'}); to train: {photos / 'train'} with --val-dir "
                              f"{photos / 'val'}")
    (photos / "train").rename(photos / "test")  # no training split: no advice to train on another
    with pytest.raises(VislabError) as err:
        find_items(photos, labelled=True)
    assert str(err.value) == (f"{photos}: its subfolders test/, val/ are splits, not classes: pass the folder of "
                              f"one split (e.g. {photos / 'test'})")
    (photos / "test").rename(photos / "train")
    _img(photos / "train" / "test" / "0.png")  # one class named like a split is a class
    assert find_items(photos / "train", labelled=True).class_names == ["cat", "dog", "test"]
    # a model whose classes carry those names reads them as its classes
    assert find_items(photos, labelled=True, class_names=["train", "val"]).class_names == ["train", "val"]


def test_classes_with_fewer_than_three_images_are_named():
    """A label mistyped in a labels file makes a class of one image: the warning names it, its
    count and file; classes of 3 or more are not named."""
    paths = [Path(f"d/{i}.png") for i in range(8)]
    labels = [0, 0, 0, 1, 2, 2, 0, 3]
    assert thin_classes(labels, ["cat", "dog", "fsh", "5"], paths) == (
        "warning: 3 classes with fewer than 3 training images: 1 dog (1 image, e.g. d/3.png), 2 fsh (2 images), "
        "3 '5' (1 image); a mistyped label or a stray folder?")
    assert thin_classes([0, 0, 0, 1, 1, 1], None, paths[:6]) is None
    assert thin_classes([0, 0, 0, 1], None, paths[:4]).startswith("warning: 1 class with fewer than 3 training images: "
                                                                   "1 (1 image, e.g. d/3.png);")


def test_numbers_of_another_kind_read_as_labels_are_refused(tmp_path, cli):
    """Phone photo names (20230101_120000.jpg) match <label>_<index>: read as class ids they would make
    a model of 20 million classes (it exhausted the memory). Training refuses, before any image is
    decoded, a largest id that makes 1000 classes or more with fewer than one in ten used; CSV
    integer labels alike. A folder read for a trained model is not refused (its classes are the model's)."""
    from vislab.data.layouts import check_dense

    photos = tmp_path / "photos"
    for i, day in enumerate((20230101, 20230102, 20230101)):
        _img(photos / f"{day}_12000{i}.jpg", 10 * i)
    said = (f"{photos}: its file names' <label>_<index> numbers read as class ids make 20230103 classes (0 to "
            "20230102), 2 of them with images: numbers of another kind, such as dates or codes? Pass --labels "
            "FILE.csv, or put the images in <class name>/ subfolders")
    with pytest.raises(VislabError) as err:
        check_dense(find_items(photos, labelled=True))
    assert str(err.value) == said
    res = cli("cls", "train", photos, "--recipe", "cls-fast", "--epochs", "1", "--out", tmp_path / "run")
    assert res.code == 2 and " ".join(res.err.split()) == f"vislab: error: {said}" and not (tmp_path / "run").exists()
    assert len(find_items(photos, labelled=False).ids) == 3  # to predict, names are names
    flat = tmp_path / "flat"
    for i in range(4):
        _img(flat / f"{i}.png", 10 * i)
    labels = tmp_path / "labels.csv"
    for values, refused in (([0, 999, 0, 999], True), ([0, 998, 0, 998], False), ([7, 12345, 7, 12345], True)):
        labels.write_text("filename,label\n" + "".join(f"{i}.png,{v}\n" for i, v in enumerate(values)))
        items = find_items(flat, labelled=True, labels_csv=labels)
        if refused:
            with pytest.raises(VislabError, match=re.escape(f"{labels}: its integer labels read as class ids make "
                                                            f"{max(values) + 1} classes")):
                check_dense(items, labels)
        else:
            check_dense(items, labels)
            assert items.num_classes == 999
    # 1000 classes, one in ten with images (100 images): a data set, read as it is
    for c in range(0, 1000, 10):
        _img(tmp_path / "tenth" / f"{c}_0.png")
    _img(tmp_path / "tenth" / "999_0.png")
    check_dense(find_items(tmp_path / "tenth", labelled=True))
    # a few validation images of a model of 1200 numbered classes: its own classes, read
    from vislab.data.classification import load_for_model

    subset = tmp_path / "subset"
    for c in (0, 500, 1180):
        _img(subset / f"{c}_0.png")
    assert load_for_model(subset, class_names=None, num_classes=1200).labels.tolist() == [0, 1180, 500]


def test_labels_csv_reads_the_folder_alone_and_says_so(tmp_path, capsys):
    """With --labels, images in subfolders are not read: one line says so, and a row naming one is
    an error that says why (it was called 'not an image' although the file exists)."""
    d = tmp_path / "img"
    for i in range(4):
        _img(d / f"{i}.png", 10 * i)
    _img(d / "extra" / "e0.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\n" + "".join(f"{i}.png,{'cat' if i % 2 else 'dog'}\n" for i in range(4)))
    items = find_items(d, labelled=True, labels_csv=labels)
    assert items.ids == ["0.png", "1.png", "2.png", "3.png"] and items.class_names == ["cat", "dog"]
    said = " ".join(capsys.readouterr().err.split())
    assert f"{d}: 1 subfolder not read (e.g. extra/): with --labels only the images directly in the folder are" in said
    with labels.open("a") as fh:
        fh.write("extra/e0.png,cat\n")
    with pytest.raises(VislabError) as err:
        find_items(d, labelled=True, labels_csv=labels)
    assert str(err.value) == (f"{labels}: lists extra/e0.png, an image in a subfolder of {d} (1 such row): --labels "
                              "reads the images directly in the folder; move them there")
    for row in (str(d / "0.png"), "../img/0.png"):  # a path to a file of the folder itself: not 'in a subfolder'
        labels.write_text("filename,label\n" + "".join(f"{i}.png,dog\n" for i in range(1, 4)) + f"{row},cat\n")
        with pytest.raises(VislabError) as err:
            find_items(d, labelled=True, labels_csv=labels)
        assert str(err.value) == f"{labels}: lists {row}, a path: rows name the images of {d} by file name (0.png; 1 such row)"


def test_names_in_decomposed_unicode_match_their_composed_twins(tmp_path):
    """macOS archives store ü as u + a combining diaeresis: a class folder or a CSV row so written
    matches the model's (or the folder's) composed name, which looks the same."""
    import unicodedata

    composed, decomposed = "grün", unicodedata.normalize("NFD", "grün")
    assert composed != decomposed
    tree = tmp_path / "tree"
    for name in ("blue", decomposed):
        _img(tree / name / "a.png")
    items = find_items(tree, labelled=True, class_names=["blue", composed])
    assert items.labels == [0, 1] and items.class_names == ["blue", composed]
    assert find_items(tree, labelled=True).class_names == ["blue", composed]  # a new model's names: composed
    flat = tmp_path / "flat"
    _img(flat / f"{decomposed}.png")
    _img(flat / "b.png", 50)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"filename,label\n{composed}.png,{decomposed}\nb.png,blue\n", encoding="utf-8")
    items = find_items(flat, labelled=True, labels_csv=labels, class_names=["blue", composed])
    assert items.ids == ["b.png", f"{decomposed}.png"] and items.labels == [0, 1]
