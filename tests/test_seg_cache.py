"""Segmentation pairs decoded once into a mapped cache, augmented as batches on the device:
the cache against the decoder, the geometry against exact D4 transforms and windows of the tile,
draws independent of the batch, and a killed + resumed run equal to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
import yaml
from pathlib import Path

from vislab.data.seg_classes import IGNORE, find_classes
from vislab.data.segmentation import CachedTiles, TileCache, augment_tiles, list_pairs, pad_collate, read_pair, scan_masks

from test_own_seg_data import make_index_set
from test_resume_ddp import _done, _in_process, _vislab


def _d4(t: torch.Tensor) -> list[torch.Tensor]:
    """The 8 turns and mirror images of (..., H, W)."""
    return [torch.rot90(v, k, (-2, -1)) for v in (t, t.flip(-1)) for k in range(4)]


def _which(out: torch.Tensor, candidates: list[torch.Tensor]) -> int:
    hits = [i for i, c in enumerate(candidates) if c.shape == out.shape and torch.equal(c, out)]
    assert len(hits) >= 1, "output is none of the candidates"
    return hits[0]


def test_cache_holds_what_the_decoder_reads(tmp_path):
    d = make_index_set(tmp_path / "d", 6)
    desc, pairs = find_classes(d), list_pairs(d)
    stats = scan_masks(pairs, expected=None, classes=desc)
    sizes = [tuple(v) for v in stats.sizes.tolist()]
    cache = TileCache(pairs, sizes, desc)
    assert len(cache.arrays) == 4  # one mapped array per tile size
    for i, p in enumerate(pairs):
        img, ids, _ = read_pair(p, expected=None, classes=desc)
        got_img, got_ids = cache.tile(i)
        assert torch.equal(got_img, img) and torch.equal(got_ids, ids)
    again = TileCache(pairs, sizes, desc)  # built once: the second opens the same files
    assert all(isinstance(a, torch.Tensor) for a in again.arrays)
    ds = CachedTiles(cache, [4, 1])
    img, ids, i = ds[1]
    assert i == 1 and torch.equal(ids, cache.tile(1)[1])


def test_whole_tile_crops_are_exact_turns_and_mirrors():
    """crop_area (1, 1) and ratio 1 on square tiles resamples at scale 1: the image and the ids
    must come out as the same one of the 8 D4 transforms of the tile, and all 8 occur."""
    n, s = 64, 12
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (n, s, s), generator=g, dtype=torch.uint8)
    x = torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)
    hw = torch.tensor([[s, s]] * n)
    img, y = augment_tiles(x, ids, torch.arange(n), hw, seed=1, epoch=2, crop_size=s, crop_area=(1.0, 1.0),
                           ratio=(1.0, 1.0))
    seen = set()
    for i in range(n):
        k = _which(y[i], [c.long() for c in _d4(ids[i])])
        assert torch.allclose(img[i], _d4(x[i].float())[k], atol=1e-3)
        seen.add(k)
    assert seen == set(range(8))
    # rot90 off: only mirror images and the half turn (both flips)
    _, y = augment_tiles(x, ids, torch.arange(n), hw, seed=1, epoch=2, crop_size=s, crop_area=(1.0, 1.0),
                         ratio=(1.0, 1.0), rot90=False)
    assert {_which(y[i], [c.long() for c in _d4(ids[i])]) for i in range(n)} == {0, 2, 4, 6}


def test_crops_are_windows_of_the_tile_and_never_the_padding():
    """A quarter-area crop at scale 1 (nearest ids) is a 16x16 window of the 32x32 tile, turned or
    mirrored; tiles padded into a larger batch are cropped inside their own size."""
    n = 24
    g = torch.Generator().manual_seed(1)
    tiles = [torch.randint(0, 250, (32, 32), generator=g, dtype=torch.uint8) for _ in range(n)]
    batch = [(t[None].expand(3, -1, -1).clone(), t, i) for i, t in enumerate(tiles)]
    batch[0] = (torch.zeros(3, 40, 40, dtype=torch.uint8), torch.zeros(40, 40, dtype=torch.uint8), 0)  # pads the rest
    x, y, idx, hw = pad_collate(batch)
    assert x.shape[-1] == 64 and (y[1:, 32:] == IGNORE).all()
    _, out = augment_tiles(x, y, idx, hw, seed=0, epoch=0, crop_size=16, crop_area=(0.25, 0.25), ratio=(1.0, 1.0))
    assert not (out == IGNORE).any()
    for i in range(1, n):
        windows = [tiles[i][a : a + 16, b : b + 16].long() for a in range(17) for b in range(17)]
        found = [w for w in windows if any(torch.equal(out[i], c) for c in _d4(w))]
        assert found, f"sample {i} is no window of its tile"


def test_draws_depend_on_sample_not_batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (6, 3, 20, 20), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (6, 20, 20), generator=g, dtype=torch.uint8)
    idx, hw = torch.tensor([5, 9, 2, 7, 0, 3]), torch.tensor([[20, 20]] * 6)
    kw = dict(seed=3, epoch=1, crop_size=12, crop_area=(0.3, 1.0))
    img, ids = augment_tiles(x, y, idx, hw, **kw)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    img2, ids2 = augment_tiles(x[perm], y[perm], idx[perm], hw[perm], **kw)
    assert torch.equal(img2, img[perm]) and torch.equal(ids2, ids[perm])
    img3, _ = augment_tiles(x, y, idx, hw, **{**kw, "epoch": 2})
    assert not torch.equal(img3, img)


def test_no_crop_keeps_size_turns_only_square_batches():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.uint8).view(2, 3, 4, 6)
    y = torch.arange(2 * 4 * 6, dtype=torch.uint8).view(2, 4, 6)
    img, ids = augment_tiles(x, y, torch.arange(2), torch.tensor([[4, 6]] * 2), seed=0, epoch=0, crop_size=None)
    assert ids.shape == (2, 4, 6)
    for i in range(2):
        flips = [y[i], y[i].flip(-1), y[i].flip(-2), y[i].flip(-1).flip(-2)]
        k = _which(ids[i], [f.long() for f in flips])
        assert torch.equal(img[i], [x[i], x[i].flip(-1), x[i].flip(-2), x[i].flip(-1).flip(-2)][k].float())


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, cli_one_thread):
    """Mixed tiles, crops, turns and colour jitter on the device: a run killed mid-epoch and
    resumed ends with the weights of an uninterrupted one."""
    data = make_index_set(tmp_path / "d", 16)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 2, "batch_size": 4,
                                      "lr": 0.003, "optimizer": "adamw", "holdout": 0.25, "crop_size": 32,
                                      "seed": 5, "checkpoint_minutes": 1e-6}))
    # the uninterrupted run beside the killed one, with a cache of its own
    full = _vislab("seg", "train", data, "--recipe", recipe, "--out", tmp_path / "full",
                   env={"VISLAB_CACHE": str(tmp_path / "own-cache")})
    run = tmp_path / "killed"
    proc = _vislab("seg", "train", data, "--recipe", recipe, "--out", run)
    deadline, step = time.time() + 300, 0
    while time.time() < deadline and step < 4:  # 3 steps per epoch: stop inside epoch 2
        time.sleep(0.05)
        try:
            step = int(torch.load(run / "last.ckpt", weights_only=True)["global_step"])
        except Exception:  # noqa: BLE001 - not written yet, or being replaced
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 4 <= int(torch.load(run / "last.ckpt", weights_only=True)["global_step"]) < 6  # killed inside the run
    _done(full)
    _in_process(cli_one_thread, "seg", "train", data, "--out", run, "--resume")
    full = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(full[k], resumed[k]) for k in full), "resumed weights differ"


def test_parallel_cache_build_after_torch_ops_does_not_hang(tmp_path):
    """Forked decode workers after the parent ran parallel torch ops (as a scan does) once
    deadlocked in the OpenMP pool; 260 pairs make two chunks, so the workers really fork."""
    script = f"""
