"""Prediction throughput of the recipes' models on this machine: eager fp32 vs channels_last,
bf16 autocast, torch.compile and ONNX Runtime, through vislab's own predict path.

    python bench/bench_predict.py [--recipes cls-cpu seg-cpu] [--p1-images 512] [--p2-images 8]

Inputs are real validation images (P1: val_50 at 32 px; P2: validation tiles at 512 px). Every
variant's output is compared with eager fp32 on the same inputs (P1: max |logit diff| and top-1
agreement; P2: share of pixels with the same class). Weights are the recipe's initialisation
(ImageNet backbone, new head): time does not depend on their values. The ratio printed last is
the fastest correct variant (agreement >= 0.999) over eager fp32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, peak_rss_mb  # noqa: E402

from vislab.config import load_recipe  # noqa: E402
from vislab.data.classification import load_folder  # noqa: E402
from vislab.data.images import list_images, read_rgb  # noqa: E402
from vislab.models import build_model  # noqa: E402
from vislab.pipelines.cls_predict import infer  # noqa: E402
from vislab.pipelines.seg_predict import predict_probs  # noqa: E402

warnings.filterwarnings("ignore")


class Bf16(torch.nn.Module):
    """Run a network under CPU bf16 autocast, return float32 logits."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()


def network_and_meta(recipe_name: str) -> tuple[torch.nn.Module, dict]:
    r = load_recipe(recipe_name)
    classes = 50 if r.task == "cls" else 7
    net = build_model(r.model, num_classes=classes, weights=r.weights).eval()
    if r.task == "seg":
        net.scale = r.infer_scale
    meta = {"task": r.task, "model": r.model, "num_classes": classes, "image_size": r.image_size,
            "mean": list(r.mean or (0.485, 0.456, 0.406)), "std": list(r.std or (0.229, 0.224, 0.225)),
            "recipe": r.to_dict()}
    return net, meta


def variants(net: torch.nn.Module, meta: dict, shape: tuple[int, int, int], tmp: Path,
             only: list[str]) -> dict[str, Callable[[], object]]:
    """name -> a zero-argument builder of the network variant (built lazily, timed separately)."""
    from vislab.export import OnnxNet, export_network

    def cl() -> torch.nn.Module:
        return net.to(memory_format=torch.channels_last)

    table = {
        "eager fp32": lambda: net.to(memory_format=torch.contiguous_format),
        "channels_last": cl,
        "bf16 autocast": lambda: Bf16(cl()),
        "torch.compile": lambda: torch.compile(cl()),
        "onnxruntime": lambda: OnnxNet(export_network(net.to(memory_format=torch.contiguous_format), meta,
                                                      tmp / "m.onnx", shape=shape, check=False)["path"]),
    }
    return {k: v for k, v in table.items() if k in only}


def run_cls(model: object, meta: dict, images: torch.Tensor) -> torch.Tensor:
    return infer(model, meta, images, batch_size=128, device="cpu")[0]


def run_seg(model: object, meta: dict, images: torch.Tensor) -> torch.Tensor:
    dev = torch.device("cpu")
    with torch.inference_mode():
        return torch.cat([predict_probs(model, meta, images[i : i + 4], device=dev) for i in range(0, len(images), 4)])


def agreement(task: str, ref: torch.Tensor, out: torch.Tensor) -> tuple[float, str]:
    """(share of equal argmax, a description)."""
    same = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    if task == "cls":
        return same, f"max|dlogit| {float((ref - out).abs().max()):.1e}, top-1 agree {same:.4f}"
    return same, f"pixels agree {same:.4f}"


def bench_recipe(name: str, images: torch.Tensor, only: list[str], repeat: int) -> tuple[str, float, float]:
    net, meta = network_and_meta(name)
    task = meta["task"]
    run = run_cls if task == "cls" else run_seg
    side = meta["image_size"] or images.shape[-1]
    shape = (3, side, side) if task == "cls" else tuple(images.shape[1:])
    print(f"\n{name}: {meta['model']}, {len(images)} images of {tuple(images.shape[1:])}"
          f"{f' resized to {side}' if task == 'cls' and side != images.shape[-1] else ''}"
          f"{f', infer_scale {net.scale}' if task == 'seg' else ''}")
    ref = None
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for vname, build in variants(net, meta, shape, Path(tmp), only).items():
            t0 = time.perf_counter()
            try:
                model = build()
                out = run(model, meta, images)  # warm-up and compilation, at the timed batch sizes
            except Exception as exc:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
                print(f"  {vname:<14} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                continue
            setup = time.perf_counter() - t0
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                out = run(model, meta, images)
                best = min(best, time.perf_counter() - t0)
            ref = out if ref is None else ref
            same, text = agreement(task, ref, out)
            rate = len(images) / best
            if same >= 0.999 and bool(torch.isfinite(out).all()):
                rates[vname] = rate
            print(f"  {vname:<14} {rate:8.1f} img/s  (first pass {setup:5.1f} s with build/compile/export; {text}"
                  f"{'' if vname in rates else '; NOT within tolerance'})", flush=True)
    fastest = max(rates, key=rates.get)
    return fastest, rates[fastest], rates.get("eager fp32", float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--recipes", nargs="+", default=["cls-cpu", "seg-cpu"])
    ap.add_argument("--p1-images", type=int, default=512)
    ap.add_argument("--p2-images", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--variants", default="eager fp32,channels_last,bf16 autocast,torch.compile,onnxruntime")
    args = ap.parse_args()
    only = [v.strip() for v in args.variants.split(",")]
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    p1 = load_folder(args.data / "p1_data" / "val_50", labelled=True).images[: args.p1_images]
    tiles = [f for f in list_images(args.data / "p2_data" / "validation") if f.stem.endswith("_sat")]
    p2 = torch.stack([read_rgb(f) for f in tiles[: args.p2_images]])
    results = {}
    for name in args.recipes:
        results[name] = bench_recipe(name, p1 if load_recipe(name).task == "cls" else p2, only, args.repeat)
    print(f"\npeak RSS {peak_rss_mb():.0f} MB")
    for name, (fastest, rate, eager) in results.items():
        print(f"RATIO predict_{name} fastest ({fastest}, {rate:.1f} img/s) is {rate / eager:.2f}x eager fp32")


if __name__ == "__main__":
    main()
