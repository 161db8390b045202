"""P2: train segmenters and show their progress, on the course's land-cover tiles (course mIoU)
or any data set described by a classes file (standard mIoU; see :mod:`vislab.data.seg_classes`).
Predicting is :mod:`vislab.pipelines.seg_predict`, scoring and calibrating
:mod:`vislab.pipelines.seg_scores`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from vislab.calibration import load_segmenter
from vislab.config import Recipe
from vislab.data.seg_classes import SegClasses, check_described_alike, classes_of, describing_digests, find_classes
from vislab.data.manifest import lines_digest
from vislab.data.overlap import copies_line
from vislab.data.segmentation import holdout_split, list_pairs, pair_lines, scan_masks
from vislab.errors import VislabError
from vislab.log import info
from vislab.pipelines.seg_scores import calibrate, calibration_line, evaluate_checkpoint


def train(train_dir: str | Path, recipe: Recipe, *, out_dir: str | Path, resume: bool = False,
          val_dir: str | Path | None = None, command: str = "",
          classes: str | Path | None = None, notes: Sequence[str] = (), given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a segmenter on the pairs of ``train_dir`` into the run folder ``out_dir``.

    The masks mean what ``classes`` (a classes file), else the ``classes.yaml`` of ``train_dir``
    (or the folder above), else the course's colour code says. The best checkpoint is chosen by
    the data set's mIoU on a held-out split of ``train_dir``; ``val_dir`` is evaluated once at
    the end. Snapshot stems are looked up in ``val_dir`` first, then in ``train_dir``. ``notes``:
    the settings lines of :func:`vislab.pipelines.settings.run_recipe`, for ``changes.txt``.
    ``given``: what the command gave the run (``recipe``: its name, ``flags``: the fields flags
    set), recorded with the folders in ``inputs.json`` for a later ``--resume``.

    Example:
        >>> train("hw1_data/p2_data/train", load_recipe("seg-fcn32s-seed"), out_dir="runs/p2",
        ...       val_dir="hw1_data/p2_data/validation")
    """
    from vislab.engine.losses import inverse_sqrt_frequency
    from vislab.engine.segmentation import MaskSnapshots, SegmentationData, SegmenterModule
    from vislab.engine.run_folder import check_resumed_data, check_run_folder, read_changes, training_recorded, write_results
    from vislab.pipelines.settings import (TEACHER_DIGESTS, AtTrainingStart, empty_holdout, evaluation_device,
                                          resolve_normalisation, teacher_files, teacher_split_notes)
    from vislab.pipelines.training import TrainingJob, fit_run, input_record

    out = Path(out_dir)
    check_run_folder(out, resume=resume, data_dirs=(train_dir, val_dir))
    teacher_digests = teacher_files(recipe, out, resume=resume)  # a teacher changed since a resumed run started: refused
    if resume:  # before the tiles of another folder are decoded
        check_resumed_data(out, key="train_pairs_digest", lines=pair_lines(list_pairs(train_dir)), folder=train_dir,
                           value="file size")
    desc = find_classes(train_dir, classes)
    replaced = [line for folder in (train_dir, val_dir) if folder is not None and classes is not None
                and (line := check_described_alike(folder, desc, explicit=f"--classes {desc.source}"))]
    val_pairs = []
    if val_dir is not None and classes is None:
        check_described_alike(val_dir, desc)
    if val_dir is not None:
        val_pairs = list_pairs(val_dir)
        scan_masks(val_pairs, expected=None, classes=desc)  # a broken validation pair fails now, not after training
    if recipe.snapshot:  # a stem that names no pair (a typo) fails before the tiles are decoded
        _snapshot_pairs(recipe.snapshot, val_pairs + list_pairs(train_dir))
    loaded = _load_teachers(recipe, desc) if recipe.teacher else []  # before the tiles are decoded
    data = SegmentationData(train_dir, recipe, expected=recipe.input_hw or desc.tile_hw, classes=desc)
    teachers = [meta for _, meta in loaded]
    # the maps: made on the training device when training starts
    soft = AtTrainingStart(_teacher_maps, loaded, data=data, recipe=recipe) if loaded else None
    del loaded
    snaps, snap_note = _snapshot_pairs(recipe.snapshot, val_pairs + data.train_pairs + data.holdout_pairs)
    weights = None  # the recipe's check allows no other class_weights
    if recipe.class_weights == "inverse-sqrt-frequency":
        if not int(data.class_counts[:desc.scored].sum()):
            raise VislabError(train_dir, "class_weights: inverse-sqrt-frequency, but no training pixel is of a class "
                                         "the mIoU scores: there is nothing to weigh")
        weights = [round(float(w), 5) for w in inverse_sqrt_frequency(data.class_counts, desc.scored)]
    recipe, note = resolve_normalisation(recipe, data.pixel_stats,
                                         "the training tiles' own per-channel statistics, with no pretrained weights")
    changes = [*notes, *dict.fromkeys(replaced), *([note] if note else [])]  # one line for a file both folders share
    recipe, line = _crop_within_tiles(recipe, data.stats.sizes)
    changes += [line] if line else []
    recipe, line = empty_holdout(recipe, len(data.holdout_pairs), f"{len(data.pairs)} pairs")
    if line and recipe.calibrate:
        recipe = recipe.with_overrides(calibrate=False)
        line += " (and calibrate is off: no held-out pairs to fit class offsets on)"
    changes += [line] if line else []
    changes += _unturned_note(recipe, data.stats.sizes)
    items = pair_lines(data.pairs)
    digest = lines_digest(items)
    changes += teacher_split_notes(teachers, list(recipe.teacher), recipe, digest=digest, digest_key="train_pairs_digest",
                                   held_out=lambda f, s: set(holdout_split(len(data.pairs), fraction=f, seed=s)[1]),
                                   items="pairs")
    if snap_note:
        recipe = recipe.with_overrides(snapshot=tuple(p.stem for p in snaps))
        changes.append(snap_note)
    changes += _snapshot_source_note(snaps, val_pairs, data.train_pairs)
    copied = copies_line([p.image for p in val_pairs], [p.image for p in data.pairs], what="images")
    changes += [copied] if copied else []
    unseen = data.stats.unseen_classes(desc, [p.stem for p in data.train_pairs])
    if unseen and not resume:  # a resume's first piece said it
        changes.append(unseen)
    common = data.stats.common_size()
    tile = common or (512, 512)
    meta = {"seg_classes": desc.to_dict(), "stored_hw": list(common) if common else None,
            **({TEACHER_DIGESTS: teacher_digests} if teacher_digests else {}),
            "train_pairs_digest": digest,  # lists, not tuples: hparams.yaml stays plain YAML
            "classes_named": classes is not None,  # --classes over the folders' own files, for later scores:
            # those files (by content), which later commands replace too; any other describes its own folder
            "classes_replaced": sorted({d for f in (train_dir, val_dir) if f is not None and classes is not None
                                        for d in describing_digests(f)})}

    def make_data(r: Recipe) -> SegmentationData:
        data.recipe = r  # the split and the tile cache stay; the loaders read the recipe run
        return data

    def make_module(r: Recipe, steps: int, pretrained: bool) -> SegmenterModule:
        module = SegmenterModule(r.to_dict(), desc.num_classes, steps, class_weights=weights, data_meta=meta,
                                 pretrained=pretrained)
        module.teacher_targets = soft
        return module

    def describe(r: Recipe) -> None:
        info(f"{train_dir}: {len(data.train_pairs) + len(data.holdout_pairs)} pairs; training on "
             f"{len(data.train_pairs)}, held out {len(data.holdout_pairs)} for checkpoint selection")
        info(f"classes ({desc.source}, {desc.mask_format} masks): {', '.join(desc.names)}")
        info(f"metric: {desc.metric_name}")
        if weights is not None:
            info("cross-entropy class weights (inverse-sqrt-frequency of the training pixels): "
                 + ", ".join(f"{n} {w:.3g}" for n, w in zip(desc.names, weights)))
        sizes = data.stats.sizes
        if sizes is not None and len({tuple(v) for v in sizes.tolist()}) > 1:
            info(f"tiles of {len({tuple(v) for v in sizes.tolist()})} sizes: "
                 + (f"training takes random crops of them resized to {r.crop_size}x{r.crop_size}" if r.crop_size
                    else "batches pad them to the largest (padding is ignored by loss and metric)"))

    with training_recorded(out):  # the run folder says it trains now, and any failure from here on
        done = fit_run(TrainingJob(
            out=out, recipe=recipe, monitor="holdout_miou", n_train=len(data.train_pairs), items="pairs",
            make_module=make_module,
            make_data=make_data, resume=resume, command=command, changes=changes, describe=describe,
            inputs=input_record(given, train_dir=train_dir, val_dir=val_dir, classes=classes), item_lines=items,
            extra_callbacks=[MaskSnapshots(snaps, out, desc)] if snaps else [],
            holdout_batches=lambda r: -(-len(data.holdout_pairs) // r.batch_size),
            eval_scale=tile[0] * tile[1] * recipe.infer_scale ** 2 / (recipe.crop_size or max(tile)) ** 2))
        if done is None:
            return {}
        result, best, recipe, kept = done
        result["train_masks"] = data.stats.stray_summary()  # the console's stray line, in results.json
        if recipe.calibrate and data.holdout_pairs and not kept:  # a finished run's resume: its recorded ones stand
            result["calibration"] = calibrate(best, train_dir, batch_size=recipe.batch_size, device=evaluation_device(recipe))
            info(calibration_line(result["calibration"]))  # and in changes.txt, which calibrate wrote it to
            result["changes"] = read_changes(out)
        if val_dir is not None and not kept:
            result["val"] = evaluate_checkpoint(best, val_dir, batch_size=recipe.batch_size, device=evaluation_device(recipe))
            result["val_miou"] = result["val"]["miou"]
            result["val_dir"] = str(val_dir)
        result["checkpoint"] = best
        write_results(out, result)
        return result


def _crop_within_tiles(recipe: Recipe, sizes: torch.Tensor | None) -> tuple[Recipe, str | None]:
    """A ``crop_size`` larger than every training tile's longer side shrinks to that side (its
    crops would only be enlarged, at many times the cost), with the line saying so."""
    if not recipe.crop_size or sizes is None or not len(sizes):
        return recipe, None
    biggest = int(sizes.max())
    if recipe.crop_size <= biggest:
        return recipe, None
    line = (f"crop_size {recipe.crop_size} -> {biggest}: no training tile is larger than {biggest} px, and larger "
            "crops would only enlarge them")
    return recipe.with_overrides(crop_size=biggest), line


COURSE_SNAPSHOT = ("0010", "0097", "0107")
"""The shipped recipes' snapshot stems: the course's validation images of the seed report."""


def _snapshot_pairs(stems: tuple[str, ...], pool: list) -> tuple[list, str | None]:
    """The pairs whose masks are saved every epoch, and a note when they were chosen here.

    The course's stems (:data:`COURSE_SNAPSHOT`, a shipped recipe's) give way to the first pairs
    of ``pool`` (validation first) when any of them is missing: another data set may hold some of
    them by chance. A missing stem of any other list (``--snapshot``, a recipe of one's own) is
    an error: a typo.
    """
    found = {}
    for p in pool:
        found.setdefault(p.stem, p)
    missing = [s for s in stems if s not in found]
    if missing and tuple(stems) == COURSE_SNAPSHOT:
        chosen = list(found.values())[: len(stems)]
        which = "none of them is in" if len(missing) == len(stems) else \
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in"
        note = (f"snapshot: the recipe's stems {', '.join(stems)} are the course's, and {which} this data set; saving "
                f"{', '.join(p.stem for p in chosen)} instead (--snapshot names stems of your own)")
        return chosen, note
    if missing:
        raise VislabError(None, f"snapshot: no image with the stem {missing[0]} in the validation or training folder "
                                f"(the stems of --snapshot, else of the recipe: {', '.join(stems)}); give --snapshot "
                                "stems that exist, or --snapshot \"\" for none")
    return [found[s] for s in stems], None


def _snapshot_source_note(snaps: list, val_pairs: list, train_pairs: list) -> list[str]:
    """A line when snapshot images are not validation images: the progress figure of a pair the
    model trains on shows memory, not generalisation (the course's 0010/0097/0107 are in both
    of its folders, so a run without --val-dir picks the training tiles)."""
    val, trained = {id(p) for p in val_pairs}, {id(p) for p in train_pairs}
    others = [p for p in snaps if id(p) not in val]
    if not others:
        return []
    seen = [p.stem for p in others if id(p) in trained]
    held = [p.stem for p in others if id(p) not in trained]
    parts = ([f"{', '.join(seen)} from the training pairs it trains on"] if seen else []) + \
            ([f"{', '.join(held)} from its held-out pairs"] if held else [])
    fix = "; --val-dir VAL_DIR snapshots the validation images of these stems" if not val_pairs else ""
    return [f"snapshot: {' and '.join(parts)}, not from a validation folder{fix}"]


def _unturned_note(recipe: Recipe, sizes: torch.Tensor | None) -> list[str]:
    """A line when ``rot90`` cannot turn every training batch: quarter turns need square batches,
    and without ``crop_size`` a batch has the shape of its (padded) tiles."""
    if not recipe.rot90 or recipe.crop_size:
        return []
    if sizes is None or not len(sizes):
        return []
    oblong = int((sizes[:, 0] != sizes[:, 1]).sum())
    if not oblong:
        return []
    return [f"rot90 turns only square batches: {oblong} of {len(sizes)} tiles are not square, so batches that hold "
            "one are never turned; set crop_size for square crops that turn"]


MAP_STRIDE = 4
"""Distillation: a teacher's probabilities are kept at 1/4 of a tile's side (uint8: the course's
1,800 training tiles take 197 MiB); each training crop reads its box of them bilinearly."""


def _load_teachers(recipe: Recipe, desc: SegClasses) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """The teacher runs of ``recipe`` (networks at their own evaluation scale, without class
    offsets: the soft targets are what each learnt) and their metadata; they must describe the
    student's classes."""
    loaded = [load_segmenter(path, calibrated=False) for path in recipe.teacher]
    for (_, meta), path in zip(loaded, recipe.teacher):
        theirs = classes_of(meta)
        if not theirs.same_classes(desc):
            raise VislabError(path, f"teacher predicts other classes ({', '.join(theirs.names)}) than the training "
                                    f"folder's {desc.source} ({', '.join(desc.names)})")
    return loaded


def _teacher_maps(loaded: list[tuple[torch.nn.Module, dict[str, Any]]], data: Any, recipe: Recipe, *,
                  device: torch.device, batch_pixels: int = 8 * 512 * 512) -> list[torch.Tensor]:
    """Distillation's soft targets, computed once when training starts: for each training tile (in the
    training loader's order) the teachers' probabilities averaged (each normalising its own way),
    over the whole tile, as uint8 (C, ceil(h/4), ceil(w/4)). Each training crop then takes its
    box of them through its own scale, flips and turns (:func:`~vislab.data.segmentation.augment_tiles`).
    The teachers run on ``device`` (the training device), in batches of consecutive same-size tiles
    of at most ``batch_pixels``, and go back to the CPU after."""
    import math
    import time

    import torch.nn.functional as F

    from vislab.data.seg_classes import IGNORE
    from vislab.metrics import confusion_matrix
    from vislab.models.ensemble import AveragedNet

    teacher = AveragedNet(loaded).eval().to(device)
    t0, maps = time.perf_counter(), []
    k = data.classes.num_classes
    conf = torch.zeros(k, k, dtype=torch.long)  # the teachers' average against the training masks
    idx = list(data.train_idx)
    with torch.no_grad():
        while idx:  # batches of consecutive tiles of one size
            run = [data.tiles.tile(idx[0])]
            most = max(1, batch_pixels // (run[0][0].shape[-2] * run[0][0].shape[-1]))
            while len(run) < min(most, len(idx)) and (nxt := data.tiles.tile(idx[len(run)]))[0].shape == run[0][0].shape:
                run.append(nxt)  # read once: for its size, then kept
            idx = idx[len(run):]
            x = torch.stack([image for image, _ in run]).to(device).float() / 255
            h, w = x.shape[-2:]
            probs = teacher(x).exp()
            conf += confusion_matrix(torch.stack([ids for _, ids in run]), probs.argmax(1).cpu(), k,
                                     ignore_index=IGNORE)
            p = F.adaptive_avg_pool2d(probs, (math.ceil(h / MAP_STRIDE), math.ceil(w / MAP_STRIDE)))
            maps += list((p * 255).round().to(torch.uint8).cpu())
    teacher.cpu()  # the loaded networks themselves: no GPU memory held while the student trains
    if device.type == "cuda":
        torch.cuda.empty_cache()
    mb = sum(m.numel() for m in maps) / 2 ** 20
    their = "their" if len(recipe.teacher) > 1 else "its"
    info(f"distillation: soft targets per pixel from {', '.join(recipe.teacher)} (weight {recipe.distill:g}; "
         f"{their} mIoU on the training tiles {data.classes.miou(conf):.4f}): "
         f"{len(maps)} training tiles through the teachers in {time.perf_counter() - t0:.0f} s "
         f"({mb:.0f} MiB at 1/{MAP_STRIDE} of the side); each training crop reads its box of them")
    return maps


def progress(run_dir: str | Path, *, out_png: str | Path, epochs: list[int] | None = None) -> Path:
    """The mask-progression figure (PNG, PDF, SVG or JPEG by the extension of ``out_png``): a row
    per snapshot image; satellite, truth, early/middle/final."""
    from vislab.viz.progress import progress_figure
    from vislab.viz.save import figure_format

    figure_format(out_png)
    return progress_figure(Path(run_dir), Path(out_png), epochs=epochs)

