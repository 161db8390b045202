"""P1 training: a classifier on a labelled folder, its settings decided from the data, distillation
from teacher runs; scoring and inference are in :mod:`~vislab.pipelines.cls_scores` and
:mod:`~vislab.pipelines.cls_predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from vislab.config import Recipe
from vislab.data.classification import load_for_model, load_folder, stratified_split
from vislab.data.images import split_advice
from vislab.data.layouts import check_dense, thin_classes
from vislab.data.manifest import lines_digest
from vislab.data.overlap import copies_line
from vislab.errors import VislabError
from vislab.log import info
from vislab.pipelines.cls_predict import ensemble_logits, load_classifier, stored_size
from vislab.pipelines.cls_scores import evaluate, labelled_lines
from vislab.pipelines.settings import (TEACHER_DIGESTS, AtTrainingStart, evaluation_device, teacher_files,
                                      teacher_split_notes)


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
    from vislab.engine.run_folder import check_resumed_data, check_run_folder, training_recorded, write_results
    from vislab.pipelines.training import TrainingJob, fit_run, input_record

    out = Path(out_dir)
    check_run_folder(out, resume=resume, data_dirs=(train_dir, val_dir))
    teacher_digests = teacher_files(recipe, out, resume=resume)  # a teacher changed since a resumed run started: refused
    data = load_folder(train_dir, labelled=True, labels_csv=labels_csv, image_size=recipe.image_size,
                       check=lambda items: check_dense(items, labels_csv))  # before the images are decoded
    assert data.labels is not None
    present = sorted(set(data.labels.tolist()))
    if len(present) < 2:
        which = data.class_names[present[0]] if data.class_names else present[0]
        advice = split_advice(Path(train_dir), [str(which)]) if data.layout == "imagefolder" else None
        raise VislabError(train_dir, f"all {len(data.labels)} images are of one class ({which}); a classifier "
                                     "trains on at least 2" + (f"; {advice}" if advice else ""))
    hw = tuple(data.images.shape[-2:])
    if recipe.pad >= min(hw):
        raise VislabError(None, f"pad {recipe.pad}: reflect padding must be smaller than the stored images' side "
                                f"({hw[1]}x{hw[0]}, width x height)")
    copied, paths = None, data.paths()
    if val_dir is not None:  # fail before training, not after
        val = load_for_model(val_dir, class_names=data.class_names, num_classes=data.num_classes,
                             labels_csv=val_labels_csv, size=hw)
        copied = copies_line(val.paths(), paths, what="images")
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
    thin = thin_classes(data.labels[train_idx].tolist(), data.class_names, [paths[i] for i in train_idx.tolist()])
    changes += [thin] if thin else []
    # after the settings: a held-out fraction that holds out nothing is 0 by now
    changes += teacher_split_notes(teachers, list(recipe.teacher), recipe, digest=digest, digest_key="train_files_digest",
                                   held_out=lambda f, s: set(stratified_split(data.labels, fraction=f, seed=s)[1].tolist()),
                                   items="images")
    data_meta = {"class_names": data.class_names, "stored_hw": list(hw), "layout": data.layout,
                 **({TEACHER_DIGESTS: teacher_digests} if teacher_digests else {}),
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

    with training_recorded(out):  # the run folder says it trains now, and any failure from here on
        done = fit_run(TrainingJob(out=out, recipe=recipe, monitor="holdout_acc", n_train=len(train_idx), items="images",
                                   make_module=make_module, make_data=lambda r: ClassificationData(data, r),
                                   resume=resume, command=command, changes=changes, describe=describe,
                                   holdout_batches=lambda r: -(-(len(data.labels) - len(train_idx)) // r.batch_size),
                                   inputs=input_record(given, train_dir=train_dir, val_dir=val_dir,
                                                       labels=labels_csv, val_labels=val_labels_csv),
                                   item_lines=items))
        if done is None:
            return {}
        result, best, recipe, kept = done
        result["layout"], result["class_names"] = data.layout, data.class_names
        if val_dir is not None and not kept:  # a finished run's resume: its recorded validation stands, as said
            result["val"] = evaluate(best, val_dir, labels_csv=val_labels_csv, predictions_csv=out / "val_predictions.csv",
                                     device=evaluation_device(recipe))
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


def load_teachers(recipe: Recipe, data: Any) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """The networks and metadata of ``recipe.teacher``; they must know the student's classes."""
    def named(n: int, names: Any) -> str:
        return f"{n} classes" + (f" ({', '.join(map(str, names))})" if names else " (class ids)")

    models = [(lambda ld: (ld.model, ld.meta))(load_classifier(p)) for p in recipe.teacher]
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
    seen, logp = ensemble_logits(models, list(recipe.teacher), read, batch_size=256,
                                  device=str(device), tta="none")
    if list(seen.files) != list(data.files):
        raise VislabError(train_dir, "the teachers read another list of images than the student")
    soft = logp.exp().half()
    their = "their" if len(recipe.teacher) > 1 else "its"
    info(f"distillation: soft targets from {', '.join(recipe.teacher)} (weight {recipe.distill:g}; "
         f"{their} accuracy on the training images {float((soft.argmax(1).cpu() == data.labels).float().mean()):.4f}): "
         f"{len(soft)} images of the training folder through the teachers in {time.perf_counter() - t0:.0f} s")
    return soft
