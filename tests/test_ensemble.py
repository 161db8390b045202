"""Ensembles: several runs given as RUN_A,RUN_B average their class probabilities in cls eval /
predict and seg score / predict; checked against the averages computed here from each network."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import run_vislab, write_color_classes
from test_own_seg_data import make_index_set, standard_miou


def _seg_members(runs) -> list:
    """Each run's network as trained, at the evaluation scale its calibration chose, with its
    class offsets in ``meta["shift"]`` (None without calibration; both read from its offsets file
    here): an ensemble keeps each member's scale and offsets."""
    from vislab.models.checkpoints import load_network

    nets = []
    for r in runs:
        model, meta = load_network(r, task="seg")
        cal = Path(r) / "best.offsets.json"
        body = json.loads(cal.read_text()) if cal.is_file() else {}
        if body.get("infer_scale") is not None:
            model.scale = float(body["infer_scale"])
        nets.append((model, {**meta, "shift": body.get("offsets")}))
    return nets


def _seg_average(nets, x_uint8: torch.Tensor, *, shifted: bool = True) -> torch.Tensor:
    """The members' probabilities, each multiplied by exp(its offsets) and renormalised (the
    softmax of log-probabilities plus offsets), averaged."""
    total = 0
    for model, meta in nets:
        p = _probs(model, meta, x_uint8)
        if shifted and meta["shift"] is not None:
            p = p * torch.tensor(meta["shift"]).exp().view(1, -1, 1, 1)
            p = p / p.sum(1, keepdim=True)
        total = total + p
    return total / len(nets)


def _probs(model, meta, x_uint8: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    s = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model.eval()((x_uint8.float() / 255 - m) / s).float().softmax(1)


@pytest.fixture(scope="module")
def cls_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    # a faint cue: one epoch leaves the two members disagreeing
    data = write_color_classes(root / "train", per_class=30, noise=200, lift=25)
    runs = []
    for seed in (1, 2):
        r = root / f"r{seed}.yaml"
        r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "batch_size": 16,
                                     "lr": 0.05, "holdout": 0.2, "seed": seed}))
        assert run_vislab("cls", "train", data, "--recipe", r, "--out", root / f"run{seed}") == 0
        runs.append(root / f"run{seed}")
    return root, data, runs


def test_cls_ensemble_averages_probabilities(cli, cls_runs, tmp_path):
    from vislab.models.checkpoints import load_network

    root, data, runs = cls_runs
    files = sorted(data.iterdir())
    x = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    labels = torch.tensor([int(f.name.split("_")[0]) for f in files])
    avg = sum(_probs(*load_network(r, task="cls"), x) for r in runs) / 2
    spec = f"{runs[0]},{runs[1]}"
    res = cli("cls", "eval", spec, data, "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["accuracy"] == pytest.approx(float((avg.argmax(1) == labels).float().mean()), abs=1e-6)
    assert got["ensemble"] == [str(r) for r in runs]
    import vislab.pipelines.cls_predict as pc

    reads = []
    real = pc.load_folder
    pc_load = lambda *a, **k: reads.append(a[0]) or real(*a, **k)  # noqa: E731 - a spy that reads for real
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pc, "load_folder", pc_load)
        assert cli("cls", "predict", spec, data, tmp_path / "p.csv").code == 0
    assert len(reads) == 1  # both members store 32 px images: the folder is decoded once
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [int(r["label"]) for r in rows] == avg.argmax(1).tolist()
    # the members disagree somewhere, or the ensemble would test nothing
    single = [_probs(*load_network(r, task="cls"), x).argmax(1) for r in runs]
    assert not torch.equal(single[0], single[1])


def test_cls_ensemble_refuses_other_classes(cli, cls_runs, tmp_path):
    root, data, runs = cls_runs
    two = tmp_path / "two"
    two.mkdir()
    for f in sorted(data.iterdir())[:60]:  # classes 0 and 1 only
        (two / f.name).write_bytes(f.read_bytes())
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "batch_size": 16,
                                 "lr": 0.05, "holdout": 0.2}))
    assert cli("cls", "train", two, "--recipe", r, "--out", tmp_path / "run").code == 0
    res = cli("cls", "eval", f"{runs[0]},{tmp_path / 'run'}", data)
    said = " ".join(res.err.split())
    assert res.code == 2 and "predicts other classes than" in said and "(2 classes against 3 classes)" in said
    res = cli("cls", "eval", f"{runs[0]},{runs[0]}", data)
    assert res.code == 2 and f"{runs[0]},{runs[0]}: {runs[0]} is listed twice; list it once" in res.err
    (two / "0_999.png").write_bytes(b"not a png")  # named only if the images were read before the refusal
    res = cli("cls", "eval", runs[0], two, "--against", tmp_path / "run")
    assert res.code == 2 and " ".join(res.err.split()) == \
        f"vislab: error: {tmp_path / 'run'}: --against: predicts other classes than the run it is compared with"


