"""P1: train, evaluate, predict and explain small-image classifiers."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vislab.config import Recipe
from vislab.data.classification import load_for_model, load_folder, resize_batch
from vislab.data.layouts import find_items
from vislab.data.manifest import difference_from_record, lines_digest
from vislab.data.overlap import copies_line
from vislab.data.tensors import normalize
from vislab.errors import VislabError
from vislab.io import atomic_write_text
from vislab.metrics import confusion_matrix
from vislab.log import info, quiet
from vislab.models import penultimate
from vislab.models.tta import averaged_probs
from vislab.pipelines.scores import accuracy_interval, check_comparable, check_same_classes_early, compared
from vislab.pipelines.settings import AtTrainingStart, check_positive, held_out_of, teacher_split_notes


def train(train_dir: str | Path, recipe: Recipe, *, out_dir: str | Path, resume: bool = False,
          val_dir: str | Path | None = None, labels_csv: str | Path | None = None,
          val_labels_csv: str | Path | None = None, command: str = "", notes: Sequence[str] = (),
          given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a classifier on ``train_dir`` (any layout of :mod:`vislab.data.layouts`) into the
    run folder ``out_dir``.

    The best checkpoint is chosen on a held-out split of the training folder; ``val_dir`` (if
    given) is evaluated once at the end with that checkpoint. Every input is read before anything
    is written (the teachers' soft targets are made when training starts, from teachers checked
    before); settings the data decides (normalisation, a batch larger than the data) are
    printed and recorded in the run folder (``changes.txt``, results.json), after ``notes``: the
    settings lines of :func:`vislab.pipelines.settings.run_recipe`. ``given``: what the
    command gave the run (``recipe``: its name, ``flags``: the fields flags set), recorded with
    the folders in ``inputs.json`` for a later ``--resume``.

    Example:
        >>> train("hw1_data/p1_data/train_50", load_recipe("cls-fast"), out_dir="runs/p1")
    """
    from vislab.engine.classification import ClassificationData, ClassifierModule, holdout_split
    from vislab.engine.run_folder import check_resumed_data, check_run_folder, write_results
    from vislab.pipelines.training import TrainingJob, fit_run, input_record

    out = Path(out_dir)
    check_run_folder(out, resume=resume, data_dirs=(train_dir, val_dir))
    data = load_folder(train_dir, labelled=True, labels_csv=labels_csv, image_size=recipe.image_size)
    assert data.labels is not None
    present = sorted(set(data.labels.tolist()))
    if len(present) < 2:
        which = data.class_names[present[0]] if data.class_names else present[0]
        raise VislabError(train_dir, f"all {len(data.labels)} images are of one class ({which}); a classifier "
                                     "trains on at least 2")
    hw = tuple(data.images.shape[-2:])
    if recipe.pad >= min(hw):
        raise VislabError(None, f"pad {recipe.pad}: reflect padding must be smaller than the stored images' side "
                                f"({hw[1]}x{hw[0]}, width x height)")
    copied = None
    if val_dir is not None:  # fail before training, not after
        val = load_for_model(val_dir, class_names=data.class_names, num_classes=data.num_classes,
                             labels_csv=val_labels_csv, size=hw)
        copied = copies_line(val.paths(), data.paths(), what="images")
    items = labelled_lines(data)
    digest = lines_digest(items)
    if resume:
        check_resumed_data(out, key="train_files_digest", lines=items, folder=train_dir, value="label",
                           class_names=data.class_names)
    train_idx, _ = holdout_split(data.labels, recipe)
    soft, teachers = None, []
    if recipe.teacher:  # before anything is written: a teacher that does not fit is an error
        loaded = load_teachers(recipe, data)
        teachers = [meta for _, meta in loaded]  # the targets: made on the training device when training starts
        soft = AtTrainingStart(teacher_probs, loaded, recipe=recipe, data=data, train_dir=train_dir,
                               labels_csv=labels_csv)
        del loaded
    recipe, changes = resolve_settings(recipe, data.images, train_idx)
    changes = [*notes, *changes, *([copied] if copied else [])]
    absent = sorted(set(range(data.num_classes)) - set(present))
    if absent:  # integer labels: the model has a class for each id up to the largest
        shown = [data.class_names[i] if data.class_names else str(i) for i in absent]
        changes.append(f"warning: {len(absent)} of {data.num_classes} classes have no training images "
                       f"({', '.join(shown[:10])}{', ...' if len(shown) > 10 else ''}): the model never learns them")
    # after the settings: a held-out fraction that holds out nothing is 0 by now
    changes += teacher_split_notes(teachers, list(recipe.teacher), recipe, digest=digest, digest_key="train_files_digest")
    data_meta = {"class_names": data.class_names, "stored_hw": list(hw), "layout": data.layout,
                 "train_files_digest": digest}

    def make_module(r: Recipe, steps: int, pretrained: bool) -> ClassifierModule:
        module = ClassifierModule(r.to_dict(), data.num_classes, steps, data_meta, pretrained)
        module.teacher_targets = soft
        return module

    def describe(r: Recipe) -> None:
        names = f" ({', '.join(data.class_names[:6])}{', ...' if data.num_classes > 6 else ''})" if data.class_names else ""
        info(f"{train_dir}: {len(data.files)} images ({data.layout} layout, stored at {hw[1]}x{hw[0]}), "
             f"{data.num_classes} classes{names}; training on {len(train_idx)}, held out "
             f"{len(data.labels) - len(train_idx)} for checkpoint selection")

    done = fit_run(TrainingJob(out=out, recipe=recipe, monitor="holdout_acc", n_train=len(train_idx), items="images",
                               make_module=make_module, make_data=lambda r: ClassificationData(data, r),
                               resume=resume, command=command, changes=changes, describe=describe,
                               holdout_batches=lambda r: -(-(len(data.labels) - len(train_idx)) // r.batch_size),
                               inputs=input_record(given, train_dir=train_dir, val_dir=val_dir,
                                                   labels=labels_csv, val_labels=val_labels_csv),
                               item_lines=items))
    if done is None:
        return {}
    result, best, recipe = done
    result["layout"], result["class_names"] = data.layout, data.class_names
    if val_dir is not None:
        result["val"] = evaluate(best, val_dir, labels_csv=val_labels_csv, predictions_csv=out / "val_predictions.csv")
        result["val_accuracy"] = result["val"]["accuracy"]
        result["val_dir"] = str(val_dir)
    result["checkpoint"] = best
    write_results(out, result)
    return result


def resolve_settings(recipe: Recipe, images: torch.Tensor, train_idx: torch.Tensor) -> tuple[Recipe, list[str]]:
    """Settings a recipe leaves to the data, decided and described in one line each.

    - normalisation: the recipe's ``mean``/``std``; else the pretrained weights' own (ImageNet
      statistics, EfficientNet-Lite's [-1, 1] scaling, a timm model's config); else, for a network
      trained from scratch, the training images' per-channel statistics;
    - a held-out fraction that holds out nothing runs as ``holdout: 0``.
    """
    from vislab.data.classification import image_stats
    from vislab.pipelines.settings import empty_holdout, resolve_normalisation

    recipe, note = resolve_normalisation(recipe, lambda: image_stats(images, train_idx),
                                         "the training images' own per-channel statistics")
    changes: list[str] = [note] if note else []
    recipe, line = empty_holdout(recipe, len(images) - len(train_idx),
                                 f"{len(images)} images, {recipe.holdout:g} of each class rounded")
    return recipe, changes + ([line] if line else [])


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


def _load(ckpt: str | Path) -> _Loaded:
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


def _load_labelled(meta: dict[str, Any], img_dir: str | Path, labels_csv: str | Path | None) -> Any:
    return load_for_model(img_dir, class_names=meta.get("class_names"), num_classes=meta["num_classes"],
                          labels_csv=labels_csv, size=stored_size(meta))


def load_teachers(recipe: Recipe, data: Any) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """The networks and metadata of ``recipe.teacher``; they must know the student's classes."""
    def named(n: int, names: Any) -> str:
        return f"{n} classes" + (f" ({', '.join(map(str, names))})" if names else " (class ids)")

    models = [(lambda ld: (ld.model, ld.meta))(_load(p)) for p in recipe.teacher]
    for (_, meta), path in zip(models, recipe.teacher):
        if meta["num_classes"] != data.num_classes or meta.get("class_names") != data.class_names:
            raise VislabError(path, f"teacher has {named(meta['num_classes'], meta.get('class_names'))}; the training "
                                    f"folder has {named(data.num_classes, data.class_names)}")
    return models


def teacher_probs(models: list[tuple[torch.nn.Module, dict[str, Any]]], recipe: Recipe, data: Any,
                  train_dir: str | Path, labels_csv: str | Path | None, *, device: torch.device) -> torch.Tensor:
    """The teachers' averaged class probabilities (N, C, float16) for every image of the training
    folder, each teacher reading it at its own stored size on ``device`` (the training device)."""
    import time

    t0 = time.perf_counter()
    read = lambda m: load_folder(train_dir, labelled=True, labels_csv=labels_csv,  # noqa: E731
                                 class_names=data.class_names, size=stored_size(m))
    seen, logp = _ensemble_logits(models, list(recipe.teacher), read, batch_size=256,
                                  device=str(device), tta="none")
    if list(seen.files) != list(data.files):
        raise VislabError(train_dir, "the teachers read another list of images than the student")
    soft = logp.exp().half()
    info(f"distillation: soft targets from {', '.join(recipe.teacher)} (weight {recipe.distill:g}; "
         f"their accuracy on the training images {float((soft.argmax(1).cpu() == data.labels).float().mean()):.4f}): "
         f"{len(soft)} images of the training folder through the teachers in {time.perf_counter() - t0:.0f} s")
    return soft


def _ensemble_logits(models: list[tuple[torch.nn.Module, dict[str, Any]]], paths: list[str], read: Any, *,
                     batch_size: int, device: str | None, tta: str) -> tuple[Any, torch.Tensor]:
    """(the folder as the first model reads it, log of the class probabilities averaged over the
    models). ``read(meta)`` decodes the folder for one model (its own stored size), once per
    stored size; every model must see the same files and labels."""
    from vislab.models.ensemble import check_same_classes

    check_same_classes([m for _, m in models], paths, keys=("num_classes", "class_names"))
    first, total = None, None
    decoded: dict[Any, Any] = {}
    for (model, meta), path in zip(models, paths):
        size = stored_size(meta)
        if size not in decoded:
            decoded[size] = read(meta)
        data = decoded[size]
        if first is None:
            first = data
        elif list(data.files) != list(first.files):
            raise VislabError(path, "reads another list of images than the first model")
        logits, _ = infer(model, meta, data.images, batch_size=batch_size, device=device, tta=tta)
        p = logits.float().softmax(1)
        total = p if total is None else total + p
    assert total is not None
    from vislab.models.ensemble import FLOOR

    return first, (total / len(models)).clamp_min(FLOOR).log()  # finite, as the exported ensemble's


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
    models = [(lambda ld: (ld.model, ld.meta))(_load(p)) for p in paths]
    if image_size is not None:
        from vislab.models.input_side import check_side

        for model, meta in models:
            check_side(model, image_size, model=meta["model"], setting="--image-size")
        models = [(model, {**meta, "image_size": image_size}) for model, meta in models]
    meta = models[0][1]
    split = held_out_of(models, paths, digest_key="train_files_digest") if held_out else None
    data, logits = _ensemble_logits(
        models, paths, lambda m: held_out_part(_load_labelled(m, img_dir, labels_csv), *split, folder=img_dir,
                                               record=paths[0]) if split
        else _load_labelled(m, img_dir, labels_csv), batch_size=batch_size, device=device, tta=tta)
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
            _write_rows(predictions_csv, ["image_id", "label", "pred", "label_name", "pred_name"],
                        ([f, t, p, names[t], names[p]] for f, t, p in rows))
        else:
            _write_rows(predictions_csv, ["image_id", "label", "pred"], rows)
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
    from vislab.models.ensemble import members

    check_positive(batch_size=batch_size)
    paths = members(ckpt)
    for p in paths:
        model_file(p, engine)
    check_tta(tta)
    with quiet():  # the read below says what it skips
        find_items(img_dir, labelled=False)  # an empty or missing folder, before any model is loaded or exported
    models = [load_predictor(p, task="cls", engine=engine, device=device) for p in paths]
    meta = models[0][1]
    data, logits = _ensemble_logits(
        models, paths, lambda m: load_folder(img_dir, labelled=False, use_cache=False, size=stored_size(m)),
        batch_size=batch_size, device=device, tta=tta)
    _write_rows(out_csv, PREDICT_HEADER, ((f, class_label(meta, c)) for f, c in zip(data.files, logits.argmax(1).tolist())))
    return len(data.files)


def _write_rows(path: str | Path, header: list[str], rows: Any) -> None:
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
    loaded = _load(ckpt)
    data = _load_labelled(loaded.meta, img_dir, labels_csv)
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
    _write_rows(csv_path, TSNE_HEADER,
                ([n, class_label(loaded.meta, lab), f"{x:.5f}", f"{y:.5f}"]
                 for n, lab, (x, y) in zip(data.files, data.labels.tolist(), points.tolist())))
    return out_png
