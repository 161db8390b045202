"""P2 through the CLI: pairs and their errors, training with snapshots, predict, eval, progress."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vislab.data.palette import PALETTE
from vislab.data.segmentation import list_masks, list_pairs, read_pair, scan_masks
from vislab.errors import VislabError

from conftest import REAL, requires_real, run_vislab


def _make_pairs(d, n=6, size=64, seed=0):
    """Images whose colour tells the class: each quadrant a class, textured with noise."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        ids = np.zeros((size, size), np.int64)
        h = size // 2
        classes = rng.permutation(6)[:4]
        ids[:h, :h], ids[:h, h:], ids[h:, :h], ids[h:, h:] = classes
        img = (PALETTE.numpy()[ids] * 0.6 + rng.integers(0, 100, (size, size, 3))).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:04d}_sat.jpg", quality=95)
        Image.fromarray(PALETTE.numpy()[ids]).save(d / f"{i:04d}_mask.png")
    return d


def test_pairs_by_stem_and_errors(tmp_path):
    d = _make_pairs(tmp_path / "p", n=3)
    assert [p.stem for p in list_pairs(d)] == ["0000", "0001", "0002"]
    (d / "0001_mask.png").unlink()
    with pytest.raises(VislabError, match="0001_sat.jpg: satellite image has no mask"):
        list_pairs(d)
    d2 = _make_pairs(tmp_path / "q", n=2)
    (d2 / "0000_sat.jpg").unlink()
    with pytest.raises(VislabError, match="0000_mask.png: mask has no satellite image"):
        list_pairs(d2)
    d3 = _make_pairs(tmp_path / "r", n=2)  # a mask saved as JPEG: its edges would become other classes
    (d3 / "0001_mask.png").rename(d3 / "0001_mask.jpg")
    for read in (list_pairs, list_masks):
        with pytest.raises(VislabError) as err:
            read(d3)
        assert str(err.value) == (f"{d3 / '0001_mask.jpg'}: mask is a JPEG (1 such file): lossy compression changes "
                                  "the colours and class ids at class edges; save masks as PNG")


def test_duplicate_stems_and_stray_names_are_said(tmp_path, capsys):
    d = _make_pairs(tmp_path / "p", n=2)
    Image.open(d / "0000_sat.jpg").save(d / "0003.jpg")  # neither _sat nor _mask: skipped, and said
    (d / "README.txt").write_text("tiles")
    assert [p.stem for p in list_pairs(d)] == ["0000", "0001"]
    err = " ".join(capsys.readouterr().err.split())
    assert "skipped 1 image(s) named neither <stem>_sat nor <stem>_mask (e.g. 0003.jpg)" in err
    assert "skipped 1 file(s) that are not" in err and "README.txt" in err
    Image.open(d / "0000_sat.jpg").save(d / "0000_sat.png")  # two images for one stem
    with pytest.raises(VislabError, match="0000_sat.png: two satellite images share the stem 0000 "
                                          r"\(0000_sat.jpg and 0000_sat.png\)"):
        list_pairs(d)


def test_bmp_tiles_decode_and_16_bit_tiles_are_refused(tmp_path):
    """torchvision.io does not decode BMP: read_rgb falls back to Pillow, pixel for pixel; a
    16-bit PNG would wrap around in a uint8 cache, so it is refused by name."""
    from vislab.data.images import read_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "t_sat.bmp")
    assert torch.equal(read_rgb(tmp_path / "t_sat.bmp"), torch.from_numpy(rgb).permute(2, 0, 1))
    Image.fromarray(np.full((8, 8), 300, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(VislabError, match=r"deep\.png: .*vislab reads 8 bits per channel"):
        read_rgb(tmp_path / "deep.png")
    (tmp_path / "bad.bmp").write_bytes(b"BM" + bytes(10))
    with pytest.raises(VislabError, match=r"bad\.bmp: not a decodable image"):
        read_rgb(tmp_path / "bad.bmp")


def test_index_masks_read_by_the_colour_rule_are_refused(tmp_path, cli):
    """Grey masks of class indices (1, 2) with no classes.yaml: the course's colour rule would read
    every pixel as unknown, so each such mask is refused by name (training, before it writes a run
    folder; evaluation of predicted masks too); a folder of all-black masks (ids all 0) reads as
    all unknown and is refused as a folder."""
    from vislab.data.seg_classes import deepglobe

    d = _make_pairs(tmp_path / "p", n=2, size=64)
    for i in range(2):
        Image.fromarray(np.full((64, 64), i + 1, np.uint8)).save(d / f"{i:04d}_mask.png")
    with pytest.raises(VislabError, match=r"0000_mask\.png: no value reaches 128 \(the largest is 1\).*mask_format: index"):
        scan_masks(list_pairs(d), expected=None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "input_hw": [64, 64]}))
    res = cli("seg", "train", d, "--recipe", recipe, "--out", tmp_path / "run")
    assert res.code == 2 and "0000_mask.png: no value reaches 128" in res.err, res.err
    assert not (tmp_path / "run").exists()
    preds = tmp_path / "pred"
    preds.mkdir()
    for i in range(2):  # the course's colour masks as ground truth, class ids as predictions
        Image.fromarray(np.full((64, 64), 3, np.uint8)).save(preds / f"{i:04d}.png")
    truth = _make_pairs(tmp_path / "truth", n=2, size=64)
    res = cli("seg", "eval", preds, truth)
    assert res.code == 2 and f"{preds / '0000.png'}: no value reaches 128 (the largest is 3)" in res.err

    for i in range(2):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(d / f"{i:04d}_mask.png")
    stats = scan_masks(list_pairs(d), expected=None)
    with pytest.raises(VislabError, match=r"no pixel of its 2 masks is in a scored class .*mask_format: index"):
        stats.check_labelled(d, deepglobe())
    stats.counts[1, 0] = 1  # one land-cover pixel is enough
    stats.check_labelled(d, deepglobe())


