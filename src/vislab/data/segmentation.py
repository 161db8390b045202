"""Land-cover segmentation data: ``xxxx_sat.jpg`` / ``xxxx_mask.png`` pairs matched by stem,
decoded with torchvision.io, augmented jointly (image and mask) with transforms.v2 in the
loader; the colour jitter runs batched on the training device (:func:`jitter_colours`).

Augmentation randomness is a pure function of (seed, epoch, sample index): the sampler hands
the dataset ``(index, epoch)`` pairs, so workers and resumed runs draw the same crops.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from vislab.data.cache import cache_dir, file_list_key
from vislab.data.classification import hash_uniform
from vislab.data.images import list_images, read_rgb
from vislab.data.palette import NUM_CLASSES, mask_to_classes
from vislab.errors import VislabError
from vislab.io import atomic_save

SAT, MASK = "_sat", "_mask"


@dataclass(frozen=True)
class Pair:
    """One satellite image and its mask (``mask`` is None for unlabelled images)."""

    stem: str
    image: Path
    mask: Path | None


def list_pairs(folder: str | Path) -> list[Pair]:
    """All ``xxxx_sat.jpg`` + ``xxxx_mask.png`` pairs of ``folder``, sorted by stem.

    A satellite image without its mask, or a mask without its image, is an error naming it.
    """
    files = list_images(folder, what="satellite images or masks")
    sats = {f.stem[: -len(SAT)]: f for f in files if f.stem.endswith(SAT)}
    masks = {f.stem[: -len(MASK)]: f for f in files if f.stem.endswith(MASK)}
    if not sats:
        raise VislabError(folder, "no xxxx_sat.jpg images found")
    for stem, f in sorted(sats.items()):
        if stem not in masks:
            raise VislabError(f, f"satellite image has no mask (expected {stem}{MASK}.png beside it)")
    for stem, f in sorted(masks.items()):
        if stem not in sats:
            raise VislabError(f, f"mask has no satellite image (expected {stem}{SAT}.jpg beside it)")
    return [Pair(s, sats[s], masks[s]) for s in sorted(sats)]


def read_mask(path: Path, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
    """Class ids (H, W) uint8 and the stray-pixel count of a colour mask; checks its size (H, W)."""
    rgb = read_rgb(path)
    if size is not None and tuple(rgb.shape[1:]) != tuple(size):
        raise VislabError(path, f"mask is {rgb.shape[2]}x{rgb.shape[1]}, expected {size[1]}x{size[0]} like its image")
    return mask_to_classes(rgb)


def read_pair(pair: Pair, *, expected: tuple[int, int] | None = (512, 512)) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode a pair: image (3, H, W) uint8, class ids (H, W) uint8, stray pixel count."""
    img = read_rgb(pair.image)
    if expected is not None and tuple(img.shape[1:]) != tuple(expected):
        raise VislabError(pair.image, f"image is {img.shape[2]}x{img.shape[1]}, expected {expected[1]}x{expected[0]}")
    assert pair.mask is not None
    ids, stray = read_mask(pair.mask, tuple(img.shape[1:]))
    return img, ids, stray


@dataclass(frozen=True)
class MaskStats:
    """Per-file class pixel counts (N, 7) and stray red pixel counts (N,)."""

    stems: list[str]
    counts: torch.Tensor
    stray: torch.Tensor

    def stray_report(self, folder: str | Path) -> str | None:
        """One line naming the masks with stray (red) pixels, or None."""
        hit = torch.nonzero(self.stray).flatten().tolist()
        if not hit:
            return None
        listed = ", ".join(f"{self.stems[i]} ({int(self.stray[i])})" for i in hit)
        return (f"{folder}: {len(hit)} masks hold {int(self.stray.sum())} red pixels, which are in no "
                f"class and count as unknown: {listed}")