@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensseg")
    train = make_index_set(root / "train", 8)
    val = make_index_set(root / "val", 4, seed=1)
    runs = []
    for seed, calibrate in ((1, True), (2, False)):
        r = root / f"r{seed}.yaml"
        r.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 4, "batch_size": 4,
                                     "lr": 0.003, "optimizer": "adamw", "holdout": 0.25, "seed": seed,
                                     "calibrate": calibrate}))
        assert run_vislab("seg", "train", train, "--recipe", r, "--out", root / f"run{seed}") == 0
        runs.append(root / f"run{seed}")
    # offsets strong enough to move predictions (what four epochs fit may be near zero); the file
    # stays valid for its checkpoint (same sha256)
    cal = runs[0] / "best.offsets.json"
    body = json.loads(cal.read_text())
    body["offsets"] = [-1.0, 1.5, 0.0, 0.5]
    cal.write_text(json.dumps(body))
    return root, val, runs


def test_seg_ensemble_predicts_and_scores_the_average(cli, seg_runs, tmp_path):
    from vislab.models.checkpoints import load_network

    root, val, runs = seg_runs
    spec = f"{runs[0]},{runs[1]}"
    res = cli("seg", "predict", spec, val, tmp_path / "pred")
    assert res.code == 0, res.err
    assert "shifted by its own class offsets before they are averaged (1 of 2 members has offsets)" in " ".join(res.err.split())
    nets = _seg_members(runs)
    pairs, moved = [], 0
    for f in sorted((val / "images").iterdir()):
        x = torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1)[None]
        expected = _seg_average(nets, x).argmax(1)[0]
        plain = _seg_average(nets, x, shifted=False).argmax(1)[0]
        moved += int((expected != plain).sum())
        written = np.array(Image.open(tmp_path / "pred" / f"{f.stem}.png"))
        assert np.array_equal(written, expected.numpy()), f.name
        pairs.append((np.array(Image.open(val / "masks" / f"{f.stem}.png")), written))
    assert moved > 0  # run1's offsets change the ensemble's answer, or this would test nothing
    res = cli("seg", "score", spec, val, "--json", tmp_path / "s.json")
    assert res.code == 0, res.err
    assert res.out.strip().endswith(f"mIoU: {standard_miou(pairs, 4, 255)[0]:.4f}")
    assert json.loads((tmp_path / "s.json").read_text())["offsets"] == [[-1.0, 1.5, 0.0, 0.5], None]
    as_trained = [load_network(r, task="seg") for r in runs]  # --no-offsets: no offsets, the trained scales
    bare = []
    for truth, f in zip((t for t, _ in pairs), sorted((val / "images").iterdir())):
        x = torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1)[None]
        bare.append((truth, (sum(_probs(m, meta, x) for m, meta in as_trained) / 2).argmax(1)[0].numpy()))
    res = cli("seg", "score", spec, val, "--no-offsets")
    assert res.code == 0, res.err
    assert res.out.strip().endswith(f"mIoU: {standard_miou(bare, 4, 255)[0]:.4f}")


