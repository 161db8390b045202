"""P1 scores: accuracy with its interval, top-5, per-class accuracy and the confusion matrix of a
classifier (or ensemble) on a labelled folder, or on the part of a run's training folder it held out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vislab.data.manifest import difference_from_record
from vislab.errors import VislabError
from vislab.metrics import confusion_matrix
from vislab.pipelines.cls_predict import check_tta, ensemble_logits, load_classifier, load_labelled, write_rows
from vislab.pipelines.scores import accuracy_interval, check_comparable, check_same_classes_early, compared
from vislab.pipelines.settings import check_positive, held_out_of


def _classes(meta: dict[str, Any]) -> tuple[Any, Any]:
    """What a classifier predicts: its number of classes and their names (None for ids)."""
    return meta.get("num_classes"), meta.get("class_names")


def evaluate(ckpt: str | Path, img_dir: str | Path, *, labels_csv: str | Path | None = None,
             batch_size: int = 256, device: str | None = None,
             predictions_csv: str | Path | None = None, tta: str = "none",
             image_size: int | None = None, held_out: bool = False, against: str | None = None) -> dict[str, Any]:
    """Accuracy, top-5 accuracy (None with 5 classes or fewer) and per-class accuracy of a
    checkpoint on a labelled folder (any layout; class names are matched to the checkpoint's).
    ``ckpt`` may list several checkpoints separated by commas: an ensemble, their class
    probabilities averaged. ``image_size`` tests
    every model at another input side than it was trained at (e.g. larger, as in FixRes).
    ``held_out``: ``img_dir`` is the runs' training folder and only the images their recipe held
    out of training are scored (to choose a TTA mode or an ensemble without the validation set).

    ``predictions_csv`` (optional) receives ``image_id,label,pred`` rows (class ids; with class
    names also ``label_name,pred_name``). ``against``: another run (or ensemble) scored on the same
    images with the same settings; ``result["against"]`` holds its accuracy and the difference,
    with a paired bootstrap interval.
    """
    check_positive(batch_size=batch_size, **({"image_size": image_size} if image_size is not None else {}))
    check_tta(tta)
    settings = dict(labels_csv=labels_csv, batch_size=batch_size, device=device, tta=tta, image_size=image_size,
                    held_out=held_out)
    if against is not None:
        check_same_classes_early(str(ckpt), against, "cls", lambda a, b: _classes(a) == _classes(b))
    data, logits, meta, paths, split = _labelled_logits(ckpt, img_dir, **settings)
    result = _accuracy_result(data, logits, meta, predictions_csv)
    if against is not None:
        files, labels = list(data.files), data.labels
        del data  # its decoded images: the other run decodes the folder again
        theirs, their_logits, their_meta, _, _ = _labelled_logits(against, img_dir, **settings)
        check_comparable(against, same_classes=_classes(their_meta) == _classes(meta),
                         same_items=list(theirs.files) == files, items="images")
        ours = (logits.argmax(1) == labels).double()
        other = (their_logits.argmax(1) == labels).double()
        n = len(labels)
        result["against"] = compared(against, "accuracy", ours.mean().item(), other.mean().item(), ours, other,
                                     lambda c: c / n, f"{n} images")
    return {
        **result,
        "tta": tta,
        **({"ensemble": paths} if len(paths) > 1 else {}),
        **({"image_size": image_size} if image_size is not None else {}),
        **({"held_out": {"fraction": split[0], "seed": split[1]}} if split else {}),
    }


def _labelled_logits(ckpt: str | Path, img_dir: str | Path, *, labels_csv: str | Path | None, batch_size: int,
                     device: str | None, tta: str, image_size: int | None,
                     held_out: bool) -> tuple[Any, torch.Tensor, dict[str, Any], list[str], Any]:
    """A checkpoint's (or ensemble's) log-probabilities on a labelled folder (or the part its runs
    held out): (the folder as read, logits, the first member's metadata, the members, the split)."""
    from vislab.models.ensemble import members

    paths = members(ckpt)
    models = [(lambda ld: (ld.model, ld.meta))(load_classifier(p)) for p in paths]
    if image_size is not None:
        from vislab.models.input_side import check_side

        for model, meta in models:
            check_side(model, image_size, model=meta["model"], setting="--image-size")
        models = [(model, {**meta, "image_size": image_size}) for model, meta in models]
    meta = models[0][1]
    split = held_out_of(models, paths, digest_key="train_files_digest") if held_out else None
    data, logits = ensemble_logits(
        models, paths, lambda m: held_out_part(load_labelled(m, img_dir, labels_csv), *split, folder=img_dir,
                                               record=paths[0]) if split
        else load_labelled(m, img_dir, labels_csv), batch_size=batch_size, device=device, tta=tta)
    return data, logits, meta, paths, split


def _accuracy_result(data: Any, logits: torch.Tensor, meta: dict[str, Any],
                     predictions_csv: str | Path | None) -> dict[str, Any]:
    """Accuracy (with its interval), top-5, per-class accuracy and the confusion matrix."""
    labels = data.labels
    n_cls = meta["num_classes"]
    pred = logits.argmax(1)
    names = meta.get("class_names")
    if predictions_csv is not None:
        rows = zip(data.files, labels.tolist(), pred.tolist())
        if names:
            write_rows(predictions_csv, ["image_id", "label", "pred", "label_name", "pred_name"],
                        ([f, t, p, names[t], names[p]] for f, t, p in rows))
        else:
            write_rows(predictions_csv, ["image_id", "label", "pred"], rows)
    top5 = logits.topk(5, dim=1).indices.eq(labels[:, None]).any(1) if n_cls > 5 else None  # else always right
    per_class = {}
    for c in range(n_cls):
        m = labels == c
        if m.any():
            per_class[c] = round(float((pred[m] == c).float().mean()), 4)
    correct = int((pred == labels).sum())
    return {
        "images": len(labels),
        "accuracy": round(correct / len(labels), 6),
        "accuracy_interval": accuracy_interval(correct, len(labels)),
        "top5": None if top5 is None else round(float(top5.float().mean()), 6),
        "per_class": per_class,
        "classes_without_images": [c for c in range(n_cls) if c not in per_class],  # no per-class accuracy
        "class_names": names,
        "confusion": confusion_matrix(labels, pred, n_cls).tolist(),
    }


def labelled_lines(data: Any) -> list[str]:
    """A decoded labelled folder as :mod:`vislab.data.manifest` lines: ``name|label id``."""
    return [f"{f}|{label}" for f, label in zip(data.files, data.labels.tolist())]


def labelled_digest(data: Any) -> str:
    """The digest of a decoded labelled folder's images and labels (not its paths): a checkpoint
    keeps its training folder's, so that ``--held-out`` rebuilds the split only from that folder."""
    from vislab.data.manifest import lines_digest

    return lines_digest(labelled_lines(data))


def held_out_part(data: Any, fraction: float, seed: int, digest: str | None = None, folder: str | Path = "",
                  record: str | Path | None = None) -> Any:
    """The images of a decoded training folder that a run with this held-out fraction and seed
    did not train on (the same stratified split as training); ``digest``: the run's training
    folder's (:func:`labelled_digest`), which ``data`` must match; ``record``: the run (folder
    or checkpoint), whose record of its items names those that differ."""
    from dataclasses import replace

    from vislab.data.classification import stratified_split

    if digest is not None and labelled_digest(data) != digest:
        how = (difference_from_record(record, labelled_lines(data), value="label", digest=digest,
                                      names=(data.class_names, data.class_names))  # read with the run's classes
               or "its image names or labels differ")
        raise VislabError(folder, f"--held-out: not the folder the run was trained on ({how}), so its held-out split "
                                  "cannot be rebuilt")

    _, idx = stratified_split(data.labels, fraction=fraction, seed=seed)
    return replace(data, files=[data.files[i] for i in idx.tolist()], images=data.images[idx], labels=data.labels[idx])
