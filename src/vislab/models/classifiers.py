"""Image classifiers: the seed's VGG16-BN, torchvision ResNets, CIFAR-style nets, timm models.

Contract: ``model(x)`` with ``x`` of shape (N, 3, H, W) returns raw logits (N, num_classes);
no softmax inside. The classifier's input (the "second-last layer") is the last ``nn.Linear``'s
input, which :func:`vislab.models.features.penultimate` reads with a hook.

    >>> build_model("vgg16_bn", num_classes=50)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 50])
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torchvision.models as tvm
from torch import nn

from vislab.models.registry import ModelEntry, register, register_prefix
from vislab.models.weights import apply_weights

# name -> (torchvision builder, weights enum, attribute holding the final Linear)
_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], str, str]] = {
    "vgg16_bn": (tvm.vgg16_bn, "VGG16_BN_Weights", "classifier.6"),
    "vgg19_bn": (tvm.vgg19_bn, "VGG19_BN_Weights", "classifier.6"),
    "resnet18": (tvm.resnet18, "ResNet18_Weights", "fc"),
    "resnet34": (tvm.resnet34, "ResNet34_Weights", "fc"),
    "resnet50": (tvm.resnet50, "ResNet50_Weights", "fc"),
    "resnet101": (tvm.resnet101, "ResNet101_Weights", "fc"),
    "wide_resnet50_2": (tvm.wide_resnet50_2, "Wide_ResNet50_2_Weights", "fc"),
    "resnext50_32x4d": (tvm.resnext50_32x4d, "ResNeXt50_32X4D_Weights", "fc"),
    "resnext101_32x8d": (tvm.resnext101_32x8d, "ResNeXt101_32X8D_Weights", "fc"),
    "efficientnet_b0": (tvm.efficientnet_b0, "EfficientNet_B0_Weights", "classifier.1"),
    "convnext_tiny": (tvm.convnext_tiny, "ConvNeXt_Tiny_Weights", "classifier.2"),
}


def _replace_head(model: nn.Module, attr: str, num_classes: int) -> None:
    parent_name, _, child = attr.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child) if not child.isdigit() else parent[int(child)]
    new = nn.Linear(old.in_features, num_classes)
    if child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


def _torchvision_classifier(name: str, *, num_classes: int, weights: str | None) -> nn.Module:
    builder, enum_name, head = _TORCHVISION[name]
    model = builder(weights=None)

    def pretrained() -> None:
        enum = getattr(tvm, enum_name).DEFAULT
        model.load_state_dict(enum.get_state_dict(progress=False))

    # ImageNet weights come with a 1000-way head: load first, then replace the head.
    if weights == "imagenet":
        apply_weights(model, weights, pretrained=pretrained, name=name)
        _replace_head(model, head, num_classes)
        return model
    _replace_head(model, head, num_classes)
    return apply_weights(model, weights, name=name)


for _name in _TORCHVISION:
    register(_name, task="cls", input_size=(3, 224, 224), description=f"torchvision {_name}")(
        partial(_torchvision_classifier, _name)
    )


# --- CIFAR-style networks for 32x32 inputs ------------------------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, section 4.2): 3 stages, ``depth = 6n + 2``."""

    def __init__(
        self, *, blocks: int, widths: tuple[int, int, int], num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        cin = widths[0]
        for stage, w in enumerate(widths):
            for b in range(blocks):
                layers.append(_BasicBlock(cin, w, 2 if (stage > 0 and b == 0) else 1))
                cin = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class ResNet9(nn.Module):
    """The fast 9-layer ResNet of the DAWNBench CIFAR-10 entries, width-scalable for CPUs."""

    def __init__(self, *, width: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
            mods: list[nn.Module] = [
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            if pool:
                mods.append(nn.MaxPool2d(2))
            return nn.Sequential(*mods)

        w = width
        self.prep = block(3, w, False)
        self.layer1 = block(w, 2 * w, True)
        self.res1 = nn.Sequential(block(2 * w, 2 * w, False), block(2 * w, 2 * w, False))
        self.layer2 = block(2 * w, 4 * w, True)
        self.layer3 = block(4 * w, 8 * w, True)
        self.res3 = nn.Sequential(block(8 * w, 8 * w, False), block(8 * w, 8 * w, False))
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prep(x)
        x = self.layer1(x)
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res3(x)
        return self.fc(self.dropout(self.pool(x)))


class SimpleCNN(nn.Module):
    """The course's "simple baseline" shape: three conv-ReLU-pool stages and two linear layers.

    It has no BatchNorm, so data-parallel training equals single-process training exactly.
    """

    def __init__(self, *, num_classes: int, dropout: float = 0.0, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Linear(16 * w, 256), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.features(x)))


# name -> (constructor, description)
_SMALL: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "simple_cnn": (partial(SimpleCNN, dropout=0.0), "3 conv stages + 2 linear, no BatchNorm (0.24M)"),
    "cifar_resnet20": (partial(CifarResNet, blocks=3, widths=(16, 32, 64), dropout=0.1), "CIFAR ResNet-20 (0.27M)"),
    "cifar_resnet56": (partial(CifarResNet, blocks=9, widths=(16, 32, 64), dropout=0.1), "CIFAR ResNet-56 (0.86M)"),
    "cifar_resnet18w": (partial(CifarResNet, blocks=2, widths=(64, 128, 256), dropout=0.1), "wide CIFAR ResNet (2.8M)"),
    "resnet9_xs": (partial(ResNet9, width=16, dropout=0.1), "ResNet-9, width 16: the quick CPU demo (0.41M)"),
    "resnet9_s": (partial(ResNet9, width=32, dropout=0.1), "ResNet-9, width 32: fast on CPUs (1.6M)"),
    "resnet9": (partial(ResNet9, width=64, dropout=0.1), "ResNet-9, width 64 (6.6M)"),
}


def _small_classifier(name: str, *, num_classes: int, weights: str | None) -> nn.Module:
    model = _SMALL[name][0](num_classes=num_classes)
    return apply_weights(model, weights, name=name)


for _name, (_ctor, _desc) in _SMALL.items():
    register(_name, task="cls", input_size=(3, 32, 32), description=_desc)(
        partial(_small_classifier, _name)
    )


# --- timm ----------------------------------------------------------------------------------


def _timm_classifier(model_name: str, *, num_classes: int, weights: str | None) -> nn.Module:
    import timm

    if weights == "imagenet":
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)

        def pretrained() -> None:
            loaded = timm.create_model(model_name, pretrained=True, num_classes=num_classes)
            model.load_state_dict(loaded.state_dict())

        return apply_weights(model, weights, pretrained=pretrained, name=f"timm:{model_name}")
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    return apply_weights(model, weights, name=f"timm:{model_name}")


def _resolve_timm(rest: str) -> ModelEntry:
    import timm

    from vislab.errors import VislabError

    if not timm.is_model(rest):
        close = timm.list_models(f"*{rest[:6]}*")[:8]
        raise VislabError(None, f"timm has no model {rest!r}; similar: {', '.join(close) or 'none'}")
    cfg = timm.get_pretrained_cfg(rest)
    size = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)
    norm = (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None and cfg.mean and cfg.std else None
    return ModelEntry(f"timm:{rest}", partial(_timm_classifier, rest), "cls", size, f"timm {rest}", norm)


register_prefix("timm", _resolve_timm)
