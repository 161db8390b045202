"""`vislab cache list/clear`: every entry a run writes is listed with its source folder, size and
last use, and clearing deletes exactly the chosen entries (and nothing the cache does not own)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from conftest import write_color_classes, write_png
from test_own_seg_data import make_index_set

from vislab.data.cache import cache_entries, select_entries
from vislab.data.classification import load_folder
from vislab.data.seg_classes import find_classes
from vislab.data.segmentation import TileCache, list_pairs, scan_masks


def _fill(tmp_path: Path, monkeypatch) -> tuple[Path, Path, Path]:
    """A cache holding one classification folder's images and one segmentation folder's
    statistics and tiles; returns (cache, cls folder, seg folder)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VISLAB_CACHE", str(cache))
    cls_dir = write_color_classes(tmp_path / "cls", per_class=4)
    load_folder(cls_dir, labelled=True)
    seg_dir = make_index_set(tmp_path / "seg", 3)
    desc, pairs = find_classes(seg_dir), list_pairs(seg_dir)
    stats = scan_masks(pairs, expected=None, classes=desc)
    TileCache(pairs, [tuple(v) for v in stats.sizes.tolist()], desc)
    return cache, cls_dir, seg_dir


def test_entries_name_their_source_size_and_files(tmp_path, monkeypatch):
    cache, cls_dir, seg_dir = _fill(tmp_path, monkeypatch)
    (cache / "notes.txt").write_text("mine")  # not the cache's: never listed
    entries = cache_entries()
    kinds = sorted(e.kind for e in entries)
    assert kinds[0] == "cls" and kinds.count("seg-stats") == 1 and "seg" in kinds
    files = [f for e in entries for f in e.files]
    on_disk = sorted(p for p in cache.iterdir() if p.name != "notes.txt")
    assert sorted(files) == on_disk  # every file of the cache belongs to exactly one entry
    for e in entries:
        assert e.bytes == sum(f.stat().st_size for f in e.files)
        want = cls_dir if e.kind == "cls" else seg_dir
        assert e.source == str(want.resolve())
    (cls_entry,) = [e for e in entries if e.kind == "cls"]
    assert cls_entry.items == 12 and cls_entry.files[0].suffix == ".npy"


def test_a_new_entry_is_said_once_with_its_size(tmp_path, monkeypatch, capsys):
    cache, cls_dir, seg_dir = _fill(tmp_path, monkeypatch)
    err = " ".join(capsys.readouterr().err.split())
    assert f"{cls_dir}: 12 images decoded once into" in err
    assert f"{seg_dir}: 3 pairs decoded once into" in err and "vislab cache clear" in err
    assert err.count("decoded once") == 2  # the tiles of all sizes in one line
    load_folder(cls_dir, labelled=True)
    assert "decoded once" not in capsys.readouterr().err


def test_reuse_marks_an_entry_used(tmp_path, monkeypatch):
    cache, cls_dir, _ = _fill(tmp_path, monkeypatch)
    for f in cache.iterdir():  # everything made long ago
        os.utime(f, (1_000_000, 1_000_000))
    load_folder(cls_dir, labelled=True)  # reads the cached images again
    entries = {e.kind: e for e in cache_entries()}
    assert time.time() - entries["cls"].last_used < 600
    assert entries["seg"].last_used == 1_000_000
    assert cache_entries()[-1].kind == "cls"  # least recently used first


def test_selection_by_age_and_folder(tmp_path, monkeypatch):
    cache, cls_dir, seg_dir = _fill(tmp_path, monkeypatch)
    entries = cache_entries()
    now = max(e.last_used for e in entries)
    assert select_entries(entries, unused_days=1, now=now) == []
    assert len(select_entries(entries, unused_days=1, now=now + 86400)) == len(entries)
    by_seg = select_entries(entries, source=seg_dir)
    assert {e.kind for e in by_seg} == {"seg", "seg-stats"}
    assert len(select_entries(entries, source=tmp_path)) == len(entries)  # a folder above both
    assert select_entries(entries, source=tmp_path / "elsewhere") == []


