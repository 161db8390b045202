"""P2: train, evaluate, predict and show the progress of segmenters, on the course's land-cover
tiles (course mIoU) or any data set described by a classes file (standard mIoU; see
:mod:`vislab.data.seg_classes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from vislab.calibration import (fit_offsets, fitted_on, load_segmenter, offsets_file, save_offsets,
                                scale_candidates, shift_probs)
from vislab.config import Recipe, broken_rule, held_out_seed
from vislab.data.images import list_images, read_rgb
from vislab.data.seg_classes import IGNORE, SegClasses, classes_file, find_classes
from vislab.data.segmentation import (IMAGES_DIR, MASK, MASKS_DIR, SAT, list_masks, list_pairs, list_unlabelled,
                                      pair_lines, pairs_digest, scan_masks, stray_summary)
from vislab.data.manifest import difference_from_record, lines_digest
from vislab.errors import VislabError
from vislab.io import check_output_file
from vislab.log import info
from vislab.metrics import confusion_matrix, pixel_accuracy
from vislab.pipelines.scores import check_comparable, check_same_classes_early, compared, pooled_interval
from vislab.models.tta import averaged_probs, check_tta
from vislab.models.ensemble import members


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
    from vislab.engine.run_folder import add_change, check_resumed_data, check_run_folder, read_changes, write_results
    from vislab.pipelines.settings import (AtTrainingStart, empty_holdout, resolve_normalisation,
                                          teacher_split_notes)
    from vislab.pipelines.training import TrainingJob, fit_run, input_record

    out = Path(out_dir)
    check_run_folder(out, resume=resume, data_dirs=(train_dir, val_dir))
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
                                         "the training tiles' own per-channel statistics (no pretrained weights)")
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
    changes += teacher_split_notes(teachers, list(recipe.teacher), recipe, digest=digest, digest_key="train_pairs_digest")
    if snap_note:
        recipe = recipe.with_overrides(snapshot=tuple(p.stem for p in snaps))
        changes.append(snap_note)
    unseen = data.stats.unseen_classes(desc, [p.stem for p in data.train_pairs])
    if unseen and not resume:  # a resume's first piece said it
        changes.append(unseen)
    common = data.stats.common_size()
    tile = common or (512, 512)
    meta = {"seg_classes": desc.to_dict(), "stored_hw": list(common) if common else None,
            "train_pairs_digest": digest,  # lists, not tuples: hparams.yaml stays plain YAML
            "classes_named": classes is not None}  # --classes over the folders' own files, for later scores

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
    result, best, recipe = done
    result["train_masks"] = data.stats.stray_summary()  # the console's stray line, in results.json
    if recipe.calibrate and data.holdout_pairs and "calibration" not in result:  # kept by a finished run's resume
        result["calibration"] = calibrate(best, train_dir, batch_size=recipe.batch_size)
        cal = result["calibration"]
        at = f" at evaluation scale {cal['infer_scale']:g}" if cal["infer_scale"] != cal["trained_scale"] else ""
        line = f"class offsets fitted on the held-out pairs: mIoU {cal['miou_before']:.4f} -> {cal['miou_after']:.4f}{at}"
        info(line)
        add_change(out, line)  # every later score, prediction and export uses them: the run folder says so
        result["changes"] = read_changes(out)
    if val_dir is not None:
        result["val"] = evaluate_checkpoint(best, val_dir, batch_size=recipe.batch_size)
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
        note = (f"snapshot: the recipe's stems {', '.join(stems)} are the course's, and {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not in this data set; saving "
                f"{', '.join(p.stem for p in chosen)} instead (--snapshot names stems of your own)")
        return chosen, note
    if missing:
        raise VislabError(None, f"snapshot: no image with the stem {missing[0]} in the validation or training folder "
                                f"(the stems of --snapshot, else of the recipe: {', '.join(stems)}); give --snapshot "
                                "stems that exist, or --snapshot \"\" for none")
    return [found[s] for s in stems], None


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, meta: dict[str, Any], images: torch.Tensor, *, tta: str = "none",
                  device: torch.device | None = None, autocast: bool = False) -> torch.Tensor:
    """Class probabilities (N, C, H, W) for a uint8 batch (N, 3, H, W), averaged over TTA views."""
    from vislab.data.tensors import normalize

    check_tta(tta)
    dev = device or next(model.parameters()).device
    x = normalize(images.to(dev), tuple(meta["mean"]), tuple(meta["std"]))
    return averaged_probs(model, x, tta, dense=True, autocast=autocast)


def _same_size_runs(images: list[torch.Tensor], batch_size: int) -> list[range]:
    """Consecutive index ranges of at most ``batch_size`` images that share one size."""
    runs, i = [], 0
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch_size and images[j].shape == images[i].shape:
            j += 1
        runs.append(range(i, j))
        i = j
    return runs


def _output_name(image: Path) -> str:
    stem = image.stem
    return f"{stem[: -len(SAT)]}{MASK}.png" if stem.endswith(SAT) else f"{stem}.png"


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

    from vislab.models.ensemble import AveragedNet

    teacher = AveragedNet(loaded).eval().to(device)
    t0, maps = time.perf_counter(), []
    idx = list(data.train_idx)
    with torch.no_grad():
        while idx:  # batches of consecutive tiles of one size
            run = [data.tiles.tile(idx[0])[0]]
            most = max(1, batch_pixels // (run[0].shape[-2] * run[0].shape[-1]))
            while len(run) < min(most, len(idx)) and data.tiles.tile(idx[len(run)])[0].shape == run[0].shape:
                run.append(data.tiles.tile(idx[len(run)])[0])
            idx = idx[len(run):]
            x = torch.stack(run).to(device).float() / 255
            h, w = x.shape[-2:]
            p = F.adaptive_avg_pool2d(teacher(x).exp(), (math.ceil(h / MAP_STRIDE), math.ceil(w / MAP_STRIDE)))
            maps += list((p * 255).round().to(torch.uint8).cpu())
    teacher.cpu()  # the loaded networks themselves: no GPU memory held while the student trains
    if device.type == "cuda":
        torch.cuda.empty_cache()
    mb = sum(m.numel() for m in maps) / 2 ** 20
    info(f"distillation: soft targets per pixel from {', '.join(recipe.teacher)} (weight {recipe.distill:g}): "
         f"{len(maps)} training tiles through the teachers in {time.perf_counter() - t0:.0f} s "
         f"({mb:.0f} MiB at 1/{MAP_STRIDE} of the side); each training crop reads its box of them")
    return maps


def classes_of(meta: dict[str, Any]) -> SegClasses:
    """The data set description a checkpoint (or its ONNX export) was trained with."""
    return SegClasses.from_dict(meta.get("seg_classes"))


def check_described_alike(folder: str | Path, classes: SegClasses, *, explicit: str | None = None) -> str | None:
    """A folder whose own classes file describes other classes than ``classes`` is an error.
    With ``explicit`` (the words naming ``classes``, which were named with ``--classes``, now or
    when the run trained) the folder's file is replaced instead, even one that cannot be read,
    and the line saying so is returned (None when nothing differs)."""
    found = classes_file(folder)
    if found is None:
        return None
    from vislab.data.seg_classes import load_classes

    try:
        theirs = load_classes(found)
    except VislabError as exc:
        if explicit is None:
            raise
        return f"{explicit} replaces {found}, which cannot be read ({exc.message})"
    apart = theirs.differences(classes)
    if not apart:
        return None
    key = apart[0]  # the first field that differs, with both values: names alike may hide the difference
    words = f"describes other classes than {classes.source}: {key} {theirs.to_dict()[key]} against {classes.to_dict()[key]}"
    if explicit is None:
        raise VislabError(found, words)
    return f"{explicit} replaces {found}, which {words}"


def _say_described(folder: str | Path, desc: SegClasses, explicit: str | None) -> None:
    """:func:`check_described_alike`, its replacement line (if any) said on the console."""
    line = check_described_alike(folder, desc, explicit=explicit)
    if line:
        info(line)


def _check_run_classes(folder: str | Path, desc: SegClasses, metas: list[dict[str, Any]]) -> None:
    """:func:`check_described_alike` for a trained run's classes: a run trained with ``--classes``
    over its folders' own files (``classes_named``) replaces them here too, said; else refused."""
    named = any(m.get("classes_named") for m in metas)
    _say_described(folder, desc, f"the run's --classes {desc.source}" if named else None)