def _resized_probs(model, meta, x_uint8: torch.Tensor) -> torch.Tensor:
    """_probs with the classifier's own input size (bilinear, as written in the recipe docs)."""
    m = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    s = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    x = (x_uint8.float() / 255 - m) / s
    if meta.get("image_size"):
        x = torch.nn.functional.interpolate(x, size=(meta["image_size"],) * 2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        return model.eval()(x).float().softmax(1)


def test_exported_cls_ensemble_is_the_average_of_its_members(cli, cls_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from vislab.models.checkpoints import load_network

    root, data, runs = cls_runs
    # a third member at its own input size: the graph resizes the stored 32 px images for it alone
    r = tmp_path / "r3.yaml"
    r.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 1, "batch_size": 16,
                                 "lr": 0.05, "holdout": 0.2, "seed": 3, "image_size": 40}))
    assert cli("cls", "train", data, "--recipe", r, "--out", tmp_path / "run3").code == 0
    members = [*runs, tmp_path / "run3"]
    spec = ",".join(map(str, members))
    res = cli("export", spec, tmp_path / "ens.onnx")
    assert res.code == 0, res.err
    assert "input (N, 3, 32, 32)" in res.out
    files = sorted(data.iterdir())
    x = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    avg = sum(_resized_probs(*load_network(m, task="cls"), x) for m in members) / 3
    for tta in ("none", "flip", "shift"):
        assert cli("cls", "predict", tmp_path / "ens.onnx", data, tmp_path / "onnx.csv", "--tta", tta).code == 0
        assert cli("cls", "predict", spec, data, tmp_path / "list.csv", "--tta", tta, "--engine", "torch").code == 0
        from_onnx = [r["label"] for r in csv.DictReader((tmp_path / "onnx.csv").open())]
        assert from_onnx == [r["label"] for r in csv.DictReader((tmp_path / "list.csv").open())]
        if tta == "none":
            assert [int(v) for v in from_onnx] == avg.argmax(1).tolist()
    # the graph's output is the log of the average: its softmax gives the members' mean back
    from vislab.export import OnnxNet

    net = OnnxNet(tmp_path / "ens.onnx")
    assert net.meta["members"][2]["image_size"] == 40 and net.meta["mean"] == [0.0, 0.0, 0.0]
    got = net(x[:20].float() / 255).softmax(1)
    assert torch.allclose(got, avg[:20], atol=1e-4)
    # the export records its members' checkpoints: listed beside one of them, that network would weigh twice
    res = cli("cls", "predict", f"{tmp_path / 'ens.onnx'},{runs[0]}", data, tmp_path / "twice.csv")
    assert res.code == 2 and f"{runs[0]}: holds a network that {tmp_path / 'ens.onnx'} holds too" in res.err
    assert cli("export", runs[0], tmp_path / "one.onnx", "--no-check").code == 0
    copied = tmp_path / "copied"  # the same bytes elsewhere are the same network
    shutil.copytree(runs[0], copied)
    res = cli("cls", "predict", f"{copied},{tmp_path / 'one.onnx'}", data, tmp_path / "twice.csv")
    assert res.code == 2 and f"{tmp_path / 'one.onnx'}: holds a network that {copied} holds too" in res.err
    assert not (tmp_path / "twice.csv").exists()
    # a checkpoint trained on since its export is another network: not refused
    ckpt = torch.load(copied / "best.ckpt", weights_only=False)
    ckpt["global_step"] += 1
    torch.save(ckpt, copied / "best.ckpt")
    assert cli("cls", "predict", f"{copied},{tmp_path / 'one.onnx'}", data, tmp_path / "twice.csv").code == 0
    # an exported ensemble beside another model is one member: said, with the weight of each of its models
    assert cli("cls", "train", data, "--recipe", r, "--out", tmp_path / "run4", "--seed", "4").code == 0
    res = cli("cls", "predict", f"{tmp_path / 'ens.onnx'},{tmp_path / 'run4'}", data, tmp_path / "nested.csv")
    assert res.code == 0 and (f"{tmp_path / 'ens.onnx'}: an exported ensemble of 3 models, one member of this list "
                              "of 2: each of its models weighs 1/3 of another member") in " ".join(res.err.split())