def test_wrong_sizes_are_named(tmp_path):
    d = _make_pairs(tmp_path / "p", n=1, size=64)
    pair = list_pairs(d)[0]
    with pytest.raises(VislabError, match="image is 64x64, expected 512x512; with no classes.yaml beside it the "
                                          "folder is read as the course's land-cover set"):
        read_pair(pair)
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(d / "0000_mask.png")
    with pytest.raises(VislabError, match="0000_mask.png: mask is 64x32, expected 64x64"):
        read_pair(pair, expected=None)


def test_course_masks_with_blended_colours_are_refused(tmp_path, cli):
    """A course mask resized with smoothing holds colours between the code's: the threshold would
    read them as some class without a word, so the mask is refused, naming the first such pixel and
    the count (hand-placed: a 3x2 block of one colour, one grey pixel elsewhere); pure red passes."""
    from vislab.data.seg_classes import deepglobe

    d = _make_pairs(tmp_path / "p", n=2, size=64)
    mask = np.array(Image.open(d / "0001_mask.png"))
    mask[10:12, 20:23] = (123, 45, 67)
    mask[40, 5] = (200, 200, 200)
    mask[0, 0] = (255, 0, 0)
    Image.fromarray(mask).save(d / "0001_mask.png")
    said = r"0001_mask\.png: colour \[123, 45, 67\] \(at x=20, y=10\) is not a colour of the course's code \(7 such pixels;"
    with pytest.raises(VislabError, match=said):
        deepglobe().read_mask(d / "0001_mask.png")
    pred = tmp_path / "pred"  # the blended mask as a prediction of a clean truth: refused, not scored
    pred.mkdir()
    Image.fromarray(mask).save(pred / "0001.png")
    truth = _make_pairs(tmp_path / "t", n=2, size=64)
    (truth / "0000_mask.png").unlink()
    (truth / "0000_sat.jpg").unlink()
    res = cli("seg", "eval", pred, truth)
    assert res.code == 2 and f"{pred / '0001.png'}: colour [123, 45, 67] (at x=20, y=10)" in res.err, res.err
    assert "describe a data set of your own in a classes.yaml (README, own data; seg train and seg eval also" in \
        " ".join(res.err.split())  # the colours may be another data set's, read as the course's for want of a file
    mask[10:12, 20:23] = (255, 255, 0)
    mask[40, 5] = (255, 255, 255)
    Image.fromarray(mask).save(d / "0001_mask.png")
    ids, stray = deepglobe().read_mask(d / "0001_mask.png")
    assert stray == 1 and int(ids[10, 20]) == 1 and int(ids[40, 5]) == 5 and int(ids[0, 0]) == 6


def test_stray_red_pixels_are_counted_and_reported(tmp_path):
    d = _make_pairs(tmp_path / "p", n=2)
    m = np.array(Image.open(d / "0001_mask.png"))
    m[:3, :1] = (255, 0, 0)
    Image.fromarray(m).save(d / "0001_mask.png")
    stats = scan_masks(list_pairs(d), expected=None)
    assert stats.stray.tolist() == [0, 3]
    assert stats.counts.sum() == 2 * 64 * 64 and stats.counts[1, 6] >= 3
    assert "0001 (3)" in stats.stray_report(d)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    train = _make_pairs(root / "train", n=8)
    mask = np.array(Image.open(train / "0003_mask.png"))
    mask[5, 10:14] = (255, 0, 0)  # 4 stray red pixels: unknown, reported in results.json
    Image.fromarray(mask).save(train / "0003_mask.png")
    val = _make_pairs(root / "val", n=3, seed=1)
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 3, "batch_size": 2,
                                      "lr": 0.003, "optimizer": "adamw", "holdout": 0.25, "loss": "ce+dice",
                                      "crop_size": 48, "input_hw": [64, 64], "infer_scale": 0.75,
                                      "calibrate": True}))
    assert run_vislab("seg", "train", train, "--recipe", recipe, "--out", root / "run",
                      "--val-dir", val, "--snapshot", "0001,0002", "--ema", "0.8") == 0
    return root


def test_training_writes_run_folder_and_snapshots(seg_run, tmp_path):
    run = seg_run / "run"
    result = json.loads((run / "results.json").read_text())
    assert 0 <= result["val_miou"] <= 1 and result["holdout_miou"] is not None
    assert result["train_masks"] == {"stray_files": 1, "stray_pixels": 4, "stray_masks": {"0003": 4}}
    # calibrate: true fitted offsets for best.ckpt on the held-out pairs (every 2nd pixel), and the
    # validation used them; on every pixel the unfitted score is the held-out mIoU of training
    cal = result["calibration"]
    assert cal["files"] == 2 and cal["miou_after"] >= cal["miou_before"] == pytest.approx(result["holdout_miou"], abs=0.01)
    from vislab.pipelines.seg_scores import calibrate

    shutil.copy(run / "best.ckpt", tmp_path / "best.ckpt")
    full = calibrate(tmp_path / "best.ckpt", seg_run / "train", stride=1)
    assert full["miou_before"] == pytest.approx(result["holdout_miou"], abs=1e-4)
    assert json.loads((run / "best.offsets.json").read_text())["offsets"] == cal["offsets"]
    # the validation applied them; offsets the cross-fit rejected (all 0) are none to apply
    assert result["val"].get("offsets") == (None if cal["offsets_dropped"] else cal["offsets"])
    what = "calibration on the held-out pairs" if cal["offsets_dropped"] else "class offsets fitted on the held-out pairs"
    said = f"{what}: mIoU {cal['miou_before']:.4f} -> {cal['miou_after']:.4f}"
    assert said in (run / "changes.txt").read_text() and any(said in line for line in result["changes"])
    for e in (1, 2, 3):
        for stem in ("0001", "0002"):
            img = np.array(Image.open(run / "snapshots" / f"epoch_{e:03d}" / f"{stem}.png"))
            assert img.shape == (64, 64, 3)
            colours = {tuple(c) for c in img.reshape(-1, 3).tolist()}
            assert colours <= {tuple(c) for c in PALETTE.tolist()}
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["vislab"]["task"] == "seg" and "rng" in ckpt
    # --ema: the average is what loads for eval/predict, with the recipe's evaluation scale
    from vislab.models.checkpoints import load_network

    model, _ = load_network(run / "last.ckpt", task="seg")
    sd = ckpt["state_dict"]
    assert all(torch.equal(v, sd["ema.module." + k]) for k, v in model.state_dict().items())
    assert model.scale == 0.75


