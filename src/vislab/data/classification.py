"""Classification data: a folder in any supported layout (:mod:`vislab.data.layouts`) decoded
once into a memory-mapped uint8 array (:mod:`vislab.data.cache`), a stratified held-out split,
and batched tensor augmentation whose randomness is a pure function of (seed, epoch, sample index).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from vislab.data.cache import decoded_images, most_common_size, parallel_map
from vislab.data.images import (FRAMES, SIXTEEN_BIT_COLOUR, SIXTEEN_BITS, TRANSPARENT, UPRIGHT, decode_fitted, shown_size,
                                transparent_line)
from vislab.data.layouts import ClassItems, count_classes, find_items
from vislab.data.tensors import channel_stats, hash_uniform, spaced
from vislab.errors import VislabError
from vislab.log import counted, info_once


@dataclass(frozen=True)
class ImageFolderData:
    """A decoded folder: ``images`` (N, 3, H, W) uint8 (memory-mapped when cached), ``labels``
    (N,) int64 or None, ``files`` the image ids (paths relative to ``root``, the folder),
    ``class_names`` None for integer-labelled data."""

    files: list[str]
    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None = None
    layout: str = "course"
    root: Path | None = None

    def paths(self) -> list[Path]:
        """The image files (``root`` / id)."""
        assert self.root is not None, "a folder read by load_folder knows its root"
        return [self.root / f for f in self.files]

    @property
    def num_classes(self) -> int:
        """Number of classes: the names, else the largest label + 1."""
        return count_classes(self.class_names, None if self.labels is None else int(self.labels.max()))


def sample_sizes(files: list[Path], k: int = 2000) -> Counter:
    """How many images of each (h, w) as shown (EXIF-upright) an evenly spaced sample of at most
    ``k`` files holds (headers only): enough to choose the size a folder is decoded at."""
    step = max(1, len(files) // k)
    return Counter(parallel_map(shown_size, files[::step]))


def storage_size(common: tuple[int, int], image_size: int | None) -> tuple[int, int]:
    """The size images are decoded and cached at: the folder's most common size, or with an input
    size ``image_size`` a square of ``min(image_size, shorter common side)`` (larger photos are
    decoded at the input size; small ones stay small and are upsampled batched on the device)."""
    if image_size is None:
        return common
    side = min(image_size, min(common))
    return side, side


def load_folder(folder: str | Path, *, labelled: bool, use_cache: bool = True,
                labels_csv: str | Path | None = None, class_names: list[str] | None = None,
                size: tuple[int, int] | None = None, image_size: int | None = None,
                check: Callable[[ClassItems], None] | None = None) -> ImageFolderData:
    """Find the images of ``folder`` (course names, an ImageFolder tree, or a flat folder with a
    labels CSV; see :mod:`vislab.data.layouts`) and decode them once, in parallel.

    Args:
        folder: the folder.
        labelled: require labels.
        use_cache: keep the decoded array as a memory-mapped file in :func:`cache_dir`.
        labels_csv: ``filename,label`` rows for a flat folder.
        class_names: a trained model's classes (names are mapped to its ids).
        size: decode at this (H, W); default :func:`storage_size` of the most common size.
        image_size: the run's input side, for :func:`storage_size`.
        check: called with the folder's items (files and labels) before any image is decoded.

    Images of another size are resized by one factor to cover the target and centre cropped
    (:func:`vislab.data.images.decode_fitted`), photos turned upright by their EXIF orientation,
    16-bit grey images read as 8 bits, the alpha of transparent images dropped; the console says
    how many of each.

    Example:
        >>> data = load_folder("hw1_data/p1_data/val_50", labelled=True)
        >>> data.images.shape, data.num_classes  # (torch.Size([2500, 3, 32, 32]), 50)
    """
    items = find_items(folder, labelled=labelled, labels_csv=labels_csv, class_names=class_names)
    if check is not None:
        check(items)
    target = tuple(size) if size is not None else storage_size(most_common_size(sample_sizes(items.files)), image_size)
    images, sizes = decoded_images(items.files, target, decode_fitted, use_cache=use_cache, source=items.root)
    other = sum(n for key, n in sizes.items() if tuple(key[:2]) != tuple(target))
    where = items.files[0] if len(items.files) == 1 else items.root  # one image given: its file is named
    if other:
        size = f"{target[1]}x{target[0]} (width x height)"
        info_once(f"{where}: not {size}; resized (shorter side, one factor) and centre cropped to it"
                  if len(items.files) == 1 else f"{where}: {other} of {len(items.files)} images are not {size}; they "
                  "are resized (shorter side, one factor) and centre cropped to it")
    for flag, words in ((UPRIGHT, "turned upright by their EXIF orientation (as a photo viewer shows them)"),
                        (SIXTEEN_BITS, "are 16-bit grey; read as 8 bits (value / 257)"),
                        (SIXTEEN_BIT_COLOUR, "are 16-bit colour; read as 8 bits (the high byte of each value)"),
                        (FRAMES, "hold several frames (animations); the first frame is read")):
        done = sum(n for key, n in sizes.items() if flag in key[2:])
        if done:
            info_once(f"{where}: {done} of {len(items.files)} images {words}")
    clear = sum(n for key, n in sizes.items() if TRANSPARENT in key[2:])
    if clear:
        info_once(transparent_line(where, clear, len(items.files)))
    labels = None if items.labels is None else torch.tensor(items.labels, dtype=torch.int64)
    return ImageFolderData(items.ids, images, labels, items.class_names, items.layout, items.root)


def load_for_model(folder: str | Path, *, class_names: list[str] | None, num_classes: int,
                   labels_csv: str | Path | None = None, size: tuple[int, int] | None = None) -> ImageFolderData:
    """A labelled folder read for a model that knows ``class_names`` (None: numbered labels) and
    ``num_classes``: names are matched to its ids, and a folder that names its classes is refused for
    a numbered model (the names would meet the ids in alphabetical order, by chance), as is a
    label beyond its classes."""
    def fits(items: ClassItems) -> None:  # before the images are decoded
        assert items.labels is not None
        if class_names is None and items.class_names is not None:
            where = "class folders" if items.layout == "imagefolder" else f"class names in {labels_csv}"
            raise VislabError(folder, f"gives {where}, but the model was trained on numbered labels (<label>_<index> "
                                      "names or integer labels) and knows no class names; label these images by number")
        if max(items.labels) >= num_classes:
            over = [i for i, v in enumerate(items.labels) if v >= num_classes]
            first = over[0]
            raise VislabError(Path(folder) / items.ids[first], f"label {items.labels[first]} is outside the model's "
                                                               f"0..{num_classes - 1} ({counted(len(over), 'image')} "
                                                               f"so labelled; the largest label is {max(items.labels)})")

    return load_folder(folder, labelled=True, labels_csv=labels_csv, class_names=class_names, size=size, check=fits)


def image_stats(images: torch.Tensor, idx: torch.Tensor, *, max_images: int = 10_000,
                chunk: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation, in [0, 1] units, of ``images[idx]`` (uint8):
    :func:`~vislab.data.tensors.channel_stats` over at most ``max_images`` evenly spaced images,
    read ``chunk`` at a time."""
    idx = idx[spaced(len(idx), max_images)]
    return channel_stats(images[idx[lo : lo + chunk]] for lo in range(0, len(idx), chunk))