def test_clear_deletes_the_chosen_entries_and_the_next_run_decodes_again(tmp_path, monkeypatch, cli):
    cache, cls_dir, seg_dir = _fill(tmp_path, monkeypatch)
    (cache / "notes.txt").write_text("mine")
    before = cache_entries()
    listed = cli("cache", "list")
    assert listed.code == 0 and f"{len(before)} entries" in listed.out
    assert f"decoded images, 12 items, made from {cls_dir.resolve()}" in listed.out  # whole, to copy
    res = cli("cache", "clear", "--source", tmp_path / "nowhere", "--dry-run")
    assert res.code == 0 and "no entry records it as its folder" in " ".join(res.err.split())
    dry = cli("cache", "clear", "--source", str(seg_dir), "--dry-run")
    assert dry.code == 0 and "would free" in dry.out and len(cache_entries()) == len(before)
    res = cli("cache", "clear", "--source", str(seg_dir))
    assert res.code == 0 and "freed" in res.out
    assert [e.kind for e in cache_entries()] == ["cls"]
    first = load_folder(cls_dir, labelled=True).images.clone()
    res = cli("cache", "clear")
    assert res.code == 0 and cache_entries() == [] and (cache / "notes.txt").read_text() == "mine"
    again = load_folder(cls_dir, labelled=True)  # decoded afresh, the same pixels
    assert torch.equal(again.images, first) and len(cache_entries()) == 1
    for days in ("-1", "nan"):  # nan compares false with every age: refused, not read as "none match"
        res = cli("cache", "clear", "--unused-days", days)
        assert res.code == 2 and res.err.splitlines()[-1] == f"vislab: error: --unused-days: must be >= 0, got {days}"
    assert len(cache_entries()) == 1


def test_unfinished_files_and_old_entries_without_a_record(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VISLAB_CACHE", str(cache))
    cache.mkdir()
    np.save(cache / "cls-0123456789abcdef0123-32x32-abcdef.npy", np.zeros((2, 3, 32, 32), np.uint8))
    killed = cache / ".seg-0123456789abcdef0123-512x512-abcdef.npy.x1y2_z.tmp"  # a build killed long ago
    killed.write_bytes(b"12345")
    os.utime(killed, (time.time() - 7 * 3600,) * 2)
    (cache / ".seg-0123456789abcdef0123-64x64-abcdef.npy.a1b2_c.tmp").write_bytes(b"123")  # maybe still building
    # files vislab does not write there (a cache folder set to a shared place): never listed
    (cache / "onnx").mkdir()
    for name in (".notes.tmp", "cls-notes.npy", "seg-stats-mine.pt", "onnx/model.onnx", ".cls-1.npy.x1y2.tmp"):
        (cache / name).write_bytes(b"mine")
    write_png(cache / "unrelated.png", np.zeros((4, 4, 3), np.uint8))
    for name in ("best-0123456789abcdef0123.onnx", "epoch.10-0123456789abcdef0124.onnx",
                 "epoch.12-0123456789abcdef0125.onnx"):  # dots in a checkpoint's name: still one graph each
        (cache / "onnx" / name).write_bytes(b"graph")
    from vislab.data.cache import record_source

    record_source(cache / "onnx" / "epoch.10-0123456789abcdef0124.onnx", tmp_path / "run" / "epoch.10.ckpt", count=None)
    found = cache_entries()
    entries = {e.kind: e for e in found}
    assert set(entries) == {"cls", "unfinished", "onnx"} and len(found) == 5
    assert sorted(e.name for e in found if e.kind == "onnx") == [
        "best-0123456789abcdef0123.onnx", "epoch.10-0123456789abcdef0124.onnx", "epoch.12-0123456789abcdef0125.onnx"]
    assert entries["cls"].source is None and entries["unfinished"].bytes == 5
    sources = {e.name: (e.source, [f.name for f in e.files]) for e in found if e.kind == "onnx"}
    assert sources["epoch.10-0123456789abcdef0124.onnx"] == (  # the graph, then its record
        str(tmp_path / "run" / "epoch.10.ckpt"),
        ["epoch.10-0123456789abcdef0124.onnx", "epoch.10-0123456789abcdef0124.about.json"])
    assert sources["epoch.12-0123456789abcdef0125.onnx"] == (None, ["epoch.12-0123456789abcdef0125.onnx"])
    # an entry older than the records: its reuse marks the data file itself
    old = cache / "cls-0123456789abcdef0123-32x32-abcdef.npy"
    os.utime(old, (1_000_000, 1_000_000))
    from vislab.data.cache import mark_used

    mark_used(old)
    assert time.time() - old.stat().st_mtime < 600

