"""Training throughput (images/s) per recipe on this machine: vislab's trainer vs a
straightforward PyTorch loop with the same network, trainable layers, optimiser and batch size.

    python bench/bench_train.py [--recipes cls-fast cls-cpu ...] [--steps 8] [--scaling]

vislab runs the real training path (``pipelines.*.train``: Lightning, decoded-tensor input,
on-device augmentation, checkpoints) for one epoch of ``--steps`` batches with no held-out
split; its time is the epoch's ``seconds`` from history.csv. The reference reads files with PIL
through a DataLoader with torchvision transforms (P1: RandomCrop(pad 4) + flip + Resize; P2:
random crop + flips, masks decoded with numpy), then forward, loss, backward, step. Both time
the same number of batches including the first (vislab's one-time decode of the folder into its
cache and the Lightning set-up are outside its window, the DataLoader start is inside the plain
loop's: see bench_p1_input.py for the input pipeline alone). The seed recipes (on request) run with batch 8, 2 steps and random weights
here (224 px VGG16-BN and 512 px FCN32s take minutes per full batch on 2 cores); ``--scaling``
adds the cost of cls-cpu at 32/64/96/128 px and seg-cpu at 256/512 px crops.

``--precisions 32 bf16-mixed`` times every recipe in each precision, through both paths (the
plain loop wraps forward and loss in ``torch.autocast``, as Lightning's mixed precisions do), and
prints what bf16 gains over fp32 in each; ``--model`` and ``--image-size`` change the recipes'
network and input size (e.g. ``--recipes cls-cpu --model efficientnet_lite1 --image-size 160``).
A CPU without native bf16 (avx512_bf16 / AMX) runs bf16 far slower than fp32.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, peak_rss_mb  # noqa: E402

from vislab.config import Recipe, load_recipe  # noqa: E402
from vislab.data.palette import PALETTE  # noqa: E402
from vislab.models.freeze import freeze_prefixes  # noqa: E402
from vislab.engine.losses import build_loss  # noqa: E402
from vislab.engine.optim import OPTIMIZERS  # noqa: E402
from vislab.engine.budget import step_precision  # noqa: E402
from vislab.models import build_model  # noqa: E402

warnings.filterwarnings("ignore")
SEED_OVERRIDES = {"cls-vgg16bn-seed": {"batch_size": 8}, "seg-fcn32s-seed": {"batch_size": 8}}
DEFAULT_RECIPES = ["cls-fast", "cls-cpu", "seg-fast", "seg-cpu"]


class PilClassification(Dataset):
    def __init__(self, folder: Path, r: Recipe) -> None:
        from torchvision import transforms as T

        self.files = sorted(folder.glob("*.png"))
        ops = [T.RandomCrop(32, padding=r.pad, padding_mode="reflect"), T.RandomHorizontalFlip()]
        if r.image_size and r.image_size != 32:
            ops.append(T.Resize(r.image_size))
        mean, std = r.mean or (0.485, 0.456, 0.406), r.std or (0.229, 0.224, 0.225)
        self.tf = T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        f = self.files[i]
        return self.tf(Image.open(f).convert("RGB")), int(f.name.split("_")[0])


class PilSegmentation(Dataset):
    def __init__(self, folder: Path, r: Recipe) -> None:
        self.images = sorted(folder.glob("*_sat.jpg"))
        self.crop = r.crop_size
        self.mean = torch.tensor(r.mean or (0.485, 0.456, 0.406))[:, None, None]
        self.std = torch.tensor(r.std or (0.229, 0.224, 0.225))[:, None, None]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.images[i]
        img = np.asarray(Image.open(f).convert("RGB"))
        rgb = np.asarray(Image.open(f.with_name(f.name.replace("_sat.jpg", "_mask.png"))).convert("RGB"))
        rgb = (rgb >= 128).astype(np.int64)
        code = rgb[..., 0] * 4 + rgb[..., 1] * 2 + rgb[..., 2]
        lut = np.full(8, 6)
        for c, colour in enumerate(PALETTE.tolist()):
            lut[(colour[0] >= 128) * 4 + (colour[1] >= 128) * 2 + (colour[2] >= 128)] = c
        ids = lut[code]
        if self.crop:
            y, x = np.random.randint(0, img.shape[0] - self.crop + 1, 2)
            img, ids = img[y : y + self.crop, x : x + self.crop], ids[y : y + self.crop, x : x + self.crop]
        if np.random.rand() < 0.5:
            img, ids = img[:, ::-1], ids[:, ::-1]
        if np.random.rand() < 0.5:
            img, ids = img[::-1], ids[::-1]
        x = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 - self.mean) / self.std
        return x, torch.from_numpy(ids.copy())


def plain_images_per_s(r: Recipe, data: Path, steps: int) -> float:
    """The reference loop: PIL + DataLoader + the same network and optimiser."""
    torch.manual_seed(0)
    np.random.seed(0)
    if r.task == "cls":
        ds: Dataset = PilClassification(data / "p1_data" / "train_50", r)
        net, loss_fn = build_model(r.model, num_classes=50, weights=r.weights), torch.nn.CrossEntropyLoss(
            label_smoothing=r.label_smoothing)
    else:
        ds = PilSegmentation(data / "p2_data" / "train", r)
        net, loss_fn = build_model(r.model, num_classes=7, weights=r.weights), build_loss(r.loss)
    freeze_prefixes(net, r.freeze, model=r.model)
    if r.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    opt = OPTIMIZERS[r.optimizer]([p for p in net.parameters() if p.requires_grad], r)
    loader = DataLoader(ds, batch_size=r.batch_size, shuffle=True, drop_last=True, num_workers=r.num_workers)
    half, amp = step_precision(str(r.precision), "cpu")  # as vislab's trainer runs it (16-mixed: bf16 on a CPU)
    t0 = time.perf_counter()
    for x, y in itertools.islice(loader, steps):
        if r.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=half or torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * r.batch_size / (time.perf_counter() - t0)


def vislab_images_per_s(r: Recipe, data: Path, steps: int) -> float:
    """One epoch of ``steps`` batches through vislab's training pipeline; its history.csv time."""
    # one epoch: a recipe's time budget (cls-cpu, seg-cpu) would otherwise plan many epochs of ``steps``
    r = dataclasses.replace(r.with_overrides(epochs=1, limit_train_batches=steps, holdout=0.0), budget_minutes=None)
    with tempfile.TemporaryDirectory() as tmp:
        if r.task == "cls":
            from vislab.pipelines.classification import train

            train(data / "p1_data" / "train_50", r, out_dir=Path(tmp) / "run")
        else:
            from dataclasses import replace

            from vislab.pipelines.segmentation import train

            train(data / "p2_data" / "train", replace(r, snapshot=()), out_dir=Path(tmp) / "run")
        with (Path(tmp) / "run" / "history.csv").open() as fh:
            seconds = float(list(csv.DictReader(fh))[-1]["seconds"])
    return steps * r.batch_size / seconds


