"""ONNX export and the prediction engines: ONNX Runtime must reproduce the PyTorch network."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import run_vislab, write_png
from test_segmentation_pipeline import _make_pairs
from vislab.calibration import load_segmenter
from vislab.data.palette import PALETTE
from vislab.models.checkpoints import load_network
from vislab.errors import VislabError
from vislab.export import OnnxNet, export_onnx
from vislab.models import build_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _recipe(path, **kw):
    path.write_text(yaml.safe_dump(kw))
    return path


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    for c in range(3):
        for i in range(12):
            img = rng.integers(0, 90, size=(32, 32, 3), dtype=np.uint8)
            img[..., c] += 140
            write_png(root / "train" / f"{c}_{i}.png", img)
    # image_size 40: the exported graph takes the resized input, as predict feeds it
    recipe = _recipe(root / "r.yaml", task="cls", model="cifar_resnet20", epochs=1, batch_size=12, lr=0.05,
                     holdout=0.25, image_size=40, seed=0)
    assert run_vislab("cls", "train", root / "train", "--recipe", recipe, "--out", root / "run") == 0
    return root


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    train = _make_pairs(root / "train", n=4)
    recipe = _recipe(root / "r.yaml", task="seg", model="smp:fpn:resnet18", epochs=1, batch_size=2, lr=0.003,
                     optimizer="adamw", holdout=0.25, crop_size=32, input_hw=[64, 64], infer_scale=0.5)
    assert run_vislab("seg", "train", train, "--recipe", recipe, "--out", root / "run") == 0
    return root


def test_export_cls_matches_torch_on_real_inputs(cls_run, cli):
    out = cls_run / "m.onnx"
    res = cli("export", cls_run / "run", out)
    assert res.code == 0, res.err
    assert "max |logit diff|" in res.out and "replaces" not in res.err
    res = cli("export", cls_run / "run", out, "--no-check")  # an export of its own is replaced, and said so
    assert res.code == 0 and f"{out}: an earlier vislab export; this one replaces it" in " ".join(res.err.split())
    net = OnnxNet(out)
    assert net.shape == (3, 40, 40)
    assert net.meta["model"] == "cifar_resnet20" and net.meta["num_classes"] == 3
    model, meta = load_network(cls_run / "run", task="cls")
    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                          for p in sorted((cls_run / "train").glob("*.png"))]).float() / 255
    x = F.interpolate((images - 0.5) / 0.25, size=(40, 40), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        ref = model(x)
    got = net(x)  # batch of 36: the batch axis is dynamic
    assert got.shape == ref.shape == (36, 3)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_cls_predict_engines_agree(cls_run, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "cache"))  # this test's exports only
    rows = {}
    for engine, ckpt in (("torch", cls_run / "run"), ("onnx", cls_run / "run"), ("auto", cls_run / "run"),
                         ("auto", cls_run / "m2.onnx")):
        if ckpt.suffix == ".onnx":
            assert cli("export", cls_run / "run", ckpt, "--no-check").code == 0
        out = tmp_path / f"{engine}-{ckpt.suffix}.csv"
        res = cli("cls", "predict", ckpt, cls_run / "train", out, "--engine", engine)
        assert res.code == 0, res.err
        rows[engine, ckpt.suffix] = list(csv.reader(out.open()))
    first = rows["torch", ""]
    assert len(first) == 37
    assert all(r == first for r in rows.values())
    # the onnx and auto runs shared one export of the checkpoint, cached for its input size
    assert len(list((tmp_path / "cache" / "onnx").glob("best-*.onnx"))) == 1
    # the cache names the checkpoint it was exported from, and a clear of that run folder takes it with its record
    listed = cli("cache", "list").out
    assert f"ONNX graph, made from {(cls_run / 'run' / 'best.ckpt').resolve()}" in " ".join(listed.split())
    # a graph cached before the records were kept gets one at its next use
    (record,) = (tmp_path / "cache" / "onnx").glob("*.about.json")
    record.unlink()
    assert cli("cls", "predict", cls_run / "run", cls_run / "train", tmp_path / "again.csv", "--engine", "onnx").code == 0
    assert record.is_file()
    assert cli("cache", "clear", "--source", cls_run / "run").code == 0
    assert list((tmp_path / "cache" / "onnx").iterdir()) == []


def test_seg_export_with_infer_scale_and_predict_engines(seg_run, cli, tmp_path):
    onnx_path = seg_run / "s.onnx"
    res = cli("export", seg_run / "run", onnx_path)
    assert res.code == 0, res.err
    # a segmenter's graph takes any height and width; traced and checked at the recipe's input_hw
    assert OnnxNet(onnx_path).free_size and "input (N, 3, H, W): any height and width (traced at 64x64, width x height)" in \
        " ".join(res.out.split())
    net, (model, _) = OnnxNet(onnx_path), load_segmenter(seg_run / "run")
    for hw in ((64, 64), (50, 70), (33, 17)):  # the export's evaluation scale and padding at any size
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(sum(hw)))
        with torch.inference_mode():
            ref = model(x)
        assert net(x).shape == ref.shape == (2, 7, *hw) and torch.allclose(net(x), ref, atol=1e-4, rtol=1e-4), hw
    from vislab.pipelines.seg_predict import predict_probs

    meta = {"mean": [0.5] * 3, "std": [0.25] * 3}  # no device named: the graph runs from the CPU, as the network
    u8 = torch.randint(0, 256, (1, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(predict_probs(net, meta, u8, tta="flip"), predict_probs(model, meta, u8, tta="flip"), atol=1e-4)
    masks = {}
    for engine, ckpt in (("torch", seg_run / "run"), ("onnx", seg_run / "run"), ("auto", onnx_path)):
        out = tmp_path / f"{engine}{ckpt.suffix}"
        res = cli("seg", "predict", ckpt, seg_run / "train", out, "--engine", engine)
        assert res.code == 0, res.err
        masks[engine] = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*_mask.png"))])
    assert masks["torch"].shape == (4, 64, 64, 3)
    for engine in ("onnx", "auto"):
        same = (masks[engine] == masks["torch"]).all(-1).mean()
        assert same > 0.999, (engine, same)


def test_class_offsets_travel_into_the_onnx_file(seg_run, cli, tmp_path):
    """Offsets stored for a checkpoint go into its export's metadata: the .onnx predicts what the
    checkpoint predicts with them, and --no-offsets gives the plain argmax on both; an export
    made with --no-offsets carries none (a classifier's export refuses the flag)."""
    import shutil

    from vislab.calibration import save_offsets

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(seg_run / "run" / "best.ckpt", ckpt)
    save_offsets(ckpt, torch.tensor([0, 0, 0, 0, 0, 9.0, 0]))  # barren wins almost everywhere
    assert cli("export", ckpt, tmp_path / "c.onnx").code == 0
    assert cli("export", ckpt, tmp_path / "plain.onnx", "--no-offsets").code == 0
    masks = {}
    for name, src, flags in (("ckpt", ckpt, ["--engine", "torch"]), ("onnx", tmp_path / "c.onnx", []),
                             ("ckpt-plain", ckpt, ["--engine", "torch", "--no-offsets"]),
                             ("onnx-plain", tmp_path / "c.onnx", ["--no-offsets"]),
                             ("exported-plain", tmp_path / "plain.onnx", [])):
        res = cli("seg", "predict", src, seg_run / "train", tmp_path / name, *flags)
        assert res.code == 0, res.err
        carried = f"calibration carried by {tmp_path / 'c.onnx'}: its class offsets from `seg calibrate` apply"
        assert (carried in " ".join(res.err.split())) == (name == "onnx"), name  # said when they apply, not else
        masks[name] = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / name).glob("*_mask.png"))])
    barren = (masks["ckpt"] == PALETTE[5].numpy()).all(-1).mean()
    assert barren > 0.9 and (masks["ckpt-plain"] == PALETTE[5].numpy()).all(-1).mean() < barren
    for a, b in (("onnx", "ckpt"), ("onnx-plain", "ckpt-plain"), ("exported-plain", "ckpt-plain")):
        assert (masks[a] == masks[b]).all(-1).mean() > 0.999, (a, b)


