"""Decoding image files with torchvision.io, each failure reported with the file's name."""

from __future__ import annotations

from pathlib import Path

import warnings

import torch

with warnings.catch_warnings():
    # torchvision 0.29 points to TorchCodec for video; its image decoders are still the fast path
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_image, read_file

from vislab.errors import VislabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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


def list_images(folder: str | Path, *, what: str = "images") -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; errors for a missing or empty one."""
    d = Path(folder)
    if not d.exists():
        raise VislabError(d, "folder not found")
    if not d.is_dir():
        raise VislabError(d, "not a folder")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VislabError(d, f"no {what} found (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return files
