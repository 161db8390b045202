"""Segmentation data: image/mask pairs matched by stem (``xxxx_sat.jpg`` + ``xxxx_mask.png``, or
``images/`` + ``masks/``), masks read by the data set's description (:mod:`vislab.data.seg_classes`).

Training decodes every pair once into a memory-mapped uint8 cache (:class:`TileCache`); the
loader only slices it, and the augmentation (:func:`augment_tiles` for scale/crop, flips and
turns; :func:`jitter_colours` for colour) runs batched on the training device. Its randomness
is a pure function of (seed, epoch, sample index), so resumed runs and DDP ranks draw the same.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from vislab.data.cache import cache_dir, content_digest, decoded_images, file_list_key, mark_used, record_source, say_built
from vislab.data.tensors import hash_uniform
from vislab.data.images import (IMAGE_SUFFIXES, check_folder, has_transparent_pixels, image_file, list_images,
                                read_rgb, transparent_line)
from vislab.data.seg_classes import IGNORE, INDEX_MASKS_HINT, SegClasses, deepglobe
from vislab.errors import CannotWrite, VislabError
from vislab.io import atomic_save
from vislab.log import counted, info

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
    (``<stem>_sat.<ext>`` + ``<stem>_mask.png`` side by side). Both at once are refused: which
    are the pairs?"""
    d = Path(folder)
    if not ((d / IMAGES_DIR).is_dir() and (d / MASKS_DIR).is_dir()):
        return "course"
    own = sorted(f.name for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if own:
        raise VislabError(d, f"ambiguous layout: {counted(len(own), 'image')} directly inside (e.g. {own[0]}) and "
                             f"{IMAGES_DIR}/ + {MASKS_DIR}/ folders; keep one: <stem>{SAT} + <stem>{MASK} files "
                             f"or the two folders")
    return "folders"


def _by_stem(files: list[Path], what: str, suffix: str = "") -> dict[str, Path]:
    """``files`` by stem (less ``suffix``, e.g. ``_sat``); two files of one stem are an error."""
    found: dict[str, Path] = {}
    for f in files:
        stem = f.stem[: len(f.stem) - len(suffix)]
        if stem in found:
            raise VislabError(f, f"two {what} share the stem {stem} ({found[stem].name} and {f.name})")
        found[stem] = f
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
        img_hint, mask_hint, image = f"{IMAGES_DIR}/{{stem}}{{ext}}", f"{MASKS_DIR}/{{stem}}.png", "image"
    else:
        files = list_images(d, what="satellite images or masks (or images/ + masks/ folders)")
        sats = _by_stem([f for f in files if f.stem.endswith(SAT)], "satellite images", SAT)
        masks = _by_stem([f for f in files if f.stem.endswith(MASK)], "masks", MASK)
        if not sats:
            raise VislabError(d, "no xxxx_sat.jpg images found (nor images/ + masks/ folders)")
        other = [f.name for f in files if not f.stem.endswith((SAT, MASK))]
        if other:
            info(f"{d}: skipped {len(other)} image(s) named neither <stem>{SAT} nor <stem>{MASK} (e.g. {other[0]})")
        img_hint, mask_hint, image = f"{{stem}}{SAT}{{ext}} beside it", f"{{stem}}{MASK}.png beside it", "satellite image"
    check_lossless(masks.values())
    ext = Counter(f.suffix for f in sats.values()).most_common(1)[0][0] if sats else ".jpg"  # the set's own
    for stem, f in sorted(sats.items()):
        if stem not in masks:
            raise VislabError(f, f"{image} has no mask (expected {mask_hint.format(stem=stem)})")
    for stem, f in sorted(masks.items()):
        if stem not in sats:
            raise VislabError(f, f"mask has no {image} (expected {img_hint.format(stem=stem, ext=ext)})")
    return [Pair(s, sats[s], masks[s]) for s in sorted(sats)]


def check_lossless(masks: Iterable[Path], what: str = "mask") -> None:
    """A JPEG or lossy WebP mask is refused: lossy compression changes colours (and ids) at class
    edges. ``what`` names the files (``mask``, ``predicted mask``)."""
    masks = sorted(masks)
    jpegs = [f for f in masks if f.suffix.lower() in (".jpg", ".jpeg")]
    if jpegs:
        raise VislabError(jpegs[0], f"{what} is a JPEG ({counted(len(jpegs), 'such file')}): lossy compression "
                                    "changes the colours and class ids at class edges; save masks as PNG")
    webp = [f for f in masks if f.suffix.lower() == ".webp" and lossy_webp(f)]
    if webp:
        raise VislabError(webp[0], f"{what} is a lossy WebP ({counted(len(webp), 'such file')}): lossy compression "
                                   "changes the colours and class ids at class edges; save masks as PNG (or "
                                   "lossless WebP)")


def lossy_webp(path: Path) -> bool:
    """Whether a WebP file holds a lossy image (a ``VP8 `` chunk; lossless ones hold ``VP8L``),
    read from its RIFF chunks. A file that is no WebP is left to the decoder to refuse."""
    try:
        with open(path, "rb") as fh:
            if fh.read(12)[8:12] != b"WEBP":
                return False
            while len(head := fh.read(8)) == 8:  # each chunk's header; its body is skipped
                fourcc, size = head[:4], int.from_bytes(head[4:], "little")
                if fourcc in (b"VP8 ", b"VP8L"):
                    return fourcc == b"VP8 "
                fh.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to an even size
    except OSError:
        return False
    return False


def pair_lines(pairs: list[Pair]) -> list[str]:
    """A folder's pairs as :mod:`vislab.data.manifest` lines: ``stem|[image bytes, mask bytes]``."""
    return [f"{p.stem}|{[f.stat().st_size for f in (p.image, p.mask) if f is not None]}" for p in pairs]


def pairs_digest(pairs: list[Pair]) -> str:
    """A short digest of a folder's pairs (stems and file sizes, not paths or times): the same
    for the same data moved or copied elsewhere, different for other or changed pairs."""
    return content_digest(pair_lines(pairs))


def list_unlabelled(folder: str | Path) -> list[Path]:
    """Images to predict: the files of ``folder`` (masks skipped: every ``<stem>_mask.*`` of a folder
    of ``<stem>_sat.*`` pairs, else one beside an image ``<stem>.*``; a folder of masks alone
    refused), or of its ``images/`` subfolder when it holds no images itself (every file read);
    or ``folder`` itself, one image file (not the mask of an image beside it)."""
    one = image_file(folder)
    if one is not None:
        base = one.stem[: -len(MASK)]
        if one.stem.endswith(MASK) and any(f.stem in (base, base + SAT) for f in one.parent.iterdir()
                                           if f.suffix.lower() in IMAGE_SUFFIXES):
            raise VislabError(one, f"is a mask (*{MASK}, beside its image), not an image to predict")
        return [one]
    d = check_folder(folder)
    pair_layout(d)  # images beside images/ + masks/ folders are refused here too
    if (d / IMAGES_DIR).is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir() if p.is_file()):
        return list_images(d / IMAGES_DIR, what="images")
    found = list_images(d, what="images")
    if all(f.stem.endswith(MASK) for f in found):
        raise VislabError(d, f"no images found, only masks (*{MASK} files)")
    course = any(f.stem.endswith(SAT) for f in found)  # pairs side by side: every *_mask is a mask
    stems = {f.stem for f in found}
    return [f for f in found if not (f.stem.endswith(MASK) and (course or f.stem[: -len(MASK)] in stems))]


