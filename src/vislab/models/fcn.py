"""FCN-32s/16s/8s (Long et al. 2015) on VGG16 or VGG19 features, exactly as the seed prints them.

The seed's head: VGG conv blocks 1-5, then Conv2d(512, 4096, kernel 2) (15x15 at 512 input),
ReLU, Dropout2d, Conv2d(4096, 4096, 1), ReLU, Dropout2d, Conv2d(4096, C, 1), and a bias-free
ConvTranspose2d(C, C, 64, stride 32) back to the input size: 40,118,087 parameters for VGG16
at C = 7. FCN-16s/8s add 1x1 score layers on pool4 / pool3 and x2 learned upsampling.
Output: logits (N, C, H, W), see :mod:`vislab.models.seg_base`.

Initialisation: every upsampling starts as bilinear interpolation of each class's scores
(learned from there), as in the FCN paper; the head's two 4096-channel convolutions, which the
paper took from VGG's classifier, are He-normal like torchvision's VGG convolutions. With
PyTorch's default init instead, a VGG16-FCN32s trained from scratch kept its logits near zero
and its loss at ln 7 for 10 epochs on an H200 (docs/RESULTS.md).
"""

from __future__ import annotations

from functools import partial

import torch
import torchvision.models as tvm
from torch import nn

from vislab.errors import VislabError
from vislab.models.registry import register
from vislab.models.seg_base import SegmentationModel
from vislab.models.weights import apply_weights, read_state_dict

# backbone -> (torchvision builder, weights enum name)
_BACKBONES = {"vgg16": (tvm.vgg16, "VGG16_Weights"), "vgg19": (tvm.vgg19, "VGG19_Weights")}
# variant -> VGG pooling stages whose scores are fused (pool index from the end: 1 = pool4)
_SKIPS = {"fcn32s": (), "fcn16s": ("pool4",), "fcn8s": ("pool4", "pool3")}


class VGGFeatures(nn.Module):
    """VGG conv blocks 1-5 as one ``nn.Sequential``; exposes pool3/pool4/pool5 maps."""

    def __init__(self, backbone: str, weights: str | None, *, state: dict[str, torch.Tensor] | None = None) -> None:
        """``weights``: None, "imagenet", or the file that ``state`` (a torchvision VGG
        state_dict, already read) came from: every conv tensor of this depth must be in it."""
        super().__init__()
        builder, enum_name = _BACKBONES[backbone]
        vgg = builder(weights=None)

        def pretrained() -> None:
            vgg.load_state_dict(getattr(tvm, enum_name).DEFAULT.get_state_dict(progress=False))

        if weights == "imagenet":
            apply_weights(vgg, weights, pretrained=pretrained, name=backbone)
        elif state is not None:
            own = vgg.features.state_dict()
            off = [k for k, v in own.items() if getattr(state.get(f"features.{k}"), "shape", None) != v.shape]
            if off:
                raise VislabError(weights, f"not a {backbone} state_dict: {len(off)} of the {len(own)} tensors of "
                                           f"{backbone}'s conv layers are missing or shaped otherwise (a VGG of another depth?)")
            vgg.features.load_state_dict({k: state[f"features.{k}"] for k in own})
        self.features = vgg.features
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self.taps = {"pool3": pools[2], "pool4": pools[3]}
        self.channels = {"pool3": 256, "pool4": 512, "pool5": 512}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        wanted = {v: k for k, v in self.taps.items()}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        out["pool5"] = x
        return out


@torch.no_grad()
def bilinear_(deconv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Set a (C, C, 2f, 2f) transposed convolution of stride f to bilinear upsampling of each
    channel on its own (no channel mixing); its weights stay trainable."""
    k = deconv.kernel_size[0]
    f = (k + 1) // 2
    centre = f - 1 if k % 2 else f - 0.5
    ramp = 1 - (torch.arange(k, dtype=torch.float32) - centre).abs() / f
    deconv.weight.zero_()
    for c in range(min(deconv.in_channels, deconv.out_channels)):
        deconv.weight[c, c] = ramp[:, None] * ramp[None, :]
    return deconv


def _center_crop(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    dh, dw = x.shape[-2] - ref.shape[-2], x.shape[-1] - ref.shape[-1]
    return x[..., dh // 2 : dh // 2 + ref.shape[-2], dw // 2 : dw // 2 + ref.shape[-1]]


class FCN(nn.Module):
    """FCN over a :class:`VGGFeatures`; ``skips`` picks the fused pooling stages."""

    def __init__(self, features: VGGFeatures, *, num_classes: int, skips: tuple[str, ...]) -> None:
        super().__init__()
        c = num_classes
        self.backbone = features
        self.head = nn.Sequential(
            nn.Conv2d(512, 4096, kernel_size=2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(),
            nn.Conv2d(4096, 4096, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(),
            nn.Conv2d(4096, c, kernel_size=1),
        )
        self.skips = skips
        self.skip_scores = nn.ModuleDict(
            {s: nn.Conv2d(features.channels[s], c, kernel_size=1) for s in skips}
        )
        self.skip_ups = nn.ModuleList(
            [nn.ConvTranspose2d(c, c, kernel_size=4, stride=2, bias=False) for _ in skips]
        )
        factor = 32 // (2 ** len(skips))
        self.upscore = nn.ConvTranspose2d(c, c, kernel_size=2 * factor, stride=factor, bias=False)
        for up in [*self.skip_ups, self.upscore]:
            bilinear_(up)
        for conv in (self.head[0], self.head[3]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        score = self.head(feats["pool5"])
        for name, up in zip(self.skips, self.skip_ups):
            skip = self.skip_scores[name](feats[name])
            score = _center_crop(up(score), skip) + skip
        out = self.upscore(score)
        # at a side divisible by 32 FCN-32s gives exactly H; the fused variants overshoot
        # by the deconvolution's border, which is cropped symmetrically
        return _center_crop(out, x) if out.shape[-2:] != x.shape[-2:] else out


def _build_fcn(variant: str, backbone: str, *, num_classes: int, weights: str | None) -> nn.Module:
    """``weights``: None, "imagenet" (VGG's), a torchvision VGG state_dict (the backbone's) or
    the weights of a whole FCN (a previous run's checkpoint)."""
    local = None if weights in (None, "none", "imagenet") else weights
    state = read_state_dict(local) if local is not None else None  # read once, a VGG file or a whole FCN
    vgg_file = state is not None and "features.0.weight" in state
    feats = VGGFeatures(backbone, weights if weights == "imagenet" or vgg_file else None,
                        state=state if vgg_file else None)
    local = None if vgg_file else local
    model = SegmentationModel(FCN(feats, num_classes=num_classes, skips=_SKIPS[variant]))
    return apply_weights(model, local, name=f"{variant}_{backbone}", state=state)  # the file read once


for _variant in _SKIPS:
    for _backbone in _BACKBONES:
        register(
            f"{_variant}_{_backbone}",
            task="seg",
            input_size=(3, 512, 512),
            description=f"{_variant.upper()} on {_backbone.upper()} features (seed layout)",
        )(partial(_build_fcn, _variant, _backbone))
