"""Training throughput on a GPU: vislab's trainer vs a loop written the way torchvision's
reference training script (references/classification/train.py) is, for the same recipe, under
fp32, bf16 autocast (AMP), AMP + channels_last and AMP + channels_last + torch.compile.

    python bench/bench_train_gpu.py [--recipes cls-best seg-best] [--steps 20] [--variants ...]

The reference loop: a PIL dataset with per-image torchvision transforms, a DataLoader with
worker processes and pinned memory, ``non_blocking`` copies, ``torch.autocast`` (bf16) and
``channels_last``/``torch.compile`` as that script's flags do; network, trainable layers,
optimiser and batch size are the recipe's. vislab runs its real training path (Lightning,
decoded-tensor input, augmentation on the device, and the recipe's mixup/cutmix and weight
average, which the reference skips). Both run 2 epochs of ``--steps`` batches
through persistent loader workers and are timed over epoch 2 (compilation, cuDNN autotuning,
the one-time decode of the folder and worker start-up fall in epoch 1; the refill of the
workers' queue at an epoch's start, which every real epoch pays, falls in both windows);
vislab's time is epoch 2's ``seconds`` in history.csv. Peak GPU memory is reported per run,
and the fraction of the GPU's dense bf16 peak that vislab's fastest variant reaches: the
network's training FLOPs per image (forward + backward, counted by torch's FlopCounterMode at the
recipe's input size) x images/s / peak (``--peak-tflops``, default 989 for an H100 or H200).
On a machine without CUDA the script runs on the CPU (only to check that it works).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import PilClassification, PilSegmentation  # noqa: E402
from common import DEFAULT_DATA, peak_rss_mb  # noqa: E402

from vislab.config import Recipe, load_recipe  # noqa: E402
from vislab.models.freeze import freeze_prefixes  # noqa: E402
from vislab.engine.losses import build_loss  # noqa: E402
from vislab.engine.optim import OPTIMIZERS  # noqa: E402
from vislab.models import build_model  # noqa: E402

VARIANTS = {  # name: (autocast bf16, channels_last, compile)
    "fp32": (False, False, False),
    "amp": (True, False, False),
    "amp+cl": (True, True, False),
    "amp+cl+compile": (True, True, True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def reference_images_per_s(r: Recipe, data: Path, steps: int, device: torch.device, variant: str,
                           workers: int) -> tuple[float, float]:
    """The torchvision-reference-style loop; (images/s, peak GPU GB)."""
    amp, cl, comp = VARIANTS[variant]
    torch.manual_seed(0)
    if r.task == "cls":
        ds = PilClassification(data / "p1_data" / "train_50", r)
        net = build_model(r.model, num_classes=50, weights=r.weights)
        loss_fn: torch.nn.Module = torch.nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    else:
        ds = PilSegmentation(data / "p2_data" / "train", r)
        net, loss_fn = build_model(r.model, num_classes=7, weights=r.weights), build_loss(r.loss)
    freeze_prefixes(net, r.freeze, model=r.model)
    net = net.to(device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    if comp:
        net.compile()
    net.train()
    opt = OPTIMIZERS[r.optimizer]([p for p in net.parameters() if p.requires_grad], r)
    loader = DataLoader(ds, batch_size=r.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    if len(loader) < steps:
        raise SystemExit(f"{data}: {len(loader)} training batches of {r.batch_size}, fewer than --steps {steps}")
    _reset_peak(device)
    t0 = 0.0
    for epoch in range(2):  # like vislab's side: 2 epochs of `steps` batches, epoch 2 timed
        if epoch == 1:
            _sync(device)
            t0 = time.perf_counter()
        for x, y in itertools.islice(loader, steps):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return steps * r.batch_size / (time.perf_counter() - t0), _peak_gb(device)


def vislab_images_per_s(r: Recipe, data: Path, steps: int, device: torch.device, variant: str,
                        workers: int) -> tuple[float, float]:
    """vislab's trainer, epoch 2 of 2 epochs of ``steps`` batches; (images/s, peak GPU GB)."""
    amp, cl, comp = VARIANTS[variant]
    r = dataclasses.replace(
        r, epochs=2, limit_train_batches=steps, holdout=0.0, snapshot=(), num_workers=workers,
        precision="bf16-mixed" if amp else "32", channels_last=cl, compile=comp,
        accelerator="gpu" if device.type == "cuda" else "cpu", devices="1", max_minutes=None)
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        if r.task == "cls":
            from vislab.pipelines.classification import train

            train(data / "p1_data" / "train_50", r, out_dir=Path(tmp) / "run")
        else:
            from vislab.pipelines.segmentation import train

            train(data / "p2_data" / "train", r, out_dir=Path(tmp) / "run")
        with (Path(tmp) / "run" / "history.csv").open() as fh:
            seconds = float(list(csv.DictReader(fh))[-1]["seconds"])
    return steps * r.batch_size / seconds, _peak_gb(device)


