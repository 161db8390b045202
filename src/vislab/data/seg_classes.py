"""What a segmentation data set's masks mean: its classes, colours, mask format and metric.

A data set describes itself with a ``classes.yaml`` (in its folder or the folder above, or
passed with ``--classes FILE``)::

    mask_format: index        # index: a pixel's value is its class id; palette: its colour is
    ignore_index: 255         # optional: pixels with this value (index) are left out of loss and metric
    classes:
      - {name: background, color: [0, 0, 0]}
      - {name: road, color: [128, 64, 128]}
    extra_colors: {[255, 0, 0]: ignore}   # palette only: other colours -> a class name or ignore

Without a file, the course's land-cover code applies (:func:`deepglobe`): colour masks decoded by
the 3-bit rule of :mod:`vislab.data.palette` (red -> unknown) and scored by the course mIoU.
Every other description is scored by the standard rule (:meth:`SegClasses.miou`).

Inside vislab, class ids are uint8 and pixels left out of loss and metric hold :data:`IGNORE`
(whatever value the file uses for them); padding added to batch tiles of different sizes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vislab.data import palette
from vislab.errors import VislabError, yaml_problem
from vislab.io import file_digest, load_yaml, missing_file_words
from vislab.log import counted, info
from vislab.metrics import iou_per_class

IGNORE = 255
"""Class-id value of pixels left out of loss and metric (the file's ``ignore_index`` maps here)."""
CLASSES_FILE = "classes.yaml"
MASK_FORMATS = ("index", "palette")
_KEYS = {"mask_format", "ignore_index", "classes", "extra_colors"}

Colour = tuple[int, int, int]


def default_colours(n: int) -> list[Colour]:
    """Distinct colours for ``n`` classes: the bits of the class id spread over R, G and B
    (the scheme of the PASCAL VOC colour map), so ids 0..7 get black, dark red, dark green..."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out.append((r, g, b))
    return out


@dataclass(frozen=True)
class SegClasses:
    """A segmentation data set's description (see the module docstring)."""

    source: str  # "deepglobe" or the classes file it was read from
    names: tuple[str, ...]
    colours: tuple[Colour, ...]
    mask_format: str  # "course" (the 3-bit land-cover rule), "index" or "palette"
    ignore_index: int | None = None
    extra_colours: tuple[tuple[Colour, int], ...] = ()  # palette: colour -> class id or IGNORE
    tile_hw: tuple[int, int] | None = None  # the size every tile must have (the course: 512x512)
    _lookup: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def course(self) -> bool:
        """True for the course's land-cover description (course mIoU, 3-bit colour rule)."""
        return self.mask_format == "course"

    @property
    def left_out_colour(self) -> Colour:
        """The colour figures and written colour masks give pixels left out (:data:`IGNORE`): the
        data set's own ignore colour where its file names one, else the first grey (mid grey
        first) that no class has, so that it is never read as a class."""
        own = [c for c, v in self.extra_colours if v == IGNORE]
        if own:
            return own[0]
        used = set(map(tuple, self.colours))
        greys = [(v, v, v) for v in (128, *range(127, -1, -1), *range(129, 256))]
        return next(c for c in greys if c not in used)  # 256 greys, at most 255 classes

    @property
    def scored(self) -> int:
        """Classes averaged by the mIoU: the course's first six, else all."""
        return palette.NUM_CLASSES - 1 if self.course else self.num_classes

    @property
    def metric_name(self) -> str:
        """The rule :meth:`miou` applies, in words (printed above every score)."""
        if self.course:
            return ("course mIoU: pooled over all pixels, mean IoU of the six land-cover classes; pixels "
                    "labelled unknown count as false positives")
        left_out = [f"label {self.ignore_index}"] if self.ignore_index is not None else []
        left_out += [f"colour {list(c)}" for c, v in self.extra_colours if v == IGNORE]
        ignored = f" except those of {' or '.join(left_out)} (ignore)" if left_out else ""
        return (f"standard mIoU: one confusion matrix pooled over all pixels{ignored}; mean IoU of the "
                f"{self.num_classes} classes whose union is not empty")

    def iou(self, conf: torch.Tensor) -> torch.Tensor:
        """IoU of each scored class from a pooled confusion matrix (NaN: empty union)."""
        return iou_per_class(conf, self.scored)

    def miou(self, conf: torch.Tensor) -> float:
        """The data set's mIoU: mean over the scored classes with a non-empty union."""
        return float(torch.nanmean(self.iou(conf)))

    def mious(self, confs: torch.Tensor) -> torch.Tensor:
        """:meth:`miou` of each of a batch (N, K, K) of pooled confusion matrices."""
        return torch.nanmean(self.iou(confs), dim=-1)

    # --- masks ---------------------------------------------------------------------------

    def read_mask(self, path: str | Path, size: tuple[int, int] | None = None,
                  like: str = "its image") -> tuple[torch.Tensor, int]:
        """Class ids (H, W) uint8 (:data:`IGNORE` where left out) and the count of stray pixels
        (the course's red pixels, mapped to unknown; 0 otherwise). ``size``: the (H, W) it must have."""
        p = Path(path)
        if self.mask_format == "index":
            ids, stray = self._decode_index(p), 0
        else:
            from vislab.data.images import read_rgb

            rgb = read_rgb(p)
            if self.course:
                _refuse_dark_mask(rgb, p)
                refuse_off_code(rgb, p)
                ids, stray = palette.mask_to_classes(rgb)
            else:
                ids, stray = self._decode_palette(rgb, p), 0
        if size is not None and tuple(ids.shape) != tuple(size):
            raise VislabError(p, f"mask is {ids.shape[1]}x{ids.shape[0]}, expected {size[1]}x{size[0]} like {like}")
        return ids, stray

    def _decode_index(self, p: Path) -> torch.Tensor:
        from vislab.data.images import open_image

        with open_image(p) as im:
            try:
                im.load()
                arr = np.asarray(im)
            except (OSError, ValueError, SyntaxError):
                raise VislabError(p, "not a decodable image (corrupt, truncated or another format)") from None
        if arr.ndim == 3:
            if arr.shape[2] >= 3 and not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()):
                raise VislabError(p, "is a colour image, but the classes file says mask_format: index "
                                     "(one class id per pixel); use mask_format: palette for colour masks")
            arr = arr[..., 0]
        values = torch.from_numpy(arr.astype(np.int64))
        ids = values.clone()
        if self.ignore_index is not None:
            ids[values == self.ignore_index] = IGNORE
        bad = (values >= self.num_classes) & (values != (self.ignore_index if self.ignore_index is not None else -1))
        if bool(bad.any()) or bool((values < 0).any()):
            v = int(values[bad | (values < 0)][0])
            allowed = f"0..{self.num_classes - 1}" + (f" or {self.ignore_index} (ignore)" if self.ignore_index is not None else "")
            raise VislabError(p, f"pixel value {v} is not a class id ({allowed}); {counted(int(bad.sum()), 'such pixel')}")
        return ids.to(torch.uint8)

    def _decode_palette(self, rgb: torch.Tensor, p: Path) -> torch.Tensor:
        codes = (rgb[0].long() << 16) | (rgb[1].long() << 8) | rgb[2].long()
        table = self._table()
        keys, vals = table
        pos = torch.searchsorted(keys, codes.flatten()).clamp_max(len(keys) - 1)
        found = keys[pos] == codes.flatten()
        if not bool(found.all()):
            c = int(codes.flatten()[~found][0])
            colour = [(c >> 16) & 255, (c >> 8) & 255, c & 255]
            hint = self._palette_hint(rgb, codes[~found.view(codes.shape)], p)
            raise VislabError(p, f"colour {colour} is not a class colour of the classes file "
                                 f"({counted(int((~found).sum()), 'such pixel')}); {hint}")
        return vals[pos].view(codes.shape)

    def _palette_hint(self, rgb: torch.Tensor, off: torch.Tensor, p: Path) -> str:
        """What to do about a palette mask's colours outside the classes file (``off``: their codes)."""
        if p.suffix.lower() in (".jpg", ".jpeg"):
            return "a JPEG's lossy compression blends the colours at class edges: save masks as PNG"
        values = set(rgb[0].unique().tolist())
        grey = bool((rgb[0] == rgb[1]).all()) and bool((rgb[0] == rgb[2]).all())
        if grey and values <= {*range(self.num_classes), 255} and values & set(range(1, self.num_classes)):
            return ("the mask is grey with values like class ids (0, 1, 2 ...): masks of class ids need mask_format: "
                    "index in the classes file")
        if len(off.unique()) > 2 * len(self.colours) + 8:
            return ("it holds many colours between the class colours, as a mask resized with smoothing does: resize "
                    "masks with nearest neighbour; a colour of your own maps to a class with extra_colors")
        return "map it to a class (or to ignore) with extra_colors"

    def _table(self) -> tuple[torch.Tensor, torch.Tensor]:
        if "table" not in self._lookup:
            pairs = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.colours)}
            pairs.update({(r << 16) | (g << 8) | b: v for (r, g, b), v in self.extra_colours})
            keys = sorted(pairs)
            self._lookup["table"] = (torch.tensor(keys, dtype=torch.long),
                                     torch.tensor([pairs[k] for k in keys], dtype=torch.uint8))
        return self._lookup["table"]

    def colour_image(self, ids: torch.Tensor) -> torch.Tensor:
        """Class ids (H, W) as the classes' colours (3, H, W) uint8 (ignored pixels in
        :attr:`left_out_colour`): what
        figures show and what palette / course masks are written as."""
        if self.course:
            return palette.classes_to_mask(ids)
        table = torch.tensor(list(self.colours) + [self.left_out_colour] * (256 - self.num_classes), dtype=torch.uint8)
        return table.to(ids.device)[ids.long()].permute(2, 0, 1).contiguous()

    def mask_png(self, ids: torch.Tensor, *, colours: bool = False) -> bytes:
        """Class ids (H, W) as PNG bytes in the data set's format: class ids (index masks) or
        colours (palette and course masks); with ``colours`` always in colour (for figures).
        The file carries vislab's tag (:func:`vislab.data.images.tag_png`)."""
        from torchvision.io import encode_png

        from vislab.io import tag_png

        bad = (ids >= self.num_classes) & ((ids != IGNORE) if colours else True)
        if bool(bad.any()):
            raise ValueError(f"class id {int(ids[bad][0])} is outside 0..{self.num_classes - 1}")
        as_ids = self.mask_format == "index" and not colours
        img = ids[None].to(torch.uint8) if as_ids else self.colour_image(ids)
        return tag_png(encode_png(img.cpu()).numpy().tobytes())

    # --- storage -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for checkpoints, results and ONNX metadata."""
        return {"source": self.source, "names": list(self.names), "colours": [list(c) for c in self.colours],
                "mask_format": self.mask_format, "ignore_index": self.ignore_index,
                "extra_colours": [[list(c), v] for c, v in self.extra_colours],
                "tile_hw": list(self.tile_hw) if self.tile_hw else None}

    def reading(self) -> dict[str, Any]:
        """:meth:`to_dict` without ``source``: what decides how masks are read (cache keys), the
        same whichever way the path of the classes file was spelled."""
        return {k: v for k, v in self.to_dict().items() if k != "source"}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SegClasses:
        """Inverse of :meth:`to_dict`; None (a checkpoint from before descriptions) is the course's."""
        if not d:
            return deepglobe()
        return cls(str(d["source"]), tuple(d["names"]), tuple(tuple(int(v) for v in c) for c in d["colours"]),
                   str(d["mask_format"]), None if d.get("ignore_index") is None else int(d["ignore_index"]),
                   tuple((tuple(int(v) for v in c), int(i)) for c, i in d.get("extra_colours") or []),
                   tuple(d["tile_hw"]) if d.get("tile_hw") else None)

    def differences(self, other: SegClasses) -> list[str]:
        """The fields of :meth:`to_dict` in which two descriptions decode or score masks apart
        (names first; the source and tile size may differ)."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in ("names", "mask_format", "ignore_index", "colours", "extra_colours") if a[k] != b[k]]

    def first_difference(self, other: SegClasses) -> str | None:
        """The first field of :meth:`differences` with both values ("ignore_index 254 against
        255": names alike may hide the difference), or None when they read masks alike."""
        apart = self.differences(other)
        if not apart:
            return None
        key = apart[0]
        return f"{key} {self.to_dict()[key]} against {other.to_dict()[key]}"

    def same_classes(self, other: SegClasses) -> bool:
        """Whether two descriptions decode and score masks alike (the source may differ)."""
        return not self.differences(other)


INDEX_MASKS_HINT = "masks of class ids (0, 1, 2 ...) need a classes.yaml with mask_format: index (beside them, or given with --classes)"
"""What a mask of class ids read by the course's colour code is told."""


def _refuse_dark_mask(rgb: torch.Tensor, p: Path) -> None:
    """A course mask whose every value is below the code's threshold but not all black is not a
    colour-coded mask (most likely class ids 0..6, which the code reads as all unknown): refused."""
    top = int(rgb.max()) if rgb.numel() else 0
    if 0 < top < 128:
        raise VislabError(p, f"no value reaches 128 (the largest is {top}), so the course colour code reads it as all "
                             f"unknown; {INDEX_MASKS_HINT}")


def refuse_off_code(rgb: torch.Tensor, p: Path) -> None:
    """A course mask holds only the code's pure colours (every channel 0 or 255; the course's own
    masks do). Another colour is a mask blended by smoothing or lossy saving, or not a colour mask at
    all: the threshold would read it as some class without a word, so it is refused."""
    if not bool(((rgb + 1) >> 1).any()):  # 0 + 1 and 255 + 1 (wrapped to 0), shifted, are 0; no other value is
        return
    off = ((rgb != 0) & (rgb != 255)).any(0)
    y, x = (int(v[0]) for v in torch.nonzero(off, as_tuple=True))
    raise VislabError(p, f"colour {rgb[:, y, x].tolist()} (at x={x}, y={y}) is not a colour of the course's code "
                         f"({counted(int(off.sum()), 'such pixel')}; each channel must be 0 or 255): a course mask resized "
                         "with smoothing or saved lossily blends colours (resize masks with nearest neighbour and save "
                         "PNG); a folder with no classes.yaml is read as the course's land-cover set, so describe a data "
                         "set of your own in a classes.yaml (README, own data; seg train and seg eval also take --classes)")


def deepglobe() -> SegClasses:
    """The course's land-cover description: 7 colour-coded classes, 512x512 tiles, course mIoU."""
    return SegClasses("deepglobe", palette.CLASS_NAMES, tuple(tuple(int(v) for v in c) for c in palette.PALETTE.tolist()),
                      "course", tile_hw=(512, 512))




def _colour(value: Any, path: Path, what: str) -> Colour:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise VislabError(path, f"{what}: a colour is three integers 0..255 like [128, 64, 128], got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def parse_classes(text: str, path: Path) -> SegClasses:
    """A :class:`SegClasses` from the text of a classes file; every problem names ``path``."""
    try:
        data = load_yaml(text)  # mapping keys may be colours ({[255, 0, 0]: ignore}); none twice
    except yaml.YAMLError as exc:
        raise VislabError(path, yaml_problem(exc)) from None
    if not isinstance(data, dict):
        raise VislabError(path, "expected a mapping with mask_format and classes")
    unknown = sorted(set(map(str, data)) - _KEYS)
    if unknown:
        raise VislabError(path, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    fmt = data.get("mask_format")
    if fmt not in MASK_FORMATS:
        raise VislabError(path, f"mask_format must be index or palette, got {fmt!r}")
    entries = data.get("classes")
    if not isinstance(entries, list) or not entries:
        raise VislabError(path, "classes: expected a list like - {name: road, color: [128, 64, 128]}")
    if len(entries) > IGNORE:
        raise VislabError(path, f"{len(entries)} classes; at most {IGNORE} are supported")
    names: list[str] = []
    colours: list[Colour | None] = []
    for i, e in enumerate(entries):
        e = {"name": e} if isinstance(e, (str, int)) else e
        if isinstance(e, dict) and isinstance(e.get("name"), bool):  # YAML reads an unquoted no, yes, on, off so
            raise VislabError(path, f"classes[{i}]: the name reads as the boolean {e['name']} (YAML reads no, yes, on, "
                                    "off, true and false so when unquoted); quote it: name: 'no'")
        if not isinstance(e, dict) or not isinstance(e.get("name"), (str, int)):
            raise VislabError(path, f"classes[{i}]: expected {{name: NAME, color: [R, G, B]}}, got {e!r}")
        stray = sorted(map(str, set(e) - {"name", "color"}))
        if stray:
            raise VislabError(path, f"classes[{i}] ({e['name']}): unknown key {stray[0]!r} (known: color, name)")
        names.append(str(e["name"]).strip())
        if not names[-1]:
            raise VislabError(path, f"classes[{i}]: the class name is empty")
        colours.append(_colour(e["color"], path, f"classes[{i}] ({e['name']})") if "color" in e else None)
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise VislabError(path, f"class name {dup!r} is listed twice")
    if fmt == "palette":
        missing = [n for n, c in zip(names, colours) if c is None]
        if missing:
            raise VislabError(path, f"palette masks need a color for every class; {missing[0]!r} has none")
    fallback = iter(c for c in default_colours(len(names) + 64) if c not in colours)
    filled = [c if c is not None else next(fallback) for c in colours]
    twice = next((c for c in filled if filled.count(c) > 1), None)
    if twice is not None:
        raise VislabError(path, f"colour {list(twice)} belongs to two classes")
    ignore = data.get("ignore_index")
    if ignore is not None:
        if fmt != "index":
            raise VislabError(path, "ignore_index applies to index masks; palette masks map a colour to "
                                    "ignore with extra_colors")
        if not isinstance(ignore, int) or isinstance(ignore, bool) or not len(names) <= ignore <= 65535:
            raise VislabError(path, f"ignore_index must be an integer >= {len(names)} (not a class id), got {ignore!r}")
    extra: list[tuple[Colour, int]] = []
    raw_extra = data.get("extra_colors") or {}
    if raw_extra and fmt != "palette":
        raise VislabError(path, "extra_colors applies to palette masks")
    if not isinstance(raw_extra, dict):
        raise VislabError(path, "extra_colors: expected a mapping like {[255, 0, 0]: ignore}")
    for key, target in raw_extra.items():
        colour = _colour(list(key) if isinstance(key, tuple) else key, path, "extra_colors")
        if colour in filled:
            raise VislabError(path, f"extra_colors: {list(colour)} is already the colour of a class")
        if target == "ignore":
            extra.append((colour, IGNORE))
        elif str(target) in names:
            extra.append((colour, names.index(str(target))))
        else:
            raise VislabError(path, f"extra_colors: {list(colour)} maps to {target!r}, which is neither a class "
                                    "name nor ignore")
    if len(names) < 2:
        raise VislabError(path, "1 class; segmentation needs at least 2 (list the background as a class too; "
                                "pixels of no class are ignore_index or an extra_colors ignore)")
    return SegClasses(str(path), tuple(names), tuple(filled), fmt, ignore, tuple(extra))


def load_classes(path: str | Path) -> SegClasses:
    """Read a classes file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise VislabError(p, missing_file_words(p, "classes file", f" ({CLASSES_FILE})"))
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VislabError(p, f"cannot read the classes file ({exc.__class__.__name__})") from None
    return parse_classes(text, p)


def _classes_file_in(where: Path) -> Path | None:
    found = [where / name for name in (CLASSES_FILE, "classes.yml") if (where / name).is_file()]
    if len(found) > 1:
        raise VislabError(found[1], f"and {CLASSES_FILE} beside it both describe the data set; keep one")
    return found[0] if found else None


def classes_file(folder: str | Path) -> Path | None:
    """The ``classes.yaml`` (or ``classes.yml``) that describes ``folder``: in it, else in the
    folder above, else None. Two in one folder are an error (which one describes the data?), and
    so are files in both folders that describe different classes (a file above that vislab cannot
    read as a description, another tool's, leaves the folder's own to stand)."""
    from vislab.data.segmentation import IMAGES_DIR, MASKS_DIR  # here: that module imports this one

    d = Path(folder)
    mine, above = _classes_file_in(d), _classes_file_in(d.parent)
    if mine is None:  # one inside masks/ or images/ would go unread, and its masks be read as the course's
        inside = next((f for sub in (MASKS_DIR, IMAGES_DIR) if d.name != sub and (f := _classes_file_in(d / sub))), None)
        if inside is not None:
            raise VislabError(inside, f"is not read inside {inside.parent.name}/: a data set's description goes beside "
                                      f"{IMAGES_DIR}/ and {MASKS_DIR}/; move it to {d}")
    if mine is not None and above is not None:
        try:
            theirs = load_classes(above)
        except VislabError:  # not a description vislab reads (another tool's classes.yaml): the folder's own stands
            return mine
        apart = load_classes(mine).first_difference(theirs)
        if apart:
            raise VislabError(mine, f"describes other classes than {above} in the folder above: {apart}; keep one")
    return mine if mine is not None else above


def find_classes(folder: str | Path | None, explicit: str | Path | None = None) -> SegClasses:
    """``explicit`` (a ``--classes`` file), else the classes file of ``folder``, else the course's."""
    if explicit is not None:
        return load_classes(explicit)
    found = classes_file(folder) if folder is not None else None
    return load_classes(found) if found is not None else deepglobe()


def classes_of(meta: dict[str, Any]) -> SegClasses:
    """The data set description a checkpoint (or its ONNX export) was trained with."""
    return SegClasses.from_dict(meta.get("seg_classes"))


def check_described_alike(folder: str | Path, classes: SegClasses, *, explicit: str | None = None,
                          than: str | None = None) -> str | None:
    """A folder whose own classes file describes other classes than ``classes`` (named ``than``,
    default its file) is an error.
    With ``explicit`` (the words naming ``classes``, which were named with ``--classes``, now or
    when the run trained) the folder's file is replaced instead, even one that cannot be read,
    and the line saying so is returned (None when nothing differs)."""
    try:
        found = classes_file(folder)
    except VislabError as exc:  # two files that disagree, or one of them unreadable
        if explicit is None:
            raise
        return f"{explicit} replaces the classes files of {folder} ({exc})"
    if found is None:
        return None
    try:
        theirs = load_classes(found)
    except VislabError as exc:
        if explicit is None:
            raise
        return f"{explicit} replaces {found}, which cannot be read ({exc.message})"
    apart = theirs.first_difference(classes)
    if not apart:
        return None
    words = f"describes other classes than {than or classes.source}: {apart}"
    if explicit is None:
        raise VislabError(found, words)
    return f"{explicit} replaces {found}, which {words}"


def say_described(folder: str | Path, desc: SegClasses, explicit: str | None, than: str | None = None) -> None:
    """:func:`check_described_alike`, its replacement line (if any) said on the console."""
    line = check_described_alike(folder, desc, explicit=explicit, than=than)
    if line:
        info(line)


def describing_digests(folder: str | Path) -> list[str]:
    """SHA-256 of each classes file that could describe ``folder`` (``classes.yaml`` or
    ``classes.yml``, in it and in the folder above), whatever they hold (one that cannot be read:
    its path): what a training run's ``--classes`` replaced, recorded so that later commands
    replace those files and no others."""
    d = Path(folder)
    return [_digest_or_name(f) for where in (d, d.parent) for name in (CLASSES_FILE, "classes.yml")
            if (f := where / name).is_file()]


def _digest_or_name(path: Path) -> str:
    """A file's digest, or for one that cannot be read (which a ``--classes`` replaces all the
    same) its resolved path."""
    try:
        return file_digest(path)
    except OSError:
        return f"unreadable: {path.resolve()}"


def check_run_classes(folder: str | Path, desc: SegClasses, metas: list[dict[str, Any]]) -> None:
    """:func:`check_described_alike` for a trained run's classes: a run trained with ``--classes``
    over its folders' own files (``classes_named``) replaces those same files here too, said (a
    run of an older vislab, which kept no record of them, any folder's); a folder described
    otherwise is refused, as a file the ``--classes`` never saw describes that folder's masks."""
    named = [m for m in metas if m.get("classes_named")]
    replaced = [m.get("classes_replaced") for m in named]
    if named and all(isinstance(r, list) for r in replaced):
        seen = {d for r in replaced for d in r}
        if not set(describing_digests(folder)) <= seen:
            named = []
    say_described(folder, desc, f"the run's --classes {desc.source}" if named else None,
                  than=f"the classes the model was trained with ({desc.source})")
