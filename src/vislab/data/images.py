"""Decoding image files, each failure reported with the file's name.

Two decoders: :func:`read_rgb` (torchvision.io, the fast path for the course's PNG/JPEG tiles;
Pillow for the formats torchvision does not decode)
and :func:`decode_fitted` (Pillow: every common format and mode, fitted to a target size by the
rule documented there, used for classification folders of any size).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

with warnings.catch_warnings():
    # torchvision 0.29 points to TorchCodec for video; its image decoders are still the fast path
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_image, read_file

from vislab.errors import VislabError
from vislab.log import info_once

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
        img = decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):  # a format torchvision does not decode (BMP), or a broken file
        return _pillow_rgb(p)
    if img.dtype != torch.uint8:
        raise VislabError(p, f"{img.element_size() * 8}-bit image; vislab reads 8 bits per channel (save it as 8-bit)")
    return img


_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _refuse_high_bits(p: Path, mode: str) -> None:
    """Pillow would clip an image of more than 8 bits per channel when converting it to RGB."""
    if mode in _HIGH_BIT_MODES:
        raise VislabError(p, f"{mode} image of more than 8 bits; vislab reads 8 bits per channel (save it as 8-bit)")


def _pillow_rgb(p: Path) -> torch.Tensor:
    """:func:`read_rgb` through Pillow, for the formats torchvision.io does not decode."""
    with open_image(p) as im:
        _refuse_high_bits(p, im.mode)
        try:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError):
            raise VislabError(p, "not a decodable image (corrupt, truncated or another format)") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def open_image(path: Path):  # -> PIL.Image.Image
    """Open an image with Pillow (lazily); an empty, unreadable or unknown file is a one-line error."""
    from PIL import Image, UnidentifiedImageError

    if path.is_file() and path.stat().st_size == 0:
        raise VislabError(path, "empty file, not an image")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise VislabError(path, "not a decodable image (corrupt, truncated or another format)") from None
    except Image.DecompressionBombError:
        raise VislabError(path, "image has more pixels than Pillow's safety limit (Image.MAX_IMAGE_PIXELS)") from None
    except OSError as exc:
        if exc.errno is None:  # Pillow's decoding errors (a truncated header) carry no errno
            raise VislabError(path, f"not a decodable image ({exc})") from None
        raise VislabError(path, f"cannot read file ({exc.strerror})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    p = Path(path)
    with open_image(p) as im:
        w, h = im.size
    return h, w


def has_transparent_pixels(path: str | Path) -> bool:
    """Whether an image file has pixels that are not fully opaque: its header says whether it has
    an alpha channel or a transparent colour, and only such an image is decoded to look."""
    with open_image(Path(path)) as im:
        return _transparent(im)


def transparent_line(root: str | Path, clear: int, total: int, what: str = "images") -> str:
    """The console line for ``clear`` of ``total`` images (or ``masks``) of ``root`` whose alpha is dropped."""
    if what == "masks":
        return (f"{root}: {clear} of {total} masks have transparent pixels; their alpha is dropped (the value stored "
                "under a transparent pixel is read as its class; give such pixels the ignore value or colour to "
                "leave them out)")
    return (f"{root}: {clear} of {total} {what} have transparent pixels; their alpha is dropped "
            "(the colour stored under a transparent pixel is read)")


def say_transparent(root: str | Path, files: list[Path], what: str = "images") -> int:
    """Say on the console how many of ``files`` (``images`` or ``masks``) have transparent pixels,
    which the decoders drop (nothing when none); returns that count."""
    clear = sum(has_transparent_pixels(f) for f in files)
    if clear:
        info_once(transparent_line(root, clear, len(files), what))
    return clear


def orientation(im: Any) -> int:
    """An open image's EXIF orientation, 1 (as stored) when it has none or a value outside 1..8,
    read from the header: a PNG's EXIF is looked at only when its header holds one (Pillow
    would decode the whole image to look further)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = int(im.getexif().get(0x0112, 1))
    except (TypeError, ValueError, OSError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1


def shown_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as :func:`decode_fitted` shows it: an EXIF orientation that
    turns it a quarter swaps the two (headers only)."""
    p = Path(path)
    with open_image(p) as im:
        w, h = im.size
        turned = orientation(im) in (5, 6, 7, 8)
    return (w, h) if turned else (h, w)


def fitted_size(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The size an (h, w) image is resized to before its centre crop to ``target`` (H, W): scaled
    by one factor, the smallest that covers the target (the shorter side, relative to the target,
    lands on it exactly)."""
    (h, w), (th, tw) = hw, target
    scale = max(th / h, tw / w)
    return max(th, round(h * scale)), max(tw, round(w * scale))


UPRIGHT, SIXTEEN_BITS, TRANSPARENT = "upright", "16-bit", "transparent"
SIXTEEN_BIT_COLOUR, FRAMES = "16-bit colour", "frames"
"""What :func:`decode_fitted` may say it did to an image, after its (h, w)."""


def _read_as_is(im: Any) -> tuple[str, ...]:
    """What reading an open image (before it is loaded) drops without changing its mode: the low
    byte of a 16-bit colour PNG (Pillow keeps the high one), the frames after an animation's first."""
    said: tuple[str, ...] = ()
    if im.format == "PNG" and im.tile and str(im.tile[0][3]) in ("RGB;16B", "RGBA;16B"):  # not grey + alpha, LA;16B
        said += (SIXTEEN_BIT_COLOUR,)
    if im.format in ("GIF", "PNG", "WEBP") and getattr(im, "n_frames", 1) > 1:  # not a JPEG's MPF preview image
        said += (FRAMES,)
    return said


def _transparent(im: Any) -> bool:
    """Whether an open image has pixels that are not fully opaque (an alpha channel, or a
    palette's or grey image's transparent value)."""
    if "A" in im.getbands():
        return im.getchannel("A").getextrema()[0] < 255
    if "transparency" in im.info:
        return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def decode_fitted(path: str | Path, target: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """Decode ``path`` to an (H, W, 3) uint8 RGB array of size ``target``; also returns the
    image's own (h, w) as shown, followed by what was done to show it: :data:`UPRIGHT` (turned
    by its EXIF orientation, as a photo viewer shows it), :data:`SIXTEEN_BITS` (a 16-bit grey
    image scaled to 8 bits, value / 257) and :data:`TRANSPARENT` (pixels not fully opaque: the
    alpha is dropped, and the colour stored under them is what is read), :data:`SIXTEEN_BIT_COLOUR`
    (16-bit colour, its high bytes read) and :data:`FRAMES` (an animation: its first frame read).

    Any mode becomes RGB (grey is repeated, a palette is looked up, alpha is dropped). An image
    of another size is resized (bilinear, antialiased when shrinking) by one factor so that it
    covers ``target``, then centre cropped: the aspect ratio is kept and the centre is what stays.
    """
    p = Path(path)
    from PIL import Image, ImageOps

    with open_image(p) as im:
        done: tuple[str, ...] = ()
        try:  # a file that breaks while decoding (truncated, corrupt) is one error naming it
            kept = _read_as_is(im)
            if orientation(im) != 1:  # the camera's pixels, turned as shown (before a 16-bit image loses its EXIF)
                im, done = ImageOps.exif_transpose(im), (UPRIGHT,)
            if im.mode in _HIGH_BIT_MODES and im.mode != "F":
                values = np.asarray(im, dtype=np.float64)
                if values.size and (values.min() < 0 or values.max() > 65535):
                    raise VislabError(p, f"{im.mode} image with values outside 0..65535: not 16-bit grey; vislab "
                                         "reads 8 bits per channel (save it as 8-bit)")
                im, done = Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), mode="L"), \
                    (SIXTEEN_BITS, *done)
            _refuse_high_bits(p, im.mode)
            im.load()
            if _transparent(im):
                done = (*done, TRANSPARENT)
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            h, w = rgb.height, rgb.width
            if (h, w) != tuple(target):
                nh, nw = fitted_size((h, w), target)
                if (nh, nw) != (h, w):
                    rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
                top, left = (nh - target[0]) // 2, (nw - target[1]) // 2
                rgb = rgb.crop((left, top, left + target[1], top + target[0]))
            return np.asarray(rgb, dtype=np.uint8), (h, w, *done, *kept)
        except (OSError, ValueError, SyntaxError):
            raise VislabError(p, "not a decodable image (corrupt, truncated or another format)") from None


