"""Classification folder layouts, detected from what a folder holds.

- ``course``: ``<label>_<index>.<ext>`` files directly in the folder, integer labels;
- ``imagefolder``: torchvision's ``ROOT/<class name>/<any name>.<ext>`` (class ids in sorted
  name order, as torchvision's ImageFolder gives them; images in deeper folders count too);
- ``csv``: a flat folder and ``--labels FILE.csv`` with ``filename,label`` rows, the label an
  integer or a class name;
- ``unlabelled``: for prediction, a flat folder (any names) or a tree (ids are relative paths).
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vislab.data.images import IMAGE_SUFFIXES, check_folder, check_link, image_file, say_skipped, split_advice
from vislab.errors import VislabError
from vislab.io import figures_page, missing_file_words
from vislab.log import counted, info, info_once

_COURSE_NAME = re.compile(r"^(\d+)_(\d+)$")


@dataclass(frozen=True)
class ClassItems:
    """The images of a folder in a fixed order, with their labels when the layout gives them.

    ``ids`` are the names written in prediction CSVs (paths relative to the folder);
    ``class_names`` is None for integer-labelled data (the course layout, integer CSV labels).
    """

    root: Path
    layout: str
    files: list[Path]
    ids: list[str]
    labels: list[int] | None
    class_names: list[str] | None

    @property
    def num_classes(self) -> int:
        """Number of classes: the names, else the largest label + 1."""
        return count_classes(self.class_names, max(self.labels) if self.labels else None)


def count_classes(class_names: list[str] | None, max_label: int | None) -> int:
    """Number of classes of a labelled folder: its names, else the largest label + 1."""
    if class_names is not None:
        return len(class_names)
    if max_label is None:
        raise ValueError("this folder carries no labels")
    return max_label + 1


def id_and_name(c: int, names: list[str] | None) -> str:
    """Class ``c`` as tables and legends show it: its id and name ("3 cat"); a name that is a
    number other than the id is quoted ("2 '10'": id 2, class folder 10/), one equal to it is
    not repeated; without names, the id.

        >>> id_and_name(3, ["a", "b", "c", "cat"]), id_and_name(2, ["0", "1", "10"]), id_and_name(1, None)
        ('3 cat', "2 '10'", '1')
    """
    if not names or names[c] == str(c):
        return str(c)
    name = names[c]
    return f"{c} {name!r}" if name.isdigit() else f"{c} {name}"


THIN = 3
"""A class with fewer training images than this is said (:func:`thin_classes`)."""


def thin_classes(labels: list[int], names: list[str] | None, paths: Sequence[Path]) -> str | None:
    """A warning naming the classes with fewer than ``THIN`` training images (a label mistyped in a
    labels file, or a stray folder, makes such a class), with one file of the first; None when
    there are none.

        >>> thin_classes([0, 0, 0, 1], ["cat", "dog"], [Path(f"{i}.png") for i in range(4)])
        'warning: 1 class with fewer than 3 training images: 1 dog (1 image, e.g. 3.png); a mistyped label or a stray folder?'
    """
    counts = Counter(labels)
    thin = sorted(c for c, n in counts.items() if n < THIN)
    if not thin:
        return None
    shown = ", ".join(f"{id_and_name(c, names)} ({counted(counts[c], 'image')}"
                      + (f", e.g. {paths[labels.index(c)]})" if c == thin[0] else ")") for c in thin[:5])
    return (f"warning: {counted(len(thin), 'class', 'classes')} with fewer than {THIN} training images: "
            f"{shown}{', ...' if len(thin) > 5 else ''}; a mistyped label or a stray folder?")


def course_label(path: Path) -> int | None:
    """The label encoded in ``<label>_<index>.<ext>``, or None for another name."""
    m = _COURSE_NAME.match(path.stem)
    return int(m.group(1)) if m else None


SYSTEM_FOLDERS = frozenset({"__MACOSX"})
"""Folders an archiver leaves beside the data (macOS zips' resource forks): skipped like hidden ones."""


def _figures_of_page(folder: Path) -> bool:
    """Whether ``folder`` is the figures folder of a Markdown page (``report_figures/`` beside
    ``report.md``, as `vislab report` writes them): its PNGs are no data."""
    return figures_page(folder) is not None


def _hidden_folder(name: str) -> bool:
    return name.startswith(".") or name in SYSTEM_FOLDERS


def _image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _scan(root: Path, skipped: list[str], figures: list[str]) -> tuple[list[str], list[str]]:
    """(image file names, visible subfolder names) directly in ``root``, sorted; one directory
    read, no stat per file. Visible files of other types are added to ``skipped``, the figures
    folders of `vislab report` pages (:func:`_figures_of_page`) to ``figures``."""
    files, dirs = [], []
    with os.scandir(root) as it:
        for e in it:
            if e.is_dir():
                if _figures_of_page(Path(e.path)):
                    figures.append(e.name)
                elif not _hidden_folder(e.name):
                    check_link(Path(e.path))  # a link to a folder above: its images twice
                    dirs.append(e.name)
            elif e.is_file() and not e.name.startswith("."):
                (files if _image_name(e.name) else skipped).append(e.name)
            elif _image_name(e.name):
                check_link(Path(e.path))  # a link to no file
    return sorted(files), sorted(dirs)


def _tree(d: Path, skipped: list[str], seen: dict[str, str], figures: list[str]) -> list[str]:
    """Images below ``d`` as sorted relative POSIX paths (hidden files and folders, ``__MACOSX``,
    and the figures folders of report pages, skipped; links to folders followed);
    visible files of other types are added to ``skipped``, figures folders to ``figures`` (paths
    relative to ``d``'s parent).
    ``seen`` maps each folder read so far (its real path) to the path it was read as: a folder
    reached twice (a link loop, or a link to a folder read already) is an error naming it, since
    its images would be read twice, perhaps under two labels."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise VislabError(Path(dirpath), f"is {seen[real]} again (a link to a folder read already, or a loop): its "
                                             "images would be read twice; remove the link")
        seen[real] = dirpath
        rel = Path(dirpath).relative_to(d.parent).as_posix()
        pages = {x for x in dirnames if _figures_of_page(Path(dirpath, x))}
        figures += [f"{rel}/{x}" for x in sorted(pages)]
        dirnames[:] = [x for x in dirnames if not _hidden_folder(x) and x not in pages]
        for f in filenames:
            if not f.startswith("."):
                (out if _image_name(f) else skipped).append(f"{rel}/{f}")
    n = len(d.name) + 1
    return sorted(r[n:] for r in out)


def int_label_ids(labels: list[int], class_names: list[str] | None, where: Path) -> list[int]:
    """Integer labels as class ids of a model with ``class_names``: every name must be a number
    (class folders 0/ 1/ ... 10/, ids in the folders' text order), and a label is matched to the
    name of the same number. Numbers for a model that knows other names are an error (they would
    meet its classes in alphabetical order, by chance), as is an unknown label."""
    if class_names is None:
        return labels
    named = [n for n in class_names if not re.fullmatch(r"\d+", n)]
    if named:
        raise VislabError(where, f"gives numbered labels (<label>_<index> names or integer labels), but the model "
                                 f"knows its classes by name ({named[0]!r} ...); label these images by class name "
                                 "(<class name>/ folders, or names in a labels CSV)")
    by: dict[int, int] = {}
    for i, n in enumerate(class_names):
        by.setdefault(int(n), i)  # folders 1/ and 01/: a label 1 is the first
    unknown = sorted({v for v in labels if v not in by})
    if unknown:
        raise VislabError(where, f"label {unknown[0]} is not one of the model's {len(class_names)} classes "
                                 f"({', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})")
    return [by[v] for v in labels]


def find_items(folder: str | Path, *, labelled: bool, labels_csv: str | Path | None = None,
               class_names: list[str] | None = None) -> ClassItems:
    """The images of ``folder`` and, with ``labelled``, their labels, by the detected layout.

    Args:
        folder: a course folder, an ImageFolder tree, or a flat folder (with ``labels_csv``).
        labelled: require labels; without, any flat folder or tree is read as images only.
        labels_csv: a ``filename,label`` CSV giving the labels of a flat folder.
        class_names: the classes of a trained model: names in the folder or CSV are mapped to
            these ids (not re-sorted), and an unknown name is an error.

    Without ``labelled`` (and ``labels_csv``), ``folder`` may be one image file: its name is its id.
    """
    one = image_file(folder) if not labelled and labels_csv is None else None
    if one is not None:
        return ClassItems(one.parent, "unlabelled", [one], [one.name], None, None)
    root = check_folder(folder)
    skipped: list[str] = []
    figures: list[str] = []
    names, subdirs = _scan(root, skipped, figures)
    flat = [root / n for n in names]
    seen = {os.path.realpath(root): str(root)}
    trees = {d: _tree(root / d, skipped, seen, figures) for d in subdirs} if labels_csv is None else {}
    dirs = [d for d in subdirs if trees.get(d)]
    say_skipped(root, skipped)
    if figures:
        info_once(f"{root}: skipped {counted(len(figures), 'folder')} of report figures (e.g. {min(figures)}/, beside "
                  f"the page {figures_page(root / min(figures)).name}): `vislab report` wrote them, they are no data")
    if labels_csv is not None:
        if not flat:
            raise VislabError(root, "--labels needs the images directly in this folder (found none)")
        if subdirs:
            info_once(f"{root}: {counted(len(subdirs), 'subfolder')} not read (e.g. {subdirs[0]}/): with --labels only "
                      "the images directly in the folder are")
        return _from_csv(root, flat, Path(labels_csv), class_names)
    if not labelled:
        ids = sorted([p.name for p in flat] + [f"{d}/{rel}" for d in subdirs for rel in trees[d]])  # by image_id
        if not ids:
            raise VislabError(root, f"no images found (expected {', '.join(IMAGE_SUFFIXES)} files)")
        if flat and dirs:
            info(f"{root}: {len(flat)} images directly inside and {len(ids) - len(flat)} in {len(dirs)} "
                 f"subfolder(s) (e.g. {dirs[0]}/); all are read")
        return ClassItems(root, "unlabelled", [root / i for i in ids], ids, None, None)
    if flat and dirs:
        raise VislabError(root, f"ambiguous layout: {len(flat)} images directly inside and {len(dirs)} "
                                f"subfolders of images (e.g. {dirs[0]}/); keep one: <label>_<index> files "
                                "or <class name>/ folders")
    if dirs:
        return _from_tree(root, trees, class_names)
    if not flat:
        raise VislabError(root, f"no images found (expected {', '.join(IMAGE_SUFFIXES)} files, "
                                "or <class name>/ subfolders of them)")
    parsed = [course_label(p) for p in flat]
    bad = [p for p, lab in zip(flat, parsed) if lab is None]
    if bad:
        raise VislabError(bad[0], f"file name is not <label>_<index> ({len(bad)} such files in the folder); "
                                  "pass --labels FILE.csv, or put the images in <class name>/ subfolders")
    labels = int_label_ids([int(lab) for lab in parsed if lab is not None], class_names, root)
    names = list(class_names) if class_names is not None else None
    return ClassItems(root, "course", flat, [p.name for p in flat], labels, names)


MANY_CLASSES = 1000
"""Integer labels up to at least this many classes, few of them used, are numbers of another kind
(:func:`check_dense`)."""


def check_dense(items: ClassItems, labels_csv: str | Path | None = None) -> None:
    """The integer labels a new model is trained on are class ids 0..max, so the largest sets the
    number of classes: a largest of ``MANY_CLASSES`` or more with fewer than one class in ten used
    is refused (file names such as ``20230101_120000.jpg`` or product ids read as labels would make
    a model of millions of classes, and exhaust the memory). Named classes pass; so does a folder
    read for a trained model, whose classes are its own (not checked here)."""
    if items.class_names is not None or not items.labels:
        return
    n, used = max(items.labels) + 1, len(set(items.labels))
    if n < MANY_CLASSES or used * 10 >= n:
        return
    if items.layout == "csv" and labels_csv is not None:
        where, what, instead = Path(labels_csv), "its integer labels", "Number the classes 0, 1, 2, ... or give them names"
    else:
        where, what = items.root, "its file names' <label>_<index> numbers"
        instead = "Pass --labels FILE.csv, or put the images in <class name>/ subfolders"
    raise VislabError(where, f"{what} read as class ids make {n} classes (0 to {n - 1}), {used} of them with "
                             f"images: numbers of another kind, such as dates or codes? {instead}")


def _name_ids(found: list[str], class_names: list[str] | None, where: Path) -> dict[str, int]:
    if class_names is None:
        return {n: i for i, n in enumerate(sorted(found))}
    ids = {nfc(n): i for i, n in enumerate(class_names)}  # a macOS zip's names are decomposed (u + combining ¨)
    unknown = sorted(n for n in found if nfc(n) not in ids)
    if unknown:
        raise VislabError(where, f"class {unknown[0]!r} is not one of the model's {len(ids)} classes "
                                 f"({', '.join(class_names[:8])}{', ...' if len(ids) > 8 else ''})")
    return {n: ids[nfc(n)] for n in found}


def nfc(name: str) -> str:
    """``name`` in Unicode's composed form (NFC): a name typed as ``ü`` and one a macOS archive
    stored as ``u`` + a combining diaeresis look alike and are compared alike."""
    return unicodedata.normalize("NFC", name)


def _from_tree(root: Path, trees: dict[str, list[str]], class_names: list[str] | None) -> ClassItems:
    empty = [d for d, found in trees.items() if not found]
    if empty:
        raise VislabError(root / empty[0], "class folder holds no images")
    # a folder of splits one level too high: each split would be a class (two split names: one may be a class's)
    advice = split_advice(root, [d for d in trees if d not in (class_names or ())], least=2)
    if advice:
        raise VislabError(root, advice.replace(" are splits:", " are splits, not classes:", 1))
    ids = _name_ids(list(trees), class_names, root)
    rel, labels = [], []
    for d in sorted(trees):
        rel.extend(f"{d}/{r}" for r in trees[d])
        labels.extend([ids[d]] * len(trees[d]))
    names = list(class_names) if class_names is not None else [nfc(n) for n in sorted(ids, key=ids.__getitem__)]
    return ClassItems(root, "imagefolder", [root / r for r in rel], rel, labels, names)


def _read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, file name, label) of each row of a labels CSV, a ``filename,label`` (or
    ``image_id,label``) header left out; blank lines skipped."""
    if not path.is_file():
        raise VislabError(path, missing_file_words(path, "labels CSV file"))
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(fh)
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VislabError(path, f"cannot read the labels CSV ({exc.__class__.__name__})") from None
    if rows and [c.strip().lower() for c in rows[0][1][:2]] in (["filename", "label"], ["image_id", "label"]):
        rows = rows[1:]
    if not rows:
        raise VislabError(path, "expected rows filename,label (none found)")
    short = next((n for n, r in rows if len(r) < 2), None)
    if short is not None:
        raise VislabError(path, f"expected rows filename,label (line {short} has one column)")
    wide = next(((n, r) for n, r in rows if any(c.strip() for c in r[2:])), None)  # trailing empty cells pass
    if wide is not None:
        raise VislabError(path, f"expected rows filename,label (line {wide[0]} has {len(wide[1])} columns: "
                                f"{','.join(wide[1])})")
    out = []
    for n, r in rows:
        name, label = r[0].strip(), r[1].strip()
        if not name or not label:
            raise VislabError(path, f"line {n} ({r[0]},{r[1]}) has an empty {'file name' if not name else 'label'}")
        out.append((n, nfc(name[2:] if name.startswith("./") else name), nfc(label)))  # ./a.png: a.png of the folder
    return out


def _from_csv(root: Path, flat: list[Path], path: Path, class_names: list[str] | None) -> ClassItems:
    rows = _read_rows(path)
    by_name = {nfc(p.name): p for p in flat}
    n0, first, second = rows[0]
    if first not in by_name and os.path.splitext(first)[1].lower() not in IMAGE_SUFFIXES:
        raise VislabError(path, f"line {n0} ({first},{second}) is neither a header vislab knows "
                                "(filename,label or image_id,label) nor an image of the folder")
    table: dict[str, str] = {}
    repeats = 0
    for _, name, label in rows:
        if name in table and table[name] != label:
            raise VislabError(path, f"{name} is listed twice with different labels ({table[name]}, {label})")
        repeats += name in table
        table[name] = label
    if repeats:
        info(f"{path}: {repeats} row(s) repeat an earlier one (the same file and label); each file counts once")
    missing_files = [n for n in table if n not in by_name]
    here = root.resolve()
    placed = {n: (root / n).resolve() for n in missing_files if "/" in n.replace("\\", "/") and (root / n).is_file()}
    named = [n for n, f in placed.items() if f.parent == here]  # an absolute or ../ path to a file of the folder
    if named:
        raise VislabError(path, f"lists {named[0]}, a path: rows name the images of {root} by file name "
                                f"({Path(named[0]).name}; {counted(len(named), 'such row')})")
    nested = [n for n, f in placed.items() if here in f.parents]
    if nested:
        raise VislabError(path, f"lists {nested[0]}, an image in a subfolder of {root} ({counted(len(nested), 'such row')}): "
                                "--labels reads the images directly in the folder; move them there")
    if missing_files:
        raise VislabError(path, f"lists {missing_files[0]}, which is not an image in {root} ({len(missing_files)} such rows)")
    unlabelled = [p.name for p in flat if nfc(p.name) not in table]
    if unlabelled:
        raise VislabError(root / unlabelled[0], f"has no row in {path} ({counted(len(unlabelled), 'image')} without a label)")
    values = [table[nfc(p.name)] for p in flat]
    numbers = [bool(re.fullmatch(r"\d+", v)) for v in values]
    if all(numbers):
        labels = int_label_ids([int(v) for v in values], class_names, path)
        names = list(class_names) if class_names is not None else None
    elif class_names is None and numbers.count(True) > numbers.count(False):
        # mostly integers ("0", "1", "1.0"): the other rows are odd ones, not classes named "1.0";
        # as many names or more: a number among them is a name too, as class folders 10/ and 2/ are
        line, _, label = next(r for r in rows if r[1] in by_name and not re.fullmatch(r"\d+", r[2]))
        raise VislabError(path, f"line {line}: label {label!r} is not an integer like most rows; use integer "
                                "labels or class names throughout")
    else:
        ids = _name_ids(sorted(set(values)), class_names, path)
        labels = [ids[v] for v in values]
        names = list(class_names) if class_names is not None else sorted(ids, key=ids.__getitem__)
    return ClassItems(root, "csv", flat, [p.name for p in flat], labels, names)