import sys, torch
sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
from pathlib import Path
import numpy as np
from PIL import Image
torch.set_num_threads(2)
torch.ones(4_000_000).mul_(3).sum()  # starts the intra-op thread pool
root = Path({str(tmp_path)!r}) / "d"
(root / "images").mkdir(parents=True); (root / "masks").mkdir()
(root / "classes.yaml").write_text("mask_format: index\\nclasses: [a, b]\\n")
for i in range(260):
    Image.fromarray(np.full((256, 256, 3), i % 255, np.uint8)).save(root / "images" / f"{{i:03d}}.png")
    Image.fromarray(np.full((256, 256), i % 2, np.uint8), mode="L").save(root / "masks" / f"{{i:03d}}.png")
from vislab.data.seg_classes import find_classes
from vislab.data.segmentation import TileCache, list_pairs
pairs = list_pairs(root)
cache = TileCache(pairs, [(256, 256)] * len(pairs), find_classes(root), workers=2)
assert int(cache.tile(259)[1][0, 0]) == 1 and int(cache.tile(7)[0][0, 0, 0]) == 7
print("ok")
"""
    env = {**os.environ, "VISLAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_resizing_crops_keeps_to_cudas_dtypes(monkeypatch):
    """CUDA has no bilinear kernel for uint8 images (the CPU has one): under an interpolate that
    refuses what CUDA refuses, resized crops of uint8 tiles must still work and keep the ids."""
    import torch.nn.functional as F

    real = F.interpolate

    def cuda_rules(inp, *a, mode="nearest", **kw):
        if mode == "bilinear" and not inp.is_floating_point():
            raise NotImplementedError('"upsample_bilinear2d_out_frame" not implemented for \'Byte\'')
        return real(inp, *a, mode=mode, **kw)

    monkeypatch.setattr(F, "interpolate", cuda_rules)
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (4, 3, 40, 40), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 6, (4, 40, 40), generator=g, dtype=torch.uint8)
    img, ids = augment_tiles(x, y, torch.arange(4), torch.tensor([[40, 40]] * 4), seed=0, epoch=0, crop_size=24,
                             crop_area=(0.2, 0.9))
    assert img.shape == (4, 3, 24, 24) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 255 and set(ids.unique().tolist()) <= set(range(6))


def _ramps(n: int, h: int, w: int, stride: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Tiles whose channels 0 and 1 are the column and row ramps (value = pixel centre), and maps
    at 1/stride of the side holding the same ramps at their own pixel centres (2x2 means)."""
    cols = torch.arange(w).float().view(1, w).expand(h, w) + 0.5
    rows = torch.arange(h).float().view(h, 1).expand(h, w) + 0.5
    tile = torch.stack([cols, rows, cols + rows])
    small = torch.nn.functional.avg_pool2d(tile[None], stride)[0]
    return tile.expand(n, 3, h, w).clone(), [small[:2].clone() for _ in range(n)]


