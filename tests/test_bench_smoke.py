"""The benchmarks run on tiny inputs so they cannot rot (they measure nothing here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import requires_real

ROOT = Path(__file__).resolve().parents[1]


@requires_real
def test_bench_scripts_run_quick_realdata():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--jobs", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one RATIO line per measurement, in the order of bench/run_all.py
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("RATIO")] == [
        "p1_input", "p2_decode", "p2_miou", "p2_colour_check", "p2_loader", "seg_predict", "predict_cls-cpu", "predict_seg-cpu",
        "hw1_1", "train_cls-fast", "train_seg-fast", "malloc_train_seg256_b8", "train_gpu_cls-fast"]


def test_gpu_pack_parts_round_trip(tmp_path):
    """The lease's data parts: every part within its size, parts of about equal size, the union
    unpacked byte for byte equal to the source, and a part damaged in transfer refused."""
    import os

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for i in range(30):
        (src / ("a" if i % 2 else "b") / f"{i:02d}.bin").write_bytes(os.urandom(20_000 + 1_000 * i))
    wheel = tmp_path / "w-0.1-py3-none-any.whl"
    wheel.write_bytes(os.urandom(50_000))
    pack = [sys.executable, str(ROOT / "bench" / "gpu_pack.py")]
    out = subprocess.run(pack + ["pack", str(src), str(tmp_path / "parts"), "--part-mb", "0.4", "--wheel", str(wheel)],
                         capture_output=True, text=True, check=True).stdout
    parts = sorted((tmp_path / "parts").iterdir())
    total = sum(f.stat().st_size for f in src.rglob("*.bin")) + wheel.stat().st_size  # random bytes do not shrink
    assert len(parts) == -(-total // 400_000) == 3 and out.count("part ") == 3
    sizes = [(d / "part.tar.gz").stat().st_size for d in parts]
    assert max(sizes) <= 400_000 and max(sizes) - min(sizes) < 80_000
    dest = tmp_path / "dest"
    logs = [subprocess.run(pack + ["unpack", str(d), str(dest)], capture_output=True, text=True, check=True).stdout
            for d in parts]
    assert "still missing parts [2, 3]" in logs[0] and "all 3 parts in (31 files)" in logs[2]
    for f in src.rglob("*.bin"):
        assert (dest / "data" / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert (dest / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    blob = parts[1] / "part.tar.gz"
    data = bytearray(blob.read_bytes())
    data[500] ^= 0xFF
    blob.write_bytes(bytes(data))
    bad = subprocess.run(pack + ["unpack", str(parts[1]), str(tmp_path / "dest2")], capture_output=True, text=True)
    assert bad.returncode == 1 and "damaged in transfer" in bad.stderr


def test_gpu_pack_keeps_parts_within_the_limit_and_forgets_another_packs_parts(tmp_path):
    """A large file over a split point must not push its part past --part-mb (the split is redone
    with a part more); a part of another pack unpacked into the same place never completes it."""
    import json
    import os

    src = tmp_path / "src"
    src.mkdir()
    for name, size in (("a", 100_000), ("b", 300_000), ("c", 100_000)):
        (src / name).write_bytes(os.urandom(size))
    pack = [sys.executable, str(ROOT / "bench" / "gpu_pack.py")]
    subprocess.run(pack + ["pack", str(src), str(tmp_path / "p"), "--part-mb", "0.31"], check=True, capture_output=True)
    parts = sorted((tmp_path / "p").iterdir())
    assert len(parts) >= 3 and all(sum(f.stat().st_size for f in d.iterdir()) <= 310_000 for d in parts)
    (src / "d").write_bytes(os.urandom(50_000))
    subprocess.run(pack + ["pack", str(src), str(tmp_path / "q"), "--part-mb", "0.31"], check=True, capture_output=True)
    other = sorted((tmp_path / "q").iterdir())
    assert json.loads((parts[0] / "manifest.json").read_text())["pack"] != \
        json.loads((other[0] / "manifest.json").read_text())["pack"]
    dest = tmp_path / "dest"
    for d in parts[1:]:
        subprocess.run(pack + ["unpack", str(d), str(dest)], check=True, capture_output=True)
    out = subprocess.run(pack + ["unpack", str(other[0]), str(dest)], check=True, capture_output=True, text=True).stdout
    assert "markers of another pack forgotten" in out and "still missing parts" in out
    assert not (dest / ".parts" / "complete").exists()


def test_gpu_pack_slice_keeps_the_course_layout(tmp_path):
    """The rehearsal slice: the first images of each class (by number, not by name: 10 after 9),
    their ground-truth rows only, the first training pairs and the named validation pairs."""
    root = tmp_path / "hw1"
    for split, first in (("train_50", 0), ("val_50", 450)):
        (root / "p1_data" / split).mkdir(parents=True)
        for c in range(3):
            for i in range(first, first + 12):
                (root / "p1_data" / split / f"{c}_{i}.png").write_bytes(f"{c}-{i}".encode())
    (root / "p1_data" / "val_gt.csv").write_text(
        "filename,label\n" + "".join(f"{c}_{i}.png,{c}\n" for c in range(3) for i in range(450, 462)))
    for split in ("train", "validation"):
        (root / "p2_data" / split).mkdir(parents=True)
        for i in range(120):
            for kind in ("sat.jpg", "mask.png"):
                (root / "p2_data" / split / f"{i:04d}_{kind}").write_bytes(f"{i}{kind}".encode())
    dest = tmp_path / "slice"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_pack.py"), "slice", str(root), str(dest)],
                   capture_output=True, text=True, check=True)
    names = lambda d: sorted(f.name for f in (dest / d).iterdir())  # noqa: E731
    assert names("p1_data/train_50") == sorted(f"{c}_{i}.png" for c in range(3) for i in range(6))
    assert names("p1_data/val_50") == sorted(f"{c}_{i}.png" for c in range(3) for i in (450, 451))
    assert (dest / "p1_data" / "val_gt.csv").read_text() == "filename,label\n" + "".join(
        f"{c}_{i}.png,{c}\n" for c in range(3) for i in (450, 451))
    assert names("p2_data/train") == sorted(f"{i:04d}_{k}" for i in range(16) for k in ("sat.jpg", "mask.png"))
    assert names("p2_data/validation") == sorted(
        f"{s}_{k}" for s in ("0000", "0001", "0002", "0003", "0010", "0097", "0107") for k in ("sat.jpg", "mask.png"))
    assert (dest / "p1_data" / "train_50" / "2_5.png").read_bytes() == b"2-5"
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_pack.py"), "slice", str(root), str(dest)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and f"{dest} exists" in again.stderr
