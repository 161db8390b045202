"""Decode once: image files -> one memory-mapped uint8 array on disk, keyed by the file list.

The array is a ``.npy`` file in :func:`cache_dir` mapped copy-on-write: reading a batch touches
file pages the kernel may drop at any time, so the process's own (anonymous) memory does not grow
with the number of images. Decoding runs in forked worker processes, each writing its slice of
the mapped file directly (nothing is sent back but a count of each original image size), and the
file appears under its final name only when complete. Work is handed out in chunks, so the
bookkeeping stays small for any number of files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from vislab.errors import CannotWrite, VislabError
from vislab.io import atomic_path, atomic_write_text
from vislab.log import counted, info

DECODE_RULE = "fit-cover-centre-v3"  # part of the cache key: change it when decode_fitted changes
# (v2: EXIF-upright photos, 16-bit grey read; v3: 16-bit colour and animations said). Callers with
# their own decoder pass their own rule.
CHUNK = 256  # files per unit of work
Decoder = Callable[[Path, tuple[int, int]], "tuple[np.ndarray, tuple[int, int]]"]


def cache_dir() -> Path:
    """Where decoded folders are cached: ``$VISLAB_CACHE`` or ``~/.cache/vislab``; a file there is
    one error (nothing could be cached, and every read would decode again without a word)."""
    path = Path(os.environ.get("VISLAB_CACHE", Path.home() / ".cache" / "vislab"))
    if path.exists() and not path.is_dir():
        raise VislabError(path, "is a file, but the cache needs a folder ($VISLAB_CACHE, default ~/.cache/vislab); "
                                "point VISLAB_CACHE at a folder")
    return path


def file_list_key(files: Sequence[Path], extra: str = "") -> str:
    """A short hash of absolute paths, sizes and modification times: changes whenever a file does."""
    h = hashlib.sha1(extra.encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def content_digest(lines: Iterable[str]) -> str:
    """A short digest of a data set's description lines (names with sizes or labels, no paths
    or times): the same for the same data moved or copied elsewhere, different for other data.
    A checkpoint keeps its training folder's, to rebuild its held-out split only from that folder."""
    h = hashlib.sha1()
    for line in lines:
        h.update(f"{line}\n".encode())
    return h.hexdigest()[:16]


