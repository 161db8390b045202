"""Decoding image files, each failure reported with the file's name.

Two decoders: :func:`read_rgb` (torchvision.io, the fast path for the course's PNG/JPEG tiles)
and :func:`decode_fitted` (Pillow: every common format and mode, fitted to a target size by the
rule documented there, used for classification folders of any size).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

with warnings.catch_warnings():
    # torchvision 0.29 points to TorchCodec for video; its image decoders are still the fast path
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_image, read_file

from vislab.errors import VislabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_rgb(path: str | Path) -> torch.Tensor:
    """Decode ``path`` to a (3, H, W) uint8 tensor; grayscale and RGBA are converted to RGB."""
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise VislabError(p, "empty file, not an image")
    try:
        data = read_file(str(p))
    except (OSError, RuntimeError) as exc:
        raise VislabError(p, f"cannot read file ({exc.__class__.__name__})") from None
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        raise VislabError(p, "not a decodable image (corrupt, truncated or another format)") from None


def open_image(path: Path):  # -> PIL.Image.Image
    """Open an image with Pillow (lazily); an empty, unreadable or unknown file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    if path.is_file() and path.stat().st_size == 0:
        raise VislabError(path, "empty file, not an image")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise VislabError(path, "not a decodable image (corrupt, truncated or another format)") from None
    except OSError as exc:
        raise VislabError(path, f"cannot read file ({exc.strerror or exc.__class__.__name__})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    p = Path(path)
    with open_image(p) as im:
        w, h = im.size
    return h, w


def fitted_size(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The size an (h, w) image is resized to before its centre crop to ``target`` (H, W): scaled
    by one factor, the smallest that covers the target (the shorter side, relative to the target,
    lands on it exactly)."""
    (h, w), (th, tw) = hw, target
    scale = max(th / h, tw / w)
    return max(th, round(h * scale)), max(tw, round(w * scale))


def decode_fitted(path: str | Path, target: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` to an (H, W, 3) uint8 RGB array of size ``target``; also returns the
    image's own (h, w).

    Any mode becomes RGB (grey is repeated, a palette is looked up, alpha is dropped). An image
    of another size is resized (bilinear, antialiased when shrinking) by one factor so that it
    covers ``target``, then centre cropped: the aspect ratio is kept and the centre is what stays.
    """
    p = Path(path)
    from PIL import Image

    with open_image(p) as im:
        try:
            im.load()
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            h, w = rgb.height, rgb.width
            if (h, w) != tuple(target):
                nh, nw = fitted_size((h, w), target)
                if (nh, nw) != (h, w):
                    rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
                top, left = (nh - target[0]) // 2, (nw - target[1]) // 2
                rgb = rgb.crop((left, top, left + target[1], top + target[0]))
            return np.asarray(rgb, dtype=np.uint8), (h, w)
        except (OSError, ValueError, SyntaxError):
            raise VislabError(p, "not a decodable image (corrupt, truncated or another format)") from None


def list_images(folder: str | Path, *, what: str = "images") -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; errors for a missing or empty one."""
    d = check_folder(folder)
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VislabError(d, f"no {what} found (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def check_folder(folder: str | Path) -> Path:
    """``folder`` as a Path; a one-line error when it is missing or a file."""
    d = Path(folder)
    if not d.exists():
        raise VislabError(d, "folder not found")
    if not d.is_dir():
        raise VislabError(d, "not a folder")
    return d