def test_soft_maps_take_their_tiles_crop_flips_and_turns():
    """Maps at half the side go through each sample's own box, flips and turns: bilinear
    resampling reproduces a ramp exactly, so the cropped map equals the cropped image's ramps
    except where a sample point falls outside the map's outer pixel centres (at most half a map
    pixel, 1 tile pixel, of clamping); one map pixel of misplacement would be off by 2."""
    n, s = 16, 40
    x, maps = _ramps(n, s, s, 2)
    y = torch.zeros(n, s, s, dtype=torch.uint8)
    img, _, soft = augment_tiles(x, y, torch.arange(n), torch.tensor([[s, s]] * n), seed=4, epoch=1, crop_size=32,
                                 crop_area=(0.2, 0.5), soft=maps)  # boxes of 18-28 px: enlarged, not antialiased
    assert soft.shape == (n, 2, 32, 32)
    err = (soft - img[:, :2]).abs()
    assert float(err.max()) <= 1.0 + 1e-4
    inner = err[:, :, 4:-4, 4:-4]  # several tiles lie strictly inside the tile: exact there
    assert float(inner.amax(dim=(1, 2, 3)).min()) < 1e-3


def test_soft_maps_without_crop_cover_each_tile_and_not_the_padding():
    x1, m1 = _ramps(1, 8, 12, 2)
    x2, m2 = _ramps(1, 12, 8, 4)  # another size, another map stride
    x = torch.zeros(2, 3, 12, 12)
    x[0, :, :8, :12], x[1, :, :12, :8] = x1[0], x2[0]
    y = torch.zeros(2, 12, 12, dtype=torch.uint8)
    img, _, soft = augment_tiles(x, y, torch.arange(2), torch.tensor([[8, 12], [12, 8]]), seed=0, epoch=0,
                                 crop_size=None, rot90=False, soft=m1 + m2)
    filled = (img[:, 2] > 0)[:, None].expand_as(soft)  # the third channel (cols + rows) is > 0 in every tile pixel
    assert int(filled[0, 0].sum()) == 96 and int(filled[1, 0].sum()) == 96
    assert float((soft[~filled]).abs().max()) == 0.0
    assert float((soft - img[:, :2])[filled].abs().max()) <= 2.0 + 1e-4  # stride 4: 2 tile pixels of clamping
    # between the maps' outer pixel centres (1 tile pixel in at stride 2, 2 at stride 4) bilinear is
    # exact: the tile eroded by that margin, wherever its mirroring put it in the padded batch
    for i, m in enumerate((1, 2)):
        tile = torch.nn.functional.pad(filled[i, 0].float()[None, None], (m, m, m, m))
        inner = -torch.nn.functional.max_pool2d(-tile, 2 * m + 1, stride=1)[0, 0] > 0.5
        assert int(inner.sum()) == {1: 6 * 10, 2: 8 * 4}[m]
        assert float((soft[i] - img[i, :2])[:, inner].abs().max()) < 1e-4


