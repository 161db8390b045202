"""The registry, every registered model's contract, exact parameter counts, weight loading."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from vislab.errors import VislabError
from vislab.models import build_model, list_models, penultimate
from vislab.models.registry import register


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register("vgg16_bn", task="cls", input_size=(3, 32, 32))(lambda **kw: nn.Identity())


def test_unknown_model_lists_choices():
    with pytest.raises(VislabError) as err:
        build_model("vgg17", num_classes=3)
    assert "vgg16_bn" in str(err.value) and "timm:NAME" in str(err.value)


@pytest.mark.parametrize("name", list_models(task="cls"))
def test_classifier_contract(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5)
    out.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad
    model.eval()
    with penultimate(model) as feats:
        logits = model(x)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert torch.allclose(head(feats[0]), logits, atol=1e-5)


@pytest.mark.parametrize("name", list_models(task="seg"))
def test_segmenter_contract(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 7, 64, 96)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad


@pytest.mark.parametrize("name", ["timm:resnet18", "smp:unet:resnet18", "smp:fpn:tu-tf_efficientnet_lite0"])
def test_prefixed_families(name):
    model = build_model(name, num_classes=7)
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape[:2] == (1, 7)


@pytest.mark.parametrize(
    "name,classes,size,total",
    [
        ("vgg16_bn", 50, (3, 32, 32), "134,473,842"),
        ("fcn32s_vgg16", 7, (3, 512, 512), "40,118,087"),
        ("fcn32s_vgg19", 7, (3, 512, 512), "45,427,783"),
    ],
)
def test_seed_parameter_counts(cli, name, classes, size, total):
    res = cli("summary", name, "--num-classes", classes, "--input", *size)
    assert res.code == 0, res.err
    assert f"Total params: {total}" in res.out
    assert "Layer (type)" in res.out and "Output Shape" in res.out and "Param #" in res.out


@pytest.mark.parametrize("name,size", [("vgg16_bn", 32), ("efficientnet_lite0", 64), ("smp:fpn:tu-tf_efficientnet_lite0", 64)])
def test_table_rows_add_up_to_the_total(name, size):
    """Every parameter is in some row: timm's BatchNormAct2d (a BatchNorm with children) has one."""
    from vislab.viz.summary import architecture_table

    model = build_model(name, num_classes=7)
    table = architecture_table(model, (3, size, size))
    rows = [ln.split() for ln in table.splitlines() if re.match(r"^[A-Za-z0-9]+-\d+ ", ln)]
    assert sum(int(r[-1].replace(",", "")) for r in rows) == sum(p.numel() for p in model.parameters())
    if "lite" in name:
        assert any(r[0].startswith("BatchNormAct2d-") and r[-1] != "0" for r in rows)


def test_fcn32s_layout_matches_seed(cli):
    res = cli("summary", "fcn32s_vgg16", "--num-classes", 7, "--input", 3, 512, 512)
    rows = [ln.split() for ln in res.out.splitlines() if re.match(r"^[A-Za-z0-9]+-\d+ ", ln)]
    assert [r[0] for r in rows[-8:]] == [
        "Conv2d-32", "ReLU-33", "Dropout2d-34", "Conv2d-35", "ReLU-36", "Dropout2d-37",
        "Conv2d-38", "ConvTranspose2d-39",
    ]
    assert " ".join(rows[31][1:5]) == "[-1, 4096, 15, 15]"
    assert rows[-1][-1] == "200,704"  # 7*7*64*64, no bias


def test_local_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    a = build_model("cifar_resnet20", num_classes=4).eval()
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = build_model("cifar_resnet20", num_classes=4, weights=str(tmp_path / "w.pt")).eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    # another class count: the body loads, the mismatched head is skipped
    c = build_model("cifar_resnet20", num_classes=9, weights=str(tmp_path / "w.pt"))
    assert torch.equal(c.features[0].weight, a.features[0].weight)


