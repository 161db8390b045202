"""The land-cover colour code: RGB masks <-> class ids, vectorised (one table lookup).

Each channel is thresholded at >= 128 and the bits read as ``4R + 2G + B``:

    code  colour    class
    3     cyan      0 urban
    6     yellow    1 agriculture
    5     magenta   2 rangeland
    2     green     3 forest
    1     blue      4 water
    7     white     5 barren
    0     black     6 unknown
    4     red       -> 6 unknown (not in the palette; counted as a stray pixel)

    >>> ids, stray = mask_to_classes(torch.tensor([[[0], [255]], [[255], [0]], [[255], [0]]]).view(3, 2, 1))
"""

from __future__ import annotations

import torch

CLASS_NAMES = ("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown")
NUM_CLASSES = 7
UNKNOWN = 6
STRAY_CODE = 4
# class id -> RGB colour
PALETTE = torch.tensor(
    [[0, 255, 255], [255, 255, 0], [255, 0, 255], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]],
    dtype=torch.uint8,
)
# 3-bit code (4R+2G+B) -> class id
CODE_TO_CLASS = torch.tensor([6, 4, 3, 0, UNKNOWN, 2, 1, 5], dtype=torch.uint8)


def mask_codes(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 -> (H, W) 3-bit codes ``4R + 2G + B`` after thresholding at 128."""
    if rgb.dtype != torch.uint8:
        rgb = (rgb >= 128).to(torch.uint8) << 7
    bits = rgb >> 7  # a uint8's top bit is its threshold at 128 (5x faster than comparing)
    return (bits[0] << 2) | (bits[1] << 1) | bits[2]


def mask_to_classes(rgb: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Decode a colour mask (3, H, W) uint8 into class ids (H, W) uint8.

    Returns:
        (class ids, number of stray red pixels, which were mapped to unknown)
    """
    codes = mask_codes(rgb)
    stray = int((codes == STRAY_CODE).sum())
    return CODE_TO_CLASS.to(rgb.device)[codes.long()], stray


def classes_to_mask(ids: torch.Tensor) -> torch.Tensor:
    """Encode class ids (H, W) into the palette's exact colours, (3, H, W) uint8."""
    if ids.numel() and int(ids.max()) >= NUM_CLASSES:
        raise ValueError(f"class id {int(ids.max())} is outside 0..{NUM_CLASSES - 1}")
    return PALETTE.to(ids.device)[ids.long()].permute(2, 0, 1).contiguous()
