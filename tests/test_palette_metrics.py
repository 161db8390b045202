"""The colour codec and the course mIoU: hand-computed cases and a second implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislab.data.palette import PALETTE, classes_to_mask, mask_to_classes
from vislab.metrics import confusion_matrix, course_miou, iou_per_class

from conftest import REAL, requires_real


def test_palette_round_trip_every_class():
    ids = torch.arange(7, dtype=torch.uint8).repeat(5, 1)
    rgb = classes_to_mask(ids)
    assert rgb.shape == (3, 5, 7) and rgb.dtype == torch.uint8
    back, stray = mask_to_classes(rgb)
    assert torch.equal(back, ids) and stray == 0


def test_threshold_at_128_and_the_table():
    # (R, G, B) -> class, written out by hand from the course table
    cases = {(0, 255, 255): 0, (255, 255, 0): 1, (255, 0, 255): 2, (0, 255, 0): 3, (0, 0, 255): 4,
             (255, 255, 255): 5, (0, 0, 0): 6, (128, 127, 128): 2, (127, 200, 129): 0, (255, 0, 0): 6}
    rgb = torch.tensor(list(cases), dtype=torch.uint8).T.reshape(3, 1, -1)
    ids, stray = mask_to_classes(rgb)
    assert ids.flatten().tolist() == list(cases.values())
    assert stray == 1  # pure red is in no class: unknown, and counted


def test_codes_equal_thresholds_at_128_for_every_value():
    from vislab.data.palette import mask_codes

    v = torch.arange(256, dtype=torch.uint8)
    rgb = torch.stack(torch.meshgrid(v, v, v[::17], indexing="ij")).reshape(3, 256, -1)
    bits = (rgb >= 128).long()
    want = bits[0] * 4 + bits[1] * 2 + bits[2]
    assert torch.equal(mask_codes(rgb).long(), want) and torch.equal(mask_codes(rgb.int()).long(), want)


def test_encode_refuses_ids_outside_palette():
    with pytest.raises(ValueError, match="outside 0..6"):
        classes_to_mask(torch.tensor([[0, 7]]))


def test_hand_case_unknown_pixels_are_false_positives():
    # RELIABILITY.md: target [6,6,0,0,1,1], prediction [0,0,0,0,1,1]
    conf = confusion_matrix(torch.tensor([6, 6, 0, 0, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 1]), 7)
    ious = iou_per_class(conf)
    assert float(ious[0]) == 0.5  # 2 TP / (2 TP + 2 FP on unknown pixels)
    assert float(ious[1]) == 1.0
    assert torch.isnan(ious[2:]).all()  # absent from prediction and truth
    assert course_miou(conf) == pytest.approx(0.75)  # vislab rule: absent classes leave the mean


def test_hand_case_all_classes_present():
    t = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    p = torch.tensor([0, 1, 1, 2, 3, 5, 5, 4])
    # urban 1/2, agri 1/2, rangeland 1, forest 1, water 0/2 -> 0, barren 1/3
    assert course_miou(confusion_matrix(t, p, 7)) == pytest.approx((0.5 + 0.5 + 1 + 1 + 0 + 1 / 3) / 6)


def test_red_ground_truth_counts_as_unknown_in_eval(cli, tmp_path):
    """A red GT pixel is unknown: predicting urban there is a false positive for urban."""
    from PIL import Image

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    truth = np.zeros((1, 4, 3), np.uint8)
    truth[0, :2] = (255, 0, 0)  # stray red -> unknown
    truth[0, 2:] = (0, 255, 255)  # urban
    Image.fromarray(truth).save(gt / "0001_mask.png")
    Image.fromarray(np.tile(np.array([0, 255, 255], np.uint8), (1, 4, 1))).save(pred / "0001.png")
    res = cli("seg", "eval", pred, gt, "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    assert m["iou"]["urban"] == 0.5 and m["miou"] == 0.5 and m["stray_files"] == 1 and m["stray_pixels"] == 2
    assert "1 of 1 ground-truth masks hold 2 pixels of no class" in res.out.replace("\n", " ")
    # the five classes in neither mask are left out of the mean, and the mIoU line says so
    assert m["absent"] == ["agriculture", "rangeland", "forest", "water", "barren"]
    assert ("mIoU: 0.5000 (the mean of 1 class: agriculture, rangeland, forest, water, barren are in neither the "
            "truth nor the prediction, so left out)") in " ".join(res.out.split())


def test_label_255_is_an_error_not_a_reshape_crash():
    with pytest.raises(ValueError, match="label values must lie in 0..6"):
        confusion_matrix(torch.tensor([0, 255]), torch.tensor([0, 0]), 7)


def _reference_miou(preds: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """The course's formula written independently: numpy, stacked arrays, class by class."""
    pred = np.stack(preds)
    lab = np.stack(labels)
    total = 0.0
    for c in range(6):
        tp_fp = np.sum(pred == c)
        tp_fn = np.sum(lab == c)
        tp = np.sum((pred == c) & (lab == c))
        total += tp / (tp_fp + tp_fn - tp) / 6
    return float(total)


