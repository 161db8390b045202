"""Stronger segmenters: torchvision DeepLabV3 / LR-ASPP and segmentation-models-pytorch
decoders over any smp or timm encoder (``smp:ARCH:ENCODER``, e.g. ``smp:unet:resnet34``).
Output: logits (N, C, H, W), see :mod:`vislab.models.seg_base`.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torchvision.models as tvm
import torchvision.models.segmentation as tvs
from torch import nn

from vislab.errors import VislabError
from vislab.models.registry import ModelEntry, register, register_prefix
from vislab.models.seg_base import SegmentationModel
from vislab.models.weights import apply_weights

# name -> (builder, backbone weights enum)
_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "deeplabv3_resnet50": (tvs.deeplabv3_resnet50, "ResNet50_Weights"),
    "deeplabv3_resnet101": (tvs.deeplabv3_resnet101, "ResNet101_Weights"),
    "deeplabv3_mobilenet_v3_large": (tvs.deeplabv3_mobilenet_v3_large, "MobileNet_V3_Large_Weights"),
    "lraspp_mobilenet_v3_large": (tvs.lraspp_mobilenet_v3_large, "MobileNet_V3_Large_Weights"),
}


def _torchvision_segmenter(name: str, *, num_classes: int, weights: str | None) -> nn.Module:
    builder, enum_name = _TORCHVISION[name]
    holder: dict[str, nn.Module] = {}

    def pretrained() -> None:
        holder["net"] = builder(
            weights=None, weights_backbone=getattr(tvm, enum_name).DEFAULT, num_classes=num_classes
        )

    if weights == "imagenet":
        apply_weights(nn.Module(), weights, pretrained=pretrained, name=name)
        return SegmentationModel(holder["net"], stride=32)
    net = builder(weights=None, weights_backbone=None, num_classes=num_classes)  # aux_loss None: no aux head
    return apply_weights(SegmentationModel(net, stride=32), weights, name=name)


for _name in _TORCHVISION:
    register(_name, task="seg", input_size=(3, 512, 512), description=f"torchvision {_name}")(
        partial(_torchvision_segmenter, _name)
    )


_SMP_ARCHS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "pspnet": "PSPNet",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}


# smp encoders whose ImageNet weights vislab ships offline (see models/efficientnet_lite.py)
_OFFLINE_ENCODERS = {
    "tu-tf_efficientnet_lite0": "efficientnet_lite0",
    "tu-tf_efficientnet_lite1": "efficientnet_lite1",
    "tu-tf_efficientnet_lite2": "efficientnet_lite2",
}


def _load_offline_encoder(net: nn.Module, variant: str) -> None:
    """Copy a vislab classifier's ImageNet body into an smp timm-universal encoder, by name."""
    from vislab.models.registry import build_model

    body = build_model(variant, num_classes=1000, weights="imagenet").state_dict()
    target = net.encoder.model
    own = target.state_dict()
    missing = [k for k in own if k not in body or body[k].shape != own[k].shape]
    if missing:
        raise VislabError(None, f"{variant} weights do not fit the smp encoder (e.g. {missing[0]})")
    target.load_state_dict({k: body[k] for k in own})


def _smp_segmenter(arch: str, encoder: str, *, num_classes: int, weights: str | None) -> nn.Module:
    import segmentation_models_pytorch as smp

    cls = getattr(smp, _SMP_ARCHS[arch])
    net = cls(encoder_name=encoder, encoder_weights=None, classes=num_classes)

    def pretrained() -> None:
        if encoder in _OFFLINE_ENCODERS:
            _load_offline_encoder(net, _OFFLINE_ENCODERS[encoder])
            return
        loaded = cls(encoder_name=encoder, encoder_weights="imagenet", classes=num_classes)
        net.encoder.load_state_dict(loaded.encoder.state_dict())

    model = SegmentationModel(net, stride=32)
    if weights == "imagenet":
        apply_weights(model, weights, pretrained=pretrained, name=f"smp:{arch}:{encoder}")
        return model
    return apply_weights(model, weights, name=f"smp:{arch}:{encoder}")


def _resolve_smp(rest: str) -> ModelEntry:
    arch, _, encoder = rest.partition(":")
    if arch not in _SMP_ARCHS or not encoder:
        raise VislabError(
            None, f"smp model {rest!r}: use smp:ARCH:ENCODER with ARCH in {', '.join(_SMP_ARCHS)}"
        )
    import segmentation_models_pytorch as smp

    if encoder not in smp.encoders.get_encoder_names() and not encoder.startswith("tu-"):
        raise VislabError(None, f"smp has no encoder {encoder!r} (timm encoders: tu-NAME)")
    return ModelEntry(
        f"smp:{rest}", partial(_smp_segmenter, arch, encoder), "seg", (3, 512, 512), f"smp {rest}",
        _encoder_norm(encoder),
    )


def _encoder_norm(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input normalisation the encoder's pretrained weights expect: EfficientNet-Lite's
    [-1, 1] scaling for the offline Lite encoders, a timm encoder's pretrained config, else None
    (ImageNet statistics, as smp's own encoders use)."""
    if encoder in _OFFLINE_ENCODERS:
        from vislab.models.efficientnet_lite import LITE_MEAN, LITE_STD

        return LITE_MEAN, LITE_STD
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.get_pretrained_cfg(encoder[3:]) if timm.is_model(encoder[3:]) else None
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    return None


register_prefix("smp", _resolve_smp)
