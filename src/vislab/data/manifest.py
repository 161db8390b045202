"""A training folder's items as a run records them: one line per item, ``NAME|VALUE`` (a
classification image's name and label, a segmentation pair's stem and file sizes). A checkpoint
keeps the digest of these lines; the run folder keeps the lines themselves (gzip'ed), so a folder
that no longer matches is told apart from the recorded one item by item."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable, Sequence

from vislab.data.cache import content_digest
from vislab.io import atomic_path

ITEMS = "train_items.txt.gz"  # in a run folder


def lines_digest(lines: Iterable[str]) -> str:
    """The digest a checkpoint keeps of a folder's item lines."""
    return content_digest(lines)


def write_items(out_dir: Path, lines: list[str]) -> None:
    """Record the training folder's item lines in the run folder (atomically)."""
    with atomic_path(out_dir / ITEMS) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            fh.writelines(f"{line}\n" for line in lines)


def read_items(out_dir: Path) -> list[str] | None:
    """The recorded item lines, or None when the run folder has none (an older run) or they
    cannot be read (the record only explains a refusal; it never causes one)."""
    path = out_dir / ITEMS
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return fh.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError):
        return None


def difference_from_record(run: str | Path | None, lines: list[str], *, value: str, digest: str,
                           names: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None)) -> str:
    """How ``lines`` differ from the items recorded by ``run`` (a run folder, or a checkpoint in
    one; :func:`items_difference`, ``names`` as there), or "" when there is no record to compare
    with: none, or one whose digest is not the checkpoint's ``digest`` (a checkpoint copied into
    another run's folder)."""
    run_dir = None if run is None else Path(run) if Path(run).is_dir() else Path(run).parent
    recorded = read_items(run_dir) if run_dir is not None else None
    if recorded is None or lines_digest(recorded) != digest:
        return ""
    return items_difference(recorded, lines, value=value, names=names)


def _split(line: str) -> tuple[str, str]:
    name, _, value = line.rpartition("|")
    return name, value


def _named(value: str, names: Sequence[str] | None) -> str:
    """A label id as its class name, when ``names`` has one for it."""
    return names[int(value)] if names is not None and value.isdigit() and int(value) < len(names) else value


def items_difference(recorded: list[str], current: list[str], *, value: str = "value", shown: int = 3,
                     names: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None)) -> str:
    """How ``current`` differs from ``recorded``, in words: items new, gone and changed (its
    ``value`` before -> after), each with the first ``shown`` names; "" when they hold the same
    items. ``names``: the class names the recorded and the current label ids index (None: the
    ids are shown), so that a changed label reads "cat -> dog"."""
    before, after = dict(map(_split, recorded)), dict(map(_split, current))
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])

    def some(names: list[str], show=lambda n: n) -> str:
        more = f", ... {len(names) - shown} more" if len(names) > shown else ""
        return ", ".join(show(n) for n in names[:shown]) + more

    parts = []
    if new:
        parts.append(f"{len(new)} new ({some(new)})")
    if gone:
        parts.append(f"{len(gone)} gone ({some(gone)})")
    if changed:
        def change(n: str) -> str:
            return f"{n}: {_named(before[n], names[0])} -> {_named(after[n], names[1])}"

        parts.append(f"{len(changed)} with a changed {value} ({some(changed, change)})")
    return "; ".join(parts)