def decode_workers() -> int:
    """Processes for decoding: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def parallel_map(fn: Callable, items: Sequence, *, threads: int | None = None) -> list:
    """``[fn(x) for x in items]`` in threads (for work that releases the GIL), in order, handed
    out in chunks; the first error is raised as it is."""
    threads = threads or decode_workers()
    if threads == 1 or len(items) <= CHUNK:
        return [fn(x) for x in items]
    starts = range(0, len(items), CHUNK)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda lo: [fn(x) for x in items[lo : lo + CHUNK]], starts)
        return [y for part in parts for y in part]


def most_common_size(counts: Mapping[tuple[int, int], int]) -> tuple[int, int]:
    """The most frequent (h, w) of a count table; ties go to the larger area, then the larger height."""
    return max(counts, key=lambda hw: (counts[hw], hw[0] * hw[1], hw[0]))


def open_array(path: Path) -> torch.Tensor:
    """A cached ``.npy`` array as a tensor backed by a copy-on-write file mapping."""
    arr = np.load(path, mmap_mode="c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def decoded_images(files: Sequence, target: tuple[int, int], decode: Decoder, *,
                   key: str | None = None, use_cache: bool = True, tag: str = "cls",
                   workers: int | None = None, channels: int = 3, rule: str = DECODE_RULE,
                   source: str | Path = "", built: list[tuple[Path, int]] | None = None) -> tuple[torch.Tensor, Counter]:
    """Every file decoded by ``decode(path, target) -> (HxWxC uint8 array, original (h, w, ...))``
    into one (N, C, H, W) uint8 tensor (C = ``channels``), and the count of each key the decoder
    returned (an original size, and what the decoder says it did after it).
    ``files`` may hold any items ``decode`` takes (with ``key`` given when they are not paths).

    With ``use_cache`` the tensor is a memory-mapped cache file (built on the first call, reused
    while the file list (``key``, default :func:`file_list_key`), the target size and the decoder's
    ``rule`` are unchanged); without, it is decoded into memory and nothing is written. A new
    cache file is said on the console with its size; ``source`` (the folder) is recorded beside it
    for ``vislab cache list``, and each reuse marks the entry as used. With ``built`` (a list) the
    new file and its item count are appended to it instead of said, for a caller that says its
    files at once.
    """
    n, (h, w) = len(files), target
    if not use_cache:
        out = np.empty((n, channels, h, w), np.uint8)
        sizes = Counter()
        for part in parallel_map(lambda lo: _decode_into(out, files, lo, target, decode),
                                 range(0, n, CHUNK), threads=workers):
            sizes.update(part)
        return torch.from_numpy(out), sizes
    key = key or file_list_key(files)
    # named width x height, as the console says sizes
    path = cache_dir() / f"{tag}-{key}-{w}x{h}-{hashlib.sha1(rule.encode()).hexdigest()[:6]}.npy"
    shape = (n, channels, h, w)
    side = path.with_suffix(".sizes.json")
    if path.is_file() and side.is_file():
        try:
            cached = open_array(path)
            sizes = Counter({(int(row[0]), int(row[1]), *map(str, row[2:-1])): int(row[-1])
                             for row in json.loads(side.read_text())})
            if tuple(cached.shape) == shape and cached.dtype == torch.uint8:
                mark_used(path)
                return cached, sizes
        except (OSError, ValueError, TypeError, IndexError, KeyError):
            pass  # a broken cache (or a side file of other rows) is rebuilt, never fatal
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
            sizes = _fill_file(tmp, files, target, decode, workers)
        with atomic_path(side) as tmp:
            tmp.write_text(json.dumps([[*key, c] for key, c in sizes.items()]))
        record_source(path, source, count=n)
    except (OSError, CannotWrite):  # an unwritable cache only costs memory: decode into memory instead
        return decoded_images(files, target, decode, use_cache=False, workers=workers, channels=channels, rule=rule)
    if built is not None:
        built.append((path, n))
    else:
        say_built(source, [(path, n)], "image")
    return open_array(path), sizes


def say_built(source: str | Path, built: list[tuple[Path, int]], noun: str) -> None:
    """One console line for new cache files (``built``: each file and the ``noun``s it holds):
    how many were decoded, where, how big."""
    if built:
        paths = [p for p, _ in built]
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files in {paths[0].parent}"
        info(f"{source or 'cache'}: {counted(sum(n for _, n in built), noun)} decoded once into {where} "
             f"({megabytes(sum(p.stat().st_size for p in paths))}); `vislab cache list` shows the cache, "
             "`vislab cache clear` frees it")


def _decode_into(out: np.ndarray, files: Sequence[Path], lo: int, target: tuple[int, int],
                 decode: Decoder) -> Counter:
    sizes: Counter = Counter()
    for i in range(lo, min(lo + CHUNK, len(files))):
        img, hw = decode(files[i], target)
        out[i] = img.transpose(2, 0, 1)
        sizes[hw] += 1
    return sizes


# the forked workers' view of the job (set in the parent just before the fork)
_JOB: dict = {}


def _work(lo: int) -> Counter:
    out = np.load(_JOB["path"], mmap_mode="r+")
    sizes = _decode_into(out, _JOB["files"], lo, _JOB["target"], _JOB["decode"])
    out.flush()
    return sizes


def _fill_file(path: Path, files: Sequence[Path], target: tuple[int, int], decode: Decoder,
               workers: int | None) -> Counter:
    workers = workers or decode_workers()
    starts = range(0, len(files), CHUNK)
    sizes: Counter = Counter()
    _JOB.update(path=path, files=files, target=target, decode=decode)
    try:
        if workers == 1 or len(starts) == 1 or "fork" not in mp.get_all_start_methods():
            for lo in starts:
                sizes.update(_work(lo))
        else:
            # a forked child must not enter the OpenMP pool the parent's torch ops started (it
            # deadlocks, as the segmentation decoder's torch ops did after a scan); DataLoader
            # workers do the same. Set in the children only: this process keeps its threads
            with mp.get_context("fork").Pool(min(workers, len(starts)), initializer=torch.set_num_threads,
                                             initargs=(1,)) as pool:
                for part in pool.imap_unordered(_work, starts):
                    sizes.update(part)
    finally:
        _JOB.clear()
    return sizes


# --- the cache's own bookkeeping: what each entry holds, when it was last used -------------

ABOUT = ".about.json"  # beside a cache file: its source folder and item count; its time is the last use


def _about_of(path: Path) -> Path:
    if path.suffix == ".onnx":  # named after a checkpoint, whose name may hold dots
        return path.with_name(path.stem + ABOUT)
    return path.with_name(path.name.split(".")[0] + ABOUT)


def record_source(path: Path, source: str | Path, *, count: int | None, keep: bool = False) -> None:
    """Write ``path``'s record: the folder (or, for an ONNX graph, the checkpoint) it was made
    from (absolute) and how many items it holds (None: not a count of items); ``keep``: leave a
    record that is there (write one only for an entry made before records were kept)."""
    where = str(Path(source).resolve()) if str(source) else ""
    if keep and _about_of(path).is_file():
        return
    try:
        atomic_write_text(json.dumps({"source": where, "items": count}), _about_of(path))
    except (OSError, VislabError):  # the record only serves the listing
        pass


def mark_used(path: Path) -> None:
    """Mark a cache entry as used now (its record's time, else, for an entry older than records,
    the data file's); a read-only cache is left as it is."""
    about = _about_of(path)
    try:
        os.utime(about if about.is_file() else path)
    except OSError:
        pass


def megabytes(n: int) -> str:
    """``n`` bytes in MB, or GB from 1 GB on."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


class CacheEntry:
    """One entry of the cache: its files (the data, its sidecars), what it holds, its source
    folder when recorded, its size in bytes and when it was last used (seconds since the epoch)."""

    KINDS = {"cls": "decoded images", "seg": "decoded tiles", "seg-stats": "mask statistics",
             "onnx": "ONNX graph", "unfinished": "unfinished file of an interrupted build"}

    def __init__(self, kind: str, files: list[Path]) -> None:
        self.kind = kind
        self.files = files
        stats = []
        for f in files:
            try:
                stats.append(f.stat())
            except OSError:  # gone since it was listed (a build renaming its temporary into place)
                pass
        self.bytes = sum(st.st_size for st in stats)
        self.last_used = max((st.st_mtime for st in stats), default=0.0)
        self.source: str | None = None
        self.items: int | None = None
        about = [f for f in files if f.name.endswith(ABOUT)]
        if about:
            try:
                d = json.loads(about[0].read_text())
                self.source, self.items = d.get("source") or None, d.get("items")
            except (OSError, ValueError, AttributeError):
                pass

    @property
    def name(self) -> str:
        """The entry's main file name."""
        return self.files[0].name

    def describe(self) -> str:
        """What the entry holds, in words."""
        return self.KINDS[self.kind]


_ARRAY = re.compile(r"(cls|seg)-[0-9a-f]{20}-\d+x\d+-[0-9a-f]{6}\.(npy|sizes\.json|about\.json)")
_STATS = re.compile(r"seg-stats-[0-9a-f]{20}\.(pt|about\.json)")
_ONNX = re.compile(r".+-[0-9a-f]{20}\.(onnx|about\.json)")
_UNFINISHED = re.compile(r"\.(.+)\.[^.]+\.tmp")
_ENDINGS = re.compile(r"\.(npy|sizes\.json|about\.json|pt|onnx)$")
IN_PROGRESS_HOURS = 6  # a temporary file younger than this may be a build still running: never listed


def _kind(name: str, *, in_onnx: bool) -> str | None:
    """The kind of cache file ``name`` is (in the cache folder, or its ``onnx/``), None when it is
    no file vislab writes there."""
    if in_onnx:
        return "onnx" if _ONNX.fullmatch(name) else None
    if _STATS.fullmatch(name):
        return "seg-stats"
    found = _ARRAY.fullmatch(name)
    return found.group(1) if found else None


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of the cache (``root``, default :func:`cache_dir`), least recently used first.
    A file the cache does not know is not listed (and never removed)."""
    root = root or cache_dir()
    if not root.is_dir():
        return []
    groups: dict[tuple[str, str], list[Path]] = {}
    for f in sorted([*root.iterdir(), *((root / "onnx").iterdir() if (root / "onnx").is_dir() else [])]):
        if not f.is_file():
            continue
        inner = _UNFINISHED.fullmatch(f.name)  # what atomic_path left of a killed write
        if inner and _kind(inner.group(1), in_onnx=f.parent != root):
            try:
                old = time.time() - f.stat().st_mtime > IN_PROGRESS_HOURS * 3600
            except OSError:
                old = False
            if old:
                groups[("unfinished", str(f))] = [f]
        elif kind := _kind(f.name, in_onnx=f.parent != root):
            # a decoded array goes with its sidecars, an ONNX graph with its record
            key = _ENDINGS.sub("", str(f))
            groups.setdefault((kind, key), []).append(f)
    entries = []
    for (kind, _), files in groups.items():
        files.sort(key=lambda f: (not f.name.endswith((".npy", ".pt", ".onnx", ".tmp")), f.name))  # the data first
        entries.append(CacheEntry(kind, files))
    return sorted(entries, key=lambda e: e.last_used)


def remove_entries(entries: Iterable[CacheEntry]) -> tuple[int, list[tuple[Path, str]]]:
    """Delete the entries' files; return the bytes freed and the files that could not be deleted
    (with why). A process that has an entry mapped keeps reading it (the file goes when it
    closes); the next run decodes again."""
    freed, kept = 0, []
    for e in entries:
        for f in e.files:
            try:
                size = f.stat().st_size
                f.unlink()
                freed += size
            except FileNotFoundError:
                pass
            except OSError as exc:
                kept.append((f, exc.strerror or type(exc).__name__))
    return freed, kept


def select_entries(entries: list[CacheEntry], *, unused_days: float | None = None,
                   source: str | Path | None = None, now: float | None = None) -> list[CacheEntry]:
    """The entries not used for ``unused_days`` days and made from ``source`` or a folder inside
    it (an entry without a recorded source never matches a ``source``)."""
    now = time.time() if now is None else now
    chosen = entries
    if unused_days is not None:
        chosen = [e for e in chosen if now - e.last_used >= unused_days * 86400]
    if source is not None:
        root = Path(source).resolve()
        chosen = [e for e in chosen if e.source and (Path(e.source) == root or root in Path(e.source).parents)]
    return chosen
