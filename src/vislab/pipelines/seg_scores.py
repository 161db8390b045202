"""P2: the mIoU of predicted masks (`seg eval`) and of checkpoints on labelled pairs (`seg score`,
held-out splits rebuilt), and `seg calibrate`'s class offsets and evaluation scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from vislab.calibration import (at_search_edge, crossfit_miou, crossfit_words, fit_offsets, fitted_folder, fitted_on,
                                load_segmenter, offsets_file, save_offsets, scale_candidates, scale_chosen, stored_record)
from vislab.config import broken_rule, held_out_seed
from vislab.data.images import list_images, say_transparent
from vislab.data.manifest import difference_from_record
from vislab.data.seg_classes import IGNORE, SegClasses, check_run_classes, classes_of, find_classes, say_described
from vislab.data.segmentation import MASK, SAT, check_lossless, list_masks, list_pairs, pair_lines, pairs_digest, stray_summary
from vislab.errors import VislabError
from vislab.io import check_output_file
from vislab.log import info
from vislab.metrics import confusion_matrix, pixel_accuracy
from vislab.models.ensemble import members
from vislab.pipelines.scores import check_comparable, check_same_classes_early, compared, pooled_interval
from vislab.pipelines.seg_predict import ensemble_classes, labelled_probs, say_offsets
from vislab.runfolders import is_run


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
    check_lossless(found.values(), "predicted mask")
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
        say_described(gt_dir, desc, f"--classes {desc.source}")
    gt = list_masks(gt_dir)
    pred = _pred_files(Path(pred_dir))
    say_transparent(gt_dir, list(gt.values()), "masks")
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
    absent = [classes.names[c] for c in range(classes.scored) if torch.isnan(ious[c])]
    return {
        "miou": round(classes.miou(conf), 6),
        "miou_interval": pooled_interval(per_file, classes.mious),
        "metric": classes.metric_name,
        "iou": {classes.names[c]: (None if torch.isnan(v) else round(float(v), 6)) for c, v in enumerate(ious)},
        "pixel_accuracy": round(pixel_accuracy(conf), 6),
        "classes": list(classes.names),
        "colours": [list(c) for c in classes.colours],
        "confusion": conf.tolist(),
        "absent": absent,  # scored classes in neither truth nor prediction: left out of the mean
        **extra,
    }


def evaluate_checkpoint(ckpt: str | Path, img_dir: str | Path, *, tta: str = "none", batch_size: int = 4,
                        device: str | None = None, offsets: bool = True, held_out: bool = False,
                        against: str | None = None) -> dict[str, Any]:
    """The mIoU of a checkpoint on a folder of pairs (no files written), its masks read by the
    checkpoint's description (a folder's own classes file that says otherwise is refused, unless
    the run was trained with ``--classes`` over it: replaced, said); ``offsets`` as in :func:`vislab.pipelines.seg_predict.predict`. ``held_out``: ``img_dir`` is the
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
        theirs, their_desc, their_stems, _ = _scored_pairs(against, img_dir, **settings, say=False)
        check_comparable(against, same_classes=their_desc.same_classes(desc), same_items=their_stems == stems,
                         items="pairs")
        result["against"] = compared(against, "miou", result["miou"], desc.miou(theirs.sum(0)), confs, theirs,
                                     desc.mious, f"{len(stems)} files")
    return result


