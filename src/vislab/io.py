"""Atomic file writes (a kill at any moment leaves either the old file or the new one), and strict YAML."""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from vislab.errors import CannotWrite, VislabError


PNG_TAG = b"Software\x00vislab"
"""The text chunk vislab puts in the PNGs it writes (masks, figures), so a later command knows its own files."""
JPEG_COMMENT = b"Software: vislab"
"""The comment segment of the JPEG figures vislab writes, likewise."""
JSON_MARK = ("written_by", "vislab")
"""The first key and value of the JSON files vislab writes (``--json``), likewise."""
_JSON_MARK_TEXT = '"%s": "%s"' % JSON_MARK  # as json.dumps writes the pair


def tag_png(png: bytes) -> bytes:
    """``png`` with a ``tEXt`` chunk :data:`PNG_TAG` after its header chunk (viewers and the
    course's evaluator ignore it)."""
    import struct
    import zlib

    end = 8 + 8 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    chunk = b"tEXt" + PNG_TAG
    return png[:end] + struct.pack(">I", len(PNG_TAG)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[end:]


def written_by_vislab(path: Path) -> bool:
    """Whether ``path`` is a PNG (:func:`tag_png`), JPEG (:data:`JPEG_COMMENT`) or JSON file
    (:data:`JSON_MARK`, :func:`write_marked_json`) that vislab wrote; its first bytes are read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(80)
    except OSError:
        return False
    if head.startswith(b"\x89PNG"):
        return b"tEXt" + PNG_TAG in head
    if head.lstrip().startswith(b"{"):  # the mark must be the first key
        return head.lstrip()[1:].lstrip().startswith(_JSON_MARK_TEXT.encode())
    return head.startswith(b"\xff\xd8") and b"\xff\xfe" in head and JPEG_COMMENT in head


FIGURES = "_figures"
"""What a Markdown page's figures folder adds to the page's stem (:func:`figures_folder`)."""


def figures_folder(page: str | Path) -> Path:
    """Where a Markdown page's figures go: ``report.md`` -> ``report_figures/`` beside it."""
    page = Path(page)
    return page.with_name(f"{page.stem}{FIGURES}")


def figures_page(folder: str | Path) -> Path | None:
    """The Markdown page whose figures ``folder`` holds (``report.md`` beside ``report_figures/``),
    or None: no such page, so the folder is someone's own."""
    folder = Path(folder)
    if not folder.name.endswith(FIGURES) or len(folder.name) == len(FIGURES):
        return None
    page = folder.with_name(f"{folder.name[: -len(FIGURES)]}.md")
    return page if page.is_file() else None


def write_marked_json(obj: dict[str, Any], path: str | Path) -> None:
    """``obj`` as an indented JSON file (atomically), :data:`JSON_MARK` its first key, so that a
    later command replaces it but no JSON file of anyone else's."""
    import json

    text = json.dumps({JSON_MARK[0]: JSON_MARK[1], **obj}, indent=1)
    atomic_write_text(text, path)


def missing_file_words(path: Path, what: str, example: str = "") -> str:
    """What is wrong with an input ``path`` that should be a ``what`` file (a recipe file, a labels
    CSV file) but is not a file: a folder in its place, or nothing there."""
    return f"is a folder, but a {what}{example} is needed" if path.is_dir() else f"{what} not found"


def check_output_file(path: str | Path) -> Path:
    """``path`` as a Path, when a file can be written there (no folder in its place, no file in
    place of its folder, the nearest existing folder writable); else one error naming it.
    Commands call it before their work."""
    dest = Path(path)
    if dest.is_dir():
        raise CannotWrite(dest, "is a folder, but a file is needed here")
    for parent in dest.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CannotWrite(parent, "is a file, but a folder is needed here")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CannotWrite(parent, "cannot write here (permission denied)")
            break
    return dest


# What a training run writes into its folder: a command's output never replaces one of them.
FAILED = "failed.json"
"""The failure that stopped a run's latest piece (:func:`vislab.engine.run_folder.training_recorded`)."""

RUNNING = "running.json"
"""The process that trains a run now (:func:`vislab.runfolders.training_process`); a process
killed without a word leaves it behind."""

RUN_RECORDS = frozenset({"recipe.yaml", "results.json", "history.csv", "changes.txt", "command.txt", "inputs.json",
                         "hparams.yaml", "metrics.csv", "val_predictions.csv", "train_items.txt.gz", FAILED, RUNNING})


def written_by_runs(name: str) -> bool:
    """Whether a training run writes an entry of this name into its folder: a record, a
    checkpoint, the class offsets, its ``snapshots/`` or ``tensorboard/``."""
    return name in RUN_RECORDS or name in ("snapshots", "tensorboard") or name.endswith((".ckpt", ".offsets.json"))


def check_new_output(path: str | Path, *, suffixes: Iterable[str] = (),
                     inputs: Iterable[str | Path | None] = (), header: str | None = None,
                     data_dirs: Iterable[str | Path | None] = (), data_suffixes: Iterable[str] = (),
                     replace_in_data: bool = True, protected: Iterable[tuple[str | Path, str]] = ()) -> Path:
    """:func:`check_output_file`; refuse an image (a suffix of ``data_suffixes``) inside one of the
    command's ``data_dirs`` (it would replace an image, or be read as one more), and any output
    inside a run folder's records (``snapshots/``); and when a file is already there, refuse to
    replace it if it is one of the command's ``inputs``, a record or checkpoint of a run folder, a
    file of another kind than the command writes (its suffix not in ``suffixes``), an image (a
    suffix of ``data_suffixes``) that vislab did not write (:func:`written_by_vislab`), or, given the
    ``header`` line the command writes, a text file whose first line is another (a labels CSV, a
    user's table). A command's own earlier output (same kind, not an input) is replaced as usual,
    except inside one of ``data_dirs`` when not ``replace_in_data`` (a command whose output has the
    form of the data's own files, such as a labels CSV, cannot tell the two apart there), and
    except the ``protected`` files, each refused with what it is ("is the labels file ...")."""
    dest = check_output_file(path)
    where = dest.parent.resolve() / dest.name  # where the file is written (a link there is replaced)
    image = dest.suffix.lower() in {s.lower() for s in data_suffixes}
    if image:
        for data in (Path(d).resolve() for d in data_dirs if d is not None):
            if data.is_dir() and data in where.parents:
                how = "would replace one of its images" if dest.exists() else "would be read as one more of its images"
                raise VislabError(dest, f"lies inside the data folder {data} and {how}; write it to another folder")
    for run in where.parents:
        inner = where.relative_to(run).parts
        if len(inner) > 1 and (run / "recipe.yaml").is_file() and written_by_runs(inner[0]):
            raise VislabError(dest, f"lies inside {inner[0]}/ of the run folder {run}, which the run wrote and reads "
                                    "back; write the output to another folder")
    if not dest.is_file():
        return dest
    for src, what in [*((src, "is an input of this command") for src in inputs), *protected]:
        try:
            same = src is not None and Path(src).is_file() and os.path.samefile(src, dest)
        except OSError:
            same = False
        if same:
            raise VislabError(dest, f"{what}; write the output to another file")
    if (dest.parent / "recipe.yaml").is_file() and written_by_runs(dest.name):
        raise VislabError(dest, f"is a record of the run folder {dest.parent}; write the output to another file")
    kinds = tuple(s.lower() for s in suffixes)
    if kinds and dest.suffix.lower() not in kinds:
        raise VislabError(dest, f"exists and is not a {' or '.join(kinds)} file; refusing to replace it "
                                "(choose another name, or delete it first)")
    if image and not written_by_vislab(dest):
        raise VislabError(dest, "exists and is an image vislab did not write (a data set's own file?); refusing to "
                                "replace it (choose another name, or delete it first)")
    if dest.suffix.lower() == ".json" and dest.stat().st_size and not written_by_vislab(dest):
        raise VislabError(dest, f"exists and is a JSON file vislab did not write (it does not start with "
                                f"{{{_JSON_MARK_TEXT}); refusing to replace it (choose another name, or delete it first)")
    if header is not None and dest.stat().st_size:
        first = _first_line(dest)
        if first != header:
            raise VislabError(dest, f"exists and is not an earlier output of this command (its first line is "
                                    f"'{first}', not '{header}'); refusing to replace it (choose another name, "
                                    "or delete it first)")
    for data in (Path(d).resolve() for d in data_dirs if d is not None and not replace_in_data):
        if data.is_dir() and data in where.parents:  # of the command's form, yet perhaps the data's own
            raise VislabError(dest, f"exists inside the data folder {data}, where it may be the data's own file "
                                    "(a labels CSV reads the same); refusing to replace it (write the output to "
                                    "another folder, or delete it first)")
    return dest


def _first_line(path: Path, limit: int = 4096) -> str:
    """The first line of a file without its line end ('' for an empty file), read from at most
    ``limit`` bytes; bytes that are not UTF-8 are shown escaped."""
    with open(path, "rb") as f:
        head = f.read(limit)
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="backslashreplace").lstrip("\ufeff")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    Example:
        >>> with atomic_path("out.csv") as tmp:
        ...     tmp.write_text("image_id,label\\n")
    """
    dest = check_output_file(path)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except (PermissionError, FileExistsError, NotADirectoryError, OSError) as exc:
        raise CannotWrite(parent, f"cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~process_umask())  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        try:
            dir_fd = os.open(parent, os.O_RDONLY)
            os.fsync(dir_fd)
            os.close(dir_fd)
        except OSError:
            pass
    finally:
        if tmp.exists():
            tmp.unlink()


def _import_umask() -> int:
    mask = os.umask(0)  # at import, before any writer thread exists
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _import_umask()


def process_umask() -> int:
    """The process's file-creation mask, read without changing it (``os.umask`` can only be read
    by setting it, which races with threads that create files meanwhile): Linux reports it in
    /proc/self/status; elsewhere the value at import is used."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK_AT_IMPORT


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_path`."""
    import torch  # here: the recipe and YAML readers of this module stay light to import

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` atomically, as UTF-8 (what vislab reads back, whatever the locale)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def file_digest(path: str | Path, *, salt: str = "") -> str:
    """SHA-256 (hex) of ``salt`` followed by a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256(salt.encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML in which a mapping key appears once (PyYAML keeps the last of a repeated key
    silently); a sequence used as a key (a colour) is read as a tuple."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    out: dict = {}
    for k, v in node.value:
        key = loader.construct_object(k, deep=True)
        key = tuple(key) if isinstance(key, list) else key
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", k.start_mark)
        out[key] = loader.construct_object(v, deep=True)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str) -> Any:
    """Safe YAML in which a repeated mapping key is an error (``yaml.YAMLError``, with its line)."""
    return yaml.load(io.StringIO(text), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
