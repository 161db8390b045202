"""Batched augmentation of classification images beyond crop and flip: a TrivialAugment-style
policy (one operation per image, drawn uniformly, at a strength drawn uniformly) and random
erasing. Both work on a whole (N, 3, H, W) batch of pixel values in [0, 255] on any device, and
every random choice for sample ``i`` depends only on (seed, epoch, index[i]) (as in
:func:`vislab.data.classification.augment_batch`), so a resumed run augments exactly as an
uninterrupted one.

Strengths follow TrivialAugment's "wide" ranges (Müller & Hutter, 2021): enhance factors
1 +- 0.99, rotations up to 135 degrees, shears up to 0.99, posterize down to 2 bits, solarize at any
threshold; translations reach 30 % of the side (the paper's 32 pixels would move a 32-pixel image
out of view). Equalize is not among the operations. Geometric operations fill with black.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from vislab.data.tensors import hash_uniform

# hash streams (augment_batch uses 1-3)
_OP, _STRENGTH, _SIGN = 10, 11, 12
_ERASE, _AREA, _ASPECT, _TOP, _LEFT = 20, 21, 22, 23, 24

MAX_ENHANCE = 0.99
MAX_DEGREES = 135.0
MAX_SHEAR = 0.99
MAX_TRANSLATE = 0.3  # of the image side
_LUMA = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``x * factor`` (per-sample factors)."""
    return x * _per_sample(factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (saturation): 0 gives grey, 1 the image."""
    g = _gray(x)
    return g + _per_sample(factor) * (x - g)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level."""
    m = _gray(x).mean((-2, -1), keepdim=True)
    return m + _per_sample(factor) * (x - m)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a smoothed copy (3x3 kernel, centre weight 5 of 13; the border stays as is, and
    an image under 3 pixels high or wide has no interior to smooth)."""
    if x.shape[-2] < 3 or x.shape[-1] < 3:
        return x
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5.0
    k = (k / k.sum()).expand(x.shape[1], 1, 3, 3).contiguous()
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, k, groups=x.shape[1])
    return smooth + _per_sample(factor) * (x - smooth)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` highest bits of each 8-bit value."""
    step = _per_sample(2.0 ** (8 - bits.to(x.dtype)))
    return torch.floor(x.round() / step) * step


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the values at or above ``threshold``."""
    return torch.where(x >= _per_sample(threshold), 255.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to the full 0-255 range (flat channels stay)."""
    lo = x.amin((-2, -1), keepdim=True)
    hi = x.amax((-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) * 255.0 / span.clamp_min(1e-6), x)


def affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample each image through a 2x3 pixel-space matrix per sample that maps an output
    pixel's position (from the image centre) to the input position it reads; bilinear, black
    outside."""
    n, _, h, w = x.shape
    scale = torch.tensor([w / 2.0, h / 2.0], device=x.device, dtype=x.dtype)
    theta = matrix.to(x.dtype).clone()
    # normalised coordinates u = p / (side / 2): theta = S^-1 A S, and the shift / (side / 2)
    theta[:, :, :2] = theta[:, :, :2] * scale[None, None, :] / scale[None, :, None]
    theta[:, :, 2] = theta[:, :, 2] / scale[None, :]
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrices(kind: str, value: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample 2x3 pixel-space matrices: rotate (degrees), shear_x/shear_y (factor),
    translate_x/translate_y (fraction of the side)."""
    n = len(value)
    m = torch.zeros(n, 2, 3, device=value.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    if kind == "rotate":
        a = value * math.pi / 180.0
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    elif kind == "shear_x":
        m[:, 0, 1] = value
    elif kind == "shear_y":
        m[:, 1, 0] = value
    elif kind == "translate_x":
        m[:, 0, 2] = -value * w
    elif kind == "translate_y":
        m[:, 1, 2] = -value * h
    return m


def _enhance(fn: Callable) -> Callable:
    return lambda x, s, sign: fn(x, 1.0 + sign * MAX_ENHANCE * s)


def _geometric(kind: str, limit: float) -> Callable:
    return lambda x, s, sign: affine(x, _matrices(kind, sign * limit * s, *x.shape[-2:]))


OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": lambda x, s, sign: x,
    "brightness": _enhance(brightness),
    "color": _enhance(color),
    "contrast": _enhance(contrast),
    "sharpness": _enhance(sharpness),
    "posterize": lambda x, s, sign: posterize(x, 8 - torch.round(6 * s)),
    "solarize": lambda x, s, sign: solarize(x, 255.0 * (1 - s)),
    "autocontrast": lambda x, s, sign: autocontrast(x),
    "rotate": _geometric("rotate", MAX_DEGREES),
    "shear_x": _geometric("shear_x", MAX_SHEAR),
    "shear_y": _geometric("shear_y", MAX_SHEAR),
    "translate_x": _geometric("translate_x", MAX_TRANSLATE),
    "translate_y": _geometric("translate_y", MAX_TRANSLATE),
}
"""Each operation: (batch in [0, 255], strength in [0, 1), sign +-1) -> batch."""


def _like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = out.clamp(0, 255)
    return out.round().to(x.dtype) if not x.dtype.is_floating_point else out.to(x.dtype)


def chosen_ops(index: torch.Tensor, *, seed: int, epoch: int) -> torch.Tensor:
    """The position in :data:`OPS` of the operation each sample gets."""
    u = hash_uniform(seed, epoch, index, _OP)
    return (u * len(OPS)).long().clamp_max(len(OPS) - 1)


def trivial_augment(x: torch.Tensor, index: torch.Tensor, *, seed: int, epoch: int) -> torch.Tensor:
    """One operation of :data:`OPS` per image, at a uniform random strength (and sign, where it
    has one); uint8 in, uint8 out (floats stay floats)."""
    idx = index.to(x.device)
    op = chosen_ops(idx, seed=seed, epoch=epoch)
    strength = hash_uniform(seed, epoch, idx, _STRENGTH)
    sign = torch.where(hash_uniform(seed, epoch, idx, _SIGN) < 0.5, -1.0, 1.0).to(x.device)
    out = x.to(torch.float32, copy=True)  # never the caller's tensor
    for k, fn in enumerate(OPS.values()):
        sel = (op == k).nonzero().flatten()
        if len(sel):
            out[sel] = fn(out[sel], strength[sel], sign[sel])
    return _like(out, x)


def erase_boxes(index: torch.Tensor, h: int, w: int, *, seed: int, epoch: int,
                p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(erased?, top, left, height, width) per sample: with probability ``p`` a rectangle of 2-33 %
    of the image's area with an aspect ratio log-uniform in [0.3, 3.3], inside the image."""
    erased = hash_uniform(seed, epoch, index, _ERASE) < p
    area = h * w * (0.02 + (1 / 3 - 0.02) * hash_uniform(seed, epoch, index, _AREA))
    log_lo, log_hi = math.log(0.3), math.log(1 / 0.3)
    ratio = torch.exp(log_lo + (log_hi - log_lo) * hash_uniform(seed, epoch, index, _ASPECT))
    eh = torch.sqrt(area * ratio).round().long().clamp(1, h)
    ew = torch.sqrt(area / ratio).round().long().clamp(1, w)
    top = (hash_uniform(seed, epoch, index, _TOP) * (h - eh + 1)).long().clamp_max(h - eh)
    left = (hash_uniform(seed, epoch, index, _LEFT) * (w - ew + 1)).long().clamp_max(w - ew)
    return erased, top, left, eh, ew


def random_erase(x: torch.Tensor, index: torch.Tensor, *, seed: int, epoch: int, p: float,
                 fill: tuple[float, ...]) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020): per image, with probability ``p``, one rectangle of
    :func:`erase_boxes` set to ``fill`` (pixel values, e.g. the normalisation mean x 255, which
    is 0 after normalisation)."""
    n, c, h, w = x.shape
    erased, top, left, eh, ew = erase_boxes(index.to(x.device), h, w, seed=seed, epoch=epoch, p=p)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = (erased[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    value = torch.tensor(fill, device=x.device, dtype=torch.float32).view(1, c, 1, 1)
    return _like(torch.where(mask, value, x.float()), x)