def test_weights_from_a_run_folder(tmp_path):
    """--weights RUN: the run's best.ckpt (else last.ckpt), its weight average when it kept one."""
    torch.manual_seed(2)
    net, avg = build_model("cifar_resnet20", num_classes=4).eval(), build_model("cifar_resnet20", num_classes=4).eval()
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(VislabError, match=r"run: is not a run folder \(it holds no recipe.yaml, best.ckpt or last.ckpt\)$"):
        build_model("cifar_resnet20", num_classes=4, weights=str(run))
    (run / "recipe.yaml").write_text("task: cls\n")
    with pytest.raises(VislabError, match="run: run folder holds no best.ckpt or last.ckpt"):
        build_model("cifar_resnet20", num_classes=4, weights=str(run))
    (run / "recipe.yaml").unlink()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, run / "last.ckpt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(build_model("cifar_resnet20", num_classes=4, weights=str(run)).eval()(x), net(x))
    both = {**{f"net.{k}": v for k, v in net.state_dict().items()}, **{f"ema.module.{k}": v for k, v in avg.state_dict().items()}}
    torch.save({"state_dict": both}, run / "best.ckpt")  # preferred to last.ckpt; the average is what inference uses
    got = build_model("cifar_resnet20", num_classes=4, weights=str(run)).eval()(x)
    assert torch.equal(got, avg(x)) and not torch.equal(got, net(x))


def test_weights_file_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(VislabError, match="junk.pt: not a readable PyTorch weights file"):
        build_model("cifar_resnet20", num_classes=4, weights=str(junk))
    other = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(VislabError, match="other.pt: no weight of this model is in this file"):
        build_model("cifar_resnet20", num_classes=4, weights=str(other))
    # another architecture whose BatchNorm step counters (and a few layers) share names and shapes
    foreign = tmp_path / "foreign.pt"
    torch.save(build_model("resnet9_xs", num_classes=4).state_dict(), foreign)
    own = build_model("cifar_resnet20", num_classes=4).state_dict()
    shared = [k for k, v in torch.load(foreign, weights_only=True).items() if k in own and own[k].shape == v.shape]
    assert shared  # the old rule counted these as a successful load
    with pytest.raises(VislabError, match=r"foreign.pt: only \d+ of this model's \d+ weight tensors"):
        build_model("cifar_resnet20", num_classes=4, weights=str(foreign))
    with pytest.raises(VislabError, match="weights file not found"):
        build_model("cifar_resnet20", num_classes=4, weights=str(tmp_path / "missing.pt"))
    # the same architecture at another width: every weight named, none of its shape
    narrow = tmp_path / "narrow.pt"
    torch.save(build_model("resnet9_xs", num_classes=4).state_dict(), narrow)
    with pytest.raises(VislabError, match=r"narrow.pt: this model's weights are named in this file, but with other "
                                          r"shapes \(e.g. .*: \[16, 3, 3, 3\] here, \[32, 3, 3, 3\] in the model\)"):
        build_model("resnet9_s", num_classes=4, weights=str(narrow))


