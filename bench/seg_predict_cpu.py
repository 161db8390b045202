"""Prediction time per 512x512 image on this machine's CPU: the seed's FCN32s vs a light U-Net.

    python bench/seg_predict_cpu.py [--images 4] [--threads N]

Both models run in the same process, one after the other, through vislab's predict path
(normalise, forward, softmax, argmax); the ratio printed last is the number to compare across
machines. Weights are random: the time does not depend on their values.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vislab.models import build_model
from vislab.pipelines.seg_predict import predict_probs

MODELS = ("fcn32s_vgg16", "smp:unet:tu-tf_efficientnet_lite0", "smp:fpn:tu-tf_efficientnet_lite0")


def seconds_per_image(name: str, images: torch.Tensor, *, channels_last: bool) -> float:
    model = build_model(name, num_classes=7).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    meta = {"mean": [0.5] * 3, "std": [0.5] * 3}
    predict_probs(model, meta, images[:1])  # warm-up
    t0 = time.perf_counter()
    for i in range(len(images)):
        predict_probs(model, meta, images[i : i + 1])
    return (time.perf_counter() - t0) / len(images)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    print(f"{args.images} images of {args.size}x{args.size}, {args.threads} threads, torch {torch.__version__}")
    times = {}
    for name in MODELS:
        for cl in (False, True):
            s = times[name, cl] = seconds_per_image(name, images, channels_last=cl)
            print(f"{name:<36} channels_last={cl!s:<5} {s:7.3f} s/image")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    ref = times[MODELS[0], False]
    (best_name, best_cl), best = min(times.items(), key=lambda kv: kv[1])
    print(f"RATIO seg_predict fastest ({best_name}, channels_last={best_cl}) is {ref / best:.1f}x "
          f"faster than fcn32s_vgg16 fp32")


if __name__ == "__main__":
    main()
