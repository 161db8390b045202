"""Files of one data set that are byte-for-byte copies of another's: validation images copied
into the training folder make a validation score count images the model trained on. Files are
compared by size first, then by their first 64 KiB, and only files alike in both are hashed
whole: files of one size (uncompressed tiles) cost one block each, not a full read."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence


HEAD = 1 << 16


def _digest(path: Path, limit: int | None = None) -> bytes:
    """SHA-1 of the file, or of its first ``limit`` bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        if limit is not None:
            h.update(fh.read(limit))
            return h.digest()
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _alike(mine: list[Path], other: list[Path], key) -> list[tuple[list[Path], list[Path]]]:
    """The groups of ``mine`` and ``other`` that share a ``key``."""
    a: dict = defaultdict(list)
    b: dict = defaultdict(list)
    for f in mine:
        a[key(f)].append(f)
    for f in other:
        b[key(f)].append(f)
    return [(a[k], b[k]) for k in a.keys() & b.keys()]


def copies(ours: Sequence[Path], theirs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Each file of ``ours`` whose bytes equal a file of ``theirs``, with one such file, in the
    order of ``ours``; a file both lists name (the same path) counts too."""
    def by_size(files: Sequence[Path]) -> dict[int, list[Path]]:
        sizes: dict[int, list[Path]] = defaultdict(list)
        for f in files:
            try:
                sizes[f.stat().st_size].append(f)
            except OSError:  # gone since it was listed: the run's own reading says so
                pass
        return sizes

    mine, other = by_size(ours), by_size(theirs)
    found: dict[Path, Path] = {}
    for size in mine.keys() & other.keys():
        groups = [(mine[size], other[size])]
        if size > HEAD:  # a block first: whole files only where it leaves candidates
            groups = [g for a, b in groups for g in _alike(a, b, lambda f: _digest(f, HEAD))]
        for a, b in groups:
            known: dict[bytes, Path] = {}
            for f in b:
                known.setdefault(_digest(f), f)
            for f in a:
                twin = known.get(_digest(f))
                if twin is not None:
                    found[f] = twin
    return [(f, found[f]) for f in ours if f in found]


def copies_line(ours: Sequence[Path], theirs: Sequence[Path], *, what: str) -> str | None:
    """A warning when files of ``ours`` (the validation ``what``, e.g. "images") are copies of
    training files ``theirs``, naming the first pair; None when none is."""
    pairs = copies(ours, theirs)
    if not pairs:
        return None
    a, b = pairs[0]
    same = sum(x.resolve() == y.resolve() for x, y in pairs)
    if same == len(pairs):  # the very files: --val-dir names the training folder (or one inside it)
        return (f"warning: --val-dir reads {same} of the training {what} themselves (e.g. {a}): the validation "
                f"score counts {what} the model trained on; pass a folder of other {what}")
    return (f"warning: {len(pairs)} of {len(ours)} validation {what} are copies (the same bytes) of training files "
            f"(e.g. {a} = {b}): the validation score counts {what} the model trained on")
