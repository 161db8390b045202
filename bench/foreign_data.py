"""Small classification data sets of other domains than the course's natural photos, built ON
DISK from what installed packages ship (nothing is downloaded):

- :func:`digits`: scikit-learn's bundled handwritten digits (1797 8x8 grey images, 10 classes),
  upscaled to 32x32 RGB, split into train/test stratified by class (seeded).
- :func:`glyphs`: the letters A-J rendered with the TrueType fonts in matplotlib's
  ``mpl-data/fonts/ttf`` (DejaVu, STIX, Computer Modern), each 28x28 grey with a random font,
  size, rotation, offset, ink/background intensity and noise, padded to 32x32 RGB.

Layout written under ``root`` (``layout="course"``, the default)::

    root/train/<label>_<index>.png     integer labels, the course's naming
    root/test/<name>.png               label-free names (shuffled, so the order tells nothing)
    root/test_truth.csv                filename,label,class
    root/classes.txt                   the class names, one a line, in label order
    root/build.json                    the parameters; a second call with the same ones is a no-op

``layout="imagefolder"`` writes ``root/train/<class name>/<name>.png`` instead (class names such
as ``digit_3`` or ``A``; label = index of the name in sorted order, torchvision's convention);
the test folder and truth CSV are the same.

    python bench/foreign_data.py OUT_DIR [--which digits glyphs] [--layout imagefolder] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FORMAT = 1  # bump when the images a given set of parameters produces change


@dataclass(frozen=True)
class BuiltData:
    """Where a built data set lies and what it holds."""

    root: Path
    train_dir: Path
    test_dir: Path
    truth_csv: Path
    classes: tuple[str, ...]
    n_train: int
    n_test: int
    layout: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- writing ------------------------------------------------------------------------------


def _to_rgb32(grey: np.ndarray, pad_value: int | None = None) -> Image.Image:
    """A (h, w) uint8 grey image -> 32x32 RGB, padded evenly (with ``pad_value``, default the
    border's median) when smaller than 32."""
    h, w = grey.shape
    if (h, w) != (32, 32):
        if pad_value is None:
            border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
            pad_value = int(np.median(border))
        top, left = (32 - h) // 2, (32 - w) // 2
        canvas = np.full((32, 32), pad_value, dtype=np.uint8)
        canvas[top : top + h, left : left + w] = grey
        grey = canvas
    return Image.fromarray(grey, mode="L").convert("RGB")


def _write(root: Path, params: dict, classes: list[str], train: list[tuple[Image.Image, int]],
           test: list[tuple[Image.Image, int]], *, layout: str, seed: int) -> BuiltData:
    """Write the images and the truth CSV into a fresh ``root`` (atomically: a temporary
    folder renamed at the end)."""
    if layout not in ("course", "imagefolder"):
        raise ValueError(f"layout must be 'course' or 'imagefolder', got {layout!r}")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    (tmp / "test").mkdir()
    per_class = [0] * len(classes)
    for img, label in train:
        i = per_class[label]
        per_class[label] += 1
        if layout == "course":
            img.save(tmp / "train" / f"{label}_{i}.png")
        else:
            d = tmp / "train" / classes[label]
            d.mkdir(exist_ok=True)
            img.save(d / f"{classes[label]}_{i:04d}.png")
    # label-free test names in a shuffled order: the sorted file list carries no label information
    order = np.random.default_rng(seed + 7919).permutation(len(test))
    rows = []
    for k, j in enumerate(order):
        img, label = test[j]
        name = f"img_{k:05d}.png"
        img.save(tmp / "test" / name)
        rows.append((name, label, classes[label]))
    rows.sort()
    with (tmp / "test_truth.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["filename", "label", "class"])
        w.writerows(rows)
    (tmp / "classes.txt").write_text("".join(c + "\n" for c in classes))
    (tmp / "build.json").write_text(json.dumps(params, indent=1, sort_keys=True))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return _built(root, classes, len(train), len(test), layout)


def _built(root: Path, classes: list[str], n_train: int, n_test: int, layout: str) -> BuiltData:
    return BuiltData(root, root / "train", root / "test", root / "test_truth.csv", tuple(classes),
                     n_train, n_test, layout)


def _existing(root: Path, params: dict) -> BuiltData | None:
    """The data set already at ``root`` when it was built with exactly ``params``."""
    try:
        if json.loads((root / "build.json").read_text()) != params:
            return None
        classes = (root / "classes.txt").read_text().split()
        with (root / "test_truth.csv").open() as fh:
            n_test = sum(1 for _ in fh) - 1
        n_train = sum(1 for p in (root / "train").rglob("*.png"))
        return _built(root, classes, n_train, n_test, params["layout"])
    except (OSError, ValueError, KeyError):
        return None


# --- scikit-learn digits --------------------------------------------------------------------


def digits(root: str | Path, *, test_fraction: float = 0.25, seed: int = 0, layout: str = "course",
           per_class: int | None = None, force: bool = False) -> BuiltData:
    """scikit-learn's 1797 handwritten 8x8 digits, upscaled (bicubic) to 32x32 RGB PNGs.

    Args:
        root: output folder (replaced).
        test_fraction: fraction of every class written to the label-free test folder.
        seed: seeds the stratified split.
        layout: "course" (``train/<label>_<index>.png``) or "imagefolder" (``train/digit_3/...``).
        per_class: keep at most this many images of each class (a quick smoke test), else all.
        force: rebuild even when ``root`` holds a build with the same parameters.
    """
    root = Path(root)
    params = {"kind": "digits", "format": FORMAT, "test_fraction": test_fraction, "seed": seed,
              "layout": layout, "per_class": per_class}
    if not force and (done := _existing(root, params)) is not None:
        return done
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images / 16.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (1797, 8, 8), ink bright
    y = d.target.astype(int)
    classes = [f"digit_{c}" for c in range(10)]
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        if per_class is not None:
            idx = idx[:per_class]
        k = max(1, int(round(test_fraction * len(idx))))
        for j, i in enumerate(idx):
            img = Image.fromarray(x[i], mode="L").resize((32, 32), Image.BICUBIC).convert("RGB")
            (test if j < k else train).append((img, c))
    return _write(root, params, classes, train, test, layout=layout, seed=seed)


# --- font-rendered letters ------------------------------------------------------------------

# matplotlib fonts whose A-Z are not ordinary letters: math symbols and extensions (cmex10,
# cmsy10), bracket pieces (STIXSize*), private-use glyphs (STIXNonUni*), and DejaVu *Display
# (only a handful of glyphs).
_SKIP_FONTS = ("cmex10", "cmsy10", "stixsiz", "stixnonuni", "display")


def font_files() -> list[Path]:
    """The TrueType fonts matplotlib ships that draw the Latin capitals A-Z, sorted by name."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    out = []
    for p in sorted(ttf.glob("*.ttf")):
        if any(s in p.stem.lower() for s in _SKIP_FONTS):
            continue
        font = ImageFont.truetype(str(p), 24)
        # the letters must exist and differ from each other (not all the same "missing" box)
        masks = {bytes(font.getmask(ch)) for ch in "ABCDEFGHIJ"}
        if len(masks) == 10 and all(font.getbbox(ch)[2] > font.getbbox(ch)[0] for ch in "AIJ"):
            out.append(p)
    return out


def _render_letter(ch: str, font: ImageFont.FreeTypeFont, rng: np.random.Generator, size: int) -> np.ndarray:
    """A float (size, size) coverage mask in [0, 1] of ``ch``: rendered at 4x, rotated, shifted
    and downsampled."""
    s = 4 * size
    canvas = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(canvas)
    l, t, r, b = draw.textbbox((0, 0), ch, font=font)
    dx, dy = rng.uniform(-0.12, 0.12, size=2) * s
    draw.text(((s - (r - l)) / 2 - l + dx, (s - (b - t)) / 2 - t + dy), ch, fill=255, font=font)
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BICUBIC, fillcolor=0)
    return np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0


def glyphs(root: str | Path, *, letters: str = "ABCDEFGHIJ", n_train: int = 500, n_test: int = 100,
           seed: int = 0, layout: str = "course", force: bool = False) -> BuiltData:
    """Letters rendered with matplotlib's bundled fonts: ``n_train`` + ``n_test`` images a class.

    Each image: a random font of :func:`font_files`, glyph height 40-90 % of 28 px, rotation
    +-15 degrees, offset +-12 %, background 0-110 and ink 150-255 (inverted, dark on light, for a
    quarter of the images), Gaussian noise of sigma 0-20; 28x28 grey padded to 32x32 RGB with the
    background value.
    """
    root = Path(root)
    params = {"kind": "glyphs", "format": FORMAT, "letters": letters, "n_train": n_train, "n_test": n_test,
              "seed": seed, "layout": layout}
    if not force and (done := _existing(root, params)) is not None:
        return done
    fonts = font_files()
    if not fonts:
        raise RuntimeError("no usable TrueType font found in matplotlib's mpl-data/fonts/ttf")
    cache: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    rng = np.random.default_rng(seed)
    classes = list(letters)
    train, test = [], []
    for c, ch in enumerate(letters):
        for j in range(n_train + n_test):
            fi = int(rng.integers(len(fonts)))
            px = int(rng.integers(int(0.4 * 28 * 4), int(0.9 * 28 * 4) + 1))  # font size at 4x
            key = (fi, px)
            if key not in cache:
                cache[key] = ImageFont.truetype(str(fonts[fi]), px)
            mask = _render_letter(ch, cache[key], rng, 28)
            bg, ink = rng.uniform(0, 110), rng.uniform(150, 255)
            if rng.random() < 0.25:
                bg, ink = 255 - bg, 255 - ink
            img = bg + (ink - bg) * mask + rng.normal(0, rng.uniform(0, 20), size=mask.shape)
            grey = np.clip(img + 0.5, 0, 255).astype(np.uint8)
            (train if j < n_train else test).append((_to_rgb32(grey, pad_value=int(round(bg))), c))
    return _write(root, params, classes, train, test, layout=layout, seed=seed)


BUILDERS = {"digits": digits, "glyphs": glyphs}


def build(name: str, root: str | Path, *, quick: bool = False, layout: str = "course", seed: int = 0) -> BuiltData:
    """Build a data set by name at its full size (or a tiny one with ``quick``)."""
    if name == "digits":
        return digits(root, seed=seed, layout=layout, per_class=30 if quick else None)
    if name == "glyphs":
        return glyphs(root, seed=seed, layout=layout, n_train=40 if quick else 500, n_test=10 if quick else 100)
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(BUILDERS)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder receiving one sub-folder per data set")
    ap.add_argument("--which", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    ap.add_argument("--layout", default="course", choices=["course", "imagefolder"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for name in a.which:
        t0 = time.perf_counter()
        b = build(name, a.out / name, quick=a.quick, layout=a.layout, seed=a.seed)
        info = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(b).items()}
        print(f"{name}: {b.n_train} train + {b.n_test} test images, {b.num_classes} classes, "
              f"{time.perf_counter() - t0:.1f} s -> {info['root']}")


if __name__ == "__main__":
    main()