def test_infer_scale_is_resize_net_resize(seg_run):
    model, meta = load_network(seg_run / "run", task="seg")
    assert model.scale == 0.5 and meta["recipe"]["infer_scale"] == 0.5
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        got = model(x)
        model.scale = 1.0
        small = model(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
        want = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
        # exactly 0.5: bilinear without antialiasing is the 2x2 mean
        assert torch.allclose(F.interpolate(x, scale_factor=0.5, mode="bilinear"), F.avg_pool2d(x, 2), atol=1e-6)
    assert got.shape == (2, 7, 64, 64)
    assert torch.allclose(got, want, atol=1e-5)


def test_export_and_engine_errors(cls_run, seg_run, cli, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_model("simple_cnn", num_classes=3).state_dict(), plain)
    res = cli("export", plain, tmp_path / "x.onnx")
    assert res.code == 2 and "plain.pt: a plain state_dict" in res.err
    assert not (tmp_path / "x.onnx").exists()
    res = cli("export", cls_run / "run", tmp_path / "x.onnx", "--no-offsets")
    assert res.code == 2 and "--no-offsets: a classifier has no class offsets" in res.err
    assert not (tmp_path / "x.onnx").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    res = cli("cls", "predict", bad, cls_run / "train", tmp_path / "p.csv")
    assert res.code == 2 and "bad.onnx: not a readable ONNX model" in res.err
    assert cli("export", seg_run / "run", tmp_path / "seg.onnx", "--no-check").code == 0
    res = cli("cls", "predict", tmp_path / "seg.onnx", cls_run / "train", tmp_path / "p.csv")
    assert res.code == 2 and "is a seg model" in res.err and not (tmp_path / "p.csv").exists()
    res = cli("cls", "predict", cls_run / "run", cls_run / "train", tmp_path / "p.csv", "--engine", "tensorrt")
    assert res.code == 2 and "unknown --engine 'tensorrt'" in res.err
    assert cli("export", cls_run / "run", tmp_path / "cls.onnx", "--no-check").code == 0
    with pytest.raises(VislabError, match=r"exported for inputs \(3, 40, 40\), got \(3, 32, 32\)"):
        OnnxNet(tmp_path / "cls.onnx")(torch.zeros(1, 3, 32, 32))
    res = cli("seg", "predict", tmp_path / "seg.onnx", seg_run / "train", tmp_path / "o", "--engine", "torch")
    assert res.code == 2 and "seg.onnx: an exported ONNX model runs only with --engine onnx or auto" in res.err
    res = cli("seg", "predict", seg_run / "run", seg_run / "train", tmp_path / "o", "--engine", "onnx",
              "--device", "cuda")
    assert res.code == 2 and ("--engine onnx runs ONNX Runtime on the CPU" in res.err if torch.cuda.is_available()
                              else "--device: 'cuda': this machine has no CUDA GPU" in res.err)
    for opset in ("99", "8"):  # 7 to 10: a segmenter's padding fails to export, after pages of graph dump
        res = cli("export", cls_run / "run", tmp_path / "x.onnx", "--opset", opset)
        assert res.code == 2 and res.err == ("vislab: error: --opset: must be in 11..20 (the ONNX opsets every vislab "
                                             f"network exports at), got {opset}\n")
    res = cli("export", seg_run / "run", tmp_path / "x.onnx", "--size", "0", "64")
    assert res.code == 2 and "--size: must be H W >= 1, got 0 64" in res.err
    res = cli("export", seg_run / "run", tmp_path / "x.onnx", "--size", "1", "1", "--no-check")
    assert res.code == 2 and "x.onnx: ONNX export of a 1x1 input failed: " in res.err and "internal" not in res.err
    assert not (tmp_path / "x.onnx").exists()
    res = cli("cls", "predict", cls_run / "run", cls_run / "train", tmp_path / "p.csv", "--tta", "d4")
    assert res.code == 2 and "unknown --tta 'd4'" in res.err
    assert not (tmp_path / "o").exists() and not (tmp_path / "p.csv").exists()
    # an export replaces an earlier vislab export, said; any other file of that name is refused
    res = cli("export", cls_run / "run", tmp_path / "seg.onnx", "--no-check")
    assert res.code == 0 and f"{tmp_path / 'seg.onnx'}: an earlier vislab export; this one replaces it" in res.err
    before = bad.read_bytes()
    res = cli("export", cls_run / "run", bad, "--no-check")
    assert res.code == 2 and res.err == (f"vislab: error: {bad}: exists and is not an ONNX file vislab exported; "
                                         "refusing to replace it (choose another name, or delete it first)\n")
    assert bad.read_bytes() == before


def test_cached_export_follows_the_checkpoint_contents(cls_run, cli, tmp_path):
    import shutil

    ckpt = tmp_path / "c.ckpt"
    shutil.copy2(cls_run / "run" / "best.ckpt", ckpt)
    assert cli("cls", "predict", ckpt, cls_run / "train", tmp_path / "a.csv", "--engine", "onnx").code == 0
    first = [r[1] for r in csv.reader((tmp_path / "a.csv").open())][1:]
    # rewrite the checkpoint in place so that class 2 always wins, keeping size and mtime
    stat = ckpt.stat()
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["net.fc.bias"] += torch.tensor([0.0, 0.0, 1e4])
    torch.save(state, ckpt)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cli("cls", "predict", ckpt, cls_run / "train", tmp_path / "b.csv", "--engine", "onnx").code == 0
    second = [r[1] for r in csv.reader((tmp_path / "b.csv").open())][1:]
    assert set(second) == {"2"} and set(first) != {"2"}


def test_export_refuses_a_wrong_graph(seg_run, tmp_path, monkeypatch):
    """A graph traced from other weights than the checkpoint's fails the check, in float32 and
    against PyTorch in float64 too, and nothing is written."""
    import copy

    import vislab.export as ex

    real = ex._write_graph

    def from_other_weights(onnx, model, *args, **kwargs):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(1.05)
        real(onnx, other, *args, **kwargs)

    monkeypatch.setattr(ex, "_write_graph", from_other_weights)
    with pytest.raises(VislabError, match="differs from PyTorch .* also against PyTorch in float64; --no-check"):
        export_onnx(seg_run / "run", tmp_path / "w.onnx")
    assert not (tmp_path / "w.onnx").exists()


def test_float32_rounding_alone_passes_the_check_and_is_said(seg_run, tmp_path, monkeypatch, capsys):
    """Where the float32 outputs differ by more than the tolerance (here made 1e-9 x the logits),
    the graph passes when ONNX Runtime lies as close to PyTorch in float64 as PyTorch's own
    float32 result does: the case of a segmenter resizing by its evaluation scale."""
    import vislab.export as ex

    monkeypatch.setattr(ex, "ATOL", 1e-9)
    res = export_onnx(seg_run / "run", tmp_path / "f.onnx")
    assert res["max_abs_diff"] > res["atol"] and 0 < res["float32_rounding"] < 1e-3
    assert "float32 rounding, not another graph" in " ".join(capsys.readouterr().err.split())
    assert (tmp_path / "f.onnx").is_file()


def test_export_size_of_a_fixed_size_classifier_is_refused(cls_run, cli, tmp_path):
    res = cli("export", cls_run / "run", tmp_path / "m.onnx", "--size", "64", "64")
    assert res.code == 2 and "--size: this classifier takes 40x40 inputs" in res.err
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_predict_refuses_sizes_and_views_it_cannot_take_before_writing(seg_run, cli, tmp_path, monkeypatch):
    """A segmenter's graph takes any size: tiles of two sizes, and d4 turns of non-square ones,
    predict as PyTorch does. A graph of one input size (a network whose graph cannot take other
    sizes: simulated, the export's check at another size failing) is said at export, and a folder
    with another tile size, or d4 turns of non-square tiles, is refused before any mask is
    written; a corrupt image met mid-way leaves no mask either (masks are staged and moved into
    place at the end)."""
    import shutil

    import vislab.export as ex

    mixed = tmp_path / "mixed"
    shutil.copytree(seg_run / "train", mixed)
    img = np.asarray(Image.open(mixed / "0003_sat.jpg"))[:, :48]
    Image.fromarray(img).save(mixed / "0003_sat.jpg")
    assert cli("export", seg_run / "run", tmp_path / "free.onnx", "--no-check").code == 0
    for engine, src in (("torch", seg_run / "run"), ("auto", tmp_path / "free.onnx")):
        res = cli("seg", "predict", src, mixed, tmp_path / f"m-{engine}", "--tta", "d4", "--engine", engine)
        assert res.code == 0, res.err
    for f in sorted((tmp_path / "m-torch").iterdir()):
        same = (np.asarray(Image.open(f)) == np.asarray(Image.open(tmp_path / "m-auto" / f.name))).all(-1).mean()
        assert same > 0.999, (f.name, same)

    real = ex._onnx_diff
    monkeypatch.setattr(ex, "_onnx_diff", lambda model, path, shape, seeds: None if shape[1] % 32 else
                        real(model, path, shape, seeds))
    res = cli("export", seg_run / "run", tmp_path / "sq.onnx", "--no-check")  # 64 x 64
    assert res.code == 0 and "does not take other sizes than the traced one; exported for 64x64 inputs only" in \
        " ".join(res.err.split()) and "input (N, 3, 64, 64)" in res.out and not OnnxNet(tmp_path / "sq.onnx").free_size
    res = cli("seg", "predict", tmp_path / "sq.onnx", mixed, tmp_path / "o1")
    said = " ".join(res.err.split())
    assert res.code == 2 and "0003_sat.jpg: is 48x64 (width x height" in said and "exported for 64x64" in said
    assert "--size 64 48 (height, width)" in said
    assert not (tmp_path / "o1").exists()
    # a non-square export takes its tiles as they are, but not turned
    wide = tmp_path / "wide"
    wide.mkdir()
    for f in sorted(seg_run.joinpath("train").glob("*_sat.jpg"))[:2]:
        Image.fromarray(np.asarray(Image.open(f))[:, :48]).save(wide / f.name)
    assert cli("export", seg_run / "run", tmp_path / "w.onnx", "--size", "64", "48", "--no-check").code == 0
    assert cli("seg", "predict", tmp_path / "w.onnx", wide, tmp_path / "o2", "--tta", "flip").code == 0
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["0000_mask.png", "0001_mask.png"]
    res = cli("seg", "predict", tmp_path / "w.onnx", wide, tmp_path / "o3", "--tta", "d4")
    assert res.code == 2 and "0000_sat.jpg: is not square, so --tta d4 turns it to 64x48 (width x height)" in res.err
    assert not (tmp_path / "o3").exists()
    # a corrupt last image: the earlier batches were predicted, but nothing reaches the folder
    (mixed / "0003_sat.jpg").write_bytes(b"\xff\xd8 truncated")
    keep = tmp_path / "o4"
    keep.mkdir()
    (keep / "old.txt").write_text("mine")
    res = cli("seg", "predict", seg_run / "run", mixed, keep, "--batch-size", "1", "--engine", "torch")
    assert res.code == 2 and "0003_sat.jpg" in res.err
    assert [p.name for p in keep.iterdir()] == ["old.txt"]


def test_export_tolerance_follows_the_logits_scale(cls_run, tmp_path):
    """A network with huge logits (a diverged run's reach 1e5 and more) exports: float32 rounding
    there exceeds an absolute 1e-3, and the check scales its tolerance with the largest |logit|."""
    import shutil

    import vislab.export as ex

    run = tmp_path / "big"
    shutil.copytree(cls_run / "run", run, ignore=shutil.ignore_patterns("tensorboard"))
    for name in ("last.ckpt", "best.ckpt"):
        if (run / name).is_file():
            state = torch.load(run / name, map_location="cpu", weights_only=False)
            sd = state["state_dict"]
            for k in [k for k in sd if k.endswith("fc.weight") or k.endswith("fc.bias")]:
                sd[k] = sd[k] * 1e6
            torch.save(state, run / name)
    res = export_onnx(run, tmp_path / "big.onnx")
    assert res["atol"] > 100 * ex.ATOL and res["max_abs_diff"] <= res["atol"]
    assert res["max_abs_diff"] > ex.ATOL  # what the absolute rule refused


def test_predict_checks_its_folder_before_exporting(cls_run, cli, tmp_path, monkeypatch):
    """An empty folder is refused before the model is loaded or exported to ONNX."""
    import vislab.export as ex

    def no_export(*a, **k):
        raise AssertionError("exported before the folder was checked")

    monkeypatch.setattr(ex, "export_network", no_export)
    monkeypatch.setattr(ex, "load_predictor", no_export)
    (tmp_path / "empty").mkdir()
    res = cli("cls", "predict", cls_run / "run", tmp_path / "empty", tmp_path / "p.csv", "--engine", "onnx")
    assert res.code == 2 and res.err.startswith(f"vislab: error: {tmp_path / 'empty'}: no images found")
    assert not (tmp_path / "p.csv").exists()


def test_export_size_of_a_native_size_classifier_is_refused(cls_run, cli, tmp_path):
    """A classifier without image_size takes its images at their stored size (as `cls predict`
    decodes them): an export at another size could never be used, so it is refused."""
    recipe = _recipe(tmp_path / "r.yaml", task="cls", model="simple_cnn", epochs=1, batch_size=12, lr=0.05,
                     holdout=0.25, seed=0)
    assert run_vislab("cls", "train", cls_run / "train", "--recipe", recipe, "--out", tmp_path / "run") == 0
    res = cli("export", tmp_path / "run", tmp_path / "m.onnx", "--size", "64", "64")
    assert res.code == 2 and "--size: this classifier takes its images at the size they were stored at in " \
                               "training (32x32, width x height)" in " ".join(res.err.split())
    assert not (tmp_path / "m.onnx").exists()
    assert cli("export", tmp_path / "run", tmp_path / "m.onnx", "--size", "32", "32", "--no-check").code == 0
    assert OnnxNet(tmp_path / "m.onnx").shape == (3, 32, 32)


def test_onnx_runs_on_the_cpu_and_says_what_runs_in_torch(seg_run, cli, tmp_path, monkeypatch):
    """An exported graph asked to run on a GPU is refused (ONNX Runtime runs it on the CPU); with
    --engine onnx, tiles of a size the graph does not take run in torch, said once per size."""
    import shutil

    import vislab.models.checkpoints as ck

    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "cache"))
    assert cli("export", seg_run / "run", tmp_path / "sq.onnx", "--no-check").code == 0
    real = ck.pick_device
    monkeypatch.setattr(ck, "pick_device", lambda name=None: torch.device("cuda") if name == "cuda" else real(name))
    res = cli("seg", "predict", tmp_path / "sq.onnx", seg_run / "train", tmp_path / "o0", "--device", "cuda")
    assert res.code == 2 and "sq.onnx: an exported ONNX model runs on the CPU (ONNX Runtime), not --device cuda" \
                               in " ".join(res.err.split())
    assert not (tmp_path / "o0").exists()
    mixed = tmp_path / "mixed"
    shutil.copytree(seg_run / "train", mixed)
    for stem in ("0002", "0003"):
        Image.fromarray(np.asarray(Image.open(mixed / f"{stem}_sat.jpg"))[:, :48]).save(mixed / f"{stem}_sat.jpg")
    res = cli("seg", "predict", seg_run / "run", mixed, tmp_path / "o1", "--engine", "onnx", "--batch-size", "1")
    assert res.code == 0, res.err
    said = " ".join(res.err.split())
    assert said.count("--engine onnx: inputs of (3, 64, 48) run in torch (the ONNX graph takes (3, 64, 64))") == 1
    assert len(list((tmp_path / "o1").glob("*_mask.png"))) == 4
    res = cli("seg", "predict", seg_run / "run", mixed, tmp_path / "o2", "--batch-size", "1")  # auto: not said
    assert res.code == 0 and "run in torch" not in res.err