def test_predict_names_sizes_colours_and_eval_agree(cli, seg_run, tmp_path):
    val = seg_run / "val"
    res = cli("seg", "predict", seg_run / "run", val, tmp_path / "pred")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["0000_mask.png", "0001_mask.png", "0002_mask.png"]
    # one image file: its mask alone, the same as the folder's prediction wrote
    res = cli("seg", "predict", seg_run / "run", val / "0001_sat.jpg", tmp_path / "one")
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["0001_mask.png"]
    assert np.array_equal(np.array(Image.open(tmp_path / "one" / "0001_mask.png")),
                          np.array(Image.open(tmp_path / "pred" / "0001_mask.png")))
    res = cli("seg", "eval", tmp_path / "pred", val, "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    from_files = json.loads((tmp_path / "m.json").read_text())["miou"]
    res = cli("seg", "score", seg_run / "run", val)
    assert res.code == 0 and res.out.strip().endswith(f"mIoU: {from_files:.4f}")
    # stray colours in the truth: unknown pixels, said on the console and counted in the JSON, and
    # both scoring paths count them alike
    stray = tmp_path / "stray"
    shutil.copytree(val, stray)
    mask = np.array(Image.open(stray / "0000_mask.png").convert("RGB"))
    mask[:1, :5] = (255, 0, 0)
    Image.fromarray(mask).save(stray / "0000_mask.png")
    res = cli("seg", "score", seg_run / "run", stray, "--json", tmp_path / "s.json")
    scored = json.loads((tmp_path / "s.json").read_text())
    assert res.code == 0 and scored["stray_files"] == 1 and scored["stray_pixels"] == 5
    assert scored["stray_masks"] == {"0000": 5}
    assert ("1 of 3 ground-truth masks hold 5 pixels of no class; they count as unknown (a class predicted there "
            "is a false positive)") in " ".join(res.out.split())
    assert cli("seg", "eval", tmp_path / "pred", stray, "--json", tmp_path / "m2.json").code == 0
    from_files = json.loads((tmp_path / "m2.json").read_text())
    assert from_files["miou"] == scored["miou"] and from_files["stray_masks"] == {"0000": 5}


def test_calibrated_offsets_are_what_score_and_predict_apply(cli, seg_run, tmp_path):
    """Offsets fitted on the held-out split are stored beside a copy of the checkpoint; the mIoU
    that the search reports equals what `seg score` measures with them (another code path), masks
    written by `seg predict` score the same, and --no-offsets gives the unfitted number."""
    from vislab.pipelines.seg_scores import calibrate, evaluate_checkpoint

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(seg_run / "run" / "best.ckpt", ckpt)
    res = cli("seg", "calibrate", ckpt, seg_run / "train")
    assert res.code == 0, res.err
    assert "mIoU on 2 holdout pairs" in res.out and (tmp_path / "best.offsets.json").is_file()
    # the check on pairs the offsets were not fitted on (one pair each way): printed, recorded, and a
    # warning exactly when it is below the mIoU without offsets, and then the offsets are not kept
    # (zeros, and the scale the plain mIoU prefers) unless --keep-offsets
    rec = json.loads((tmp_path / "best.offsets.json").read_text())
    said = " ".join(res.out.split())
    assert f"{rec['miou_crossfit']:.4f} with each half of the pairs predicted with the other's offsets" in said
    plain = {s["scale"]: s["miou_before"] for s in rec["scales"]}
    fitted = max(rec["scales"], key=lambda s: s["miou_after"])["scale"]  # the scale the search kept with offsets
    hurt = rec["miou_crossfit"] < plain[fitted]
    if abs(rec["miou_crossfit"] - plain[fitted]) > 2e-6:  # beyond the record's rounding
        assert ("applied to the other lower the mIoU" in " ".join(res.err.split())) == hurt
        assert rec["offsets_dropped"] == hurt and ("offsets: none kept" in said) == hurt
    if rec["offsets_dropped"]:
        assert rec["offsets"] == [0.0] * 7 and rec["miou_after"] == max(plain.values())
        assert plain[rec["infer_scale"]] == max(plain.values()) and rec["crossfit_scale"] == fitted
        assert f"no class offsets kept: at evaluation scale {fitted:g}, {rec['miou_crossfit']:.4f}" in said
        kept = cli("seg", "calibrate", ckpt, seg_run / "train", "--keep-offsets")
        rec = json.loads((tmp_path / "best.offsets.json").read_text())
        assert kept.code == 0 and "kept, as --keep-offsets asks" in " ".join(kept.err.split())
        assert not rec["offsets_dropped"] and rec["infer_scale"] == fitted and any(rec["offsets"])
    else:
        assert any(rec["offsets"]) and rec["infer_scale"] == fitted
    assert "replaces" not in res.err and "trained on" not in res.err
    # every training pair (the trained-on ones among them): said, recorded, and the earlier fit named
    res = cli("seg", "calibrate", ckpt, seg_run / "train", "--split", "all")
    said = " ".join(res.err.split())
    assert res.code == 0 and "these are the pairs best.ckpt was trained on" in said
    assert f"replaces the offsets fitted on 2 pairs of {seg_run / 'train'} (--split holdout)" in said
    assert json.loads((tmp_path / "best.offsets.json").read_text())["trained_on"] is True

    val = seg_run / "val"
    rec = calibrate(ckpt, val, split="all", stride=1, keep_offsets=True)
    assert rec["miou_after"] > rec["miou_before"]  # the barely trained network leaves room to gain
    assert rec["trained_on"] is False
    fitted = evaluate_checkpoint(ckpt, val)
    assert fitted["offsets"] == rec["offsets"]
    assert fitted["miou"] == pytest.approx(rec["miou_after"], abs=2e-3)
    assert evaluate_checkpoint(ckpt, val, offsets=False)["miou"] == pytest.approx(rec["miou_before"], abs=2e-3)
    assert cli("seg", "predict", ckpt, val, tmp_path / "pred", "--engine", "torch").code == 0
    assert cli("seg", "eval", tmp_path / "pred", val, "--json", tmp_path / "m.json").code == 0
    assert json.loads((tmp_path / "m.json").read_text())["miou"] == fitted["miou"]

    blob = torch.load(ckpt, weights_only=True)
    blob["vislab"]["recipe"]["holdout"] = 0.0
    torch.save(blob, tmp_path / "all.ckpt")
    res = cli("seg", "calibrate", tmp_path / "all.ckpt", seg_run / "train")
    assert res.code != 0 and "all.ckpt" in res.err and "without a held-out split" in res.err


def test_a_calibration_after_training_is_recorded_in_the_run_folder_with_its_views(cli, seg_run, tmp_path):
    """`seg calibrate` on a run folder changes what every later score, prediction and export of it
    applies, so its line goes into the run's changes.txt (as a calibration during training does),
    naming the views it averaged; a score under other views says the offsets were fitted under those."""
    from vislab.calibration import fitted_on
    from vislab.pipelines.seg_scores import calibration_line

    run = tmp_path / "run"
    shutil.copytree(seg_run / "run", run)
    before = (run / "changes.txt").read_text().splitlines()
    earlier = fitted_on(run / "best.ckpt")  # the calibration after training (calibrate: true)
    assert earlier.startswith("the offsets fitted on 2 pairs of")
    res = cli("seg", "calibrate", run, seg_run / "val", "--split", "all", "--tta", "flip", "--keep-offsets")
    assert res.code == 0, res.err
    rec = json.loads((run / "best.offsets.json").read_text())
    lines = (run / "changes.txt").read_text().splitlines()
    assert lines[:-1] == before and lines[-1] == f"{calibration_line(rec)}; it replaces {earlier}"
    assert lines[-1].startswith(f"class offsets fitted on the pairs of {(seg_run / 'val').resolve()} under --tta flip: ")
    # another checkpoint of the run: its line names it
    assert cli("seg", "calibrate", run / "last.ckpt", seg_run / "val", "--split", "all").code == 0
    assert (run / "changes.txt").read_text().splitlines()[-1].startswith("last.ckpt: ")
    res = cli("seg", "score", run, seg_run / "val")
    assert res.code == 0 and "fitted under --tta flip, applied here under --tta none" in " ".join(res.err.split())
    res = cli("seg", "score", run, seg_run / "val", "--tta", "flip")
    assert res.code == 0 and "fitted under" not in res.err


def test_offsets_fitted_on_a_single_pair_are_not_kept(cli, seg_run, tmp_path):
    """One pair leaves nothing to check its offsets on (the cross-fit needs two): they are not kept,
    said on the console and in the record, unless --keep-offsets."""
    one = tmp_path / "one"
    one.mkdir()
    for f in sorted((seg_run / "val").glob("0000_*")):
        shutil.copy(f, one / f.name)
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(seg_run / "run" / "best.ckpt", ckpt)
    res = cli("seg", "calibrate", ckpt, one, "--split", "all")
    assert res.code == 0, res.err
    rec = json.loads((tmp_path / "best.offsets.json").read_text())
    assert rec["files"] == 1 and rec["miou_crossfit"] is None and rec["offsets_dropped"] is True
    assert rec["offsets"] == [0.0] * 7
    said = " ".join((res.out + res.err).split())
    assert "offsets and an evaluation scale fitted on a single pair cannot be checked on another: not kept" in said
    assert "offsets: none kept (all 0)" in said and "no class offsets kept, and the trained evaluation scale stays: fitted on a single pair" in said
    assert rec["infer_scale"] == rec["trained_scale"]  # a scale chosen on one pair is as unchecked as its offsets
    res = cli("seg", "calibrate", ckpt, one, "--split", "all", "--keep-offsets")
    rec = json.loads((tmp_path / "best.offsets.json").read_text())
    assert res.code == 0 and rec["offsets_dropped"] is False
    assert "kept, as --keep-offsets asks" in " ".join(res.err.split())


@pytest.mark.parametrize("case", ["kept", "dropped", "kept-asked", "tie"])
def test_calibration_keeps_offsets_only_when_the_cross_fit_does_not_reject_them(seg_run, tmp_path, monkeypatch, capsys,
                                                                               case):
    """The rule, on stated numbers per evaluation scale (the pixel sampling and the fits replaced):
    the scale with the best mIoU with offsets is kept with its offsets when their cross-fit is not
    below that scale's mIoU without them; else zeros and the scale with the best mIoU without
    offsets (a tie: the trained 0.75), unless keep_offsets."""
    from vislab.pipelines import seg_scores

    plain = {0.5: 0.50, 0.75: 0.52, 1.0: 0.54 if case != "tie" else 0.52}
    after = {0.5: 0.60, 0.75: 0.58, 1.0: 0.56}
    crossfit = {0.5: 0.55 if case == "kept" else 0.45, 0.75: 0.57, 1.0: 0.55}
    fitted = torch.tensor([0.5, -0.25, 0, 0, 0, 0, 0])

    monkeypatch.setattr(seg_scores, "_sampled_logp", lambda model, *a, **k: (torch.tensor(model.scale), None))
    monkeypatch.setattr(seg_scores, "fit_offsets", lambda at, _, **k: (fitted, plain[float(at)], after[float(at)]))
    monkeypatch.setattr(seg_scores, "crossfit_miou", lambda at, _, **k: crossfit[float(at)])
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(seg_run / "run" / "best.ckpt", ckpt)
    rec = seg_scores.calibrate(ckpt, seg_run / "val", split="all", scales=[0.5, 1.0], keep_offsets=case == "kept-asked")
    stored = json.loads((tmp_path / "best.offsets.json").read_text())
    assert stored["offsets"] == rec["offsets"] and stored["infer_scale"] == rec["infer_scale"]
    assert rec["miou_before"] == plain[0.75] and rec["crossfit_scale"] == 0.5
    assert rec["miou_crossfit"] == crossfit[0.5]
    said = " ".join(capsys.readouterr().err.split())
    assert ("lower the mIoU at evaluation scale 0.5 (0.5000 without offsets, 0.4500 with)" in said) == (case != "kept")
    assert ("kept, as --keep-offsets asks" in said) == (case == "kept-asked")
    if case in ("kept", "kept-asked"):
        assert (rec["infer_scale"], rec["miou_after"], rec["offsets_dropped"]) == (0.5, 0.60, False)
        assert rec["offsets"] == fitted.tolist()
    else:
        best_plain = 1.0 if case == "dropped" else 0.75  # the tie goes to the trained scale
        assert (rec["infer_scale"], rec["miou_after"], rec["offsets_dropped"]) == (best_plain, plain[best_plain], True)
        assert rec["offsets"] == [0.0] * 7


def test_calibration_chooses_the_evaluation_scale_and_score_predict_export_apply_it(cli, seg_run, tmp_path):
    """The scale search: each scale's unfitted mIoU equals `seg score --no-offsets` of a copy of the
    checkpoint whose recipe predicts at that scale (another code path), the kept scale is the best
    with offsets; a calibration's scale is what score, predict (both engines, the ONNX cache keyed
    by it) and export use."""
    from vislab.calibration import save_offsets
    from vislab.pipelines.seg_scores import calibrate, evaluate_checkpoint

    val = seg_run / "val"
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(seg_run / "run" / "best.ckpt", ckpt)
    rec = calibrate(ckpt, val, split="all", stride=1, scales=[0.5, 1.0], keep_offsets=True)
    assert [r["scale"] for r in rec["scales"]] == [0.5, 0.75, 1.0]  # the trained 0.75 is always tried
    kept = max(rec["scales"], key=lambda r: r["miou_after"])
    assert rec["infer_scale"] == kept["scale"] and rec["miou_after"] == kept["miou_after"]
    assert rec["miou_before"] == rec["scales"][1]["miou_before"] and rec["trained_scale"] == 0.75
    blob = torch.load(ckpt, weights_only=True)
    copies = {}
    for r in rec["scales"]:
        blob["vislab"]["recipe"]["infer_scale"] = r["scale"]
        copies[r["scale"]] = tmp_path / f"s{r['scale']}.ckpt"
        torch.save(blob, copies[r["scale"]])
        assert evaluate_checkpoint(copies[r["scale"]], val, offsets=False)["miou"] == pytest.approx(
            r["miou_before"], abs=2e-3)
    assert evaluate_checkpoint(ckpt, val)["miou"] == pytest.approx(rec["miou_after"], abs=2e-3)

    # a calibration at scale 1.0 with zero offsets is the same model as the copy trained for 1.0
    save_offsets(ckpt, torch.zeros(7), infer_scale=1.0)
    full = evaluate_checkpoint(copies[1.0], val, offsets=False)
    assert evaluate_checkpoint(ckpt, val)["confusion"] == full["confusion"]
    assert evaluate_checkpoint(ckpt, val, offsets=False)["confusion"] == evaluate_checkpoint(copies[0.75], val, offsets=False)["confusion"]
    res = cli("seg", "score", ckpt, val)
    assert res.code == 0 and "evaluation scale 1 (trained 0.75)" in " ".join(res.err.split())
    masks = {}
    for engine, scale in (("onnx", 1.0), ("torch", 1.0), ("onnx", 0.5)):
        save_offsets(ckpt, torch.zeros(7), infer_scale=scale)
        assert cli("seg", "predict", ckpt, val, tmp_path / f"{engine}{scale}", "--engine", engine).code == 0
        assert cli("seg", "eval", tmp_path / f"{engine}{scale}", val, "--json", tmp_path / "m.json").code == 0
        masks[engine, scale] = json.loads((tmp_path / "m.json").read_text())["confusion"]
    assert masks["onnx", 1.0] == masks["torch", 1.0] == full["confusion"]
    assert masks["onnx", 0.5] == evaluate_checkpoint(copies[0.5], val, offsets=False)["confusion"]
    res = cli("export", ckpt, tmp_path / "m.onnx")
    assert res.code == 0, res.err
    from vislab.export import OnnxNet

    assert OnnxNet(tmp_path / "m.onnx").meta["recipe"]["infer_scale"] == 0.5
    assert cli("seg", "predict", tmp_path / "m.onnx", val, tmp_path / "from_onnx").code == 0
    assert cli("seg", "eval", tmp_path / "from_onnx", val, "--json", tmp_path / "m.json").code == 0
    assert json.loads((tmp_path / "m.json").read_text())["confusion"] == masks["onnx", 0.5]


def test_calibrate_refuses_bad_scales(cli, seg_run, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(seg_run / "run" / "best.ckpt", ckpt)
    res = cli("seg", "calibrate", ckpt, seg_run / "val", "--split", "all", "--scales", "0.5,big")
    assert res.code == 2 and "--scales: '0.5,big' is not a comma-separated list of numbers" in res.err
    res = cli("seg", "calibrate", ckpt, seg_run / "val", "--split", "all", "--scales", "0.5,0")
    assert res.code == 2 and "--scales: 0 is not in (0, 8]" in res.err
    res = cli("seg", "calibrate", ckpt, seg_run / "val", "--split", "all", "--scales", "0.5,1,0.50")
    assert res.code == 2 and "--scales: '0.5,1,0.50' lists the scale 0.5 twice" in res.err
    assert not (tmp_path / "best.offsets.json").exists()


def test_predict_keeps_odd_sizes_and_plain_names(cli, seg_run, tmp_path):
    d = tmp_path / "test"
    d.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(d / "0042.jpg")
    res = cli("seg", "predict", seg_run / "run", d, tmp_path / "out", "--tta", "flip")
    assert res.code == 0, res.err
    out = Image.open(tmp_path / "out" / "0042.png")
    assert out.size == (500, 375) and out.mode == "RGB"
    res = cli("seg", "predict", seg_run / "run", d, tmp_path / "out2", "--tta", "shift")  # P1's only
    assert res.code == 2 and "unknown --tta 'shift'; choose none or flip or d4" in res.err
    assert not (tmp_path / "out2").exists()
    res = cli("seg", "predict", seg_run / "run", d, tmp_path / "out")  # again: the earlier mask is replaced, and said
    assert res.code == 0 and "1 mask of an earlier prediction replaced" in " ".join(res.err.split())
    assert "not from this prediction" not in res.err
    gt = tmp_path / "gt"  # a folder of plain ground-truth masks (a GT_DIR of `seg eval`), no earlier prediction
    gt.mkdir()
    Image.open(tmp_path / "out" / "0042.png").save(gt / "0042.png")  # the same pixels, saved by another tool
    truth = (gt / "0042.png").read_bytes()
    res = cli("seg", "predict", seg_run / "run", d, gt)
    assert res.code == 2 and (f"{gt}: holds 1 mask this prediction would replace (e.g. 0042.png) that this vislab did "
                              "not write (ground truth, another tool's") in " ".join(res.err.split())
    assert (gt / "0042.png").read_bytes() == truth and sorted(p.name for p in gt.iterdir()) == ["0042.png"]
    Image.open(tmp_path / "out" / "0042.png").save(tmp_path / "out" / "0007.png")  # a mask of another prediction
    res = cli("seg", "predict", seg_run / "run", d, tmp_path / "out")
    assert res.code == 0 and (f"{tmp_path / 'out'}: 1 other mask there (e.g. 0007.png) not from this prediction; "
                              "`seg eval` of this folder would score them too") in " ".join(res.err.split())
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    res = cli("seg", "predict", seg_run / "run", d, d)  # into its own folder
    assert res.code == 2 and f"{d}: is the folder of the input images" in res.err
    Image.open(d / "0042.jpg").save(d / "0042.png")  # two images, one output name
    res = cli("seg", "predict", seg_run / "run", d, tmp_path / "out3")
    assert res.code == 2 and "0042.png: and 0042.jpg would both be predicted into 0042.png" in res.err
    assert not (tmp_path / "out3").exists()
    (d / "0042.png").unlink()
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    # the masks/ folder of an images/ + masks/ data set holds ground truth, not an earlier prediction
    truth = tmp_path / "set" / "masks"
    truth.mkdir(parents=True)
    (tmp_path / "set" / "images").mkdir()
    Image.fromarray(np.zeros((375, 500, 3), np.uint8)).save(truth / "0042.png")
    kept = (truth / "0042.png").read_bytes()
    res = cli("seg", "predict", seg_run / "run", d, truth)
    assert res.code == 2 and f"{truth}: is the masks/ folder of a data set (beside images/)" in " ".join(res.err.split())
    assert (truth / "0042.png").read_bytes() == kept
    # nor into the data set's root, beside images/ and masks/: its layout would become ambiguous
    res = cli("seg", "predict", seg_run / "run", d, truth.parent)
    assert res.code == 2 and " ".join(res.err.split()) == (
        f"vislab: error: {truth.parent}: holds a data set (images/ + masks/): masks written beside them would make its "
        "layout ambiguous, and every command would refuse it; write them to another folder")
    assert sorted(f.name for f in truth.parent.iterdir()) == ["images", "masks"]


def test_eval_counts_red_pixels_in_predictions(cli, tmp_path):
    """The course rule reads predictions as its evaluator does; red pixels (no class) count as
    unknown, and are said and counted."""
    d = _make_pairs(tmp_path / "gt", n=2, size=16)
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in range(2):
        mask = np.array(Image.open(d / f"{i:04d}_mask.png"))
        if i == 1:
            mask[:2, :3] = (255, 0, 0)  # 6 red pixels
        Image.fromarray(mask).save(pred / f"{i:04d}_mask.png")
    res = cli("seg", "eval", pred, d, "--json", tmp_path / "e.json")
    assert res.code == 0, res.err
    assert "1 predicted masks hold 6 red pixels" in " ".join(res.err.split())
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["prediction_stray_pixels"] == 6 and got["pixel_accuracy"] == pytest.approx(1 - 6 / (2 * 16 * 16))


def test_flip_tta_of_flip_equivariant_model_equals_plain():
    from vislab.pipelines.seg_predict import predict_probs

    class Equivariant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 7, 1)

        def forward(self, x):
            return self.conv(x)

    model = Equivariant().eval()
    meta = {"mean": [0.5] * 3, "std": [0.5] * 3}
    x = torch.randint(0, 255, (2, 3, 16, 24), dtype=torch.uint8)
    plain = predict_probs(model, meta, x, tta="none")
    assert torch.allclose(predict_probs(model, meta, x, tta="flip"), plain, atol=1e-6)
    assert torch.allclose(predict_probs(model, meta, x, tta="d4"), plain, atol=1e-6)


def test_batched_colour_jitter_equals_torchvision_per_image():
    """jitter_colours against torchvision's own adjust_* functions, image by image, with the
    factors the hash draws; and a sample's jitter does not depend on its batch."""
    import torchvision.transforms.v2.functional as TF

    from vislab.data.tensors import hash_uniform
    from vislab.data.segmentation import jitter_colours

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (4, 3, 20, 28), dtype=torch.uint8, generator=g)
    x[0] = 250  # saturates under brightness > 1: the clamps matter
    idx = torch.tensor([7, 2, 11, 5])
    got = jitter_colours(x, idx, seed=4, epoch=3, strength=0.3)
    assert got.dtype == torch.float32 and got.min() >= 0 and got.max() <= 255
    for i in range(4):
        b, c, s = (0.7 + 0.6 * float(hash_uniform(4, 3, idx[i:i + 1], k)) for k in (11, 12, 13))
        ref = x[i].float() / 255
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(ref, b), c), s)
        torch.testing.assert_close(got[i] / 255, ref, atol=1e-5, rtol=0)
    swapped = jitter_colours(x[[2, 0]], idx[[2, 0]], seed=4, epoch=3, strength=0.3)
    torch.testing.assert_close(swapped, got[[2, 0]])
    assert not torch.allclose(jitter_colours(x, idx, seed=4, epoch=4, strength=0.3), got)


