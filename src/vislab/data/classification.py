"""Small-image classification data: ``<label>_<index>.png`` folders decoded once into a uint8
tensor (cached on disk, keyed by the file list), a stratified held-out split, and batched
tensor augmentation whose randomness is a pure function of (seed, epoch, sample index).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vislab.data.images import list_images, read_rgb
from vislab.errors import VislabError
from vislab.io import atomic_save

_NAME = re.compile(r"^(\d+)_(\d+)$")


@dataclass(frozen=True)
class ImageFolderData:
    """A decoded folder: ``images`` (N, 3, H, W) uint8, ``labels`` (N,) int64 or None."""

    files: list[str]
    images: torch.Tensor
    labels: torch.Tensor | None

    @property
    def num_classes(self) -> int:
        """Number of classes the labels imply (max label + 1)."""
        if self.labels is None:
            raise ValueError("this folder carries no labels")
        return int(self.labels.max()) + 1


def label_of(path: Path) -> int | None:
    """The label encoded in ``<label>_<index>.<ext>``, or None for another name."""
    m = _NAME.match(path.stem)
    return int(m.group(1)) if m else None


def cache_dir() -> Path:
    """Where decoded folders are cached: ``$VISLAB_CACHE`` or ``~/.cache/vislab``."""
    return Path(os.environ.get("VISLAB_CACHE", Path.home() / ".cache" / "vislab"))


def file_list_key(files: list[Path], extra: str = "") -> str:
    """A short hash of paths, sizes and modification times: changes whenever a file does."""
    h = hashlib.sha1(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode_all(files: list[Path]) -> torch.Tensor:
    first = read_rgb(files[0])
    out = torch.empty((len(files), *first.shape), dtype=torch.uint8)
    out[0] = first
    for i, f in enumerate(files[1:], start=1):
        img = read_rgb(f)
        if img.shape != first.shape:
            raise VislabError(
                f,
                f"image is {img.shape[2]}x{img.shape[1]}, expected {first.shape[2]}x{first.shape[1]} "
                f"like {files[0].name} (all images of a folder must share one size)",
            )
        out[i] = img
    return out


def load_folder(folder: str | Path, *, labelled: bool, use_cache: bool = True) -> ImageFolderData:
    """Decode every image of ``folder`` once (from the disk cache when the file list is unchanged).

    Args:
        folder: a folder of same-sized images.
        labelled: require ``<label>_<index>`` names and return their labels.
        use_cache: read/write the decoded tensor in :func:`cache_dir`.

    Example:
        >>> data = load_folder("hw1_data/p1_data/val_50", labelled=True)
        >>> data.images.shape, data.num_classes  # (torch.Size([2500, 3, 32, 32]), 50)
    """
    files = list_images(folder)
    labels = None
    if labelled:
        parsed = [label_of(f) for f in files]
        bad = [f for f, lab in zip(files, parsed) if lab is None]
        if bad:
            raise VislabError(
                bad[0], f"file name is not <label>_<index> ({len(bad)} such files in the folder)"
            )
        labels = torch.tensor(parsed, dtype=torch.int64)
    images = None
    cache = cache_dir() / f"cls-{file_list_key(files)}.pt" if use_cache else None
    if cache is not None and cache.is_file():
        try:
            images = torch.load(cache, weights_only=True)
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
            images = None
    if images is None or images.shape[0] != len(files):
        images = _decode_all(files)
        if cache is not None:
            try:
                atomic_save(images, cache)
            except OSError:
                pass  # an unwritable cache only costs time
    return ImageFolderData([f.name for f in files], images, labels)


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


def hash_uniform(seed: int, epoch: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform numbers in [0, 1), a pure function of (seed, epoch, sample index, stream).

    A 32-bit integer hash applied element-wise, so a resumed run re-draws exactly the same
    augmentation for the same sample in the same epoch, whatever the batch it lands in.
    """
    m = 0xFFFFFFFF
    x = index.to(torch.int64) & m
    for k in (seed, epoch, stream):
        x = (x * 0x9E3779B1 + (k & m) + 0x7F4A7C15) & m
        for _ in range(2):
            x = ((x >> 16) ^ x) * 0x45D9F3B & m
        x = (x >> 16) ^ x
    return x.to(torch.float64).div(2**32).float()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (or float in [0, 255]) (N, 3, H, W) -> float, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


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


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a float batch to ``size`` x ``size`` (no-op for None or same size)."""
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