def list_masks(folder: str | Path) -> dict[str, Path]:
    """Ground-truth masks by stem: ``<stem>_mask.png`` files (course), else ``masks/<stem>.png``
    when the folder has ``masks/``, else every image file of the folder."""
    d = check_folder(folder)
    files = list_images(d / MASKS_DIR if pair_layout(d) == "folders" else d, what="masks")
    course = _by_stem([f for f in files if f.stem.endswith(MASK)], "masks", MASK)
    if course:
        check_lossless(course.values())
        return course
    if any(f.stem.endswith(SAT) for f in files):
        raise VislabError(d, "no xxxx_mask.png ground-truth masks found")
    check_lossless(files)
    return _by_stem(files, "masks")


def read_pair(pair: Pair, *, expected: tuple[int, int] | None = (512, 512),
              classes: SegClasses | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode a pair: image (3, H, W) uint8, class ids (H, W) uint8, stray pixel count.

    ``classes``: how the mask is read (default: the course's colour code)."""
    img = read_rgb(pair.image)
    if expected is not None and tuple(img.shape[1:]) != tuple(expected):
        course = (classes is None or classes.course) and tuple(expected) == (512, 512)
        hint = ("; with no classes.yaml beside it the folder is read as the course's land-cover set of 512x512 "
                "tiles: describe your own data set in a classes.yaml (README, own data)") if course else ""
        raise VislabError(pair.image, f"image is {img.shape[2]}x{img.shape[1]}, expected {expected[1]}x{expected[0]}{hint}")
    assert pair.mask is not None
    ids, stray = (classes or deepglobe()).read_mask(pair.mask, tuple(img.shape[1:]))
    return img, ids, stray


def read_mask(path: Path, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
    """Class ids (H, W) uint8 and the stray-pixel count of a course colour mask; checks its size."""
    return deepglobe().read_mask(path, size)


def stray_summary(per_mask: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """Ground-truth pixels of no class (the course's red) over (stem, count) pairs: the number of
    masks that hold any (``stray_files``), their total (``stray_pixels``) and the count of each
    such mask by stem (``stray_masks``), as results files record them."""
    hit = {stem: int(n) for stem, n in per_mask if n}
    return {"stray_files": len(hit), "stray_pixels": sum(hit.values()), "stray_masks": hit}


@dataclass(frozen=True)
class MaskStats:
    """Per-file class pixel counts (N, C), stray red pixel counts (N,), ignored pixel counts
    (N,), tile sizes (N, 2) as (H, W), and how many images and masks have transparent pixels (their
    alpha is dropped)."""

    stems: list[str]
    counts: torch.Tensor
    stray: torch.Tensor
    ignored: torch.Tensor | None = None
    sizes: torch.Tensor | None = None
    transparent: int = 0
    transparent_masks: int = 0

    def reports(self, folder: str | Path) -> list[str]:
        """The console lines on what reading the pairs of ``folder`` found: masks with stray (red)
        pixels, images and masks whose transparent pixels' alpha is dropped."""
        lines = [self.stray_report(folder)]
        if self.transparent:
            lines.append(transparent_line(folder, self.transparent, len(self.stems)))
        if self.transparent_masks:
            lines.append(transparent_line(folder, self.transparent_masks, len(self.stems), "masks"))
        return [line for line in lines if line]

    def stray_summary(self) -> dict[str, Any]:
        """The masks' stray pixels as :func:`stray_summary` counts them."""
        return stray_summary(zip(self.stems, self.stray.tolist()))

    def stray_report(self, folder: str | Path) -> str | None:
        """One line naming the masks with stray (red) pixels, or None."""
        summary = self.stray_summary()
        if not summary["stray_files"]:
            return None
        listed = ", ".join(f"{stem} ({n})" for stem, n in summary["stray_masks"].items())
        return (f"{folder}: {summary['stray_files']} masks hold {summary['stray_pixels']} red pixels, which are "
                f"in no class and count as unknown: {listed}")

    def check_labelled(self, folder: str | Path, classes: SegClasses) -> None:
        """A one-line error when no mask pixel of ``folder`` falls in a scored class (masks of
        class indices read by the course's colour rule, say): nothing could be learnt."""
        if int(self.counts[:, : classes.scored].sum()) == 0:
            hint = f"; {INDEX_MASKS_HINT}" if classes.course else ""
            raise VislabError(folder, f"no pixel of its {len(self.stems)} masks is in a scored class under "
                                      f"{classes.source}'s description{hint}")

    def _rows(self, stems: list[str]) -> list[int]:
        keep = set(stems)
        return [i for i, s in enumerate(self.stems) if s in keep]

    def counts_of(self, stems: list[str]) -> torch.Tensor:
        """Pixel counts per class (C,) over the masks of ``stems`` (a training part)."""
        return self.counts[self._rows(stems)].sum(0)

    def unseen_classes(self, classes: SegClasses, stems: list[str]) -> str | None:
        """One line naming the scored classes of which the masks of ``stems`` (the training part)
        hold no pixel, which a model trained on them cannot learn; None when each has some. When
        pixels were left out as ignore, their share is named (masks saved as 0/255 with
        ``ignore_index: 255`` hide their second class that way)."""
        rows = self._rows(stems)
        counts = self.counts_of(stems)
        absent = [f"{classes.names[i]} ({i})" for i in range(classes.scored) if not int(counts[i])]
        if not absent:
            return None
        line = (f"no pixel of {', '.join(absent)} in the {len(rows)} training masks: the model cannot learn "
                f"{'it' if len(absent) == 1 else 'them'}, and the mIoU scores {'it' if len(absent) == 1 else 'them'} "
                "wherever the ground truth holds some")
        ignored = int(self.ignored[rows].sum()) if self.ignored is not None else 0
        if ignored:
            total = ignored + int(counts.sum())
            line += f"; {ignored / total:.1%} of the training pixels are left out as ignore"
            if classes.ignore_index is not None:
                line += f" (value {classes.ignore_index}: is that a class of these masks?)"
        return line

    def common_size(self) -> tuple[int, int] | None:
        """The most common tile size (H, W)."""
        if self.sizes is None or not len(self.sizes):
            return None
        from collections import Counter

        return Counter(tuple(int(v) for v in s) for s in self.sizes.tolist()).most_common(1)[0][0]


def pairs_folder(pairs: list[Pair]) -> str:
    """The folder that holds the pairs (images and masks), for the cache's record."""
    files = [str(f) for p in pairs[:1] for f in (p.image, p.mask) if f is not None]
    return os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""


SCAN_RULE = "masks-v3"  # part of the scan cache's key: change it when what read_pair refuses changes
# (v2: course masks hold the code's pure colours only; v3: masks with transparent pixels are counted), so
# that a folder scanned before is checked again


def scan_masks(pairs: list[Pair], *, expected: tuple[int, int] | None = (512, 512),
               classes: SegClasses | None = None) -> MaskStats:
    """Decode every pair once (checking sizes, colours and readability); cached on disk by file
    list and description."""
    classes = classes or deepglobe()
    files = [f for p in pairs for f in (p.image, p.mask) if f is not None]
    key = file_list_key(files, extra=repr((expected, classes.reading(), SCAN_RULE)))
    cache = cache_dir() / f"seg-stats-{key}.pt"
    if cache.is_file():
        try:
            d = torch.load(cache, weights_only=True)
            mark_used(cache)
            return MaskStats(d["stems"], d["counts"], d["stray"], d["ignored"], d["sizes"], int(d["transparent"]),
                             int(d["transparent_masks"]))
        except Exception:  # noqa: BLE001 - a broken (or older: no "transparent") cache is rebuilt
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
    clear = sum(has_transparent_pixels(p.image) for p in pairs)
    clear_masks = sum(has_transparent_pixels(p.mask) for p in pairs if p.mask is not None)
    stats = MaskStats([p.stem for p in pairs], counts, stray, ignored, sizes, clear, clear_masks)
    try:
        atomic_save({"stems": stats.stems, "counts": counts, "stray": stray, "ignored": ignored, "sizes": sizes,
                     "transparent": clear, "transparent_masks": clear_masks}, cache)
        record_source(cache, pairs_folder(pairs), count=len(pairs))
    except (OSError, CannotWrite):  # an unwritable cache: the statistics are counted again next time
        pass
    return stats


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


CACHE_RULE = "seg-rgb+ids-v1"  # part of the cache key: change it when the stored layout changes
# the pair decoder's rule in the cache file's name: its caches were named with classification's
# first rule, kept so that they stay valid (change it when _pair_decoder changes)
TILE_RULE = "fit-cover-centre-v1"


def _pair_decoder(classes: SegClasses, expected: tuple[int, int] | None):
    def decode(pair: Pair, target: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        img, ids, _ = read_pair(pair, expected=expected, classes=classes)
        if tuple(ids.shape) != tuple(target):
            raise VislabError(pair.image, f"changed size while being read ({ids.shape[1]}x{ids.shape[0]}, "
                                          f"scanned as {target[1]}x{target[0]})")
        out = np.empty((*target, 4), np.uint8)
        out[..., :3] = img.permute(1, 2, 0).numpy()
        out[..., 3] = ids.numpy()
        return out, tuple(ids.shape)

    return decode


class TileCache:
    """Every pair decoded once into uint8 tiles: per tile size one memory-mapped (n, 4, H, W)
    array, RGB in channels 0-2 and class ids (:data:`IGNORE` where left out) in channel 3.

    Built in parallel by :func:`vislab.data.cache.decoded_images`, keyed by the pairs' files,
    the description and the stored layout; reading a tile is a slice of the mapping, so the
    process's own memory does not grow with the number of tiles.
    """

    def __init__(self, pairs: list[Pair], sizes: list[tuple[int, int]], classes: SegClasses, *,
                 expected: tuple[int, int] | None = None, use_cache: bool = True, workers: int | None = None) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(sizes):
            groups.setdefault(tuple(hw), []).append(i)
        self.where: list[tuple[int, int]] = [(0, 0)] * len(pairs)
        self.arrays: list[torch.Tensor] = []
        decode = _pair_decoder(classes, expected)
        source, built = pairs_folder(pairs), []
        for g, (hw, members) in enumerate(sorted(groups.items())):
            chosen = [pairs[i] for i in members]
            files = [f for p in chosen for f in (p.image, p.mask) if f is not None]
            key = file_list_key(files, extra=repr((classes.reading(), expected, CACHE_RULE)))
            arr, _ = decoded_images(chosen, hw, decode, key=key, tag="seg", channels=4, use_cache=use_cache,
                                    workers=workers, rule=TILE_RULE, source=source, built=built)
            self.arrays.append(arr)
            for j, i in enumerate(members):
                self.where[i] = (g, j)
        say_built(source, built, "pair")

    def __len__(self) -> int:
        return len(self.where)

    def tile(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (3, H, W), class ids (H, W)), both uint8 views of the cache."""
        g, j = self.where[i]
        t = self.arrays[g][j]
        return t[:3], t[3]


class CachedTiles(Dataset):
    """Items ``i`` -> (image uint8 (3, H, W), ids uint8 (H, W), i) for the
    tiles ``indices`` of a :class:`TileCache`: a slice, no decoding and no augmentation (that
    runs batched on the training device, :func:`augment_tiles`)."""

    def __init__(self, cache: TileCache, indices: list[int]) -> None:
        self.cache = cache
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img, ids = self.cache.tile(self.indices[i])
        return img, ids, i


def _flip_turn(tensors: list[torch.Tensor], hflip: torch.Tensor, vflip: torch.Tensor,
               k: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample mirror images and quarter turns (exact: no resampling) of batches whose last two
    dimensions are the same picture, composed per sample and stacked once (a batched ``where``
    over flipped copies cost 4x more on a CPU)."""
    square = tensors[0].shape[-1] == tensors[0].shape[-2]
    out: list[list[torch.Tensor]] = [[] for _ in tensors]
    for i, (h, v, turn) in enumerate(zip(hflip.tolist(), vflip.tolist(), k.tolist())):
        dims = [d for d, on in ((-1, h), (-2, v)) if on]
        for t, acc in zip(tensors, out):
            ti = t[i].flip(dims) if dims else t[i]
            acc.append(torch.rot90(ti, turn, (-2, -1)) if turn and square else ti)
    return [torch.stack(acc) for acc in out]


def augment_tiles(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, hw: torch.Tensor, *, seed: int, epoch: int,
                  crop_size: int | None, crop_area: tuple[float, float] = (0.25, 1.0), rot90: bool = True,
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), soft: list[torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """Joint geometry of a batch on its device: random scale/crop, flips, 90-degree turns.

    Args:
        x: images (N, 3, H, W) uint8; y: class ids (N, H, W) uint8; index: sample indices (N,);
            hw: each tile's own (h, w) inside the (padded) batch.
        crop_size: output side. Each sample's crop (torchvision's RandomResizedCrop rule, one
            draw) is a box of its own tile with an area fraction uniform in ``crop_area`` and an
            aspect ratio log-uniform in ``ratio`` (rounded to whole pixels, clipped to the tile),
            at a uniform position, resized to ``crop_size`` (images bilinear, antialiased when
            shrinking; ids nearest). None: the batch keeps its size.
        Then each sample is mirrored left-right and top-bottom with probability 1/2 each and
        turned by k x 90 degrees, k uniform in 0..3 (``rot90``; only when the output is square).
        soft: per sample, maps (C, h', w') over its whole own tile at any resolution (a teacher's
            probabilities, distillation): each goes through the same crop (bilinear, box scaled
            to the map), flips and turns, at the output's resolution (zero over padding).
    Returns:
        (float images in [0, 255], long class ids), and the float soft maps (N, C, H, W) when
        ``soft`` is given. Every draw is a pure function of (seed, epoch, index[i]), so a resumed
        run and any batch composition draw the same.
    """
    from torchvision.ops import roi_align
    import torch.nn.functional as F

    dev = x.device
    n = len(x)

    def draw(stream: int) -> torch.Tensor:
        return hash_uniform(seed, epoch, index, 20 + stream).to(dev)

    hflip, vflip = draw(4) < 0.5, draw(5) < 0.5
    k = (draw(6) * 4).long().clamp_max(3) if rot90 else torch.zeros(n, dtype=torch.long, device=dev)
    if crop_size:
        u = torch.stack([draw(s) for s in range(4)], 1).cpu().double()
        imgs, masks, maps = [], [], []
        for i, ((h, w), (ua, ur, ux, uy)) in enumerate(zip(hw.tolist(), u.tolist())):
            area = h * w * (crop_area[0] + (crop_area[1] - crop_area[0]) * ua)
            r = ratio[0] * (ratio[1] / ratio[0]) ** ur
            cw = min(w, max(1, round((area * r) ** 0.5)))
            ch = min(h, max(1, round((area / r) ** 0.5)))
            x0, y0 = min(int(ux * (w - cw + 1)), w - cw), min(int(uy * (h - ch + 1)), h - ch)
            # resampled in float: CUDA has no bilinear kernel for uint8 (the CPU has), and one path
            # keeps a CPU and a GPU run drawing the same pixels; on a CPU the resize costs about
            # 1.3x the uint8 one, a small share of a training step
            box = x[i : i + 1, :, y0 : y0 + ch, x0 : x0 + cw].float()
            lab = y[i : i + 1, None, y0 : y0 + ch, x0 : x0 + cw]
            if (ch, cw) != (crop_size, crop_size):
                shrink = ch > crop_size or cw > crop_size
                box = F.interpolate(box, size=(crop_size, crop_size), mode="bilinear", align_corners=False,
                                    antialias=shrink)
                lab = F.interpolate(lab.float(), size=(crop_size, crop_size), mode="nearest-exact").to(y.dtype)
            imgs.append(box)
            masks.append(lab[:, 0])
            if soft is not None:  # the same box on the map's own grid: map pixel j covers tile [j, j+1) * h / h'
                m = soft[i].float()[None]
                sy, sx = m.shape[-2] / h, m.shape[-1] / w
                roi = torch.tensor([[0.0, x0 * sx, y0 * sy, (x0 + cw) * sx, (y0 + ch) * sy]], device=dev)
                maps.append(roi_align(m, roi, output_size=(crop_size, crop_size), spatial_scale=1.0,
                                      sampling_ratio=1, aligned=True))
        x, y = torch.cat(imgs), torch.cat(masks)
    elif soft is not None:  # each map to its tile's size, padded as the batch is
        full = torch.zeros(n, soft[0].shape[0], *x.shape[-2:], device=dev)
        for i, (h, w) in enumerate(hw.tolist()):
            full[i, :, :h, :w] = F.interpolate(soft[i].float()[None], size=(h, w), mode="bilinear",
                                               align_corners=False)[0]
        maps = [full]
    out = _flip_turn([x, y] + ([torch.cat(maps)] if soft is not None else []), hflip, vflip, k)
    return (out[0].float(), out[1].long(), *out[2:])


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor, int]], *, multiple: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (image, ids, index) samples into (images, ids, indices, each sample's own (h, w));
    samples of different sizes are zero-padded at the bottom and right to the largest (rounded
    up to ``multiple``), their masks with :data:`IGNORE`, so the padding counts in neither loss
    nor metric. Same-size batches are stacked as they are."""
    imgs, masks, idx = zip(*batch)
    hw = torch.tensor([tuple(m.shape[-2:]) for m in masks])
    if len({tuple(m.shape) for m in masks}) == 1:
        return torch.stack(imgs), torch.stack(masks), torch.tensor(idx), hw
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = imgs[0].new_zeros(len(imgs), imgs[0].shape[0], h, w)
    y = masks[0].new_full((len(masks), h, w), IGNORE)
    for i, (im, m) in enumerate(zip(imgs, masks)):
        x[i, :, : im.shape[-2], : im.shape[-1]] = im
        y[i, : m.shape[-2], : m.shape[-1]] = m
    return x, y, torch.tensor(idx), hw


def holdout_split(n: int, *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) index lists; at least one training item."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    k = min(int(round(fraction * n)), n - 1)
    return sorted(order[k:]), sorted(order[:k])
