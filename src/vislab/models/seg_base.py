"""The one forward pass every segmentation model shares.

Contract: ``model(x)`` with ``x`` of shape (N, 3, H, W) returns raw logits of shape
(N, num_classes, H, W) for ANY H, W: the input is padded to the network's stride and the
logits are cropped back. No softmax inside.

    >>> build_model("fcn32s_vgg16", num_classes=7)(torch.zeros(1, 3, 500, 375)).shape
    torch.Size([1, 7, 500, 375])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """Wrap a network so that any input size works and the output is a logits tensor.

    Args:
        net: the network; it may return a tensor or a dict with key ``"out"`` (torchvision).
        stride: input sides are zero-padded up to a multiple of this, then cropped back.
        scale: in eval mode the input is resized by this factor before the network and the
            logits are resized back (a recipe's ``infer_scale``; training crops carry their own
            scale augmentation, so training mode ignores it).
    """

    def __init__(self, net: nn.Module, *, stride: int = 32, scale: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.stride = stride
        self.scale = scale
        self.any_size_export = False  # set while an ONNX graph of free height and width is traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0 and not self.training:
            size = x.shape[-2:]
            # plain bilinear (exportable to ONNX); at exactly 0.5 it is the 2x2 mean
            small = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
            return F.interpolate(self._padded_forward(small), size=size, mode="bilinear", align_corners=False)
        return self._padded_forward(x)

    def _padded_forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        # an export of free height and width records the padding (and the resize back) whatever
        # the traced size, so that its graph pads and crops every size as PyTorch does
        exporting = self.any_size_export and torch.onnx.is_in_onnx_export()
        if ph or pw or exporting:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.net(x)
        if isinstance(out, dict):
            out = out["out"]
        if exporting or out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out[..., :h, :w]