def _scored_pairs(ckpt: str | Path, img_dir: str | Path, *, tta: str, batch_size: int, device: str | None,
                  offsets: bool, held_out: bool,
                  say: bool = True) -> tuple[torch.Tensor, SegClasses, list[str], dict[str, Any]]:
    """A checkpoint's (or ensemble's) confusion matrix on each labelled pair (F, K, K), its
    classes, the pairs' stems and the result's other fields (strays, offsets, members, split);
    ``say``: say images and masks with transparent pixels (False: the second scoring of a comparison)."""
    from vislab.models.checkpoints import pick_device
    from vislab.pipelines.settings import held_out_of

    paths = members(ckpt)
    dev = pick_device(device)
    models = [(lambda mm: (mm[0].to(dev), mm[1]))(load_segmenter(p, calibrated=offsets, tta=tta)) for p in paths]
    desc = ensemble_classes(models, paths)
    check_run_classes(img_dir, desc, [m for _, m in models])
    shifts = say_offsets(models, offsets)
    _say_scored_where_fitted(paths, img_dir, offsets)
    pairs = list_pairs(img_dir)
    split = held_out_of(models, paths, digest_key="train_pairs_digest") if held_out else None
    if split:
        pairs = held_out_pairs(pairs, *split, folder=img_dir, record=paths[0])
    if say:
        say_transparent(img_dir, [p.image for p in pairs])
        say_transparent(img_dir, [p.mask for p in pairs if p.mask is not None], "masks")
    k = desc.num_classes
    confs, strays = [], []
    for pair, (probs, truth, stray) in zip(pairs, labelled_probs(models, pairs, desc, tta=tta, batch_size=batch_size,
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
        how = difference_from_record(record, pair_lines(pairs), value="file size", digest=digest) or "its pairs differ"
        raise VislabError(folder, f"is not the folder this checkpoint was trained on ({how}), so its "
                                  f"held-out split cannot be rebuilt; pass the training folder{hint}")
    _, ho = holdout_split(len(pairs), fraction=fraction, seed=seed)
    return [pairs[i] for i in ho]


def calibrate(ckpt: str | Path, pairs_dir: str | Path, *, split: str = "holdout", tta: str = "none",
              batch_size: int = 4, device: str | None = None, stride: int = 2,
              scales: Sequence[float] | None = None, keep_offsets: bool = False) -> dict[str, Any]:
    """Fit per-class logit offsets of a checkpoint on labelled pairs it was not trained on, for
    the mIoU of its data set, and store them beside it (see :mod:`vislab.calibration`).

    ``split="holdout"``: ``pairs_dir`` is the run's training folder and its held-out split (the
    recipe's fraction and seed) is used; ``split="all"``: every pair of ``pairs_dir``. Pixels are
    sampled every ``stride`` rows and columns. ``scales``: the evaluation scales to try besides the
    recipe's ``infer_scale`` (default :func:`vislab.calibration.scale_candidates` of it); offsets are
    fitted at each and the scale with the best mIoU is kept (a tie keeps the trained scale, else
    the smaller). ``miou_before`` is the trained scale's without offsets, ``miou_after`` the kept
    scale's with them. The kept offsets are checked by a 2-fold cross-fit
    (:func:`vislab.calibration.crossfit_miou`): when offsets fitted on one half of the pairs lower
    the other half's mIoU, they are dropped (stored as zeros, ``offsets_dropped`` true) and the
    scale is chosen by the mIoU without offsets, unless ``keep_offsets``; so are offsets fitted
    on a single pair, which nothing can check.
    """
    from vislab.models.checkpoints import checkpoint_file, load_network, pick_device

    path = checkpoint_file(ckpt)
    check_output_file(offsets_file(path))  # where the result goes, before the work
    model, meta = load_network(path, task="seg")
    desc = classes_of(meta)
    check_run_classes(pairs_dir, desc, [meta])  # as in evaluate_checkpoint
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
    validation = split == "all" and _is_validation_of(path, pairs_dir)
    if validation:
        info(f"{pairs_dir}: these are the run's validation pairs (its --val-dir): every later score on them uses "
             "offsets fitted there and reads high; fit them on held-out training pairs (--split holdout) to report "
             "this folder honestly")
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
    plain: dict[float, float] = {}  # each scale's mIoU without offsets
    best: tuple[float, torch.Tensor, float, float | None] | None = None  # (mIoU with offsets, offsets, scale, cross-fit)
    fit = dict(searched=range(desc.scored), miou=desc.miou)  # the scored classes move (_sampled_logp)
    for scale in tried:
        if hasattr(model, "scale"):
            model.scale = scale
        pixels = _sampled_logp(model, meta, pairs, desc, tta=tta, batch_size=batch_size, device=dev, stride=stride)
        offsets, plain[scale], after = fit_offsets(*pixels, **fit)
        per_scale.append({"scale": scale, "miou_before": round(plain[scale], 6), "miou_after": round(after, 6)})
        if len(tried) > 1:
            info(f"evaluation scale {scale:g}: mIoU {plain[scale]:.4f}, {after:.4f} with its offsets")
        if best is None or (after, scale == trained, -scale) > (best[0], best[2] == trained, -best[2]):
            # the mIoU with offsets is measured on the pixels they were fitted on: checked on pairs they were not
            best = (after, offsets, scale, crossfit_miou(*pixels, **fit))
        del pixels  # one scale's pixels at a time
    assert best is not None
    after, offsets, chosen, crossfit = best
    before, checked_at = plain[trained], chosen  # the cross-fit was measured at the scale the offsets chose
    dropped = crossfit is None or crossfit < plain[chosen] - 1e-9
    if dropped:
        at = f" at evaluation scale {chosen:g}" if len(tried) > 1 else ""
        hurt = ((f"offsets {'and an evaluation scale ' if len(tried) > 1 else ''}fitted on a single pair cannot be "
                 "checked on another") if crossfit is None else
                f"offsets fitted on one half of the {len(pairs)} pairs and applied to the other lower the "
                f"mIoU{at} ({plain[chosen]:.4f} without offsets, {crossfit:.4f} with)")
        if keep_offsets:
            info(f"warning: {hurt}: on new images they may cost more than they gain; kept, as --keep-offsets asks")
        else:
            # what the search chose on the pixels it fitted does not carry over: no offsets, and the
            # scale the plain mIoU prefers (a tie keeps the trained scale, else the smaller); on a
            # single pair nothing checks a scale either: the trained one stays
            chosen = trained if crossfit is None else max(tried, key=lambda v: (plain[v], v == trained, -v))
            offsets, after = torch.zeros_like(offsets), plain[chosen]
            now = f" at evaluation scale {chosen:g}" if len(tried) > 1 else ""
            info(f"{hurt}: not kept; the run scores without offsets{now} (--keep-offsets keeps them)")
    edge = at_search_edge(offsets)
    if edge:  # the model's probabilities for them are far off: the search would have gone on
        names = ", ".join(f"{desc.names[c]} {float(offsets[c]):+.2f}" for c in edge)
        info(f"warning: class offsets stopped at the edge of the search ({names}): the network's probabilities of "
             f"{'this class are' if len(edge) == 1 else 'these classes are'} far off, which more training mends "
             "better than offsets")
    earlier = fitted_on(path)
    if earlier:
        info(f"{offsets_file(path)}: replaces {earlier}")
    record = {"classes": list(desc.names), "pairs": str(pairs_dir), "pairs_path": str(Path(pairs_dir).resolve()),
              "split": split, "files": len(pairs), "trained_on": seen, "validation": validation, "tta": tta,
              "miou_before": round(before, 6), "miou_after": round(after, 6),
              "miou_crossfit": None if crossfit is None else round(crossfit, 6), "crossfit_scale": checked_at,
              "trained_scale": trained,
              "infer_scale": chosen, "scales": per_scale, "pixel_stride": stride,
              "offsets_dropped": dropped and not keep_offsets}
    record["file"] = str(save_offsets(path, offsets, **record))
    record["offsets"] = [round(float(v), 6) for v in offsets]
    if is_run(path.parent):  # every later score, prediction and export uses them: the run folder says so
        from vislab.engine.run_folder import add_change

        line = calibration_line(record) if path.name == "best.ckpt" else f"{path.name}: {calibration_line(record)}"
        add_change(path.parent, line + (f"; it replaces {earlier}" if earlier else ""))
    return record


def calibration_line(cal: dict[str, Any]) -> str:
    """The line a run folder's ``changes.txt`` (and the console after training) keeps for a
    calibration record of :func:`calibrate`: where it was fitted, under which views, what it gained."""
    where = "the held-out pairs" if cal["split"] == "holdout" else f"the pairs of {cal.get('pairs_path', cal['pairs'])}"
    under = f" under --tta {cal['tta']}" if cal.get("tta", "none") != "none" else ""
    at = f" at evaluation scale {cal['infer_scale']:g}" if cal["infer_scale"] != cal["trained_scale"] else ""
    what = f"calibration on {where}{under}" if cal.get("offsets_dropped") else \
        f"class offsets fitted on {where}{under}"
    return f"{what}: mIoU {cal['miou_before']:.4f} -> {cal['miou_after']:.4f}{at}{crossfit_words(cal)}"


def _is_validation_of(ckpt: Path, folder: str | Path) -> bool:
    """Whether ``folder`` is the validation folder of the run that holds ``ckpt`` (its inputs.json)."""
    from vislab.engine.run_folder import read_inputs

    try:
        val = read_inputs(ckpt.parent).get("val_dir")
    except VislabError:
        return False
    return val is not None and Path(val) == Path(folder).resolve()


def _say_scored_where_fitted(paths: list[str], img_dir: str | Path, offsets: bool) -> None:
    """A line for each run whose class offsets were fitted on all the pairs being scored."""
    from vislab.models.checkpoints import checkpoint_file

    for p in paths if offsets else []:
        ckpt = checkpoint_file(p)
        record = stored_record(ckpt)
        if fitted_folder(record) == Path(img_dir).resolve():
            if record.get("offsets_dropped") and not scale_chosen(record):
                continue  # neither offsets nor another scale: nothing there was chosen on these pairs
            if record.get("offsets_dropped"):
                info(f"{img_dir}: the evaluation scale in {offsets_file(ckpt).name} of {p} was chosen on these very "
                     "pairs, so this score reads somewhat high; --no-offsets scores at the trained scale")
            else:
                info(f"{img_dir}: {offsets_file(ckpt).name} of {p} was fitted on these very pairs, so this score "
                     "reads high; --no-offsets scores without them")


def _sampled_logp(model: Any, meta: dict[str, Any], pairs: list, desc: SegClasses, *, tta: str, batch_size: int,
                  device: torch.device, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probabilities of ``model`` as it stands (N, C, H, W, float16) and the truth, every
    ``stride``-th pixel along rows and columns, for :func:`vislab.calibration.fit_offsets` (only
    the scored classes move: the course's raised "unknown" would buy mIoU by abstaining on hard
    pixels)."""
    logps, truths = [], []
    for probs, truth, _ in labelled_probs([(model, meta)], pairs, desc, tta=tta, batch_size=batch_size, device=device):
        logps.append(probs[:, ::stride, ::stride].clamp_min(1e-8).log().half().cpu())
        truths.append(truth[::stride, ::stride])
    if len({t.shape for t in truths}) > 1:  # tiles of several sizes: padding labelled IGNORE is left out
        from vislab.data.segmentation import pad_collate

        lp, tr, *_ = pad_collate([(lg, t, 0) for lg, t in zip(logps, truths)], multiple=1)
    else:
        lp, tr = torch.stack(logps), torch.stack(truths)
    return lp, tr


