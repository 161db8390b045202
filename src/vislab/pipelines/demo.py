"""``vislab demo``: the whole P1 job in about ten minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_RECIPE = "cls-demo"


def demo(root: str | Path, out_dir: str | Path, *, epochs: int | None = None, command: str = "") -> dict[str, Any]:
    """Fine-tune the ``cls-demo`` recipe (EfficientNet-Lite0 from the offline ImageNet weights,
    epochs set by its time budget) on ``root/p1_data/train_50``, evaluate ``val_50`` once, and
    write the course's predictions CSV and the t-SNE figure into the run folder.

    ``epochs`` replaces the budget (said on the console). Returns the training result with
    ``predictions``, ``tsne``, ``recipe`` and ``num_classes`` added.
    """
    from vislab.pipelines.classification import train
    from vislab.pipelines.cls_predict import predict, tsne
    from vislab.pipelines.settings import run_recipe

    from vislab.errors import VislabError

    root, out = Path(root), Path(out_dir)
    if (out / "last.ckpt").exists():
        raise VislabError(out, "holds a previous run; the demo trains into a fresh --out")
    train_dir, val_dir = root / "p1_data" / "train_50", root / "p1_data" / "val_50"
    recipe, notes = run_recipe(DEMO_RECIPE, out, resume=False, overrides={"epochs": epochs},
                        flag=lambda f: "--" + f.replace("_", "-"))
    result = train(train_dir, recipe, out_dir=out, val_dir=val_dir, command=command, notes=notes)
    ckpt = Path(result["checkpoint"])
    csv_path = out / "predictions_val_50.csv"
    result["predictions"] = {"file": str(csv_path), "images": predict(ckpt, val_dir, csv_path)}
    result["tsne"] = str(tsne(ckpt, val_dir, out_png=out / "tsne.png"))
    from vislab.config import load_recipe

    from vislab.models.checkpoints import checkpoint_meta

    result["recipe"] = load_recipe(str(out / "recipe.yaml")).to_dict()  # as run: the budget set the epochs
    result["num_classes"] = checkpoint_meta(ckpt)["num_classes"]
    return result