def test_exported_seg_ensemble_predicts_like_the_list(cli, seg_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    from vislab.models.checkpoints import load_network

    root, _, runs = seg_runs
    src = make_index_set(tmp_path / "src", 5, seed=3)
    tiles = tmp_path / "tiles"
    (tiles / "images").mkdir(parents=True)
    (tiles / "masks").mkdir()
    for stem in ("t00", "t04"):  # both 48 x 64: an export has one input size
        (tiles / "images" / f"{stem}.jpg").write_bytes((src / "images" / f"{stem}.jpg").read_bytes())
        (tiles / "masks" / f"{stem}.png").write_bytes((src / "masks" / f"{stem}.png").read_bytes())
    spec = f"{runs[0]},{runs[1]}"
    res = cli("export", spec, tmp_path / "ens.onnx", "--size", "48", "64")
    assert res.code == 0, res.err
    assert "1 of 2 members' class offsets go into the metadata" in " ".join(res.err.split())
    assert cli("seg", "predict", tmp_path / "ens.onnx", tiles / "images", tmp_path / "a").code == 0
    nets = _seg_members(runs)
    for stem in ("t00", "t04"):
        x = torch.from_numpy(np.array(Image.open(tiles / "images" / f"{stem}.jpg"))).permute(2, 0, 1)[None]
        expected = _seg_average(nets, x).argmax(1)[0]
        assert np.array_equal(np.array(Image.open(tmp_path / "a" / f"{stem}.png")), expected.numpy()), stem
    # the offsets travel as metadata, as a single run's: --no-offsets on the export leaves them out; an
    # export made with it has none (and, with no member's scale in its graph, predicts as trained too)
    res = cli("seg", "predict", tmp_path / "ens.onnx", tiles / "images", tmp_path / "b", "--no-offsets")
    assert res.code == 0, res.err
    assert cli("export", spec, tmp_path / "bare.onnx", "--size", "48", "64", "--no-offsets").code == 0
    assert cli("seg", "predict", tmp_path / "bare.onnx", tiles / "images", tmp_path / "c").code == 0
    as_trained = [(m, {**meta, "shift": None}) for m, meta in (load_network(r, task="seg") for r in runs)]
    for stem in ("t00", "t04"):
        x = torch.from_numpy(np.array(Image.open(tiles / "images" / f"{stem}.jpg"))).permute(2, 0, 1)[None]
        expected = _seg_average(as_trained, x).argmax(1)[0]
        for out in ("b", "c"):
            assert np.array_equal(np.array(Image.open(tmp_path / out / f"{stem}.png")), expected.numpy()), (out, stem)
    best = runs[0] / "best.ckpt"
    before = best.read_bytes()
    res = cli("export", runs[0], best)  # its own checkpoint as the output
    assert res.code == 2 and f"is a record of the run folder {runs[0]}" in res.err and best.read_bytes() == before


def _d4_probs(model, meta, x_uint8: torch.Tensor) -> list[torch.Tensor]:
    """_probs of the eight turned and mirrored views, each turned back."""
    views = []
    for mirror in (False, True):
        for k in range(4):
            p = _probs(model, meta, torch.rot90(x_uint8.flip(-1) if mirror else x_uint8, k, (-2, -1)))
            p = torch.rot90(p, -k, (-2, -1))
            views.append(p.flip(-1) if mirror else p)
    return views


def _shifted(p: torch.Tensor, shift) -> torch.Tensor:
    if shift is None:
        return p
    p = p * torch.tensor(shift).exp().view(1, -1, 1, 1)
    return p / p.sum(1, keepdim=True)


def test_exported_seg_ensemble_with_offsets_predicts_like_the_list_under_tta(cli, seg_runs, tmp_path):
    """An ensemble with a calibrated member under --tta: the list shifts each member's probabilities
    by its offsets after the member's TTA average, then averages the members; the exported graph
    must predict the same (offsets are no linear map: shifting every view inside the graph, before
    the TTA average, predicted otherwise). An export of an earlier vislab, whose graph shifts each
    view, is refused under --tta."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    _, val, runs = seg_runs
    spec = f"{runs[0]},{runs[1]}"
    res = cli("export", spec, tmp_path / "ens.onnx")
    assert res.code == 0, res.err
    nets = _seg_members(runs)
    assert nets[0][1]["shift"] is not None and nets[1][1]["shift"] is None
    files = sorted((val / "images").iterdir())
    moved = 0
    for tta in ("d4", "flip"):
        for how, model in (("onnx", tmp_path / "ens.onnx"), ("list", spec)):
            res = cli("seg", "predict", model, val, tmp_path / f"{how}-{tta}", "--tta", tta)
            assert res.code == 0, res.err
        res = cli("seg", "score", spec, val, "--tta", tta)
        assert res.code == 0, res.err
        scored = re.search(r"^mIoU: [0-9.]+", res.out, re.M)
        res = cli("seg", "eval", tmp_path / f"onnx-{tta}", val)
        assert res.code == 0, res.err
        assert scored and scored[0] == re.search(r"^mIoU: [0-9.]+", res.out, re.M)[0]
        for f in files:
            written = np.array(Image.open(tmp_path / f"onnx-{tta}" / f"{f.stem}.png"))
            assert np.array_equal(written, np.array(Image.open(tmp_path / f"list-{tta}" / f"{f.stem}.png"))), (tta, f)
            if tta == "d4":
                x = torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1)[None]
                views = [_d4_probs(m, meta, x) for m, meta in nets]
                after = sum(_shifted(sum(v) / 8, meta["shift"]) for v, (_, meta) in zip(views, nets)) / 2
                per_view = sum(sum(_shifted(p, meta["shift"]) for p in v) / 8 for v, (_, meta) in zip(views, nets)) / 2
                assert np.array_equal(written, after.argmax(1)[0].numpy()), f
                moved += int((after.argmax(1) != per_view.argmax(1)).sum())
    assert moved > 0  # shifting each view, as the graph did, predicts otherwise here: else this tests nothing
    # an export of an earlier vislab: offsets in the graph ("calibrated"), one averaged output
    proto = onnx.load(str(tmp_path / "ens.onnx"))
    entry = next(e for e in proto.metadata_props if e.key == "vislab")
    meta = json.loads(entry.value)
    del meta["member_logits"]
    entry.value = json.dumps({**meta, "calibrated": True})
    onnx.save(proto, str(tmp_path / "old.onnx"))
    res = cli("seg", "predict", tmp_path / "old.onnx", val, tmp_path / "old", "--tta", "d4")
    assert res.code == 2 and "--tta d4 would not predict as the list of its members does" in " ".join(res.err.split())
    assert not (tmp_path / "old").exists()


def test_an_exported_ensemble_says_a_members_scale_without_offsets(cli, seg_runs, tmp_path):
    """A member whose calibration kept no offsets but chose an evaluation scale, after an
    uncalibrated first member: the export holds that scale, says so when predicting, and refuses
    --no-offsets (the scale cannot be taken out of the graph)."""
    pytest.importorskip("onnxruntime")
    root, val, runs = seg_runs
    scaled = tmp_path / "scaled"
    shutil.copytree(runs[0], scaled)
    body = json.loads((scaled / "best.offsets.json").read_text())
    body.update(offsets=[0.0] * len(body["offsets"]), infer_scale=0.5, offsets_dropped=True)
    (scaled / "best.offsets.json").write_text(json.dumps(body))
    res = cli("export", f"{runs[1]},{scaled}", tmp_path / "ens.onnx", "--size", "48", "64")
    assert res.code == 0, res.err
    assert "class offsets go into" not in " ".join(res.err.split())
    res = cli("seg", "predict", tmp_path / "ens.onnx", val, tmp_path / "a")
    said = " ".join(res.err.split())
    assert res.code == 0 and "its evaluation scale from `seg calibrate` applies" in said and "class offsets" not in said
    res = cli("seg", "predict", tmp_path / "ens.onnx", val, tmp_path / "b", "--no-offsets")
    assert res.code == 2 and "this export holds its calibrated evaluation scale in the graph" in res.err
    # offsets and a scale: the line names the export that leaves them out, not the --no-offsets refused above
    body.update(offsets=[0.5] + [0.0] * (len(body["offsets"]) - 1), offsets_dropped=False)
    (scaled / "best.offsets.json").write_text(json.dumps(body))
    assert cli("export", f"{runs[1]},{scaled}", tmp_path / "both.onnx", "--size", "48", "64").code == 0
    res = cli("seg", "predict", tmp_path / "both.onnx", val, tmp_path / "c")
    said = " ".join(res.err.split())
    assert res.code == 0 and ("its class offsets and evaluation scale from `seg calibrate` apply (an export with "
                              "--no-offsets leaves them out)") in said
    assert cli("seg", "predict", tmp_path / "both.onnx", val, tmp_path / "d", "--no-offsets").code == 2


def test_export_refuses_mixed_tasks_and_onnx_members(cli, cls_runs, seg_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    _, _, cls = cls_runs
    _, _, seg = seg_runs
    res = cli("export", f"{cls[0]},{seg[0]}", tmp_path / "x.onnx")
    assert res.code == 2 and "an ensemble has one task" in res.err.replace("\n", " ")
    assert cli("export", cls[0], tmp_path / "one.onnx").code == 0
    res = cli("export", f"{cls[0]},{tmp_path / 'one.onnx'}", tmp_path / "x.onnx")
    assert res.code == 2 and "is already an ONNX export" in res.err.replace("\n", " ")
    assert not (tmp_path / "x.onnx").exists()


def test_export_refuses_members_stored_at_other_sizes(cli, cls_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    _, data, runs = cls_runs
    ckpt = torch.load(runs[1] / "best.ckpt", map_location="cpu", weights_only=True)
    for name, hw in (("big.ckpt", [64, 64]), ("old.ckpt", None)):
        ckpt["vislab"]["stored_hw"] = hw
        torch.save(ckpt, tmp_path / name)
    res = cli("export", f"{runs[0]},{runs[1]},{tmp_path / 'big.ckpt'}", tmp_path / "x.onnx")
    assert res.code == 2 and f"{tmp_path / 'big.ckpt'}: stores its images at [64, 64]" in res.err.replace("\n", " ")
    res = cli("export", f"{runs[0]},{tmp_path / 'old.ckpt'}", tmp_path / "x.onnx")
    assert res.code == 2 and "records no stored image size" in res.err.replace("\n", " ")
    assert cli("export", runs[0], tmp_path / "one.onnx").code == 0
    res = cli("cls", "eval", tmp_path / "one.onnx", data)  # eval needs the checkpoint; predict takes ONNX
    assert res.code == 2 and "is an ONNX export, which `predict` takes" in res.err.replace("\n", " ")


def test_eval_at_another_input_size(cli, cls_runs, tmp_path):
    from vislab.models.checkpoints import load_network

    _, data, runs = cls_runs
    files = sorted(data.iterdir())
    x = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    labels = torch.tensor([int(f.name.split("_")[0]) for f in files])
    model, meta = load_network(runs[0], task="cls")
    for size in (None, 48):
        p = _resized_probs(model, {**meta, "image_size": size}, x)
        args = ["--image-size", size] if size else []
        assert cli("cls", "eval", runs[0], data, "--json", tmp_path / "m.json", *args).code == 0
        got = json.loads((tmp_path / "m.json").read_text())
        assert got["accuracy"] == pytest.approx(float((p.argmax(1) == labels).float().mean()), abs=1e-6)
        assert got.get("image_size") == size
    res = cli("cls", "eval", runs[0], data, "--image-size", 0)
    assert res.code == 2 and "--image-size: must be > 0" in res.err


def test_cls_ensemble_log_probabilities_stay_finite(monkeypatch):
    """A class every member rules out (its probability underflows to 0 in float32) gets the floor's
    log, as in the exported ensemble, not -inf."""
    import math
    from types import SimpleNamespace

    from vislab.models.ensemble import FLOOR
    from vislab.pipelines import cls_predict

    monkeypatch.setattr(cls_predict, "infer",
                        lambda model, meta, images, **kw: (torch.tensor([[0.0, -200.0, -1.0]]), None))
    folder = SimpleNamespace(files=["a.png"], images=None)
    metas = [{"num_classes": 3, "class_names": None, "stored_hw": [32, 32], "image_size": None}] * 2
    _, logp = cls_predict.ensemble_logits([(None, m) for m in metas], ["a", "b"], lambda meta: folder,
                                          batch_size=1, device=None, tta="none")
    assert torch.isfinite(logp).all()
    assert float(logp[0, 1]) == pytest.approx(math.log(FLOOR))
    want = torch.tensor([0.0, -1.0]).softmax(0) / (1 + math.exp(-200))
    assert logp[0, [0, 2]].exp().tolist() == pytest.approx(want.tolist(), rel=1e-5)


def test_seg_score_held_out_is_the_runs_own_held_out_score(cli, seg_runs, tmp_path):
    """`seg score RUN TRAIN --held-out`: only the pairs the run held out, which the training run
    scored itself (its results.json, with the held-out score of the checkpoint it kept); members
    that held out other pairs are refused as an ensemble, and so is another folder."""
    root, val, runs = seg_runs
    res = cli("seg", "score", runs[1], root / "train", "--held-out", "--json", tmp_path / "h.json")
    assert res.code == 0, res.err
    got = json.loads((tmp_path / "h.json").read_text())
    assert got["files"] == 2 and got["held_out"] == {"fraction": 0.25, "seed": 2}  # 8 pairs, 25 % held out
    trained = json.loads((runs[1] / "results.json").read_text())
    assert got["miou"] == pytest.approx(trained["holdout_miou"], abs=1e-4)
    assert "scored on the 2 pairs held out of training" in res.out
    res = cli("seg", "score", f"{runs[0]},{runs[1]}", root / "train", "--held-out")
    assert res.code == 2 and "not the same images" in " ".join(res.err.split())
    res = cli("seg", "score", runs[1], val, "--held-out")
    assert res.code == 2 and "is not the folder this checkpoint was trained on" in " ".join(res.err.split())
    # another seed on run 2's split (--split-seed 2): its own held-out score is rebuilt, and it
    # ensembles with run 2 on those pairs
    assert cli("seg", "train", root / "train", "--recipe", root / "r2.yaml", "--seed", "3", "--split-seed", "2",
               "--epochs", "1", "--out", tmp_path / "s3").code == 0
    res = cli("seg", "score", tmp_path / "s3", root / "train", "--held-out", "--json", tmp_path / "s3.json")
    assert res.code == 0, res.err
    got = json.loads((tmp_path / "s3.json").read_text())
    assert got["held_out"] == {"fraction": 0.25, "seed": 2}
    assert got["miou"] == pytest.approx(json.loads((tmp_path / "s3" / "results.json").read_text())["holdout_miou"], abs=1e-4)
    res = cli("seg", "score", f"{runs[1]},{tmp_path / 's3'}", root / "train", "--held-out")
    assert res.code == 0, res.err


def test_seg_ensemble_members_must_read_masks_alike():
    """Members with the same class names but another mask format are refused in words that name
    the difference (not as 'other classes' followed by two identical lists)."""
    from vislab.data.seg_classes import parse_classes
    from vislab.errors import VislabError
    from vislab.pipelines.seg_predict import ensemble_classes

    index = parse_classes("mask_format: index\nclasses: [a, b]\n", Path("i.yaml"))
    palette = parse_classes("mask_format: palette\nclasses: [{name: a, color: [0, 0, 0]}, "
                            "{name: b, color: [255, 255, 255]}]\n", Path("p.yaml"))
    other = parse_classes("mask_format: index\nclasses: [a, c]\n", Path("o.yaml"))
    metas = {k: (None, {"seg_classes": d.to_dict()}) for k, d in (("i", index), ("p", palette), ("o", other))}
    assert ensemble_classes([metas["i"], metas["i"]], ["r1", "r2"]).names == ("a", "b")
    with pytest.raises(VislabError, match=r"r2: reads its masks otherwise than r1 \(mask_format palette against index\)"):
        ensemble_classes([metas["i"], metas["p"]], ["r1", "r2"])
    with pytest.raises(VislabError, match=r"r2: predicts other classes than r1 \(2 classes: a, c against 2 classes: a, b\)"):
        ensemble_classes([metas["i"], metas["o"]], ["r1", "r2"])


def _resampled(gen_seed: int, n: int, stat) -> tuple[float, float]:
    """A second bootstrap: the resamples vislab draws (seed, chunks of 250), one statistic each."""
    from vislab.metrics import DRAWS

    gen = torch.Generator().manual_seed(gen_seed)
    values = []
    for start in range(0, DRAWS, 250):
        for row in torch.randint(n, (min(250, DRAWS - start), n), generator=gen):
            values.append(stat(row.numpy()))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def test_cls_eval_against_another_run_is_a_paired_comparison(cli, cls_runs, seg_runs, tmp_path):
    root, data, runs = cls_runs
    right = []
    for i, r in enumerate(runs):  # each image's outcome per run, from the predictions files
        assert cli("cls", "predict", r, data, tmp_path / f"{i}.csv").code == 0
        rows = list(csv.reader((tmp_path / f"{i}.csv").open()))[1:]
        right.append(np.array([int(f.split("_")[0]) == int(label) for f, label in rows], dtype=float))
    a, b = right
    res = cli("cls", "eval", runs[0], data, "--against", runs[1], "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["accuracy"] == pytest.approx(a.mean(), abs=1e-6)
    other = got["against"]
    assert other["run"] == str(runs[1]) and other["accuracy"] == pytest.approx(b.mean(), abs=1e-6)
    assert other["difference"] == pytest.approx(a.mean() - b.mean(), abs=1e-6)
    assert (a != b).any()  # the runs differ on some images, or the interval would test nothing
    lo, hi = _resampled(0, len(a), lambda row: a[row].mean() - b[row].mean())
    iv = other["difference_interval"]
    assert (iv["low"], iv["high"]) == pytest.approx((lo, hi), abs=1e-6) and lo < a.mean() - b.mean() < hi and lo < hi
    said = " ".join(res.out.split())
    assert f"against {runs[1]}: accuracy {b.mean():.4f}; difference {a.mean() - b.mean():+.4f}, 95% interval" in said
    # a run against itself: nothing differs, and the line says the items cannot tell them apart
    res = cli("cls", "eval", runs[0], data, "--against", runs[0], "--json", tmp_path / "self.json")
    iv = json.loads((tmp_path / "self.json").read_text())["against"]["difference_interval"]
    assert (iv["low"], iv["high"]) == (0.0, 0.0) and "do not tell the two apart" in " ".join(res.out.split())
    # the two runs held out other images (seeds 1 and 2): no paired comparison there
    res = cli("cls", "eval", runs[0], data, "--held-out", "--against", runs[1])
    assert res.code == 2 and "another held-out split" in " ".join(res.err.split()) and str(runs[1]) in res.err
    # a model of another task, or of other classes, is refused before any image is decoded (a
    # broken image in the folder would be named first otherwise)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in sorted(data.iterdir()):
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "0_999.png").write_bytes(b"not a png")
    res = cli("cls", "eval", runs[0], broken, "--against", seg_runs[2][0])
    assert res.code == 2 and " ".join(res.err.split()) == \
        f"vislab: error: {seg_runs[2][0]}: --against: is a seg model (smp:fpn:resnet18); expected a cls model"
    res = cli("seg", "score", seg_runs[2][0], broken, "--against", runs[0])
    assert res.code == 2 and " ".join(res.err.split()) == \
        f"vislab: error: {runs[0]}: --against: is a cls model (cifar_resnet20); expected a seg model"


def test_seg_score_against_another_run_is_a_paired_comparison(cli, seg_runs, tmp_path):
    root, val, runs = seg_runs
    per_file = []
    for i, r in enumerate(runs):  # per-image confusion matrices from the written masks
        assert cli("seg", "predict", r, val, tmp_path / f"p{i}").code == 0
        confs = []
        for f in sorted((val / "masks").iterdir()):
            truth = np.array(Image.open(f)).astype(int)
            pred = np.array(Image.open(tmp_path / f"p{i}" / f"{f.stem}.png")).astype(int)
            keep = truth != 255
            confs.append(np.bincount(truth[keep] * 4 + pred[keep], minlength=16).reshape(4, 4))
        per_file.append(np.stack(confs))

    def miou(conf: np.ndarray) -> float:
        tp = np.diag(conf)
        union = conf.sum(0) + conf.sum(1) - tp
        return float(np.mean(tp[union > 0] / union[union > 0]))
    a, b = per_file
    res = cli("seg", "score", runs[0], val, "--against", runs[1], "--json", tmp_path / "s.json")
    assert res.code == 0, res.err
    got = json.loads((tmp_path / "s.json").read_text())
    other = got["against"]
    assert got["miou"] == pytest.approx(miou(a.sum(0)), abs=1e-6)
    assert other["miou"] == pytest.approx(miou(b.sum(0)), abs=1e-6)
    assert other["difference"] == pytest.approx(miou(a.sum(0)) - miou(b.sum(0)), abs=1e-6)
    lo, hi = _resampled(0, len(a), lambda row: miou(a[row].sum(0)) - miou(b[row].sum(0)))
    iv = other["difference_interval"]
    assert (iv["low"], iv["high"]) == pytest.approx((lo, hi), abs=1e-6)
    assert "paired percentile bootstrap over 4 files" in iv["method"]
    said = " ".join(res.out.split())
    assert f"against {runs[1]}: mIoU {other['miou']:.4f}; difference {other['difference']:+.4f}" in said
    assert res.out.strip().endswith(f"mIoU: {got['miou']:.4f}")
    # a copy of the second run whose description names its classes otherwise: refused before any
    # pair is read (a mask missing from the folder would be named first otherwise)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "recipe.yaml").write_bytes((runs[1] / "recipe.yaml").read_bytes())
    ckpt = torch.load(runs[1] / "best.ckpt", map_location="cpu", weights_only=False)
    ckpt["vislab"]["seg_classes"]["names"] = [f"other{i}" for i in range(len(ckpt["vislab"]["seg_classes"]["names"]))]
    torch.save(ckpt, renamed / "best.ckpt")
    gone = tmp_path / "gone"
    shutil.copytree(val, gone)
    next((gone / "masks").iterdir()).unlink()
    res = cli("seg", "score", runs[0], gone, "--against", renamed)
    assert res.code == 2 and " ".join(res.err.split()) == \
        f"vislab: error: {renamed}: --against: predicts other classes than the run it is compared with"
