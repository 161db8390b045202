"""P1: train, evaluate, predict and explain small-image classifiers."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vislab.config import Recipe
from vislab.data.classification import load_folder, normalize, resize_batch
from vislab.errors import VislabError
from vislab.io import atomic_write_text
from vislab.metrics import confusion_matrix
from vislab.log import info
from vislab.models import penultimate


def train(train_dir: str | Path, recipe: Recipe, *, out_dir: str | Path, resume: bool = False,
          val_dir: str | Path | None = None, command: str = "") -> dict[str, Any]:
    """Train a classifier on ``train_dir`` into the run folder ``out_dir``.

    The best checkpoint is chosen on a held-out split of the training folder; ``val_dir`` (if
    given) is evaluated once at the end with that checkpoint.

    Example:
        >>> train("hw1_data/p1_data/train_50", load_recipe("cls-fast"), out_dir="runs/p1")
    """
    import lightning.pytorch as pl

    from vislab.engine.classification import ClassificationData, ClassifierModule
    from vislab.engine.trainer import build_trainer, fit_and_select, prepare_run_folder, steps_per_epoch, write_results

    out = Path(out_dir)
    if val_dir is not None:
        load_folder(val_dir, labelled=True)  # fail before training, not after
    ckpt_path = prepare_run_folder(out, recipe, resume=resume, command=command)
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    data = ClassificationData(train_dir, recipe)
    info(f"{train_dir}: {len(data.data.files)} images, {data.num_classes} classes; "
         f"training on {len(data.train_idx)}, held out {len(data.holdout_idx)} for checkpoint selection")
    trainer = build_trainer(recipe, out, monitor="holdout_acc")
    module = ClassifierModule(recipe.to_dict(), data.num_classes, steps_per_epoch(trainer, recipe, len(data.train_idx)))
    done = fit_and_select(trainer, module, data, out, ckpt_path, metric="holdout_acc")
    if done is None:
        return {}
    result, best = done
    if val_dir is not None:
        result["val"] = evaluate(best, val_dir, predictions_csv=out / "val_predictions.csv")
        result["val_accuracy"] = result["val"]["accuracy"]
        result["val_dir"] = str(val_dir)
    result["checkpoint"] = best
    write_results(out, result)
    return result


def check_tta(tta: str) -> None:
    """Refuse a P1 test-time augmentation other than none or flip."""
    if tta not in ("none", "flip"):
        raise VislabError(None, f"unknown --tta {tta!r}; choose none or flip")


@torch.inference_mode()
def infer(model: torch.nn.Module, meta: dict[str, Any], images: torch.Tensor, *, batch_size: int = 256,
          device: str | None = None, features: bool = False, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and optionally second-last-layer features) for uint8 images (N, 3, H, W).

    ``tta="flip"`` averages the class probabilities of each image and its mirror image and
    returns their logarithm (same argmax and ranking as the averaged probabilities).
    """
    check_tta(tta)
    from vislab.engine.state import pick_device

    dev = pick_device(device)
    model = model.to(dev).eval()
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(dev)
        x = resize_batch(normalize(x, tuple(meta["mean"]), tuple(meta["std"])), meta["image_size"])
        if features:
            with penultimate(model) as store:
                out = model(x)
            feats.append(store[0].float().cpu())
        else:
            out = model(x)
        if tta == "flip":
            out = ((out.float().softmax(1) + model(x.flip(-1)).float().softmax(1)) / 2).log()
        logits.append(out.float().cpu())
    return torch.cat(logits), (torch.cat(feats) if features else None)


def _labels_from_csv(path: Path, files: list[str]) -> torch.Tensor:
    if not path.is_file():
        raise VislabError(path, "labels CSV not found")
    with path.open() as fh:
        rows = list(csv.reader(fh))
    if not rows or len(rows[0]) < 2:
        raise VislabError(path, "expected a CSV with columns filename,label")
    table = {r[0]: r[1] for r in rows[1:] if len(r) >= 2}
    missing = [f for f in files if f not in table]
    if missing:
        raise VislabError(path, f"no label for {len(missing)} images, e.g. {missing[0]}")
    try:
        return torch.tensor([int(table[f]) for f in files])
    except ValueError:
        raise VislabError(path, "labels must be integers") from None


@dataclass
class _Loaded:
    model: torch.nn.Module
    meta: dict[str, Any]


