"""P1 inference: load classifiers (one, or an ensemble averaging their probabilities), infer with
the training normalisation and size, ``cls predict``'s CSV and the t-SNE of the second-last layer."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vislab.data.classification import load_for_model, load_folder, resize_batch
from vislab.data.layouts import find_items
from vislab.data.tensors import normalize
from vislab.errors import VislabError
from vislab.io import atomic_write_text
from vislab.log import info, quiet
from vislab.models import penultimate
from vislab.models.tta import averaged_probs
from vislab.pipelines.settings import check_positive


def check_tta(tta: str) -> None:
    """Refuse a P1 test-time augmentation other than none, flip or shift."""
    from vislab.models.tta import check_tta as check

    check(tta, ("none", "flip", "shift"))


@torch.inference_mode()
def infer(model: torch.nn.Module, meta: dict[str, Any], images: torch.Tensor, *, batch_size: int = 256,
          device: str | None = None, features: bool = False, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and optionally second-last-layer features) for uint8 images (N, 3, H, W).

    ``tta="flip"`` averages the class probabilities of each image and its mirror image and
    returns their logarithm (same argmax and ranking as the averaged probabilities); ``"shift"``
    averages 10 views: the image and its mirror, each also translated by 1/16 of the side up,
    down, left and right at the stored size (before the resize, as the training crops).
    """
    check_tta(tta)
    from vislab.models.checkpoints import pick_device

    dev = pick_device(device)
    model = model.to(dev).eval()
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        src = normalize(images[start : start + batch_size].to(dev), tuple(meta["mean"]), tuple(meta["std"]))
        x = resize_batch(src, meta["image_size"])
        if features:
            with penultimate(model) as store:
                out = model(x)
            feats.append(store[0].float().cpu())
        if tta != "none":  # the views are taken at the stored size, then resized
            out = averaged_probs(model, src, tta, dense=False,
                                 prepare=lambda v: resize_batch(v, meta["image_size"])).log()
        elif not features:
            out = model(x)
        logits.append(out.float().cpu())
    return torch.cat(logits), (torch.cat(feats) if features else None)


@dataclass
class _Loaded:
    model: torch.nn.Module
    meta: dict[str, Any]


def load_classifier(ckpt: str | Path) -> _Loaded:
    from vislab.models.checkpoints import load_network

    model, meta = load_network(ckpt, task="cls")
    return _Loaded(model, meta)


def stored_size(meta: dict[str, Any]) -> tuple[int, int] | None:
    """The size a checkpoint's training images were decoded at (None: older checkpoints, whose
    folders had one size: then the folder's own most common size)."""
    hw = meta.get("stored_hw")
    return (int(hw[0]), int(hw[1])) if hw else None


def class_label(meta: dict[str, Any], class_id: int) -> str | int:
    """How a class is written for users: its name for named data sets, else its integer id."""
    names = meta.get("class_names")
    return names[class_id] if names else class_id


def load_labelled(meta: dict[str, Any], img_dir: str | Path, labels_csv: str | Path | None) -> Any:
    return load_for_model(img_dir, class_names=meta.get("class_names"), num_classes=meta["num_classes"],
                          labels_csv=labels_csv, size=stored_size(meta))


def ensemble_logits(models: list[tuple[torch.nn.Module, dict[str, Any]]], paths: list[str], read: Any, *,
                     batch_size: int, device: str | None, tta: str) -> tuple[Any, torch.Tensor]:
    """(the folder as the first model reads it, log of the class probabilities averaged over the
    models). ``read(meta)`` decodes the folder for one model (its own stored size), once per
    stored size; every model must see the same files and labels."""
    from vislab.models.ensemble import FLOOR, check_same_classes, mean_of

    check_same_classes([m for _, m in models], paths, keys=("num_classes", "class_names"))
    decoded: dict[Any, Any] = {}  # one decoding per input size
    first = decoded[stored_size(models[0][1])] = read(models[0][1])

    def member_probs():
        for (model, meta), path in zip(models, paths):
            size = stored_size(meta)
            if size not in decoded:
                decoded[size] = read(meta)
            data = decoded[size]
            if list(data.files) != list(first.files):
                raise VislabError(path, "reads another list of images than the first model")
            logits, _ = infer(model, meta, data.images, batch_size=batch_size, device=device, tta=tta)
            yield logits.float().softmax(1)

    return first, mean_of(member_probs()).clamp_min(FLOOR).log()  # finite, as the exported ensemble's