def predict(ckpt: str | Path, img_dir: str | Path, out_dir: str | Path, *, tta: str = "none",
            batch_size: int = 4, device: str | None = None, engine: str = "auto", offsets: bool = True) -> int:
    """Write a mask per image in the data set's format (class ids for index masks, colours for
    palette and course masks): ``xxxx_sat.jpg`` -> ``xxxx_mask.png``, ``xxxx.jpg`` -> ``xxxx.png``.

    ``img_dir`` holds the images (or an ``images/`` folder of them). Masks have the input's size.
    Images are decoded a batch at a time and the masks written into a hidden staging folder of
    ``out_dir`` that is moved into place only when every image has been predicted: a bad file
    leaves no partial output, and memory holds one batch. ``ckpt`` may also be an exported
    ``.onnx``; ``engine`` as in :func:`vislab.export.load_predictor` (the ONNX graph serves the
    most common image size; an ``.onnx`` file that cannot take every image, or every TTA view,
    is refused before any work). ``offsets``: apply the checkpoint's class offsets from
    ``vislab seg calibrate`` if it has any.
    """
    import shutil
    import tempfile
    from collections import Counter

    from vislab.data.images import image_size
    from vislab.models.checkpoints import pick_device
    from vislab.export import load_predictor, model_file

    from vislab.pipelines.settings import check_positive

    check_positive(batch_size=batch_size)
    paths = members(ckpt)
    for p in paths:
        model_file(p, engine)
    check_tta(tta)
    files = list_unlabelled(img_dir)
    names = _check_outputs(files, Path(out_dir))
    sizes = [image_size(f) for f in files]
    hw = Counter(sizes).most_common(1)[0][0]
    dev = pick_device(device)
    models = [(lambda mm: (mm[0].to(dev), mm[1]))(load_predictor(p, task="seg", engine=engine, hw=hw, device=device,
                                                                 calibrated=offsets))
              for p in paths]
    for (model, _), path in zip(models, paths):
        _check_fixed_input(model, path, files, sizes, tta)
    classes = _ensemble_classes(models, paths)
    shifts = _say_offsets(models, offsets)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VislabError(out, "is a file, but an output folder is needed")
    if out.is_dir() and any(out.glob(f"*{SAT}.*")):  # its masks would be ground truth, not a prediction
        raise VislabError(out, "holds satellite images: a data folder, whose masks the prediction would replace; "
                               "predict into another folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".vislab-predict-", dir=out))
    except OSError as exc:
        raise VislabError(out, f"cannot write here ({exc.strerror or exc})") from None
    replaced = sum((out / name).exists() for name in names)
    if replaced:
        info(f"{out}: {replaced} masks of an earlier prediction are replaced")
    done = False
    try:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images = [read_rgb(f) for f in chunk]
            for run in _same_size_runs(images, batch_size):
                probs = _averaged(models, torch.stack(images[run.start : run.stop]), tta=tta, device=dev,
                                  shifts=shifts)
                for i, ids in zip(run, probs.argmax(1).cpu()):
                    (staging / names[start + i]).write_bytes(classes.mask_png(ids))
        for name in names:
            (staging / name).replace(out / name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            shutil.rmtree(out, ignore_errors=True)
    return len(files)


def _check_outputs(files: list[Path], out: Path) -> list[str]:
    """The mask file name of each image, in order. Before any work: two images whose masks would
    get one name, and an output folder that is the images' own (its masks, or the images
    themselves, would be replaced), are refused."""
    named: dict[str, Path] = {}
    for f in files:
        name = _output_name(f)
        if name in named:
            raise VislabError(f, f"and {named[name].name} would both be predicted into {name}; rename one")
        named[name] = f
    if out.is_dir() and any(out.resolve() == d.resolve() for d in {f.parent for f in files}):
        raise VislabError(out, "is the folder of the input images: the predicted masks would replace its files "
                               "(ground-truth masks, or the images); write them to another folder")
    if out.name == MASKS_DIR and (out.parent / IMAGES_DIR).is_dir() and any(out.iterdir()):
        raise VislabError(out, f"is the {MASKS_DIR}/ folder of a data set (beside {IMAGES_DIR}/): the predicted masks "
                               "would replace its ground truth; write them to another folder")
    return list(named)


def _check_fixed_input(model: Any, path: str, files: list[Path], sizes: list[tuple[int, int]], tta: str) -> None:
    """An ONNX graph of one input size (and no PyTorch network to fall back on) must fit every
    image and every TTA view: refused up front, naming the first image it cannot take."""
    from vislab.export import OnnxNet

    if not isinstance(model, OnnxNet) or model.fallback is not None or model.free_size:
        return
    want = tuple(int(v) for v in model.shape[1:])
    turns = tta == "d4"
    for f, (h, w) in zip(files, sizes):
        if (h, w) != want:
            raise VislabError(f, f"is {w}x{h} (width x height, as every image size vislab names), but {path} was "
                                 f"exported for {want[1]}x{want[0]} inputs; export it again with --size {h} {w} "
                                 "(height, width) or predict with the checkpoint")
        if turns and h != w:
            raise VislabError(f, f"is not square, so --tta d4 turns it to {h}x{w} (width x height), which {path} "
                                 f"(exported for {want[1]}x{want[0]}) cannot take; use --tta flip or predict with "
                                 "the checkpoint")


def _pred_files(pred_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in list_images(pred_dir, what="predicted masks"):
        stem = f.stem[: -len(MASK)] if f.stem.endswith(MASK) else f.stem
        if stem.endswith(SAT):  # its masks would be scored as predictions: the arguments are likely swapped
            raise VislabError(pred_dir, f"holds satellite images (e.g. {f.name}), so it is a data folder, not "
                                        "predictions: `seg eval` takes PRED_DIR first, then the ground truth")
        if stem in found:
            raise VislabError(f, f"two predictions for {stem} ({found[stem].name} and {f.name})")
        found[stem] = f
    return found


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, *, classes: str | Path | None = None) -> dict[str, Any]:
    """The mIoU of a folder of predicted masks against the ground truth of ``gt_dir``.

    ``gt_dir``: ``xxxx_mask.png`` files, a ``masks/`` folder, or a folder of masks. The masks
    are read (and the mIoU chosen) by ``classes``, else the ``classes.yaml`` of ``gt_dir`` or
    the folder above, else the course's colour code and course mIoU. Files pair by stem
    (``xxxx.png`` or ``xxxx_mask.png``); a missing or extra prediction, a size mismatch or a
    value that is no class (index and palette sets) is an error naming the file. Course masks
    are read by the course's 3-bit rule on both sides, as its evaluator does; red pixels in a
    prediction (no class) count as unknown and are said on the console and counted in the result.
    """
    desc = find_classes(gt_dir, classes)
    if classes is not None:
        _say_described(gt_dir, desc, f"--classes {desc.source}")
    gt = list_masks(gt_dir)
    pred = _pred_files(Path(pred_dir))
    missing = sorted(set(gt) - set(pred))
    extra = sorted(set(pred) - set(gt))
    if missing:
        raise VislabError(pred_dir, f"no prediction for {len(missing)} ground-truth masks, e.g. {gt[missing[0]].name}")
    if extra:
        raise VislabError(pred[extra[0]], f"prediction has no ground truth ({len(extra)} such files)")
    k = desc.num_classes
    confs, strays, pred_strays = [], [], []
    for stem in sorted(gt):
        truth, stray = desc.read_mask(gt[stem])
        strays.append((stem, stray))
        guess, pred_stray = desc.read_mask(pred[stem], tuple(truth.shape), like=f"its ground truth {gt[stem].name}")
        pred_strays.append((pred[stem].name, pred_stray))
        if bool((guess == IGNORE).any()):
            raise VislabError(pred[stem], f"prediction leaves {int((guess == IGNORE).sum())} pixels ignored; "
                                          "every pixel must be given a class")
        confs.append(confusion_matrix(truth, guess, k, ignore_index=IGNORE))
    predicted = stray_summary(pred_strays)
    if predicted["stray_files"]:
        info(f"{pred_dir}: {predicted['stray_files']} predicted masks hold {predicted['stray_pixels']} red pixels, "
             f"which are in no class and count as unknown (e.g. {min(predicted['stray_masks'])})")
    return _seg_metrics(torch.stack(confs), desc, files=len(gt), **stray_summary(strays),
                        prediction_stray_pixels=predicted["stray_pixels"])


def _seg_metrics(per_file: torch.Tensor, classes: SegClasses, **extra: Any) -> dict[str, Any]:
    """The scores of ``per_file`` (F, K, K) confusion matrices pooled, and the mIoU's 95 %
    interval over files (None for a single file)."""
    conf = per_file.sum(0)
    ious = classes.iou(conf)
    return {
        "miou": round(classes.miou(conf), 6),
        "miou_interval": pooled_interval(per_file, classes.mious),
        "metric": classes.metric_name,
        "iou": {classes.names[c]: (None if torch.isnan(v) else round(float(v), 6)) for c, v in enumerate(ious)},
        "pixel_accuracy": round(pixel_accuracy(conf), 6),
        "classes": list(classes.names),
        "colours": [list(c) for c in classes.colours],
        "confusion": conf.tolist(),
        **extra,
    }


def evaluate_checkpoint(ckpt: str | Path, img_dir: str | Path, *, tta: str = "none", batch_size: int = 4,
                        device: str | None = None, offsets: bool = True, held_out: bool = False,
                        against: str | None = None) -> dict[str, Any]:
    """The mIoU of a checkpoint on a folder of pairs (no files written), its masks read by the
    checkpoint's description (a folder's own classes file that says otherwise is refused, unless
    the run was trained with ``--classes`` over it: replaced, said); ``offsets`` as in :func:`predict`. ``held_out``: ``img_dir`` is the
    runs' training folder and only the pairs their recipe held out are scored (the place to choose
    between runs, TTAs or ensembles without touching validation; offsets were fitted there too).
    ``against``: another run (or ensemble) scored on the same pairs with the same settings;
    ``result["against"]`` holds its mIoU and the difference, with a paired bootstrap interval."""
    settings = dict(tta=tta, batch_size=batch_size, device=device, offsets=offsets, held_out=held_out)
    if against is not None:
        check_same_classes_early(str(ckpt), against, "seg", lambda a, b: classes_of(a).same_classes(classes_of(b)))
    confs, desc, stems, extra = _scored_pairs(ckpt, img_dir, **settings)
    result = _seg_metrics(confs, desc, files=len(stems), tta=tta, **extra)
    if against is not None:
        theirs, their_desc, their_stems, _ = _scored_pairs(against, img_dir, **settings)
        check_comparable(against, same_classes=their_desc.same_classes(desc), same_items=their_stems == stems,
                         items="pairs")
        result["against"] = compared(against, "miou", result["miou"], desc.miou(theirs.sum(0)), confs, theirs,
                                     desc.mious, f"{len(stems)} files")
    return result


def _scored_pairs(ckpt: str | Path, img_dir: str | Path, *, tta: str, batch_size: int, device: str | None,
                  offsets: bool, held_out: bool) -> tuple[torch.Tensor, SegClasses, list[str], dict[str, Any]]:
    """A checkpoint's (or ensemble's) confusion matrix on each labelled pair (F, K, K), its
    classes, the pairs' stems and the result's other fields (strays, offsets, members, split)."""
    from vislab.models.checkpoints import pick_device
    from vislab.pipelines.settings import held_out_of

    paths = members(ckpt)
    dev = pick_device(device)
    models = [(lambda mm: (mm[0].to(dev), mm[1]))(load_segmenter(p, calibrated=offsets)) for p in paths]
    desc = _ensemble_classes(models, paths)
    _check_run_classes(img_dir, desc, [m for _, m in models])
    shifts = _say_offsets(models, offsets)
    pairs = list_pairs(img_dir)
    split = held_out_of(models, paths, digest_key="train_pairs_digest") if held_out else None
    if split:
        pairs = held_out_pairs(pairs, *split, folder=img_dir, record=paths[0])
    k = desc.num_classes
    confs, strays = [], []
    for pair, (probs, truth, stray) in zip(pairs, _labelled_probs(models, pairs, desc, tta=tta, batch_size=batch_size,
                                                                  device=dev, shifts=shifts)):
        confs.append(confusion_matrix(truth, probs.argmax(0).cpu(), k, ignore_index=IGNORE))
        strays.append((pair.stem, stray))
    extra: dict[str, Any] = stray_summary(strays)
    if any(v is not None for v in shifts):
        rounded = [None if v is None else [round(float(x), 6) for x in v] for v in shifts]
        extra["offsets"] = rounded[0] if len(paths) == 1 else rounded  # an ensemble's: one list per member
    if len(paths) > 1:
        extra["ensemble"] = paths
    if split:
        extra["held_out"] = {"fraction": split[0], "seed": split[1]}
    return torch.stack(confs), desc, [p.stem for p in pairs], extra


def held_out_pairs(pairs: list, fraction: float, seed: int, digest: str | None, folder: str | Path,
                   hint: str = "", record: str | Path | None = None) -> list:
    """The pairs of a training folder that a run with this held-out fraction and seed did not
    train on (its split rebuilt); ``digest``: the run's ``train_pairs_digest``, which the folder's
    pairs must match (None: an older checkpoint, not checked; ``record``: the run (folder or
    checkpoint), whose record of its items names those that differ); ``hint`` ends the refusal."""
    from vislab.data.segmentation import holdout_split

    if digest is not None and digest != pairs_digest(pairs):
        how = difference_from_record(record, pair_lines(pairs), value="file size") or "its pairs differ"
        raise VislabError(folder, f"is not the folder this checkpoint was trained on ({how}), so its "
                                  f"held-out split cannot be rebuilt; pass the training folder{hint}")
    _, ho = holdout_split(len(pairs), fraction=fraction, seed=seed)
    return [pairs[i] for i in ho]


def _ensemble_classes(models: list[tuple[Any, dict[str, Any]]], paths: list[str]) -> SegClasses:
    from vislab.models.ensemble import check_same_classes

    described = [{"classes": {"names": list(classes_of(m).names)}} for _, m in models]
    check_same_classes(described, paths, keys=("classes",))
    first = classes_of(models[0][1])
    for (_, meta), path in zip(models[1:], paths[1:]):  # the same classes, but masks read another way
        other = classes_of(meta)
        apart = other.differences(first)
        if apart:
            key = apart[0]
            raise VislabError(path, f"reads its masks otherwise than {paths[0]} ({key} {other.to_dict()[key]} "
                                    f"against {first.to_dict()[key]}); an ensemble's members read and write masks alike")
    return first


def _member_offsets(meta: dict[str, Any], enabled: bool) -> torch.Tensor | None:
    """A model's calibrated class offsets (a checkpoint's from :func:`load_segmenter`, an
    export's from its metadata), or None when it has none or ``enabled`` is False."""
    stored = meta.get("class_offsets") if enabled else None
    return None if stored is None else torch.tensor([float(v) for v in stored])


def _say_offsets(models: list[tuple[Any, dict[str, Any]]], enabled: bool) -> list[torch.Tensor | None]:
    """Each model's offsets; for an ensemble, one console line on how they are used."""
    shifts = [_member_offsets(meta, enabled) for _, meta in models]
    if len(models) > 1 and any(v is not None for v in shifts):
        info(f"ensemble: each member's probabilities are shifted by its own class offsets before they are averaged "
             f"({sum(v is not None for v in shifts)} of {len(models)} members have offsets)")
    return shifts


def _averaged(models: list[tuple[Any, dict[str, Any]]], images: torch.Tensor, *, tta: str,
              device: torch.device, shifts: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Class probabilities averaged over the models (each with its own normalisation, scale and
    class offsets, ``shifts[i]`` from :func:`_say_offsets`: ``softmax(log p + offsets)`` per member;
    None: none shifted)."""
    total = None
    for (model, meta), shift in zip(models, shifts or [None] * len(models)):
        p = shift_probs(predict_probs(model, meta, images, tta=tta, device=device), shift)
        total = p if total is None else total + p
    assert total is not None
    return total / len(models)


def _labelled_probs(models: list[tuple[Any, dict[str, Any]]], pairs: list, classes: SegClasses, *, tta: str,
                    batch_size: int, device: torch.device,
                    shifts: Sequence[torch.Tensor | None] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(class probabilities (C, H, W) on ``device``, averaged over ``models`` as in :func:`_averaged`,
    true class ids (H, W), the mask's pixels of no class) per pair, in order."""
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        imgs = [read_rgb(p.image) for p in chunk]
        for run in _same_size_runs(imgs, batch_size):
            probs = _averaged(models, torch.stack(imgs[run.start : run.stop]), tta=tta, device=device, shifts=shifts)
            for i, p in zip(run, probs):
                truth, stray = classes.read_mask(chunk[i].mask, tuple(imgs[i].shape[1:]))
                yield p, truth, int(stray)


def calibrate(ckpt: str | Path, pairs_dir: str | Path, *, split: str = "holdout", tta: str = "none",
              batch_size: int = 4, device: str | None = None, stride: int = 2,
              scales: Sequence[float] | None = None) -> dict[str, Any]:
    """Fit per-class logit offsets of a checkpoint on labelled pairs it was not trained on, for
    the mIoU of its data set, and store them beside it (see :mod:`vislab.calibration`).

    ``split="holdout"``: ``pairs_dir`` is the run's training folder and its held-out split (the
    recipe's fraction and seed) is used; ``split="all"``: every pair of ``pairs_dir``. Pixels are
    sampled every ``stride`` rows and columns. ``scales``: the evaluation scales to try besides the
    recipe's ``infer_scale`` (default :func:`vislab.calibration.scale_candidates` of it); offsets are
    fitted at each and the scale with the best mIoU is kept (a tie keeps the trained scale, else
    the smaller). ``miou_before`` is the trained scale's without offsets, ``miou_after`` the kept
    scale's with them.
    """
    from vislab.models.checkpoints import checkpoint_file, load_network, pick_device

    path = checkpoint_file(ckpt)
    check_output_file(offsets_file(path))  # where the result goes, before the work
    model, meta = load_network(path, task="seg")
    desc = classes_of(meta)
    _check_run_classes(pairs_dir, desc, [meta])  # as in evaluate_checkpoint
    pairs = list_pairs(pairs_dir)
    recipe = meta.get("recipe", {})
    if split == "holdout":
        fraction = float(recipe.get("holdout", 0.0))
        if fraction <= 0:
            raise VislabError(path, "was trained without a held-out split; calibrate on labelled pairs it never "
                                    "saw with --split all")
        pairs = held_out_pairs(pairs, fraction, held_out_seed(recipe), meta.get("train_pairs_digest"), pairs_dir,
                               hint=", or --split all with pairs the model never saw", record=path)
    elif split != "all":
        raise VislabError(None, f"unknown --split {split!r}; choose holdout or all")
    if not pairs:
        raise VislabError(pairs_dir, "no labelled pairs to calibrate on")
    seen = split == "all" and meta.get("train_pairs_digest") == pairs_digest(pairs)
    if seen:
        info(f"{pairs_dir}: these are the pairs {path.name} was trained on, so offsets fitted on them lean towards "
             "what it learnt; --split holdout fits them on its held-out pairs only")
    trained = float(recipe.get("infer_scale", 1.0))
    if not hasattr(model, "scale"):
        if scales and list(scales) != [trained]:
            raise VislabError(path, f"{meta['model']} predicts at one scale only; calibrate it without --scales")
        tried = [trained]
    else:
        tried = sorted({float(v) for v in scales} | {trained}) if scales else scale_candidates(trained)
    bad = [(v, rule) for v in tried if (rule := broken_rule("infer_scale", v))]
    if bad:
        raise VislabError(None, f"--scales: {bad[0][0]:g} is not {bad[0][1]}")
    dev = pick_device(device)
    model = model.to(dev)
    per_scale: list[dict[str, Any]] = []
    best: tuple[float, torch.Tensor, float] | None = None  # (mIoU with offsets, offsets, scale)
    for scale in tried:
        if hasattr(model, "scale"):
            model.scale = scale
        offsets, before, after = _fit_at_scale(model, meta, pairs, desc, tta=tta, batch_size=batch_size,
                                               device=dev, stride=stride)
        per_scale.append({"scale": scale, "miou_before": round(before, 6), "miou_after": round(after, 6)})
        if len(tried) > 1:
            info(f"evaluation scale {scale:g}: mIoU {before:.4f}, {after:.4f} with its offsets")
        if best is None or (after, scale == trained, -scale) > (best[0], best[2] == trained, -best[2]):
            best = (after, offsets, scale)
    assert best is not None
    after, offsets, chosen = best
    before = next(s["miou_before"] for s in per_scale if s["scale"] == trained)
    earlier = fitted_on(path)
    if earlier:
        info(f"{offsets_file(path)}: replaces {earlier}")
    record = {"classes": list(desc.names), "pairs": str(pairs_dir), "split": split, "files": len(pairs),
              "trained_on": seen, "tta": tta, "miou_before": round(before, 6), "miou_after": round(after, 6),
              "trained_scale": trained, "infer_scale": chosen, "scales": per_scale, "pixel_stride": stride}
    record["file"] = str(save_offsets(path, offsets, **record))
    record["offsets"] = [round(float(v), 6) for v in offsets]
    return record


def _fit_at_scale(model: Any, meta: dict[str, Any], pairs: list, desc: SegClasses, *, tta: str, batch_size: int,
                  device: torch.device, stride: int) -> tuple[torch.Tensor, float, float]:
    """:func:`vislab.calibration.fit_offsets` on the probabilities of ``model`` as it stands."""
    logps, truths = [], []
    for probs, truth, _ in _labelled_probs([(model, meta)], pairs, desc, tta=tta, batch_size=batch_size, device=device):
        logps.append(probs[:, ::stride, ::stride].clamp_min(1e-8).log().half().cpu())
        truths.append(truth[::stride, ::stride])
    if len({t.shape for t in truths}) > 1:  # tiles of several sizes: padding labelled IGNORE is left out
        from vislab.data.segmentation import pad_collate

        lp, tr, *_ = pad_collate([(lg, t, 0) for lg, t in zip(logps, truths)], multiple=1)
    else:
        lp, tr = torch.stack(logps), torch.stack(truths)
    # only the scored classes move: the course's raised "unknown" would buy mIoU by abstaining on hard pixels
    return fit_offsets(lp, tr, searched=range(desc.scored), miou=desc.miou)


def progress(run_dir: str | Path, *, out_png: str | Path, epochs: list[int] | None = None) -> Path:
    """The mask-progression figure (PNG, PDF, SVG or JPEG by the extension of ``out_png``): a row
    per snapshot image; satellite, truth, early/middle/final."""
    from vislab.viz.progress import progress_figure
    from vislab.viz.save import figure_format

    figure_format(out_png)
    return progress_figure(Path(run_dir), Path(out_png), epochs=epochs)
