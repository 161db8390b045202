"""Are vislab's defaults a good first run on data nobody tuned for? (issue 15)

For each foreign data set of bench/foreign_data.py (sklearn digits, font-rendered letters),
side by side in one run:

(a) vislab exactly as a new user types it, through the installed ``vislab`` command, no recipe::

        vislab cls train DATA/train --model resnet18 --epochs E --batch-size B --out RUN
        vislab cls predict RUN DATA/test pred.csv

    then the accuracy of pred.csv against DATA/test_truth.csv (``--recipe YAML`` adds
    ``--recipe YAML`` to the train command, to try levers);

(b) a plain reference PyTorch loop, written out below: ``torchvision.models.resnet18(num_classes=K)``
    from random init, PIL images through torchvision transforms (RandomHorizontalFlip, ToTensor,
    Normalize(0.5, 0.5)), Adam(lr 1e-3) with OneCycleLR(max_lr 1e-3, PyTorch's defaults
    otherwise: 30 % warm-up, cosine), cross-entropy, batch B, shuffled, E epochs, no held-out
    split, the last epoch's weights evaluated on the same test images.

    python bench/bench_defaults.py [--epochs 4] [--seeds 1] [--batch-size 64] [--quick]
                                   [--out bench/.out/defaults] [--recipe YAML] [--data digits glyphs]

Prints, per data set and seed, both accuracies, their difference and wall times, and one line
per data set ``RATIO defaults/<name>: vislab X.XXX vs reference Y.YYY`` (means over the seeds).
The reference result of a (data set, seed, epochs, batch, max_lr) is kept in the work folder
and reused by later runs (marked "cached") unless ``--fresh-reference``; every result is also
appended to ``OUT/results.jsonl``. vislab runs with ``VISLAB_CACHE=OUT/cache`` (and with
``--vislab-src DIR``, ``PYTHONPATH=DIR``: a pinned copy of the package).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import foreign_data  # noqa: E402


def vislab_command() -> str:
    """The installed ``vislab`` entry point: beside this Python, else the repo's .venv, else PATH."""
    for cand in (Path(sys.executable).parent / "vislab", REPO / ".venv" / "bin" / "vislab"):
        if cand.is_file():
            return str(cand)
    found = shutil.which("vislab")
    if not found:
        sys.exit("no `vislab` command found: install the project (pip install -e .) first")
    return found


def read_truth(path: Path) -> dict[str, int]:
    with path.open() as fh:
        return {row["filename"]: int(row["label"]) for row in csv.DictReader(fh)}


def accuracy_of_csv(pred_csv: Path, truth: dict[str, int]) -> float:
    with pred_csv.open() as fh:
        pred = {row["image_id"]: int(row["label"]) for row in csv.DictReader(fh)}
    missing = set(truth) - set(pred)
    if missing:
        raise RuntimeError(f"{pred_csv}: no prediction for {len(missing)} test images")
    return sum(pred[f] == y for f, y in truth.items()) / len(truth)