def test_eval_missing_extra_and_size_mismatch(cli, seg_run, tmp_path):
    val = seg_run / "val"
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in val.glob("*_mask.png"):
        shutil.copy(f, pred / f.name.replace("_mask", ""))
    assert cli("seg", "eval", pred, val).out.strip().endswith("mIoU: 1.0000")
    (pred / "0002.png").unlink()
    res = cli("seg", "eval", pred, val)
    assert res.code == 2 and "no prediction for 1 ground-truth masks, e.g. 0002_mask.png" in res.err
    shutil.copy(val / "0002_mask.png", pred / "0002.png")
    shutil.copy(val / "0002_mask.png", pred / "0099.png")
    res = cli("seg", "eval", pred, val)
    assert res.code == 2 and "0099.png: prediction has no ground truth" in res.err
    (pred / "0099.png").unlink()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(pred / "0001.png")
    res = cli("seg", "eval", pred, val)
    assert res.code == 2 and "0001.png: mask is 10x10, expected 64x64" in res.err


def test_progress_figure(cli, seg_run, tmp_path):
    res = cli("seg", "progress", seg_run / "run", "--out", tmp_path / "masks.png")
    assert res.code == 0, res.err
    img = Image.open(tmp_path / "masks.png")
    assert img.size[0] > img.size[1]  # 2 rows x 5 columns
    res = cli("seg", "progress", seg_run / "run", "--out", tmp_path / "m2.png", "--epochs", "1,9")
    assert res.code == 2 and "no snapshot of epoch 9" in res.err
    assert cli("seg", "progress", seg_run / "run", "--out", tmp_path / "m.svg").code == 0
    assert b"<svg" in (tmp_path / "m.svg").read_bytes()[:2000]
    res = cli("seg", "progress", seg_run / "run", "--out", tmp_path / "masks")
    assert res.code == 2 and "a name without an extension is none of them" in " ".join(res.err.split())
    run = shutil.copytree(seg_run / "run", tmp_path / "run", ignore=shutil.ignore_patterns("*.ckpt"))
    assert cli("seg", "progress", run).code == 0  # without --out: into the run folder
    assert Image.open(run / "masks.png").size == img.size