# The header rows of what `predict` and `tsne` write (an existing file with another is not replaced).
PREDICT_HEADER = ["image_id", "label"]
TSNE_HEADER = ["image_id", "label", "x", "y"]


def predict(ckpt: str | Path, img_dir: str | Path, out_csv: str | Path, *, batch_size: int = 256,
            device: str | None = None, engine: str = "auto", tta: str = "none") -> int:
    """Write ``image_id,label`` rows in file order (a flat folder, or a tree with relative paths
    as ids); the label is the class name for named data sets, else the class id. ``ckpt`` may
    list several models separated by commas (an ensemble: probabilities averaged).

    ``ckpt`` may also be an exported ``.onnx``; ``engine`` as in :func:`vislab.export.load_predictor`.
    """
    from vislab.export import load_predictor, model_file
    from vislab.models.ensemble import check_each_model_once, members

    check_positive(batch_size=batch_size)
    paths = members(ckpt)
    for p in paths:
        model_file(p, engine)
    check_tta(tta)
    with quiet():  # the read below says what it skips
        find_items(img_dir, labelled=False)  # an empty or missing folder, before any model is loaded or exported
    models = [load_predictor(p, task="cls", engine=engine, device=device) for p in paths]
    check_each_model_once([m for _, m in models], paths)
    meta = models[0][1]
    data, logits = ensemble_logits(
        models, paths, lambda m: load_folder(img_dir, labelled=False, use_cache=False, size=stored_size(m)),
        batch_size=batch_size, device=device, tta=tta)
    write_rows(out_csv, PREDICT_HEADER, ((f, class_label(meta, c)) for f, c in zip(data.files, logits.argmax(1).tolist())))
    return len(data.files)


def recorded_labels(paths: list[str]) -> list[tuple[Path, Path]]:
    """(labels CSV, run folder) for each labels file the training runs of ``paths`` (run folders
    or checkpoints in them) were started with (``inputs.json``: ``labels``, ``val_labels``); none
    for an export or a run of an older vislab."""
    from vislab.engine.run_folder import read_inputs

    found = []
    for p in map(Path, paths):
        run = p if p.is_dir() else p.parent
        try:
            inputs = read_inputs(run)
        except VislabError:  # not the record: nothing known of its labels
            continue
        found += [(Path(inputs[k]), run) for k in ("labels", "val_labels") if inputs.get(k)]
    return found


def write_rows(path: str | Path, header: list[str], rows: Any) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def tsne(ckpt: str | Path, img_dir: str | Path, *, out_png: str | Path, out_csv: str | Path | None = None,
         seed: int = 0, perplexity: float = 30.0, device: str | None = None,
         labels_csv: str | Path | None = None) -> Path:
    """t-SNE of the second-last-layer features of a labelled folder: a figure (PNG, PDF, SVG or
    JPEG by the extension of ``out_png``) and a CSV of points."""
    from vislab.viz.save import figure_format
    from vislab.viz.tsne import embed, plot_embedding, usable_perplexity

    figure_format(out_png)
    check_positive(perplexity=perplexity)
    if seed < 0:
        raise VislabError("--seed", f"must be >= 0, got {seed}")
    loaded = load_classifier(ckpt)
    data = load_labelled(loaded.meta, img_dir, labels_csv)
    used = usable_perplexity(len(data.labels), perplexity)
    if used != perplexity:
        info(f"setting: --perplexity {perplexity:g} -> {used:.3g}: {len(data.labels)} images allow at most (n - 1) / 3")
    _, feats = infer(loaded.model, loaded.meta, data.images, device=device, features=True)
    assert feats is not None
    points = embed(feats, seed=seed, perplexity=perplexity)
    out_png = Path(out_png)
    plot_embedding(points, data.labels, out_png, class_names=loaded.meta.get("class_names"),
                   title=f"t-SNE of {loaded.meta['model']} second-last layer ({feats.shape[1]}-d), {img_dir}")
    csv_path = Path(out_csv) if out_csv else out_png.with_suffix(".csv")
    write_rows(csv_path, TSNE_HEADER,
                ([n, class_label(loaded.meta, lab), f"{x:.5f}", f"{y:.5f}"]
                 for n, lab, (x, y) in zip(data.files, data.labels.tolist(), points.tolist())))
    return out_png