def _subset(data: Path, n: int) -> Path:
    """A data root of links: all of p1_data, the first ``n`` pairs of p2_data/train."""
    root = Path(tempfile.mkdtemp(prefix="vislab-bench-data-"))
    (root / "p1_data").symlink_to((data / "p1_data").resolve())
    train = root / "p2_data" / "train"
    train.mkdir(parents=True)
    for sat in sorted((data / "p2_data" / "train").glob("*_sat.jpg"))[:n]:
        for f in (sat, sat.with_name(sat.name.replace("_sat.jpg", "_mask.png"))):
            (train / f.name).symlink_to(f.resolve())
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES,
                    help="also cls-vgg16bn-seed / seg-fcn32s-seed (batch 8, 2 steps, random weights)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--precisions", nargs="+", default=None, metavar="PRECISION",
                    help="time each recipe in these precisions (e.g. 32 bf16-mixed); default: the recipe's own")
    ap.add_argument("--model", default=None, help="replace the recipes' network")
    ap.add_argument("--image-size", type=int, default=None, help="replace the P1 recipes' input size")
    ap.add_argument("--p2-pairs", type=int, default=0,
                    help="train P2 on the first N training pairs only (quick runs: vislab decodes its whole folder once)")
    args = ap.parse_args()
    if args.p2_pairs:
        args.data = _subset(args.data, args.p2_pairs)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.steps} batches per measurement")
    ratios, rates = [], {}
    for name in args.recipes:
        changes = {**SEED_OVERRIDES.get(name, {}), **({"model": args.model} if args.model else {})}
        if args.image_size and name.startswith("cls"):
            changes["image_size"] = args.image_size
        base = load_recipe(name).with_overrides(**changes)
        if name in SEED_OVERRIDES:  # VGG ImageNet weights download from the internet; time does not need them
            base = dataclasses.replace(base, weights=None)
        steps = 2 if name in SEED_OVERRIDES else args.steps
        for precision in args.precisions or [base.precision]:
            r = dataclasses.replace(base, precision=precision)
            mine = vislab_images_per_s(r, args.data, steps)
            ref = plain_images_per_s(r, args.data, steps)
            rates[name, precision] = mine, ref
            size = f"{r.image_size or 32} px" if r.task == "cls" else f"{r.crop_size or 512} px crops"
            print(f"{name:<17} {r.model:<36} {size:<13} batch {r.batch_size:<4} {precision:<10} "
                  f"vislab {mine:7.1f} img/s   plain loop {ref:7.1f} img/s", flush=True)
            tag = name if args.precisions is None else f"{name}_{precision}"
            ratios.append((tag, mine / ref))
    if args.scaling:
        print("\ncost against input size (vislab, images/s; relative cost per image in brackets)")
        for name, key, sizes in (("cls-cpu", "image_size", (32, 64, 96, 128)), ("seg-cpu", "crop_size", (256, 512))):
            rates = {s: vislab_images_per_s(load_recipe(name).with_overrides(**{key: s}), args.data, args.steps)
                     for s in sizes}
            base = rates[sizes[0]]
            print(f"{name} {key}: " + ", ".join(f"{s} px {v:.1f} img/s ({base / v:.1f}x)" for s, v in rates.items()),
                  flush=True)
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    for name, ratio in ratios:
        print(f"RATIO train_{name} vislab is {ratio:.2f}x the plain loop's images/s")
    for name in args.recipes:
        for precision in (args.precisions or [])[1:]:
            (mine, ref), (mine0, ref0) = rates[name, precision], rates[name, args.precisions[0]]
            print(f"RATIO {precision}_over_{args.precisions[0]}_{name} vislab {mine / mine0:.2f}x, "
                  f"plain loop {ref / ref0:.2f}x the images/s")


if __name__ == "__main__":
    main()