@requires_real
def test_real_pairs_and_stray_pixels_realdata():
    pairs = list_pairs(REAL / "p2_data" / "validation")
    assert len(pairs) == 257
    stats = scan_masks(pairs)
    hit = [s for s, n in zip(stats.stems, stats.stray.tolist()) if n]
    assert hit == ["0177"] and int(stats.stray.sum()) == 7


def test_course_script_hw1_2(seg_run, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    test = tmp_path / "imgs"
    test.mkdir()
    for f in (seg_run / "val").glob("*_sat.jpg"):
        shutil.copy(f, test / f.name.replace("_sat", ""))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(root / "scripts" / "hw1_2.sh"), str(test), str(tmp_path / "out"),
                           str(seg_run / "run" / "best.ckpt")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000.png", "0001.png", "0002.png"]


@requires_real
def test_tiny_real_training_smoke_realdata(cli, tmp_path):
    """8 real training pairs, one epoch of an FPN on 128 px crops: runs end to end, sane mIoU."""
    train = tmp_path / "train"
    train.mkdir()
    for stem in ("0000", "0001", "0002", "0003", "0004", "0005", "0006", "0007"):
        for suffix in ("_sat.jpg", "_mask.png"):
            shutil.copy(REAL / "p2_data" / "train" / f"{stem}{suffix}", train)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 4,
                                      "lr": 0.003, "optimizer": "adamw", "holdout": 0.25, "crop_size": 128}))
    res = cli("seg", "train", train, "--recipe", recipe, "--out", tmp_path / "run", "--snapshot", "0001")
    assert res.code == 0, res.err
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= result["holdout_miou"] <= 1.0
    pred = np.array(Image.open(tmp_path / "run" / "snapshots" / "epoch_001" / "0001.png"))
    assert pred.shape == (512, 512, 3)