def _numpy_decode(rgb: np.ndarray) -> np.ndarray:
    """The course's own decoding: each channel thresholded, then a chain of comparisons."""
    m = (rgb >= 128).astype(int)
    code = 4 * m[..., 0] + 2 * m[..., 1] + m[..., 2]
    out = np.full(code.shape, 6)
    for c, k in ((0, 3), (1, 6), (2, 5), (3, 2), (4, 1), (5, 7), (6, 0)):
        out[code == k] = c
    return out


@requires_real
def test_course_miou_matches_reference_on_real_validation_masks_realdata(cli, tmp_path):
    """`seg eval` on the real validation masks against a shifted copy of them vs the reference."""
    from PIL import Image

    gt_dir = REAL / "p2_data" / "validation"
    masks = sorted(gt_dir.glob("*_mask.png"))
    assert len(masks) == 257
    pred_dir, sub_gt = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    sub_gt.mkdir()
    preds, labels, red = [], [], []
    rng = np.random.default_rng(0)
    for f in masks:
        rgb = np.array(Image.open(f).convert("RGB"))
        red.append(bool(((rgb >= 128).astype(int) @ np.array([4, 2, 1]) == 4).any()))  # code 4: in no class
        (sub_gt / f.name).write_bytes(f.read_bytes())
        lab = _numpy_decode(rgb)
        pred = np.roll(lab, 9, axis=1)  # a plausible imperfect prediction
        noise = rng.random(pred.shape) < 0.05
        pred[noise] = rng.integers(0, 6, noise.sum())
        Image.fromarray(PALETTE.numpy()[pred]).save(pred_dir / f"{f.stem[:-5]}.png", compress_level=1)  # fast to write
        preds.append(pred.astype(np.uint8))  # 257 masks: 67 MB stacked, not 540 MB of int64
        labels.append(lab.astype(np.uint8))
    res = cli("seg", "eval", pred_dir, sub_gt, "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    import json

    got = json.loads((tmp_path / "m.json").read_text())["miou"]
    assert got == pytest.approx(_reference_miou(preds, labels), abs=1e-6)
    assert f"mIoU: {got:.4f}" in res.out.splitlines()
    # its interval: the images resampled, from per-image confusion matrices counted here
    from vislab.metrics import bootstrap_interval, iou_per_class

    per_image = torch.tensor(np.stack([np.bincount((t * 7 + p).ravel(), minlength=49).reshape(7, 7)
                                       for t, p in zip(labels, preds)]))
    lo, hi = bootstrap_interval(per_image, lambda c: torch.nanmean(iou_per_class(c), dim=-1))
    interval = json.loads((tmp_path / "m.json").read_text())["miou_interval"]
    assert (interval["low"], interval["high"]) == pytest.approx((lo, hi), abs=1e-6)
    assert lo < got < hi < lo + 0.1
    assert f"95% interval of the mIoU: {lo:.4f}-{hi:.4f} (percentile bootstrap over 257 files" in " ".join(res.out.split())
    stray = json.loads((tmp_path / "m.json").read_text())["stray_files"]
    assert stray == sum(red)  # the real masks' red (no class) pixels, said on the console
    assert (f"{stray} of {len(masks)} ground-truth masks hold" in res.out.replace("\n", " ")) == (stray > 0)


def test_masks_vislab_writes_carry_its_tag_and_decode_alike(tmp_path):
    """The tEXt chunk keeps the PNG valid (Pillow and torchvision read the same pixels) and tells
    vislab's masks from any other tool's."""
    from PIL import Image
    from torchvision.io import decode_png

    from vislab.io import written_by_vislab
    from vislab.data.seg_classes import deepglobe

    ids = torch.randint(0, 7, (9, 13), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    (tmp_path / "a.png").write_bytes(deepglobe().mask_png(ids))
    im = Image.open(tmp_path / "a.png")
    assert im.info.get("Software") == "vislab" and im.size == (13, 9)
    rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(mask_to_classes(rgb)[0], ids)
    assert torch.equal(decode_png(torch.frombuffer(bytearray((tmp_path / "a.png").read_bytes()), dtype=torch.uint8)), rgb)
    im.save(tmp_path / "b.png")  # the same pixels saved by Pillow: no tag
    assert written_by_vislab(tmp_path / "a.png") and not written_by_vislab(tmp_path / "b.png")
    assert not written_by_vislab(tmp_path / "none.png")
