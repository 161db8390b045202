"""P1 data: folder decoding and its errors, the cache, the split, deterministic augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vislab.data.classification import (
    augment_batch,
    hash_uniform,
    load_folder,
    stratified_split,
)
from vislab.errors import VislabError

from conftest import write_png


def test_labels_from_names_and_sorted_files(color_classes):
    data = load_folder(color_classes, labelled=True)
    assert data.images.shape == (120, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.files == sorted(data.files)
    assert data.num_classes == 3
    assert all(int(f.split("_")[0]) == lab for f, lab in zip(data.files, data.labels.tolist()))


def test_cache_round_trip_and_invalidation(color_classes, tmp_path, monkeypatch):
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "c"))
    first = load_folder(color_classes, labelled=True)
    cached = list((tmp_path / "c").glob("cls-*.npy"))
    assert len(cached) == 1
    again = load_folder(color_classes, labelled=True)
    assert torch.equal(first.images, again.images)
    for broken in ("[[5]]", "{}", "[[32, 32, {}, 1]]", "not json"):  # a damaged side file: the entry is rebuilt
        next((tmp_path / "c").glob("cls-*.sizes.json")).write_text(broken)
        assert torch.equal(load_folder(color_classes, labelled=True).images, first.images), broken
    # a changed file list gives a new key
    write_png(color_classes / "0_999.png", np.zeros((32, 32, 3), np.uint8))
    third = load_folder(color_classes, labelled=True)
    assert len(third.files) == 121 and len(list((tmp_path / "c").glob("cls-*.npy"))) == 2


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: (d / "0_7.png").write_bytes(b""), "empty file"),
        (lambda d: (d / "0_5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"), "not a decodable image"),
        (lambda d: write_png(d / "dog.png", np.zeros((32, 32, 3), np.uint8)), "not <label>_<index>"),
    ],
)
def test_bad_files_are_named(tmp_path, make, message):
    d = tmp_path / "imgs"
    d.mkdir()
    write_png(d / "0_0.png", np.zeros((32, 32, 3), np.uint8))
    make(d)
    with pytest.raises(VislabError, match=message) as err:
        load_folder(d, labelled=True)
    assert str(d) in str(err.value)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.full((32, 32), 77, np.uint8), mode="L").save(d / "0_0.png")
    Image.fromarray(np.full((32, 32, 4), 200, np.uint8), mode="RGBA").save(d / "1_0.png")
    data = load_folder(d, labelled=True)
    assert data.images.shape == (2, 3, 32, 32)
    assert data.images[0].unique().tolist() == [77]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(VislabError, match="folder not found"):
        load_folder(tmp_path / "nope", labelled=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(VislabError, match="no images found"):
        load_folder(tmp_path / "empty", labelled=True)


def test_stratified_split_is_per_class_and_seeded():
    labels = torch.arange(5).repeat_interleave(40)
    tr, ho = stratified_split(labels, fraction=0.1, seed=3)
    assert len(set(tr.tolist()) & set(ho.tolist())) == 0 and len(tr) + len(ho) == 200
    assert torch.bincount(labels[ho]).tolist() == [4] * 5
    tr2, ho2 = stratified_split(labels, fraction=0.1, seed=3)
    assert torch.equal(ho, ho2)
    _, ho3 = stratified_split(labels, fraction=0.1, seed=4)
    assert not torch.equal(ho, ho3)


def test_hash_uniform_range_and_independence():
    idx = torch.arange(20000)
    u = hash_uniform(0, 0, idx, 1)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    # another epoch, seed or stream gives uncorrelated numbers
    for other in (hash_uniform(0, 1, idx, 1), hash_uniform(1, 0, idx, 1), hash_uniform(0, 0, idx, 2)):
        assert abs(float(torch.corrcoef(torch.stack([u, other]))[0, 1])) < 0.03


def _reference_augment(x, index, seed, epoch, pad):
    """Per-sample loop: pad, crop at the hashed offset, flip on the hashed coin."""
    out = []
    for img, i in zip(x, index):
        i = torch.tensor([int(i)])
        oy = min(int(hash_uniform(seed, epoch, i, 1)[0] * (2 * pad + 1)), 2 * pad)
        ox = min(int(hash_uniform(seed, epoch, i, 2)[0] * (2 * pad + 1)), 2 * pad)
        p = F.pad(img[None].float(), (pad,) * 4, mode="reflect")[0]
        crop = p[:, oy : oy + img.shape[1], ox : ox + img.shape[2]]
        if hash_uniform(seed, epoch, i, 3)[0] < 0.5:
            crop = crop.flip(-1)
        out.append(crop.to(img.dtype))
    return torch.stack(out)


def test_batched_augmentation_equals_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    index = torch.randperm(1000, generator=g)[:16]
    got = augment_batch(x, index, seed=7, epoch=2, pad=4)
    assert torch.equal(got, _reference_augment(x, index, 7, 2, 4))
    # the same sample gets the same augmentation whatever batch it is in
    again = augment_batch(x[5:9], index[5:9], seed=7, epoch=2, pad=4)
    assert torch.equal(again, got[5:9])
    assert not torch.equal(augment_batch(x, index, seed=7, epoch=3, pad=4), got)


def test_resumable_loader_continues_an_epoch_or_starts_the_next(monkeypatch):
    from vislab.engine import sampling
    from vislab.engine.sampling import EpochSampler, ResumableLoader

    class At:  # a fit loop that has processed ``done`` of ``total`` batches of epoch ``epoch``
        def __init__(self, epoch: int, done: int, total: int = 3) -> None:
            self.e, self.done, self.total = epoch, done, total

        def epoch(self) -> int:
            return self.e

        def batches(self) -> tuple[int, int]:
            return self.done, self.total

    def loader(at: At) -> ResumableLoader:
        return ResumableLoader(list(range(10)), batch_size=3, drop_last=True, position=at,
                               sampler=EpochSampler(10, shuffle=True, seed=4, drop_last=True))

    def order(e: int, n: int = 10) -> list[int]:
        s = EpochSampler(n, shuffle=True, seed=4)
        s.set_epoch(e)
        return list(s)

    assert loader(At(5, 0)).sampler.epoch == 5  # starts at the loop's epoch, before any set_epoch
    assert loader(At(0, 2)).state_dict() == {"epoch": 0, "items": 6}
    assert loader(At(0, 3)).state_dict() == {"epoch": 1, "items": 0}  # the epoch was complete
    assert loader(At(0, 2, total=2)).state_dict() == {"epoch": 1, "items": 0}  # limit_train_batches=2
    mid = loader(At(0, 0))
    mid.load_state_dict({"epoch": 2, "items": 3})  # one batch of epoch 2 trained on
    mid.sampler.set_epoch(2)  # what Lightning does before the epoch
    assert [int(v) for b in mid for v in b] == order(2)[3:9]  # the rest of epoch 2's full batches
    assert [int(v) for b in mid for v in b] == order(2)[:9]  # the next pass is a whole epoch again
    # positions 0-11 of epoch 1 were trained on (e.g. by 2 processes, 2 batches of 3 each):
    # one process goes on with position 12; two processes with 12, 14, ... and 13, 15, ...
    s = EpochSampler(20, shuffle=True, seed=4)
    s.resume(1, 12)
    assert list(s) == order(1, 20)[12:]
    for rank in (0, 1):
        monkeypatch.setattr(sampling, "_rank_world", lambda: (rank, 2))
        s.resume(1, 12)
        full = EpochSampler(20, shuffle=True, seed=4)
        full.set_epoch(1)
        assert list(s) == full.order().tolist()[12 + rank::2]


def test_an_epochs_items_count_its_orders_positions_not_padded_batches():
    """The denominator of the resume line ("after 40 of its 90 training items"): a last batch
    that is not full counts its items; dropped positions (drop_last over several processes) none;
    fewer batches (limit_train_batches) fewer items; a loader without an EpochSampler: its batches."""
    from vislab.engine.sampling import EpochSampler, epoch_items

    class Loader:
        def __init__(self, n: int, batch_size: int, drop_last: bool = False) -> None:
            self.batch_size, self.sampler = batch_size, EpochSampler(n, shuffle=True, seed=0, drop_last=drop_last)

    assert epoch_items(Loader(90, 8), 12, 1) == 90  # 11 full batches and one of 2
    assert epoch_items(Loader(96, 8), 12, 1) == 96
    assert epoch_items(Loader(91, 8), 6, 2) == 91  # two processes, the last batches short
    assert epoch_items(Loader(91, 8, drop_last=True), 6, 2) == 90  # the odd position dropped
    assert epoch_items(Loader(90, 8), 5, 1) == 40  # limit_train_batches=5
    plain = Loader(90, 8)
    plain.sampler = None
    assert epoch_items(plain, 12, 1) == 96
