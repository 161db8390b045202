"""Segmentation data: image/mask pairs matched by stem (``xxxx_sat.jpg`` + ``xxxx_mask.png``, or
``images/`` + ``masks/``), masks read by the data set's description (:mod:`vislab.data.seg_classes`),
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
from vislab.data.images import IMAGE_SUFFIXES, check_folder, list_images, read_rgb
from vislab.data.seg_classes import IGNORE, SegClasses, deepglobe
from vislab.errors import VislabError
from vislab.io import atomic_save

SAT, MASK = "_sat", "_mask"
IMAGES_DIR, MASKS_DIR = "images", "masks"


@dataclass(frozen=True)
class Pair:
    """One image and its mask (``mask`` is None for unlabelled images)."""

    stem: str
    image: Path
    mask: Path | None


def pair_layout(folder: str | Path) -> str:
    """``"folders"`` when ``folder`` holds ``images/`` and ``masks/``, else ``"course"``
    (``<stem>_sat.<ext>`` + ``<stem>_mask.png`` side by side)."""
    d = Path(folder)
    return "folders" if (d / IMAGES_DIR).is_dir() and (d / MASKS_DIR).is_dir() else "course"


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in files:
        if f.stem in found:
            raise VislabError(f, f"two {what} share the stem {f.stem} ({found[f.stem].name} and {f.name})")
        found[f.stem] = f
    return found


def list_pairs(folder: str | Path) -> list[Pair]:
    """The labelled pairs of ``folder``, sorted by stem, in either layout:

    - course: ``<stem>_sat.<ext>`` + ``<stem>_mask.png`` in the folder;
    - folders: ``images/<stem>.<ext>`` + ``masks/<stem>.png``.

    An image without its mask, or a mask without its image, is an error naming it.
    """
    d = check_folder(folder)
    if pair_layout(d) == "folders":
        sats = _by_stem(list_images(d / IMAGES_DIR, what="images"), "images")
        masks = _by_stem(list_images(d / MASKS_DIR, what="masks"), "masks")
        img_hint, mask_hint, image = f"{IMAGES_DIR}/{{}}.jpg", f"{MASKS_DIR}/{{}}.png", "image"
    else:
        files = list_images(d, what="satellite images or masks (or images/ + masks/ folders)")
        sats = {f.stem[: -len(SAT)]: f for f in files if f.stem.endswith(SAT)}
        masks = {f.stem[: -len(MASK)]: f for f in files if f.stem.endswith(MASK)}
        if not sats:
            raise VislabError(d, "no xxxx_sat.jpg images found (nor images/ + masks/ folders)")
        img_hint, mask_hint, image = f"{{}}{SAT}.jpg beside it", f"{{}}{MASK}.png beside it", "satellite image"
    for stem, f in sorted(sats.items()):
        if stem not in masks:
            raise VislabError(f, f"{image} has no mask (expected {mask_hint.format(stem)})")
    for stem, f in sorted(masks.items()):
        if stem not in sats:
            raise VislabError(f, f"mask has no {image} (expected {img_hint.format(stem)})")
    return [Pair(s, sats[s], masks[s]) for s in sorted(sats)]


def list_unlabelled(folder: str | Path) -> list[Path]:
    """Images to predict: the files of ``folder`` (masks ``*_mask.*`` skipped), or of its
    ``images/`` subfolder when it holds no images itself."""
    d = check_folder(folder)
    if (d / IMAGES_DIR).is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir() if p.is_file()):
        d = d / IMAGES_DIR
    files = [f for f in list_images(d, what="images") if not f.stem.endswith(MASK)]
    if not files:
        raise VislabError(d, "no images found (only masks)")
    return files


def list_masks(folder: str | Path) -> dict[str, Path]:
    """Ground-truth masks by stem: ``<stem>_mask.png`` files (course), else ``masks/<stem>.png``
    when the folder has ``masks/``, else every image file of the folder."""
    d = check_folder(folder)
    files = list_images(d / MASKS_DIR if pair_layout(d) == "folders" else d, what="masks")
    course = {f.stem[: -len(MASK)]: f for f in files if f.stem.endswith(MASK)}
    if course:
        return course
    if any(f.stem.endswith(SAT) for f in files):
        raise VislabError(d, "no xxxx_mask.png ground-truth masks found")
    return _by_stem(files, "masks")


def read_pair(pair: Pair, *, expected: tuple[int, int] | None = (512, 512),
              classes: SegClasses | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode a pair: image (3, H, W) uint8, class ids (H, W) uint8, stray pixel count.

    ``classes``: how the mask is read (default: the course's colour code)."""
    img = read_rgb(pair.image)
    if expected is not None and tuple(img.shape[1:]) != tuple(expected):
        raise VislabError(pair.image, f"image is {img.shape[2]}x{img.shape[1]}, expected {expected[1]}x{expected[0]}")
    assert pair.mask is not None
    ids, stray = (classes or deepglobe()).read_mask(pair.mask, tuple(img.shape[1:]))
    return img, ids, stray