def test_a_damaged_cache_entry_is_made_again(cls_run, cli, tmp_path, monkeypatch):
    """An export in the cache spoiled from outside (writes are atomic) is exported again, once,
    not a warning and a torch fallback on every run."""
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "cache"))
    ckpt = cls_run / "run" / "best.ckpt"
    assert cli("cls", "predict", ckpt, cls_run / "train", tmp_path / "a.csv", "--engine", "onnx").code == 0
    (entry,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    entry.write_bytes(entry.read_bytes()[:200])
    res = cli("cls", "predict", ckpt, cls_run / "train", tmp_path / "b.csv", "--engine", "onnx")
    assert res.code == 0, res.err
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert entry.stat().st_size > 200 and "warning" not in res.err


def test_a_calibration_that_kept_no_offsets_applies_its_scale_only(seg_run, cli, tmp_path):
    """An offsets file of zeros (the cross-fit rejected the offsets) with a chosen scale: score,
    predict and export apply the scale and say there are no offsets; the export carries the scale
    and names no class offsets; --no-offsets on the checkpoint gives the trained scale again."""
    import shutil

    from vislab.calibration import save_offsets
    from vislab.pipelines.seg_scores import evaluate_checkpoint

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(seg_run / "run" / "best.ckpt", ckpt)
    scaled = tmp_path / "scaled.ckpt"  # the same network predicting at 1.0 in its recipe: the reference
    blob = torch.load(ckpt, weights_only=True)
    blob["vislab"]["recipe"]["infer_scale"] = 1.0
    torch.save(blob, scaled)
    save_offsets(ckpt, torch.zeros(7), infer_scale=1.0, trained_scale=0.5, offsets_dropped=True)
    res = cli("seg", "score", ckpt, seg_run / "train", "--json", tmp_path / "s.json")
    said = " ".join(res.err.split())
    assert res.code == 0 and "no class offsets; evaluation scale 1 (trained 0.5)" in said, res.err
    got = json.loads((tmp_path / "s.json").read_text())
    assert "offsets" not in got and got["miou"] == evaluate_checkpoint(scaled, seg_run / "train")["miou"]
    assert evaluate_checkpoint(ckpt, seg_run / "train", offsets=False)["miou"] == \
        evaluate_checkpoint(seg_run / "run" / "best.ckpt", seg_run / "train", offsets=False)["miou"]
    res = cli("export", ckpt, tmp_path / "z.onnx")
    assert res.code == 0, res.err
    res = cli("seg", "predict", tmp_path / "z.onnx", seg_run / "train", tmp_path / "pz")
    said = " ".join(res.err.split())
    assert res.code == 0 and "its evaluation scale from `seg calibrate` applies" in said and "class offsets" not in said