def test_held_out_masks_are_scored_outside_mixed_precision():
    """A bf16-mixed segmenter scores its held-out tiles with the fp32 network (as ``seg score``
    does): the pooled confusion is that of the fp32 logits, pixel by pixel."""
    from vislab.config import Recipe
    from vislab.engine.segmentation import SegmenterModule

    torch.manual_seed(0)
    recipe = Recipe(task="seg", model="smp:fpn:resnet18", weights="none", precision="bf16-mixed")
    module = SegmenterModule(recipe.to_dict(), 7, steps_per_epoch=1).eval()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 7, (2, 64, 64))
    with torch.no_grad():
        fp32 = module.eval_net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert module.eval_net(x).dtype == torch.bfloat16  # the autocast is on
            module.validation_step((x, y, torch.arange(2)), 0)
    want = torch.zeros(7, 7, dtype=torch.long)
    for t, p in zip(y.flatten().tolist(), fp32.argmax(1).flatten().tolist()):
        want[t, p] += 1
    assert torch.equal(module.holdout_conf.compute(), want)


def test_class_weights_are_reported_and_leave_unknown_at_one(cli, tmp_path):
    """class_weights: inverse-sqrt-frequency weighs the six scored classes by their training pixels
    (by hand from the masks here) and leaves the rare unknown, which the course mIoU does not
    average, at 1; the weights are printed and recorded."""
    train = _make_pairs(tmp_path / "train", n=4)
    mask = np.array(Image.open(train / "0002_mask.png"))
    mask[:2, :3] = PALETTE.numpy()[6]  # 6 unknown pixels: by far the rarest class
    Image.fromarray(mask).save(train / "0002_mask.png")
    counts = np.zeros(7)
    for m in sorted(train.glob("*_mask.png")):
        rgb = np.array(Image.open(m))
        for c, colour in enumerate(PALETTE.numpy()):
            counts[c] += (rgb == colour).all(-1).sum()
    assert counts[6] == 6 and counts.sum() == 4 * 64 * 64
    share = counts[:6] / counts[:6].sum()
    raw = np.where(share > 0, 1 / np.sqrt(np.maximum(share, 1e-12)), 0.0)
    expected = list(raw / raw[share > 0].mean()) + [1.0]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2,
                                      "holdout": 0, "loss": "ce+dice", "class_weights": "inverse-sqrt-frequency",
                                      "crop_size": 48, "input_hw": [64, 64]}))
    res = cli("seg", "train", train, "--recipe", recipe, "--out", tmp_path / "run", "--limit-batches", 1, "--snapshot", "")
    assert res.code == 0, res.err
    hparams = yaml.safe_load((tmp_path / "run" / "hparams.yaml").read_text())  # plain YAML, no Python tags
    assert hparams["data_meta"]["stored_hw"] == [64, 64]
    got = hparams["class_weights"]
    assert got == pytest.approx(expected, abs=1e-4)
    line = " ".join(res.err.split())  # rich wraps long lines
    assert "cross-entropy class weights (inverse-sqrt-frequency of the training pixels): urban" in line
    assert "unknown 1" in line


