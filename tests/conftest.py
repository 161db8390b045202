"""Shared fixtures: synthetic data sets, the real course data when present, an in-process CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # test processes side by side (pytest -n 2): each on one thread, and so the processes they start.
    # Two threads each oversubscribe the cores and idle OpenMP threads spin (measured on 2 cores: the
    # suite took 1,432 s that way, 584 s on one thread each, 914 s in one process on two)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import numpy as np
import pytest
from PIL import Image

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "hw1_data"
requires_real = pytest.mark.skipif(not REAL.is_dir(), reason="course data not found in ../shared/data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def write_cls_recipe(folder: Path, name: str, **fields) -> Path:
    """A small classification recipe file (a CIFAR ResNet-20, 2 epochs, 0.2 held out) with ``fields`` set."""
    import yaml

    r = {"task": "cls", "model": "cifar_resnet20", "epochs": 2, "batch_size": 16, "lr": 0.05, "holdout": 0.2,
         "seed": 1, **fields}
    path = folder / name
    path.write_text(yaml.safe_dump(r))
    return path


def write_color_classes(d: Path, *, per_class: int = 40, noise: int = 90, lift: int = 140) -> Path:
    """3 classes of 32x32 PNGs in the course layout: noise in [0, ``noise``) with channel c of
    class c raised by ``lift`` (a faint lift makes a hard task)."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    for c in range(3):
        for i in range(per_class):
            img = rng.integers(0, noise, size=(32, 32, 3), dtype=np.uint8)
            img[..., c] += lift
            write_png(d / f"{c}_{i}.png", img)
    return d


@pytest.fixture
def color_classes(tmp_path: Path) -> Path:
    """A learnable 3-class folder of 32x32 PNGs: class c is noisy with channel c bright."""
    return write_color_classes(tmp_path / "train")


def run_vislab(*args) -> int:
    """Run ``vislab ARGS`` in-process (for module-scoped fixtures); returns the exit status."""
    from vislab.cli import main

    argv = sys.argv
    sys.argv = ["vislab", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``vislab ARGS`` in-process; returns exit code, stdout and stderr."""
    from vislab.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["vislab", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli_one_thread(cli):
    """``cli`` with torch on one thread, as ``python -m vislab`` runs under OMP_NUM_THREADS=1: a
    resume in this process continues a killed process's run bit for bit, without a start-up."""
    import torch

    def run(*args: str) -> CliResult:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return cli(*args)
        finally:
            torch.set_num_threads(threads)

    return run