def test_imagenet_without_network_names_weights_path(monkeypatch):
    import torchvision.models._api as api

    def offline(self, *a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(VislabError, match="--weights PATH"):
        build_model("resnet18", num_classes=10, weights="imagenet")


def test_fcn_takes_a_torchvision_vgg_state_dict_as_its_backbone(tmp_path):
    """--weights VGG16.pt (the seed recipe's offline path) loads VGG's conv layers into FCN-32s's
    backbone; the FCN's own layers keep their initialisation."""
    from torchvision.models.vgg import cfgs, make_layers

    def vgg_features(cfg: str) -> dict[str, torch.Tensor]:
        """torchvision's VGG conv layers as ``vgg16().state_dict()`` names them (``features.*``),
        built without the 120M-parameter classifier (VGG.features is this very make_layers)."""
        return {f"features.{k}": v for k, v in make_layers(cfgs[cfg]).state_dict().items()}

    torch.manual_seed(0)
    vgg = vgg_features("D")
    path = tmp_path / "vgg16.pt"
    torch.save(vgg, path)  # the conv layers only
    fcn = build_model("fcn32s_vgg16", num_classes=7, weights=str(path))
    feats = dict(fcn.named_parameters())
    names = [n for n in feats if ".features." in n]
    assert len(names) == 26  # 13 convolutions, weight and bias
    for n in names:
        assert torch.equal(feats[n], vgg["features." + n.split(".features.")[1]])
    fresh = build_model("fcn32s_vgg16", num_classes=7)
    assert not torch.equal(dict(fresh.named_parameters())[names[0]], feats[names[0]])
    # VGG19's conv layers share many names and shapes with VGG16's, at other depths: refused
    torch.save(vgg_features("E"), tmp_path / "vgg19.pt")
    with pytest.raises(VislabError, match=r"vgg19.pt: not a vgg16 state_dict: \d+ of the 26 tensors"):
        build_model("fcn32s_vgg16", num_classes=7, weights=str(tmp_path / "vgg19.pt"))


def test_fcn_upsampling_starts_bilinear():
    """The FCN paper's init: each transposed convolution, cropped by half its stride, equals
    bilinear interpolation (F.interpolate, align_corners False) away from the border, per class."""
    import torch.nn.functional as F

    for variant, f in (("fcn32s_vgg16", 32), ("fcn8s_vgg16", 2)):
        net = build_model(variant, num_classes=7).net
        up = net.upscore if f == 32 else net.skip_ups[0]
        x = torch.randn(1, 7, 5, 6, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = up(x)
        z = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
        h = f // 2
        got = y[..., h : h + z.shape[-2], h : h + z.shape[-1]]
        assert torch.allclose(got[..., f:-f, f:-f], z[..., f:-f, f:-f], atol=1e-5)


def test_fcn32s_from_scratch_leaves_the_uniform_output():
    """With the seed's optimiser (SGD 1e-3, momentum 0.9) a VGG16-FCN32s without pretrained
    weights must start learning: under PyTorch's default init its logits stayed ~0 and its loss
    at ln 7 for 10 epochs on a GPU."""
    import math

    torch.manual_seed(0)
    model = build_model("fcn32s_vgg16", num_classes=7)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    y[:, :, 32:] = 3
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < min(losses[0], math.log(7)) - 0.02, losses  # the default init: flat at 1.94591


def test_summary_of_a_run_is_its_trained_network_at_its_input_size(cli, tmp_path):
    """`vislab summary RUN` prints the table of the registry model with the run's classes at the
    size it trained at (images 48 wide and 24 high, at their own size); the checkpoint file gives
    the same, also moved out of its run folder; --num-classes is refused beside it."""
    import shutil

    from PIL import Image

    data = tmp_path / "wide"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (48, 24), (60 * i, 200 if c == "a" else 0, 0)).save(data / c / f"{i}.png")
    run = tmp_path / "run"
    assert cli("cls", "train", data, "--model", "resnet9_xs", "--epochs", 1, "--limit-batches", 1,
               "--out", run).code == 0
    by_run = cli("summary", run)
    assert by_run.code == 0, by_run.err
    by_name = cli("summary", "resnet9_xs", "--num-classes", 2, "--input", 3, 24, 48)
    assert by_run.out == by_name.out and "Total params:" in by_run.out
    ckpt = run / "last.ckpt"  # 8 images hold none out: the last checkpoint is the model
    shutil.copy(ckpt, tmp_path / "moved.ckpt")
    assert cli("summary", ckpt).out == cli("summary", tmp_path / "moved.ckpt").out == by_run.out
    res = cli("summary", run, "--num-classes", 5)
    assert res.code == 2 and "is a trained network with its own classes; drop --num-classes" in " ".join(res.err.split())


def test_a_failed_imagenet_download_is_one_line_without_torchs_own(capsys):
    """torch.hub writes "Downloading: URL" to stdout before it tries: said (on stderr, with the
    other progress lines) when the download works, dropped when it fails (the refusal says what
    happened); other output passes as it comes."""
    import sys
    import urllib.error

    from vislab.errors import VislabError
    from vislab.models.weights import apply_weights

    def offline() -> None:
        sys.stdout.write('Downloading: "https://download.pytorch.org/models/x.pth" to /cache/x.pth\n')
        raise urllib.error.URLError("no network")

    net = torch.nn.Linear(2, 2)
    with pytest.raises(VislabError, match="vgg: ImageNet weights could not be downloaded"):
        apply_weights(net, "imagenet", pretrained=offline, name="vgg")
    seen = capsys.readouterr()
    assert "Downloading" not in seen.out + seen.err

    def online() -> None:
        sys.stdout.write('Downloading: "https://download.pytorch.org/models/x.pth" to /cache/x.pth\n')
        sys.stdout.write("other output\n")
        sys.stderr.write("\r 50%|#####     |")  # a progress bar: shown as it comes
        seen = capsys.readouterr()
        assert "50%" in seen.err and seen.out == "other output\n"

    assert apply_weights(net, "imagenet", pretrained=online, name="vgg") is net
    seen = capsys.readouterr()
    assert 'Downloading: "https://download.pytorch.org/models/x.pth"' in seen.err and seen.out == ""