def test_class_weights_refuse_masks_without_a_scored_pixel(cli, tmp_path):
    """Masks all of the course's unknown leave no scored class to weigh (the weights would be NaN):
    refused in one line naming the training folder, before any training."""
    train = _make_pairs(tmp_path / "train", n=2)
    for m in train.glob("*_mask.png"):
        rgb = np.zeros((64, 64, 3), np.uint8)
        rgb[:] = PALETTE.numpy()[6]
        Image.fromarray(rgb).save(m)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2,
                                      "holdout": 0, "class_weights": "inverse-sqrt-frequency", "input_hw": [64, 64]}))
    res = cli("seg", "train", train, "--recipe", recipe, "--out", tmp_path / "run", "--snapshot", "")
    assert res.code != 0
    # the data check comes first: not one mask pixel is of a scored class
    assert str(train) in res.err and "no pixel of its 2 masks is in a scored class" in " ".join(res.err.split())
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_a_batch_larger_than_the_training_pairs_shrinks_and_says_so(cli, tmp_path):
    """4 pairs, a quarter held out, batch 8: the 3 training pairs make one batch of 3 (a batch of
    8 would be dropped as partial and no step would run), said on the console and in changes.txt."""
    train = _make_pairs(tmp_path / "train", n=4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 2, "batch_size": 8,
                                      "lr": 0.003, "optimizer": "adamw", "holdout": 0.25, "snapshot": "",
                                      "input_hw": [64, 64]}))
    res = cli("seg", "train", train, "--recipe", recipe, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    line = "batch size 8 -> 3: only 3 training pairs"
    assert line in " ".join(res.err.split()) and line in (tmp_path / "run" / "changes.txt").read_text()
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["batch_size"] == 3
    assert json.loads((tmp_path / "run" / "results.json").read_text())["global_step"] == 2  # one step per epoch


def test_a_broken_validation_folder_fails_before_training(cli, tmp_path):
    """--val-dir is scored after training: a mask of the wrong size there is found before the first
    step (for seg-cpu, 100 minutes earlier), and no checkpoint is written."""
    train = _make_pairs(tmp_path / "train", n=4)
    val = _make_pairs(tmp_path / "val", n=2, seed=1)
    Image.fromarray(np.array(Image.open(val / "0001_mask.png"))[:32]).save(val / "0001_mask.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2,
                                      "holdout": 0.25, "input_hw": [64, 64], "snapshot": ""}))
    res = cli("seg", "train", train, "--recipe", recipe, "--out", tmp_path / "run", "--val-dir", val)
    assert res.code == 2 and f"{val / '0001_mask.png'}: mask is 64x32, expected 64x64 like its image" in res.err
    assert "epoch 1" not in res.err and not (tmp_path / "run" / "last.ckpt").exists()


