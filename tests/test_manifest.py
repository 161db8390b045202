"""A run folder's record of its training items: a round trip, and the differences it names."""

from __future__ import annotations

import gzip

from vislab.data.manifest import ITEMS, items_difference, read_items, write_items


def test_item_differences_name_new_gone_and_changed_items():
    before = ["a.png|0", "b.png|1", "c.png|2", "x|y.png|3"]
    after = ["b.png|1", "c.png|4", "d.png|0", "e.png|0", "x|y.png|3"]
    assert items_difference(before, after, value="label") == \
        "2 new (d.png, e.png); 1 gone (a.png); 1 with a changed label (c.png: 2 -> 4)"
    assert items_difference(before, before) == ""
    # label ids named by each side's classes (the run's list may not be the folder's)
    assert items_difference(before, after, value="label", names=(["ant", "bee", "cat"], ["a", "b", "c", "d", "e"])) \
        .endswith("1 with a changed label (c.png: cat -> e)")
    assert items_difference(["a|7"], ["a|1"], names=(["x"], None)) == "1 with a changed value (a: 7 -> 1)"
    many = [f"{i:02d}.png|0" for i in range(6)]
    assert items_difference([], many, shown=2) == "6 new (00.png, 01.png, ... 4 more)"


def test_items_round_trip_and_an_unreadable_record(tmp_path):
    lines = ["0_1.png|0", "dir/ünï code.png|12", "t00|[1200, 300]"]
    write_items(tmp_path, lines)
    assert read_items(tmp_path) == lines
    with gzip.open(tmp_path / ITEMS, "rt", encoding="utf-8") as fh:
        assert fh.read() == "".join(f"{line}\n" for line in lines)
    (tmp_path / ITEMS).write_bytes(b"not gzip")
    assert read_items(tmp_path) is None  # explains refusals only: never one itself
    assert read_items(tmp_path / "nowhere") is None


def test_a_record_is_used_only_for_its_own_checkpoints_data(tmp_path):
    from vislab.data.manifest import difference_from_record, lines_digest

    recorded = ["a.png|0", "b.png|1"]
    write_items(tmp_path, recorded)
    now = ["a.png|0"]
    assert difference_from_record(tmp_path, now, value="label", digest=lines_digest(recorded)) == "1 gone (b.png)"
    assert difference_from_record(tmp_path / "best.ckpt", now, value="label", digest=lines_digest(recorded)) == \
        "1 gone (b.png)"  # a checkpoint in the run folder
    # a checkpoint copied into another run's folder: that folder's record is not its data's
    assert difference_from_record(tmp_path, now, value="label", digest=lines_digest(["c.png|2"])) == ""
    assert difference_from_record(None, now, value="label", digest="x") == ""