def test_soft_maps_of_oblong_tiles_of_two_sizes_follow_their_crops():
    """In a batch padded to the larger tile, each box maps to its map by its own tile's height and
    width (the padded batch's would misplace the boxes of the oblong tiles)."""
    xa, ma = _ramps(3, 24, 40, 2)
    xb, mb = _ramps(3, 40, 16, 4)
    x = torch.zeros(6, 3, 40, 40)
    x[:3, :, :24, :40], x[3:, :, :40, :16] = xa, xb
    hw = torch.tensor([[24, 40]] * 3 + [[40, 16]] * 3)
    img, _, soft = augment_tiles(x, torch.zeros(6, 40, 40, dtype=torch.uint8), torch.arange(6), hw, seed=1, epoch=0,
                                 crop_size=32, crop_area=(0.3, 0.6), soft=ma + mb)
    err = (soft - img[:, :2]).abs().amax(dim=(1, 2, 3))
    assert float(err[:3].max()) <= 1.0 + 1e-4 and float(err[3:].max()) <= 2.0 + 1e-4


def test_building_a_small_cache_keeps_the_process_threads(tmp_path):
    """A set of one work unit is decoded in this process: the one-thread setting a forked decoder
    takes must not stay behind (training after a first, uncached build ran on one core)."""
    d = make_index_set(tmp_path / "d", 5)
    desc, pairs = find_classes(d), list_pairs(d)
    sizes = [tuple(v) for v in scan_masks(pairs, expected=None, classes=desc).sizes.tolist()]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        TileCache(pairs, sizes, desc, workers=4)  # new files: built now, in this process (one unit)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_unwritable_cache_costs_memory_not_the_command(tmp_path, monkeypatch):
    """Where the cache folder cannot be written (simulated: the tests may run as root), tiles,
    mask statistics and a classification folder are decoded into memory, equal to the decoder,
    and nothing is left in the cache."""
    from vislab.data.classification import load_folder
    from conftest import write_png
    import numpy as np

    locked = tmp_path / "cache"
    locked.mkdir()
    monkeypatch.setenv("VISLAB_CACHE", str(locked))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    d = make_index_set(tmp_path / "d", 3)
    desc, pairs = find_classes(d), list_pairs(d)
    stats = scan_masks(pairs, expected=None, classes=desc)
    cache = TileCache(pairs, [tuple(v) for v in stats.sizes.tolist()], desc)
    for i, p in enumerate(pairs):
        img, ids, _ = read_pair(p, expected=None, classes=desc)
        assert torch.equal(cache.tile(i)[0], img) and torch.equal(cache.tile(i)[1], ids)
        assert int(stats.counts[i].sum()) == int((ids != IGNORE).sum())
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    written = {f"{j % 2}_{j}.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for j in range(4)}
    for name, pixels in written.items():
        write_png(imgs / name, pixels)
    data = load_folder(imgs, labelled=True)
    for f, image, label in zip(data.files, data.images, data.labels.tolist()):
        name = Path(f).name
        assert label == int(name[0]) and torch.equal(image, torch.from_numpy(written[name]).permute(2, 0, 1))
    assert len(data.files) == 4
    assert list(locked.iterdir()) == []
