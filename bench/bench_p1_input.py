"""P1 input pipeline, one epoch of augmented batches from train_50.

vislab: the folder decoded once into a uint8 tensor (disk cache), batches gathered by index and
augmented as tensors (random crop with padding, flip). Reference: torchvision ImageFolder-style
PIL decoding with per-image transforms through a DataLoader, as the published solutions did.

    python bench/bench_p1_input.py [--data DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_DATA, best_of, peak_rss_mb  # noqa: E402

from vislab.data.classification import augment_batch, load_folder  # noqa: E402
from vislab.data.tensors import normalize  # noqa: E402


class PilFolder(Dataset):
    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.tf = transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
                                      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                      transforms.Normalize((0.5,) * 3, (0.25,) * 3)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        f = self.files[i]
        return self.tf(Image.open(f).convert("RGB")), int(f.name.split("_")[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N files (smoke runs)")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    folder = args.data / "p1_data" / "train_50"
    files = sorted(folder.glob("*.png"))[: args.limit]

    def reference() -> None:
        for _ in DataLoader(PilFolder(files), batch_size=args.batch_size, shuffle=True, num_workers=0):
            pass

    load_folder(folder, labelled=True)  # the first call decodes and fills the disk cache
    t_load = best_of(lambda: load_folder(folder, labelled=True), repeat=1)  # once per run: cache read
    data = load_folder(folder, labelled=True)
    n = len(files)
    images = data.images[:n]

    def vislab() -> None:
        order = torch.randperm(n)
        for s in range(0, n, args.batch_size):
            idx = order[s : s + args.batch_size]
            normalize(augment_batch(images[idx], idx, seed=0, epoch=1), (0.5,) * 3, (0.25,) * 3)

    t_ref = best_of(reference, repeat=1)
    t_vis = best_of(vislab, repeat=3)
    print(f"images {n}, batch {args.batch_size}, peak RSS {peak_rss_mb():.0f} MB, decoded {tuple(data.images.shape)}")
    print(f"reference ImageFolder+PIL+DataLoader: {t_ref:.2f} s/epoch")
    print(f"vislab cached uint8 + batched tensor augmentation: {t_vis:.2f} s/epoch "
          f"(+ {t_load:.2f} s once per run to read the whole folder's cache)")
    whole = "" if args.limit else f"; {t_ref / (t_vis + t_load):.1f}x for a one-epoch run, cache read included"
    print(f"RATIO p1_input vislab_speedup {t_ref / t_vis:.1f}x per epoch{whole}")


if __name__ == "__main__":
    main()
