"""Decode once: image files -> one memory-mapped uint8 array on disk, keyed by the file list.

The array is a ``.npy`` file in :func:`cache_dir` mapped copy-on-write: reading a batch touches
file pages the kernel may drop at any time, so the process's own (anonymous) memory does not grow
with the number of images. Decoding runs in threads (Pillow releases the GIL while it decodes and
resizes) and writes straight into the mapped file; the file appears under its final name only
when complete.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from vislab.io import atomic_path

DECODE_RULE = "fit-cover-centre-v1"  # part of the cache key: change it when decode_fitted changes


def cache_dir() -> Path:
    """Where decoded folders are cached: ``$VISLAB_CACHE`` or ``~/.cache/vislab``."""
    return Path(os.environ.get("VISLAB_CACHE", Path.home() / ".cache" / "vislab"))


def file_list_key(files: Sequence[Path], extra: str = "") -> str:
    """A short hash of paths, sizes and modification times: changes whenever a file does."""
    h = hashlib.sha1(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_threads() -> int:
    """Threads for decoding: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def parallel_map(fn: Callable, items: Sequence, *, threads: int | None = None) -> list:
    """``[fn(x) for x in items]`` in threads, in order; the first error is raised as it is."""
    threads = threads or decode_threads()
    if threads == 1 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items, chunksize=64))


def most_common_size(counts: Mapping[tuple[int, int], int]) -> tuple[int, int]:
    """The most frequent (h, w) of a count table; ties go to the larger area, then the larger height."""
    return max(counts, key=lambda hw: (counts[hw], hw[0] * hw[1], hw[0]))


def open_array(path: Path) -> torch.Tensor:
    """A cached ``.npy`` array as a tensor backed by a copy-on-write file mapping."""
    arr = np.load(path, mmap_mode="c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def decoded_images(files: Sequence[Path], target: tuple[int, int],
                   decode: Callable[[Path, tuple[int, int]], np.ndarray], *, use_cache: bool = True,
                   tag: str = "cls", threads: int | None = None) -> torch.Tensor:
    """Every file decoded by ``decode(path, target)`` into one (N, 3, H, W) uint8 tensor.

    With ``use_cache`` the tensor is a memory-mapped cache file (built on the first call, reused
    while the file list, the target size and the decode rule are unchanged); without, it is
    decoded into memory and nothing is written.
    """
    n, (h, w) = len(files), target
    if not use_cache:
        out = np.empty((n, h, w, 3), np.uint8)
        _fill(out, files, target, decode, threads)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    key = file_list_key(files, extra=f"{tag}|{h}x{w}|{DECODE_RULE}")
    path = cache_dir() / f"{tag}-{key}.npy"
    if path.is_file():
        try:
            cached = open_array(path)
            if tuple(cached.shape) == (n, 3, h, w) and cached.dtype == torch.uint8:
                return cached
        except (OSError, ValueError):
            pass  # a broken cache is rebuilt, never fatal
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, h, w))
            _fill(arr, files, target, decode, threads, channels_first=True)
            arr.flush()
            del arr
    except OSError:  # an unwritable cache only costs memory: decode into memory instead
        return decoded_images(files, target, decode, use_cache=False, threads=threads)
    return open_array(path)


def _fill(out: np.ndarray, files: Sequence[Path], target: tuple[int, int],
          decode: Callable[[Path, tuple[int, int]], np.ndarray], threads: int | None,
          channels_first: bool = False) -> None:
    def one(i: int) -> None:
        img = decode(files[i], target)
        out[i] = img.transpose(2, 0, 1) if channels_first else img

    parallel_map(one, range(len(files)), threads=threads)