def list_images(folder: str | Path, *, what: str = "images") -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; errors for a missing or empty one.
    Subfolders are not read: a line says how many there are."""
    d = check_folder(folder)
    entries = [p for p in d.iterdir() if not p.name.startswith(".")]
    visible = [p for p in entries if p.is_file()]
    files_here = set(visible)
    for p in entries:  # a dangling link named like an image is named
        if p not in files_here and p.suffix.lower() in IMAGE_SUFFIXES:
            check_link(p)
    files = sorted(p for p in visible if p.suffix.lower() in IMAGE_SUFFIXES)
    subfolders = sorted(p.name for p in entries if p.is_dir())
    if not files:
        advice = split_advice(d, subfolders, train=False)  # which command this is, a list cannot tell
        raise VislabError(d, f"no {what} found (expected {', '.join(IMAGE_SUFFIXES)} files)"
                             + (f"; {advice}" if advice else ""))
    say_skipped(d, sorted(p.name for p in visible if p.suffix.lower() not in IMAGE_SUFFIXES))
    if subfolders:
        info_once(f"{d}: {len(subfolders)} subfolder(s) not read (e.g. {subfolders[0]}/): only the files directly "
                  "in the folder are")
    return files


SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing", "eval"})
"""Folder names of data splits (compared in lower case)."""


def split_advice(root: Path, subfolders: list[str], *, least: int = 1, train: bool = True) -> str | None:
    """What to pass instead of ``root`` when at least ``least`` of its ``subfolders`` are named
    like data splits (a folder of splits given one level too high), or None; ``train``: with the
    training and validation folders to train with, where both are there:

        >>> split_advice(Path("p2"), ["train", "validation", "notes"])
        'its subfolders train/, validation/ are splits: pass the folder of one split (e.g. p2/train); to train: p2/train with --val-dir p2/validation'
    """
    splits = sorted(d for d in subfolders if d.lower() in SPLIT_NAMES)
    if len(splits) < max(least, 1):
        return None
    first = next((d for d in splits if d.lower().startswith("train")), None)
    val = next((d for d in splits if d.lower().startswith("val")), None)
    to_train = f"; to train: {root / first} with --val-dir {root / val}" if first and val and train else ""
    return (f"its subfolder{'s' if len(splits) > 1 else ''} {', '.join(d + '/' for d in splits)} "
            f"{'are splits' if len(splits) > 1 else 'is a split'}: pass the folder of one split "
            f"(e.g. {root / (first or splits[0])}){to_train}")


def check_link(p: Path) -> None:
    """A link to a file that does not exist, named like an image, is an error: reading past it would
    lose an image without a word. A link to a folder that holds ``p`` (a loop) is one too."""
    if not p.is_symlink():
        return
    if not p.exists():
        raise VislabError(p, f"is a link to {os.readlink(p)}, which does not exist")
    target, here = p.resolve(), p.parent.resolve()
    if p.is_dir() and (target == here or target in here.parents):
        raise VislabError(p, f"is a link to {target}, which holds this folder: a loop; remove the link")


def say_skipped(folder: Path, names: list[str]) -> None:
    """One console line when a folder holds files that are not images of a supported format (a
    segmentation set's own description, ``classes.yaml`` or ``.yml``, is no stray file)."""
    names = [n for n in names if n not in ("classes.yaml", "classes.yml")]
    if names:
        info_once(f"{folder}: skipped {len(names)} file(s) that are not {'/'.join(IMAGE_SUFFIXES)} images "
                  f"(e.g. {min(names)})")


def image_file(path: str | Path) -> Path | None:
    """``path`` when it is one file with an image suffix (the predict commands read one image as
    well as a folder), None when it is no file; another file is a one-line error."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise VislabError(p, f"is a file, but neither an image vislab reads ({', '.join(IMAGE_SUFFIXES)}) nor a "
                             "folder of them")
    return p


def check_folder(folder: str | Path) -> Path:
    """``folder`` as a Path; a one-line error when it is missing or a file."""
    d = Path(folder)
    if not d.exists():  # a path named like an image: a file, perhaps, to predict
        raise VislabError(d, "not found" if d.suffix.lower() in IMAGE_SUFFIXES else "folder not found")
    if not d.is_dir():
        if d.suffix.lower() in IMAGE_SUFFIXES:  # predict one image: the commands read folders
            raise VislabError(d, "is an image file, but a folder of images is needed here (put the image in a "
                                 "folder of its own)")
        raise VislabError(d, "not a folder")
    return d
