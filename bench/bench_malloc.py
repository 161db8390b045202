"""The allocator setting `vislab` applies (vislab.memory.keep_freed_memory) against glibc's defaults.

Each measurement runs the same steps in two fresh processes, one with the C library's default
allocator and one with vislab's setting, alternating and keeping the best of ``--repeat`` each:
EfficientNet-Lite0 inference at 160 px in batches of 256 (what `cls eval` of the 160-px recipe
does), its training step at 160 px in batches of 64 (stem and first three stages frozen, as
cls-cpu), and a U-Net/Lite0 training step on 256 px crops in batches of 8 (seg-cpu).

    python bench/bench_malloc.py [--steps N] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

# (name, model, side, batch, train)
CASES = [("infer_cls160_b256", "efficientnet_lite0", 160, 256, False),
         ("train_cls160_b64", "efficientnet_lite0", 160, 64, True),
         ("train_seg256_b8", "smp:unet:tu-tf_efficientnet_lite0", 256, 8, True)]
FROZEN = {"efficientnet_lite0": ("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"),
          "smp:unet:tu-tf_efficientnet_lite0": ("net.encoder.model.conv_stem", "net.encoder.model.bn1",
                                                "net.encoder.model.blocks.0", "net.encoder.model.blocks.1")}


def child(model: str, side: int, batch: int, train: bool, steps: int, keep: bool) -> dict[str, float]:
    """Time ``steps`` steps after one warm-up step; returns per-step wall/user/system seconds."""
    if keep:
        from vislab.memory import keep_freed_memory

        assert keep_freed_memory(), "vislab's allocator setting did not take effect"
    import torch
    import torch.nn.functional as F

    from vislab.models.registry import build_model

    torch.manual_seed(0)
    seg = model.startswith("smp:")
    net = build_model(model, num_classes=7 if seg else 50, weights=None).to(memory_format=torch.channels_last)
    for name, p in net.named_parameters():
        p.requires_grad_(not name.startswith(FROZEN[model]))
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch, side, side)) if seg else torch.randint(0, 50, (batch,))
    net.train(train)

    def step() -> None:
        if train:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode():
                net(x)

    step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {"wall": (t1 - t0) / steps, "user": (r1.ru_utime - r0.ru_utime) / steps,
            "sys": (r1.ru_stime - r0.ru_stime) / steps, "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "peak_mb": r1.ru_maxrss / 1024}


def measure(case: tuple, steps: int, keep: bool) -> dict[str, float]:
    _, model, side, batch, train = case
    cmd = [sys.executable, __file__, "--child", json.dumps([model, side, batch, train, steps, keep])]
    env = dict(os.environ, VISLAB_MALLOC="")  # the child decides
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny inputs: checks the script runs, measures nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    # --quick: the segmentation training case at 32 px (each process pays ~10 s of imports)
    cases = [(n, m, 32, 4, t) for n, m, _, _, t in CASES[2:]] if args.quick else CASES
    steps = 1 if args.quick else args.steps
    for case in cases:
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(1 if args.quick else args.repeat):
            for keep in (False, True):
                runs[keep].append(measure(case, steps, keep))
        best = {keep: min(r, key=lambda m: m["wall"]) for keep, r in runs.items()}
        for keep, m in best.items():
            print(f"{case[0]:20s} {'vislab' if keep else 'glibc default':14s} wall {m['wall']:.3f} s/step  "
                  f"user {m['user']:.3f}  system {m['sys']:.3f}  page faults {m['faults']:,.0f}/step  "
                  f"peak RSS {m['peak_mb']:,.0f} MB")
        print(f"RATIO malloc_{case[0]} vislab_speedup {best[False]['wall'] / best[True]['wall']:.2f}x per step "
              f"(system time {best[False]['sys']:.3f} -> {best[True]['sys']:.3f} s/step)", flush=True)


if __name__ == "__main__":
    main()