def train_flops_per_image(r: Recipe) -> float:
    """Forward + backward FLOPs of one training image of the recipe's network (batch of 2, CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_model(r.model, num_classes=50 if r.task == "cls" else 7, weights=None).train()
    side = (r.image_size or 32) if r.task == "cls" else (r.crop_size or 512)
    x = torch.randn(2, 3, side, side)
    with FlopCounterMode(display=False) as fc:
        net(x).float().sum().backward()
    return fc.get_total_flops() / 2


def peak_tflops(name: str) -> float | None:
    """Dense bf16 tensor-core peak of known GPUs (vendor data sheets), else None."""
    return 989.0 if any(k in name for k in ("H100", "H200")) else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--recipes", nargs="+", default=["cls-best", "seg-best"])
    ap.add_argument("--steps", type=int, default=20, help="timed batches (after as many warm-up batches)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers of both (0 on a CPU run)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: known GPUs)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.workers if device.type == "cuda" else 0
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; {args.steps} timed batches after {args.steps} warm-up batches")
    ratios = []
    for recipe in args.recipes:
        r = load_recipe(recipe)
        results = {}
        for variant in args.variants:
            mine, mine_mem = vislab_images_per_s(r, args.data, args.steps, device, variant, workers)
            ref, ref_mem = reference_images_per_s(r, args.data, args.steps, device, variant, workers)
            results[variant] = (mine, ref)
            print(f"{recipe:<9} {variant:<15} vislab {mine:8.1f} img/s (peak {mine_mem:5.2f} GB)   "
                  f"reference {ref:8.1f} img/s (peak {ref_mem:5.2f} GB)   ratio {mine / ref:5.2f}x", flush=True)
        best_mine = max(results.items(), key=lambda kv: kv[1][0])
        best_ref = max(results.items(), key=lambda kv: kv[1][1])
        ratios.append((recipe, best_mine[1][0] / best_ref[1][1], best_mine[0], best_ref[0],
                       best_mine[1][0] / results[args.variants[0]][0]))
        flops = train_flops_per_image(r)
        peak = args.peak_tflops or peak_tflops(name)
        share = f"{flops * best_mine[1][0] / (peak * 1e12):.1%} of the {peak:g} TFLOPS bf16 peak" if peak else "no peak known"
        print(f"{recipe:<9} training FLOPs per image {flops / 1e9:.1f} G; vislab {best_mine[0]} reaches "
              f"{flops * best_mine[1][0] / 1e12:.1f} TFLOPS ({share})", flush=True)
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    for recipe, ratio, vm, vr, gain in ratios:
        print(f"RATIO train_gpu_{recipe} vislab's fastest ({vm}) is {ratio:.2f}x the reference's fastest ({vr}); "
              f"{gain:.2f}x vislab {args.variants[0]}")


if __name__ == "__main__":
    main()
