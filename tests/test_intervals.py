"""The intervals printed beside every accuracy and mIoU: Wilson for an accuracy, a bootstrap over
files for the pooled mIoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vislab.metrics import DRAWS, bootstrap_interval, course_miou, iou_per_class, wilson_interval


def test_wilson_interval_by_hand():
    # 8 of 10 at 95 %: the textbook (0.4902, 0.9433); 0 of 10: upper end z^2/n / (1 + z^2/n)
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    z2 = 1.959964 ** 2
    assert wilson_interval(0, 10) == pytest.approx((0.0, (z2 / 10) / (1 + z2 / 10)), abs=1e-6)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_wilson_interval_covers_95_percent_of_draws():
    rng = np.random.default_rng(0)
    p, n, trials = 0.3, 60, 4000
    hits = sum(lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in rng.binomial(n, p, trials)))
    assert 0.93 <= hits / trials <= 0.97


def _per_file(rng: np.random.Generator, files: int, k: int = 7) -> torch.Tensor:
    """Confusion matrices of files of uneven size and quality."""
    confs = []
    for _ in range(files):
        labels = rng.integers(0, k, rng.integers(200, 2000))
        wrong = rng.random(labels.size) < rng.uniform(0.05, 0.5)
        preds = np.where(wrong, rng.integers(0, k - 1, labels.size), labels)
        confs.append(np.bincount(labels * k + preds, minlength=k * k).reshape(k, k))
    return torch.tensor(np.stack(confs))


def test_bootstrap_interval_matches_a_loop_over_resamples():
    """The vectorised resampling against one pooled matrix per resample, the same draws."""
    per_file = _per_file(np.random.default_rng(1), 23)
    got = bootstrap_interval(per_file, lambda c: torch.nanmean(iou_per_class(c), dim=-1), seed=5)
    gen = torch.Generator().manual_seed(5)
    values = []
    for start in range(0, DRAWS, 250):  # the draws in the chunks the implementation takes them in
        for row in torch.randint(23, (min(250, DRAWS - start), 23), generator=gen):
            values.append(course_miou(per_file[row].sum(0)))
    assert got == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-9)
    # a big folder's smaller chunks (here 7 resamples at a time) continue the same draws
    assert bootstrap_interval(per_file, lambda c: torch.nanmean(iou_per_class(c), dim=-1), seed=5,
                              cells=23 * 7) == got


def test_bootstrap_interval_behaves_like_one():
    per_file = _per_file(np.random.default_rng(2), 40)
    metric = lambda c: torch.nanmean(iou_per_class(c), dim=-1)  # noqa: E731
    lo, hi = bootstrap_interval(per_file, metric)
    assert lo < course_miou(per_file.sum(0)) < hi
    assert bootstrap_interval(per_file, metric) == (lo, hi)  # seeded
    # four times the files (the same ones again): about half as wide
    wide = hi - lo
    lo4, hi4 = bootstrap_interval(per_file.repeat(4, 1, 1), metric)
    assert 0.35 < (hi4 - lo4) / wide < 0.65
    # identical files: nothing varies
    same = per_file[:1].repeat(10, 1, 1)
    assert bootstrap_interval(same, metric) == pytest.approx((course_miou(same[0]),) * 2, abs=1e-12)
    with pytest.raises(ValueError):
        bootstrap_interval(per_file[:1], metric)
    # a metric that is NaN in every resample gives no interval
    assert all(math.isnan(v) for v in bootstrap_interval(per_file, lambda c: torch.full(c.shape[:1], math.nan)))


def test_seg_eval_of_one_file_has_no_interval(cli, tmp_path):
    """One image cannot be resampled: the JSON holds null and no interval line is printed."""
    import json

    from PIL import Image

    from vislab.data.palette import PALETTE

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, (512, 512))
    pred = np.where(rng.random(labels.shape) < 0.2, rng.integers(0, 6, labels.shape), labels)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(PALETTE.numpy()[labels]).save(tmp_path / "gt" / "0000_mask.png")
    Image.fromarray(PALETTE.numpy()[pred]).save(tmp_path / "pred" / "0000.png")
    res = cli("seg", "eval", tmp_path / "pred", tmp_path / "gt", "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "m.json").read_text())["miou_interval"] is None and "interval" not in res.out


def test_a_comparison_of_one_item_has_no_interval():
    from vislab.pipelines.scores import compared

    one = torch.tensor([1.0])
    got = compared("runs/b", "accuracy", 1.0, 0.0, one, torch.tensor([0.0]), lambda c: c, "1 images")
    assert got["difference"] == 1.0 and got["difference_interval"] is None
    nan = compared("runs/b", "miou", 0.5, 0.5, torch.ones(3), torch.ones(3), lambda c: c * math.nan, "3 files")
    assert nan["difference_interval"] is None  # undefined in every resample: no interval, no verdict
