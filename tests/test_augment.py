"""Batched TrivialAugment-style operations and random erasing (data/augment.py), checked against
hand-computed values, exact equivalents (a quarter turn is rot90, a whole-pixel shift is a
shifted copy), and their independence from how samples are batched."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from vislab.config import FieldError, Recipe, check_applies, load_recipe
from vislab.data import augment as A


def _img(n: int = 4, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed)).float()


def test_colour_operations_by_hand():
    x = torch.full((1, 3, 2, 2), 100.0)
    assert torch.equal(A.brightness(x, torch.tensor([1.5])), torch.full_like(x, 150.0))
    # a grey image has no saturation to change
    assert torch.allclose(A.color(x, torch.tensor([0.2])), x)
    # two pixel values 50 and 150 (grey levels), mean 100: contrast 0.5 gives 75 and 125
    y = torch.tensor([50.0, 150.0, 50.0, 150.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert torch.allclose(A.contrast(y, torch.tensor([0.5])), (100 + 0.5 * (y - 100)))
    # colour of a pure red pixel at factor 0: its luminance 0.299 * 200 in every channel
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 200.0
    assert torch.allclose(A.color(red, torch.tensor([0.0])), torch.full((1, 3, 1, 1), 0.299 * 200))
    assert torch.equal(A.posterize(torch.tensor([[[[200.0, 37.0, 255.0]]]]), torch.tensor([2])),
                       torch.tensor([[[[192.0, 0.0, 192.0]]]]))
    assert torch.equal(A.solarize(torch.tensor([[[[10.0, 128.0, 200.0]]]]), torch.tensor([128.0])),
                       torch.tensor([[[[10.0, 127.0, 55.0]]]]))
    z = torch.tensor([50.0, 100.0, 150.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert torch.allclose(A.autocontrast(z), torch.tensor([0.0, 127.5, 255.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3))


def test_sharpness_blends_with_the_smoothed_interior():
    x = torch.zeros(1, 3, 3, 3)
    x[..., 1, 1] = 130.0  # one bright centre: the kernel keeps 5/13 of it
    out = A.sharpness(x, torch.tensor([0.0]))
    assert out[0, 0, 1, 1].item() == pytest.approx(50.0)
    assert torch.equal(out[..., 0, :], x[..., 0, :])  # the border is left as is
    assert torch.allclose(A.sharpness(x, torch.tensor([1.0])), x)


def test_geometric_operations_match_exact_equivalents():
    x = _img(2, 6, 6)
    turned = A.affine(x[[0, 0]], A._matrices("rotate", torch.tensor([90.0, -90.0]), 6, 6))  # one image both ways
    assert torch.allclose(turned[0], torch.rot90(x[0], 1, (-2, -1)), atol=1e-3) or \
        torch.allclose(turned[0], torch.rot90(x[0], -1, (-2, -1)), atol=1e-3)
    assert torch.allclose(turned[0], torch.rot90(turned[1], 2, (-2, -1)), atol=1e-3)
    # a shift by 2 of 6 pixels (1/3 of the side): a shifted copy with black where nothing was
    moved = A.affine(x, A._matrices("translate_x", torch.tensor([1 / 3, -1 / 3]), 6, 6))
    assert torch.allclose(moved[0, ..., 2:], x[0, ..., :4], atol=1e-3) and moved[0, ..., :2].abs().max() < 1e-3
    assert torch.allclose(moved[1, ..., :4], x[1, ..., 2:], atol=1e-3)
    down = A.affine(x, A._matrices("translate_y", torch.tensor([1 / 3, 0.0]), 6, 6))
    assert torch.allclose(down[0, :, 2:], x[0, :, :4], atol=1e-3) and torch.allclose(down[1], x[1], atol=1e-3)
    # shear keeps the centre row (between rows 2 and 3 of 6: none), so check a shear of 0 is the identity
    assert torch.allclose(A.affine(x, A._matrices("shear_x", torch.zeros(2), 6, 6)), x, atol=1e-3)
    # on a non-square image a quarter turn of a centred square patch is still that patch turned
    wide = torch.zeros(1, 1, 4, 8)
    wide[0, 0, 1:3, 3:5] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = A.affine(wide, A._matrices("rotate", torch.tensor([90.0]), 4, 8))
    patch = t[0, 0, 1:3, 3:5]
    assert torch.allclose(patch, torch.rot90(wide[0, 0, 1:3, 3:5], 1), atol=1e-3) or \
        torch.allclose(patch, torch.rot90(wide[0, 0, 1:3, 3:5], -1), atol=1e-3)


def test_strengths_map_to_the_documented_ranges():
    """Strength s in [0, 1) and sign: enhance factor 1 +- 0.99 s, 135 s degrees, posterize to
    8 - round(6 s) bits, solarize at 255 (1 - s)."""
    half, up, down = torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([-1.0])
    x = torch.tensor([100.0, 127.0, 128.0, 203.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert torch.allclose(A.OPS["brightness"](x, half, down), x * (1 - 0.495))
    assert torch.allclose(A.OPS["solarize"](x, half, up), torch.tensor([100.0, 127.0, 127.0, 52.0]).view(1, 1, 1, 4))
    assert torch.equal(A.OPS["posterize"](x, half, up)[0, 0, 0], torch.tensor([96.0, 120.0, 128.0, 200.0]))  # 5 bits
    sq = _img(1, 6, 6)
    quarter = A.OPS["rotate"](sq, torch.tensor([90 / 135]), up)
    assert torch.allclose(quarter, torch.rot90(sq, 1, (-2, -1)), atol=1e-3) or \
        torch.allclose(quarter, torch.rot90(sq, -1, (-2, -1)), atol=1e-3)
    moved = A.OPS["translate_x"](sq, torch.tensor([1 / 3 / 0.3]), up)  # 0.3 of the side at most: here 2 of 6
    assert torch.allclose(moved[..., 2:], sq[..., :4], atol=1e-3)


def test_float_input_is_not_changed_in_place():
    x = _img(4, 8, 8)
    before = x.clone()
    out = A.trivial_augment(x, torch.arange(4), seed=0, epoch=0)
    assert torch.equal(x, before) and out.dtype == torch.float32 and not torch.equal(out, x)
    assert torch.equal(A.sharpness(x[..., :2, :], torch.tensor([0.0] * 4)), x[..., :2, :])  # too small to smooth


def test_trivial_augment_depends_only_on_seed_epoch_and_index():
    x = _img(6, 16, 16).to(torch.uint8)
    idx = torch.tensor([3, 17, 40, 41, 99, 1000])
    whole = A.trivial_augment(x, idx, seed=1, epoch=2)
    order = torch.tensor([5, 0, 3])  # the same samples in another batch, in another order
    part = A.trivial_augment(x[order], idx[order], seed=1, epoch=2)
    assert whole.dtype == torch.uint8 and torch.equal(part, whole[order])
    assert not torch.equal(A.trivial_augment(x, idx, seed=1, epoch=3), whole)
    # each image got exactly its chosen operation (recomputed here one image at a time)
    ops = A.chosen_ops(idx, seed=1, epoch=2)
    names = list(A.OPS)
    for i in range(len(idx)):
        from vislab.data.tensors import hash_uniform

        s = hash_uniform(1, 2, idx[i : i + 1], A._STRENGTH)
        sign = -1.0 if hash_uniform(1, 2, idx[i : i + 1], A._SIGN).item() < 0.5 else 1.0
        want = A.OPS[names[ops[i]]](x[i : i + 1].float(), s, torch.tensor([sign]))
        assert torch.equal(whole[i : i + 1], want.clamp(0, 255).round().to(torch.uint8)), names[ops[i]]


def test_every_operation_is_drawn_about_equally_often():
    ops = A.chosen_ops(torch.arange(13_000), seed=0, epoch=0)
    counts = torch.bincount(ops, minlength=len(A.OPS))
    assert len(counts) == len(A.OPS) and counts.min() > 900 and counts.max() < 1100


def test_random_erasing_boxes():
    n, h, w = 2000, 32, 32
    x = torch.full((n, 3, h, w), 7, dtype=torch.uint8)
    out = A.random_erase(x, torch.arange(n), seed=0, epoch=0, p=0.5, fill=(100.0, 110.0, 120.0))
    erased = (out[:, 0] == 100)
    hit = erased.flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.5) < 0.05
    assert torch.equal(out[~hit], x[~hit])
    frac = erased.flatten(1).float().mean(1)[hit]
    assert frac.min() >= 0.015 and frac.max() <= 0.36  # 2-33 % of the area, after rounding the sides
    for i in hit.nonzero().flatten()[:50].tolist():  # one filled rectangle, the same fill in every channel
        rows, cols = erased[i].any(1).nonzero().flatten(), erased[i].any(0).nonzero().flatten()
        box = erased[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and int(erased[i].sum()) == box.numel()
        assert (out[i, 1][erased[i]] == 110).all() and (out[i, 2][erased[i]] == 120).all()
    assert torch.equal(A.random_erase(x, torch.arange(n), seed=0, epoch=0, p=0.0, fill=(0.0,) * 3), x)


def test_recipe_fields_are_checked_and_cls_only(tmp_path):
    with pytest.raises(FieldError, match="augment"):
        Recipe(task="cls", augment="randaugment")
    with pytest.raises(FieldError, match="erasing"):
        Recipe(task="cls", erasing=1.5)
    with pytest.raises(FieldError, match="augment applies to cls training only"):
        check_applies(Recipe(task="seg", augment="trivial"))
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"task": "cls", "augment": "trivial", "erasing": "0.25"}))
    r = load_recipe(str(p))
    assert r.augment == "trivial" and r.erasing == 0.25 and math.isclose(r.erasing, 0.25)


def test_the_training_batch_is_augmented_as_the_recipe_says(color_classes, tmp_path):
    """The module's training batches equal augment_batch -> trivial_augment -> random_erase of
    the same samples; without the fields, augment_batch alone."""
    from vislab.data.classification import augment_batch
    from vislab.engine.classification import ClassifierModule

    x = _img(8, 32, 32).to(torch.uint8)
    idx = torch.arange(8) * 7
    y = torch.zeros(8, dtype=torch.long)
    for fields in ({}, {"augment": "trivial", "erasing": 1.0}):
        r = Recipe(task="cls", model="cifar_resnet20", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), **fields)
        module = ClassifierModule(r.to_dict(), 3, 10)
        module.trainer = type("T", (), {"training": True, "current_epoch": 3})()
        got, _, _ = ClassifierModule.on_after_batch_transfer(module, (x, y, idx), 0)
        want = augment_batch(x, idx, seed=0, epoch=3, pad=r.pad)
        if fields:
            want = A.random_erase(A.trivial_augment(want, idx, seed=0, epoch=3), idx, seed=0, epoch=3, p=1.0,
                                  fill=(127.5,) * 3)
        assert torch.allclose(got, module.prepare(want)), fields
        if fields:  # every image has a rectangle at the mean (0 after normalisation, up to uint8 rounding)
            assert ((got.abs().amax(1) < 0.5 / 255 / 0.25 + 1e-6).flatten(1).sum(1) > 0).all()