def _load(ckpt: str | Path) -> _Loaded:
    from vislab.engine.state import load_network

    model, meta = load_network(ckpt, task="cls")
    return _Loaded(model, meta)


def evaluate(ckpt: str | Path, img_dir: str | Path, *, labels_csv: str | Path | None = None,
             batch_size: int = 256, device: str | None = None,
             predictions_csv: str | Path | None = None, tta: str = "none") -> dict[str, Any]:
    """Accuracy, top-5 accuracy and per-class accuracy of a checkpoint on a labelled folder.

    ``predictions_csv`` (optional) receives ``image_id,label,pred`` rows.
    """
    loaded = _load(ckpt)
    data = load_folder(img_dir, labelled=labels_csv is None)
    labels = data.labels if labels_csv is None else _labels_from_csv(Path(labels_csv), data.files)
    assert labels is not None
    n_cls = loaded.meta["num_classes"]
    if int(labels.max()) >= n_cls:
        bad = data.files[int(torch.argmax((labels >= n_cls).int()))]
        raise VislabError(Path(img_dir) / bad, f"label {int(labels.max())} is outside the model's 0..{n_cls - 1}")
    logits, _ = infer(loaded.model, loaded.meta, data.images, batch_size=batch_size, device=device, tta=tta)
    pred = logits.argmax(1)
    if predictions_csv is not None:
        _write_rows(predictions_csv, ["image_id", "label", "pred"], zip(data.files, labels.tolist(), pred.tolist()))
    top5 = logits.topk(min(5, n_cls), dim=1).indices.eq(labels[:, None]).any(1)
    per_class = {}
    for c in range(n_cls):
        m = labels == c
        if m.any():
            per_class[c] = round(float((pred[m] == c).float().mean()), 4)
    return {
        "images": len(labels),
        "accuracy": round(float((pred == labels).float().mean()), 6),
        "top5": round(float(top5.float().mean()), 6),
        "per_class": per_class,
        "confusion": confusion_matrix(labels, pred, n_cls).tolist(),
    }


def predict(ckpt: str | Path, img_dir: str | Path, out_csv: str | Path, *, batch_size: int = 256,
            device: str | None = None, engine: str = "auto", tta: str = "none") -> int:
    """Write ``image_id,label`` rows sorted by file name; names need not carry labels.

    ``ckpt`` may also be an exported ``.onnx``; ``engine`` as in :func:`vislab.export.load_predictor`.
    """
    from vislab.export import load_predictor, model_file

    model_file(ckpt, engine)
    check_tta(tta)
    data = load_folder(img_dir, labelled=False, use_cache=False)
    hw = tuple(data.images.shape[-2:])
    model, meta = load_predictor(ckpt, task="cls", engine=engine, hw=hw, device=device)
    logits, _ = infer(model, meta, data.images, batch_size=batch_size, device=device, tta=tta)
    _write_rows(out_csv, ["image_id", "label"], zip(data.files, logits.argmax(1).tolist()))
    return len(data.files)


def _write_rows(path: str | Path, header: list[str], rows: Any) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def tsne(ckpt: str | Path, img_dir: str | Path, *, out_png: str | Path, out_csv: str | Path | None = None,
         seed: int = 0, perplexity: float = 30.0, device: str | None = None) -> Path:
    """t-SNE of the second-last-layer features of a labelled folder: a PNG and a CSV of points."""
    from vislab.viz.tsne import embed, plot_embedding

    loaded = _load(ckpt)
    data = load_folder(img_dir, labelled=True)
    assert data.labels is not None
    _, feats = infer(loaded.model, loaded.meta, data.images, device=device, features=True)
    assert feats is not None
    points = embed(feats, seed=seed, perplexity=perplexity)
    out_png = Path(out_png)
    plot_embedding(points, data.labels, out_png,
                   title=f"t-SNE of {loaded.meta['model']} second-last layer ({feats.shape[1]}-d), {img_dir}")
    csv_path = Path(out_csv) if out_csv else out_png.with_suffix(".csv")
    _write_rows(csv_path, ["image_id", "label", "x", "y"],
                ([n, lab, f"{x:.5f}", f"{y:.5f}"] for n, lab, (x, y) in zip(data.files, data.labels.tolist(), points.tolist())))
    return out_png