def scan_masks(pairs: list[Pair], *, expected: tuple[int, int] | None = (512, 512)) -> MaskStats:
    """Decode every pair once (checking sizes and readability); cached on disk by file list."""
    files = [f for p in pairs for f in (p.image, p.mask) if f is not None]
    key = file_list_key(files, extra=repr(expected))
    cache = cache_dir() / f"seg-stats-{key}.pt"
    if cache.is_file():
        try:
            d = torch.load(cache, weights_only=True)
            return MaskStats(d["stems"], d["counts"], d["stray"])
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt
            pass
    counts = torch.zeros(len(pairs), NUM_CLASSES, dtype=torch.int64)
    stray = torch.zeros(len(pairs), dtype=torch.int64)
    for i, p in enumerate(pairs):
        _, ids, s = read_pair(p, expected=expected)
        counts[i] = torch.bincount(ids.flatten().long(), minlength=NUM_CLASSES)
        stray[i] = s
    stats = MaskStats([p.stem for p in pairs], counts, stray)
    try:
        atomic_save({"stems": stats.stems, "counts": counts, "stray": stray}, cache)
    except OSError:
        pass
    return stats


def _mix(seed: int, epoch: int, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest(), "little")


class RandomRot90(v2.Transform):
    """Turn image and mask together by k * 90 degrees, k uniform in 0..3 (exact, no resampling;
    ``v2.RandomRotation`` resamples through an affine grid and is ~10x slower at 512 px)."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        out = torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], (-2, -1))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def train_transforms(crop_size: int | None, *, rot90: bool = True,
                     crop_area: tuple[float, float] = (0.25, 1.0)) -> v2.Transform:
    """Joint image+mask geometry: scale/crop, flips, 90-degree turns (colour: :func:`jitter_colours`).

    Masks are resized with nearest-neighbour (transforms.v2 does so for ``tv_tensors.Mask``).
    """
    ops: list[v2.Transform] = []
    if crop_size:
        ops.append(v2.RandomResizedCrop(crop_size, scale=crop_area, ratio=(0.75, 1.333), antialias=True))
    ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rot90:
        ops.append(RandomRot90())
    return v2.Compose(ops)


COLOUR_JITTER = 0.2  # brightness, contrast and saturation factors drawn from [0.8, 1.2]


def jitter_colours(x: torch.Tensor, index: torch.Tensor, *, seed: int, epoch: int,
                   strength: float = COLOUR_JITTER) -> torch.Tensor:
    """Brightness, then contrast, then saturation jitter of a batch (N, 3, H, W) in [0, 255].

    Each factor of sample ``i`` is uniform in [1 - strength, 1 + strength] and depends only on
    (seed, epoch, index[i]); the adjustments are torchvision's (blend with black, with the mean
    grey level, with the grey image; clamped after each). Returns float in [0, 255]. Run on the
    training device, this costs the loader workers nothing (per image in a worker, the same jitter
    took longer than decoding the JPEG).
    """
    x = x.float()
    idx = index.to(x.device)

    def blend(img: torch.Tensor, other: torch.Tensor, stream: int) -> torch.Tensor:
        f = (1 - strength + 2 * strength * hash_uniform(seed, epoch, idx, stream)).view(-1, 1, 1, 1)
        return (f * img + (1 - f) * other).clamp(0, 255)

    x = blend(x, torch.zeros(()), 11)
    x = blend(x, v2.functional.rgb_to_grayscale(x).mean((-2, -1), keepdim=True), 12)
    return blend(x, v2.functional.rgb_to_grayscale(x), 13)


class SegmentationDataset(Dataset):
    """Items are ``(index, epoch)`` pairs (or plain indices for evaluation).

    Returns (image uint8 (3, H, W), class ids int64 (H, W), sample index).
    """

    def __init__(self, pairs: list[Pair], *, train: bool, crop_size: int | None = None, seed: int = 0,
                 expected: tuple[int, int] | None = (512, 512), rot90: bool = True,
                 crop_area: tuple[float, float] = (0.25, 1.0)) -> None:
        self.pairs = pairs
        self.train = train
        self.seed = seed
        self.expected = expected
        self.transform = train_transforms(crop_size, rot90=rot90, crop_area=crop_area) if train else None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        img, ids, _ = read_pair(self.pairs[index], expected=self.expected)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_mix(self.seed, epoch, index))
                img, mask = self.transform(tv_tensors.Image(img), tv_tensors.Mask(ids))
            img, ids = img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        return img.contiguous(), ids.long(), index


def holdout_split(n: int, *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) index lists; at least one training item."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    k = min(int(round(fraction * n)), n - 1)
    return sorted(order[k:]), sorted(order[:k])