def code_state() -> str:
    """HEAD plus a digest of uncommitted changes under src/ (the code vislab ran)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "src"], cwd=REPO, capture_output=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (f"+dirty:{hashlib.sha1(diff).hexdigest()[:8]}" if diff else "")


# --- (a) vislab as a user runs it -----------------------------------------------------------


def run_vislab(data: foreign_data.BuiltData, work: Path, *, epochs: int, batch: int, seed: int,
               recipe: Path | None, model: str, cache: Path, src: Path | None = None) -> dict:
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VISLAB_CACHE=str(cache))
    if src is not None:  # run a pinned copy of the package instead of the (editable) installed one
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    exe = vislab_command()
    train = [exe, "cls", "train", str(data.train_dir), "--model", model, "--epochs", str(epochs),
             "--batch-size", str(batch), "--out", str(run)]
    if recipe is not None:
        train += ["--recipe", str(recipe)]
    if seed != 0:  # 0 is vislab's default seed: the seed-0 command is exactly the user's
        train += ["--seed", str(seed)]
    pred_csv = work / "pred.csv"
    predict = [exe, "cls", "predict", str(run), str(data.test_dir), str(pred_csv)]
    times = {}
    for what, cmd in (("train", train), ("predict", predict)):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times[what] = time.perf_counter() - t0
        (work / f"{what}.log").write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
            raise RuntimeError(f"`{' '.join(cmd)}` failed (rc {proc.returncode}):\n{tail}")
    acc = accuracy_of_csv(pred_csv, read_truth(data.truth_csv))
    holdout = None
    hist = run / "history.csv"
    if hist.is_file():
        with hist.open() as fh:
            rows = list(csv.DictReader(fh))
        vals = [float(r["holdout_acc"]) for r in rows if r.get("holdout_acc") not in (None, "")]
        holdout = max(vals) if vals else None
    return {"accuracy": acc, "train_s": times["train"], "predict_s": times["predict"],
            "wall_s": times["train"] + times["predict"], "holdout_acc": holdout,
            "command": " ".join(train[1:]).replace(str(REPO) + "/", "")}


# --- (b) the plain reference loop -----------------------------------------------------------


def run_reference(data: foreign_data.BuiltData, *, epochs: int, batch: int, seed: int, max_lr: float,
                  model: str) -> dict:
    """A plain PyTorch loop, as a tutorial writes it."""
    import torch
    import torchvision
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    class Folder(Dataset):
        """Course-layout ``<label>_<index>.png`` (or a label-free folder with a truth table)."""

        def __init__(self, files: list[Path], labels: list[int], tf) -> None:
            self.images = [Image.open(f).convert("RGB") for f in files]
            self.labels, self.tf = labels, tf

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int):
            return self.tf(self.images[i]), self.labels[i]

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    norm = T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if data.layout == "course":
        files = sorted(data.train_dir.glob("*.png"))
        labels = [int(f.stem.split("_")[0]) for f in files]
    else:
        files = sorted(data.train_dir.glob("*/*.png"))
        labels = [data.classes.index(f.parent.name) for f in files]
    train_ds = Folder(files, labels, T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), norm]))
    truth = read_truth(data.truth_csv)
    test_ds = Folder([data.test_dir / f for f in truth], list(truth.values()), T.Compose([T.ToTensor(), norm]))
    train_dl = DataLoader(train_ds, batch_size=batch, shuffle=True)
    test_dl = DataLoader(test_ds, batch_size=256)

    net = getattr(torchvision.models, model)(num_classes=data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, epochs=epochs, steps_per_epoch=len(train_dl))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        net.train()
        for x, y in train_dl:
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - t0
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_dl:
            correct += (net(x).argmax(1) == y).sum().item()
    wall = time.perf_counter() - t0
    return {"accuracy": correct / len(test_ds), "train_s": train_s, "predict_s": wall - train_s, "wall_s": wall}


# --- driver ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (vislab --seed and the reference's)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1 (to add seeds to earlier runs)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="resnet18", help="vislab --model, and torchvision.models.<name> for the reference")
    ap.add_argument("--quick", action="store_true", help="tiny data sets and 1 epoch: a smoke test under a minute")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / ".out" / "defaults", help="work folder")
    ap.add_argument("--recipe", type=Path, default=None,
                    help="a recipe YAML for the vislab side (default: none); {data} in the path is replaced by the data set's name")
    ap.add_argument("--tag", default=None, help="name of this configuration in the output (default: the recipe's stem)")
    ap.add_argument("--data", nargs="+", default=list(foreign_data.BUILDERS), choices=list(foreign_data.BUILDERS))
    ap.add_argument("--ref-max-lr", type=float, default=1e-3, help="OneCycleLR max_lr of the reference (Adam lr 1e-3)")
    ap.add_argument("--fresh-reference", action="store_true", help="rerun the reference even when a result is kept")
    ap.add_argument("--skip-reference", action="store_true", help="vislab side only (no reference column)")
    ap.add_argument("--vislab-src", type=Path, default=None,
                    help="run the vislab command with PYTHONPATH=DIR, e.g. a `git archive HEAD src` copy's src/, "
                         "to measure committed code while src/ is being edited (default: the installed package)")
    a = ap.parse_args()
    if a.quick:
        a.epochs = 1
    recipes: dict[str, Path | None] = {}
    for name in a.data:  # "{data}" in the path: one recipe per data set (e.g. its own mean/std)
        p = Path(str(a.recipe).replace("{data}", name)) if a.recipe is not None else None
        if p is not None and not p.is_file():
            sys.exit(f"{p}: no such recipe file")
        recipes[name] = p.resolve() if p is not None else None
    tag = a.tag or (a.recipe.stem.replace("{data}", "").strip("_-") if a.recipe else "defaults")
    out = a.out.resolve() / ("quick" if a.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    state = code_state()
    if a.vislab_src is not None:
        a.vislab_src = a.vislab_src.resolve()
        state = f"PYTHONPATH={a.vislab_src}"
    print(f"vislab: {vislab_command()} (code {state}); torch threads: default; out: {out}")
    print(f"config {tag}: {'--recipe ' + str(a.recipe) if a.recipe else 'no recipe (defaults)'}; "
          f"--model {a.model} --epochs {a.epochs} --batch-size {a.batch_size}; seeds {a.first_seed}..{a.first_seed + a.seeds - 1}")
    print(f"reference: torchvision {a.model}, Adam lr 1e-3 + OneCycleLR max_lr {a.ref_max_lr:g}, flip, "
          f"Normalize(0.5, 0.5), batch {a.batch_size}, {a.epochs} epochs")
    summary = []
    for name in a.data:
        t0 = time.perf_counter()
        data = foreign_data.build(name, out / "data" / name, quick=a.quick)
        print(f"\n== {name}: {data.n_train} train / {data.n_test} test images, {data.num_classes} classes "
              f"(built/checked in {time.perf_counter() - t0:.1f} s)")
        vis, ref = [], []
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            v = run_vislab(data, out / "vislab" / tag / f"{name}-s{seed}-b{a.batch_size}-e{a.epochs}",
                           epochs=a.epochs, batch=a.batch_size, seed=seed, recipe=recipes[name], model=a.model, cache=out / "cache",
                           src=a.vislab_src)
            vis.append(v)
            r = None
            if not a.skip_reference:
                key = out / "reference" / f"{name}-{a.model}-s{seed}-b{a.batch_size}-e{a.epochs}-lr{a.ref_max_lr:g}.json"
                if key.is_file() and not a.fresh_reference:
                    r = dict(json.loads(key.read_text()), cached=True)
                else:
                    r = run_reference(data, epochs=a.epochs, batch=a.batch_size, seed=seed,
                                      max_lr=a.ref_max_lr, model=a.model)
                    key.parent.mkdir(parents=True, exist_ok=True)
                    key.write_text(json.dumps(r))
                ref.append(r)
            ho = f", held-out {v['holdout_acc']:.3f}" if v["holdout_acc"] is not None else ""
            line = (f"  seed {seed}: vislab {v['accuracy']:.3f} (train {v['train_s']:.0f} s + predict "
                    f"{v['predict_s']:.0f} s{ho})")
            if r is not None:
                line += (f" | reference {r['accuracy']:.3f} ({r['wall_s']:.0f} s{', cached' if r.get('cached') else ''})"
                         f" | diff {v['accuracy'] - r['accuracy']:+.3f}")
            print(line, flush=True)
            print(f"    {v['command']}")
            with (out / "results.jsonl").open("a") as fh:
                fh.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "config": tag, "data": name,
                                     "seed": seed, "epochs": a.epochs, "batch": a.batch_size, "model": a.model,
                                     "recipe": str(recipes[name]) if recipes[name] else None, "code": state,
                                     "vislab": v, "reference": r, "ref_max_lr": a.ref_max_lr}) + "\n")
        vm = statistics.mean(x["accuracy"] for x in vis)
        vt = statistics.mean(x["wall_s"] for x in vis)
        if ref:
            rm = statistics.mean(x["accuracy"] for x in ref)
            rt = statistics.mean(x["wall_s"] for x in ref)
            print(f"  mean over {a.seeds} seed(s): vislab {vm:.3f} ({vt:.0f} s) vs reference {rm:.3f} ({rt:.0f} s): "
                  f"diff {vm - rm:+.3f}")
            summary.append(f"RATIO {tag}/{name}: vislab {vm:.3f} vs reference {rm:.3f}")
        else:
            summary.append(f"RATIO {tag}/{name}: vislab {vm:.3f} vs reference (skipped)")
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