def read_mask(path: Path, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
    """Class ids (H, W) uint8 and the stray-pixel count of a course colour mask; checks its size."""
    return deepglobe().read_mask(path, size)


@dataclass(frozen=True)
class MaskStats:
    """Per-file class pixel counts (N, C), stray red pixel counts (N,), ignored pixel counts
    (N,) and tile sizes (N, 2) as (H, W)."""

    stems: list[str]
    counts: torch.Tensor
    stray: torch.Tensor
    ignored: torch.Tensor | None = None
    sizes: torch.Tensor | None = None

    def stray_report(self, folder: str | Path) -> str | None:
        """One line naming the masks with stray (red) pixels, or None."""
        hit = torch.nonzero(self.stray).flatten().tolist()
        if not hit:
            return None
        listed = ", ".join(f"{self.stems[i]} ({int(self.stray[i])})" for i in hit)
        return (f"{folder}: {len(hit)} masks hold {int(self.stray.sum())} red pixels, which are in no "
                f"class and count as unknown: {listed}")

    def common_size(self) -> tuple[int, int] | None:
        """The most common tile size (H, W)."""
        if self.sizes is None or not len(self.sizes):
            return None
        from collections import Counter

        return Counter(tuple(int(v) for v in s) for s in self.sizes.tolist()).most_common(1)[0][0]


def scan_masks(pairs: list[Pair], *, expected: tuple[int, int] | None = (512, 512),
               classes: SegClasses | None = None) -> MaskStats:
    """Decode every pair once (checking sizes, colours and readability); cached on disk by file
    list and description."""
    classes = classes or deepglobe()
    files = [f for p in pairs for f in (p.image, p.mask) if f is not None]
    key = file_list_key(files, extra=repr((expected, classes.to_dict())))
    cache = cache_dir() / f"seg-stats-{key}.pt"
    if cache.is_file():
        try:
            d = torch.load(cache, weights_only=True)
            return MaskStats(d["stems"], d["counts"], d["stray"], d["ignored"], d["sizes"])
        except Exception:  # noqa: BLE001 - a broken (or older) cache is rebuilt
            pass
    k = classes.num_classes
    counts = torch.zeros(len(pairs), k, dtype=torch.int64)
    stray = torch.zeros(len(pairs), dtype=torch.int64)
    ignored = torch.zeros(len(pairs), dtype=torch.int64)
    sizes = torch.zeros(len(pairs), 2, dtype=torch.int64)
    for i, p in enumerate(pairs):
        _, ids, s = read_pair(p, expected=expected, classes=classes)
        hist = torch.bincount(ids.flatten().long(), minlength=IGNORE + 1)
        counts[i] = hist[:k]
        ignored[i] = hist[IGNORE]
        stray[i] = s
        sizes[i] = torch.tensor(ids.shape)
    stats = MaskStats([p.stem for p in pairs], counts, stray, ignored, sizes)
    try:
        atomic_save({"stems": stats.stems, "counts": counts, "stray": stray, "ignored": ignored, "sizes": sizes}, cache)
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
                 crop_area: tuple[float, float] = (0.25, 1.0), classes: SegClasses | None = None) -> None:
        self.pairs = pairs
        self.train = train
        self.seed = seed
        self.expected = expected
        self.classes = classes or deepglobe()
        self.transform = train_transforms(crop_size, rot90=rot90, crop_area=crop_area) if train else None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        img, ids, _ = read_pair(self.pairs[index], expected=self.expected, classes=self.classes)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_mix(self.seed, epoch, index))
                img, mask = self.transform(tv_tensors.Image(img), tv_tensors.Mask(ids))
            img, ids = img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        return img.contiguous(), ids.long(), index


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor, int]], *, multiple: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (image, ids, index) samples; samples of different sizes are zero-padded at the
    bottom and right to the largest (rounded up to ``multiple``), their masks with :data:`IGNORE`,
    so the padding counts in neither loss nor metric. Same-size batches are stacked as they are."""
    imgs, masks, idx = zip(*batch)
    if len({tuple(m.shape) for m in masks}) == 1:
        return torch.stack(imgs), torch.stack(masks), torch.tensor(idx)
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = imgs[0].new_zeros(len(imgs), imgs[0].shape[0], h, w)
    y = masks[0].new_full((len(masks), h, w), IGNORE)
    for i, (im, m) in enumerate(zip(imgs, masks)):
        x[i, :, : im.shape[-2], : im.shape[-1]] = im
        y[i, : m.shape[-2], : m.shape[-1]] = m
    return x, y, torch.tensor(idx)


def holdout_split(n: int, *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) index lists; at least one training item."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    k = min(int(round(fraction * n)), n - 1)
    return sorted(order[k:]), sorted(order[:k])