def stratified_split(
    labels: torch.Tensor, *, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, held-out) with ``fraction`` of every class held out.

    Each class keeps at least one training sample; the split depends only on ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(int(round(fraction * len(idx))), len(idx) - 1)
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(held)).values


# --- deterministic randomness -------------------------------------------------------------


def augment_batch(
    x: torch.Tensor, index: torch.Tensor, *, seed: int, epoch: int, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop with reflect padding and horizontal flip, batched, for uint8/float images.

    The crop offsets and flips of sample ``i`` depend only on (seed, epoch, index[i]).
    """
    n, _, h, w = x.shape
    idx = index.to(x.device)
    if pad > 0:
        xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(x.dtype)
        oy = (hash_uniform(seed, epoch, idx, 1) * (2 * pad + 1)).long().clamp_max(2 * pad)
        ox = (hash_uniform(seed, epoch, idx, 2) * (2 * pad + 1)).long().clamp_max(2 * pad)
        rows = oy[:, None] + torch.arange(h, device=x.device)[None, :]
        cols = ox[:, None] + torch.arange(w, device=x.device)[None, :]
        bi = torch.arange(n, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        do = (hash_uniform(seed, epoch, idx, 3) < 0.5).view(n, 1, 1, 1)
        x = torch.where(do, x.flip(-1), x)
    return x.contiguous()


SIDE_STEP = 16
"""Progressive resizing grows the training side in steps of this many pixels."""


def progressive_sides(start: int, end: int, epochs: int) -> list[int]:
    """The training side of each epoch under progressive resizing: linear in the epoch from
    ``start`` (the first epoch) to ``end``, reached when a quarter of the epochs (at least one) is
    left and kept to the end; below ``end`` a side moves from ``start`` in whole steps of
    :data:`SIDE_STEP` pixels (the nearest).

    Example:
        >>> progressive_sides(32, 64, 4)
        [32, 48, 48, 64]
    """
    ramp = epochs - max(1, epochs // 4)  # epochs 0 .. ramp-1 grow; epoch ramp and later are at end
    return [end if e >= ramp else min(end, start + SIDE_STEP * round((end - start) * e / ramp / SIDE_STEP))
            for e in range(epochs)]


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a float batch to ``size`` x ``size`` (no-op for None or same size)."""
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
