"""P2 distillation cost per training step: soft maps computed once (vislab) vs the teachers'
forward on every augmented crop (the straightforward way, vislab's own until git 100d5f2), and
a step without a teacher, all measured in this run on this CPU with the seg-cpu recipe's shapes.

    python bench/bench_seg_distill.py [--data ../shared/data/hw1_data] [--tiles 32] [--steps 6] [--teachers 2]

Each step: the loader's batch of cached tiles -> on-device crop/flip/turn and colour jitter ->
forward, loss, backward and optimiser step of the student (the recipe's model, random weights:
the cost does not depend on them; frozen stages as the recipe freezes them). "per crop" adds
the teachers' forward on the augmented crops (at scale 1, as the old code read them); "soft
maps" carries each tile's precomputed probability map through the same crop (roi_align) and
adds the soft-target loss. The one-time pass (the teachers over each whole tile at their
evaluation scale) is timed per tile, and the number of steps after which it has paid for itself
is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA  # noqa: E402

from vislab.config import load_recipe  # noqa: E402
from vislab.data.seg_classes import IGNORE, deepglobe  # noqa: E402
from vislab.data.segmentation import CachedTiles, TileCache, list_pairs, pad_collate  # noqa: E402
from vislab.engine.losses import soft_target_loss  # noqa: E402
from vislab.engine.segmentation import SegmenterModule  # noqa: E402
from vislab.models import build_model  # noqa: E402
from vislab.models.ensemble import AveragedNet  # noqa: E402
from vislab.pipelines.segmentation import MAP_STRIDE  # noqa: E402


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--recipe", default="seg-cpu")
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per way (after one warm-up step)")
    ap.add_argument("--teachers", type=int, default=2)
    args = ap.parse_args()

    r = load_recipe(args.recipe).with_overrides(weights="none")
    r = r.with_overrides(mean=r.mean or (0.5,) * 3, std=r.std or (0.5,) * 3)
    pairs = list_pairs(Path(args.data) / "p2_data" / "train")[: args.tiles]
    cache = TileCache(pairs, [(512, 512)] * len(pairs), deepglobe(), expected=(512, 512))
    ds = CachedTiles(cache, list(range(len(pairs))))
    module = SegmenterModule(r.to_dict(), 7, steps_per_epoch=1, pretrained=False)
    module.net.to(memory_format=torch.channels_last)
    teachers = []
    for _ in range(args.teachers):
        net = build_model(r.model, num_classes=7, weights=None).eval()
        net.scale = r.infer_scale
        teachers.append((net, {"mean": list(r.mean), "std": list(r.std)}))
    teacher = AveragedNet(teachers).eval()
    opt = torch.optim.AdamW([p for p in module.net.parameters() if p.requires_grad], lr=1e-4)

    t0 = time.perf_counter()
    maps = []
    with torch.no_grad():
        for lo in range(0, len(ds), r.batch_size):
            x = torch.stack([ds[i][0] for i in range(lo, min(lo + r.batch_size, len(ds)))]).float() / 255
            p = torch.nn.functional.adaptive_avg_pool2d(teacher(x).exp(), 512 // MAP_STRIDE)
            maps += list((p * 255).round().to(torch.uint8))
    per_tile = (time.perf_counter() - t0) / len(ds)
    for net, _ in teachers:  # per crop, the teachers read the crop as it is (the old way: scale 1)
        net.scale = 1.0

    def step(way: str, epoch: int) -> float:
        lo = (epoch * r.batch_size) % (len(ds) - r.batch_size + 1)
        batch = pad_collate([ds[i] for i in range(lo, lo + r.batch_size)])
        t = time.perf_counter()
        module.teacher_targets = maps if way == "soft maps" else None
        module._trainer = SimpleNamespace(training=True, current_epoch=epoch)
        x, y, _, soft = module.on_after_batch_transfer(batch, 0)
        module._trainer = None
        module.net.train()
        logits = module.net(x)
        loss = module.loss_fn(logits, y)
        if way == "per crop":  # the teachers read the crop back in [0, 1], each normalising its own way
            with torch.no_grad():
                m, s = torch.tensor(r.mean).view(1, 3, 1, 1), torch.tensor(r.std).view(1, 3, 1, 1)
                soft = teacher(x.float() * s + m).exp()
        if soft is not None:
            loss = 0.5 * loss + 0.5 * soft_target_loss(logits, soft, y != IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    ways = ("no teacher", "per crop", "soft maps")
    times: dict[str, list[float]] = {w: [] for w in ways}
    for w in ways:
        step(w, 0)  # warm-up
    for k in range(1, args.steps + 1):  # interleaved: a noisy machine slows all three alike
        for w in ways:
            times[w].append(step(w, k))
    base = median(times["no teacher"])
    print(f"recipe {args.recipe}: {r.model}, batch {r.batch_size}, crops {r.crop_size} px of 512 px tiles, "
          f"{args.teachers} teacher(s) at scale {r.infer_scale:g}, {torch.get_num_threads()} threads")
    for w in ways:
        print(f"  {w:10s}: {median(times[w]):.3f} s per step (median of {args.steps}), x{median(times[w]) / base:.2f}")
    saved = median(times["per crop"]) - median(times["soft maps"])
    pass_s, epoch_steps = per_tile * 1800, -(-1800 // r.batch_size)
    print(f"  one-time pass: {per_tile:.3f} s per tile ({pass_s / 60:.1f} min for the course's 1,800 training "
          f"tiles); it pays for itself after {pass_s / max(saved, 1e-9):.0f} steps "
          f"({pass_s / max(saved, 1e-9) / epoch_steps:.1f} epochs of {epoch_steps} steps)")


if __name__ == "__main__":
    main()