def test_predict_refuses_a_data_folder_and_names_an_unwritable_one(cli, seg_run, tmp_path, monkeypatch):
    """Into a folder of pairs, predicted masks would replace the ground truth; a folder that
    cannot be written is one line, not a traceback."""
    import tempfile

    data = tmp_path / "data"
    shutil.copytree(seg_run / "val", data)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    from vislab import export

    with monkeypatch.context() as mp:  # refused before any model is loaded (or its ONNX graph built)
        mp.setattr(export, "load_predictor", lambda *a, **k: pytest.fail("a model was loaded"))
        res = cli("seg", "predict", seg_run / "run", seg_run / "val", data)
    assert res.code == 2 and f"{data}: holds satellite images: a data folder" in " ".join(res.err.split())
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    res = cli("seg", "predict", seg_run / "run", seg_run / "val", tmp_path / "out", "--engine", "torch")
    assert res.code == 2 and f"{tmp_path / 'out'}: cannot write here (Permission denied)" in res.err


def test_progress_of_a_classification_run_says_what_it_is(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump({"task": "cls", "model": "simple_cnn"}))
    res = cli("seg", "progress", run, "--out", tmp_path / "p.png")
    assert res.code == 2 and "is a classification run; `seg progress` shows a segmentation run's snapshots" in res.err


def test_a_finished_runs_resume_keeps_its_recorded_validation_and_calibration(cli, tmp_path):
    """`--resume` of a finished run says its recorded results are kept: it measured validation and
    fitted offsets again (the validation folder had changed since), and replaced them."""
    train, val = _make_pairs(tmp_path / "train", n=8), _make_pairs(tmp_path / "val", n=3, seed=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 1, "batch_size": 2,
                                      "holdout": 0.25, "crop_size": 48, "input_hw": [64, 64], "calibrate": True}))
    run = tmp_path / "run"
    assert cli("seg", "train", train, "--recipe", recipe, "--out", run, "--val-dir", val).code == 0
    recorded = json.loads((run / "results.json").read_text())
    assert recorded["val"]["files"] == 3 and "calibration" in recorded
    for suffix in ("_sat.jpg", "_mask.png"):
        (val / f"0002{suffix}").unlink()
    res = cli("seg", "train", train, "--out", run, "--resume")
    assert res.code == 0 and "its recorded results are kept" in " ".join(res.err.split()), res.err
    kept = json.loads((run / "results.json").read_text())
    assert kept["val"] == recorded["val"] and kept["val_miou"] == recorded["val_miou"]
    assert kept["calibration"] == recorded["calibration"]
