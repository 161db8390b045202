"""``vislab seg``: P2, segmentation (train, eval, score, calibrate, predict, progress)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vislab.cli.common import (
    COURSE_VAL, AccelOpt, AgainstOpt, BatchOpt, BudgetOpt, MaxMinutesOpt, _command_line, DevicesOpt, DistillOpt, EmaOpt,
    ENGINE_OPTION, EnsembleArg, EpochsOpt, LimitOpt, LrOpt, _members, ModelOpt, NodesOpt, _one_run, out,
    _output, PrecisionOpt, _print_against, _print_interval, _recipe, _recorded_train_dir, _resumed,
    ResumeOpt, _run_data, SeedOpt, seg_app, SplitSeedOpt, StrategyOpt, TeacherOpt, _teachers,
    _train_dirs, WeightsOpt, WorkersOpt, _write_json,
)
from vislab.errors import VislabError
from vislab.log import counted

OffsetsOpt = typer.Option(True, "--offsets/--no-offsets",
                          help="Apply the calibration that `vislab seg calibrate` stored for the checkpoint (class "
                               "offsets, and the evaluation scale it chose); --no-offsets: the network as trained.")
ClassesOpt = typer.Option(None, "--classes", help="Classes file (mask_format, ignore_index, classes); default: "
                          "classes.yaml in the data folder or the one above, else the course's 7 land-cover colours.")

@seg_app.command("train")
def seg_train(
    train_dir: Optional[Path] = typer.Argument(None, help="Folder of xxxx_sat.jpg + xxxx_mask.png, or of images/ + masks/ (default: DATA/p2_data/train)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Shipped recipe name or YAML path (see `vislab recipes`; default seg-default: rules, not tuning, for any data; with --resume: the run folder's)."),
    classes: Optional[Path] = ClassesOpt,
    out_dir: Path = typer.Option(Path("runs/p2"), "--out", help="Run folder."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Pairs evaluated once at the end (default with no TRAIN_DIR: DATA/p2_data/validation)."),
    snapshot: Optional[str] = typer.Option(None, "--snapshot", help="Comma-separated stems whose predicted masks are saved every epoch, e.g. 0010,0097,0107."),
    data: Optional[Path] = typer.Option(None, "--data", help="hw1_data folder."),
    epochs: Optional[int] = EpochsOpt, batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt,
    precision: Optional[str] = PrecisionOpt, devices: Optional[str] = DevicesOpt, num_nodes: Optional[int] = NodesOpt,
    strategy: Optional[str] = StrategyOpt, accelerator: Optional[str] = AccelOpt, seed: Optional[int] = SeedOpt, split_seed: Optional[int] = SplitSeedOpt,
    model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt,
    crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Random training crop side (0: the whole image)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="ce | dice | lovasz | sums like ce+dice."),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="Held-out fraction of the training pairs."),
    ema: Optional[float] = EmaOpt, budget: Optional[float] = BudgetOpt,
    max_minutes: Optional[float] = MaxMinutesOpt,
    teacher: Optional[str] = TeacherOpt, distill: Optional[float] = DistillOpt,
    workers: Optional[int] = WorkersOpt, resume: bool = ResumeOpt, limit_batches: Optional[float] = LimitOpt,
) -> None:
    """Train a segmenter; the best checkpoint is selected by the data set's mIoU on held-out training pairs."""
    from vislab.pipelines.segmentation import train

    if resume:
        got = _resumed(out_dir, data, "seg", train_dir=train_dir, val_dir=val_dir, classes=classes, recipe=recipe)
        train_dir, val_dir, classes, recipe = (got[k] for k in ("train_dir", "val_dir", "classes", "recipe"))
    train_dir, val_dir = _train_dirs(train_dir, data, "p2_data/train", val_dir, COURSE_VAL["seg"])
    stems = None if snapshot is None else tuple(s.strip() for s in snapshot.split(",") if s.strip())  # "" = none
    r, notes, given = _recipe(recipe, out_dir, resume, "seg", epochs=epochs, batch_size=batch_size, lr=lr, precision=precision,
                devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, seed=seed, split_seed=split_seed,
                model=model, weights=weights,
                crop_size=crop_size, loss=loss, holdout=holdout, ema=ema, num_workers=workers, snapshot=stems,
                limit_train_batches=limit_batches, budget_minutes=budget, distill=distill, max_minutes=max_minutes,
                teacher=_teachers(teacher))
    result = train(train_dir, r, out_dir=out_dir, resume=resume, val_dir=val_dir, command=_command_line(),
                   classes=classes, notes=notes, given=given)
    if "val" in result:
        _print_seg(result["val"])


def _print_seg(res: dict, run: str = "") -> None:
    if res.get("metric"):
        out.print(res["metric"], markup=False)
    t = Table("class", "IoU", title="per-class IoU")
    for name, v in res["iou"].items():
        t.add_row(name, "n/a (absent)" if v is None else f"{v:.4f}")
    out.print(t)
    out.print(f"pixel accuracy: {res['pixel_accuracy']:.4f}")
    if res.get("held_out"):
        out.print(f"scored on the {counted(res['files'], 'pair')} held out of training (fraction {res['held_out']['fraction']:g}, "
                  f"split seed {res['held_out']['seed']})")
    _print_interval("mIoU", res.get("miou_interval"))
    _print_against(res, run, "miou", "mIoU")

    absent = res.get("absent") or []
    left_out = (f" (the mean of {counted(len(res['iou']) - len(absent), 'class', 'classes')}: "
                f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} in neither the truth nor the prediction, "
                "so left out)") if absent else ""
    out.print(f"mIoU: {res['miou']:.4f}{left_out}")
    if res.get("stray_files"):
        out.print(f"{res['stray_files']} of {res['files']} ground-truth masks hold {res['stray_pixels']} pixels of no "
                  "class; they count as unknown (a class predicted there is a false positive)", markup=False)


@seg_app.command("eval")
def seg_eval(
    pred_dir: Path = typer.Argument(..., help="Predicted masks (xxxx.png or xxxx_mask.png)."),
    gt_dir: Path = typer.Argument(..., help="Ground truth: xxxx_mask.png files, a masks/ folder, or a folder of masks."),
    classes: Optional[Path] = ClassesOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all metrics to this JSON file."),
) -> None:
    """Per-class IoU and the mIoU pooled over all files: the course rule for the course's masks,
    the standard rule (ignore pixels left out) for a data set with a classes file."""
    from vislab.pipelines.seg_scores import evaluate_dirs

    _output(json_out, ".json", inputs=[classes], data=[pred_dir, gt_dir])
    res = evaluate_dirs(pred_dir, gt_dir, classes=classes)
    _write_json(res, json_out)
    _print_seg(res)


@seg_app.command("score")
def seg_score(
    ckpt: str = EnsembleArg,
    img_dir: Path = typer.Argument(..., help="Folder of xxxx_sat.jpg + xxxx_mask.png pairs, or of images/ + masks/."),
    tta: str = typer.Option("none", "--tta", help="none | flip | d4."),
    device: Optional[str] = typer.Option(None, "--device"),
    offsets: bool = OffsetsOpt,
    held_out: bool = typer.Option(False, "--held-out", help="IMG_DIR is the run's training folder: score only the pairs its recipe held out of training."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all metrics to this JSON file."),
    against: Optional[str] = AgainstOpt,
) -> None:
    """The mIoU of a checkpoint on labelled pairs (its data set's rule), without writing masks."""
    from vislab.pipelines.seg_scores import evaluate_checkpoint

    _output(json_out, ".json", inputs=[*_members(ckpt), *(_members(against) if against else [])], data=[img_dir])
    res = evaluate_checkpoint(ckpt, img_dir, tta=tta, device=device, offsets=offsets, held_out=held_out,
                              against=against)
    _write_json(res, json_out)
    _print_seg(res, ckpt)


@seg_app.command("calibrate")
def seg_calibrate(
    ckpt: Path = typer.Argument(..., help="Checkpoint or run folder."),
    pairs_dir: Optional[Path] = typer.Argument(None, help="The run's training folder (default: the one its inputs.json records, else DATA/p2_data/train), or with --split all any labelled pairs it never saw."),
    split: str = typer.Option("holdout", "--split", help="holdout (the run's held-out split of PAIRS_DIR) | all."),
    tta: str = typer.Option("none", "--tta", help="none | flip | d4: the views averaged while fitting."),
    data: Optional[Path] = typer.Option(None, "--data", help="hw1_data folder."),
    device: Optional[str] = typer.Option(None, "--device"),
    scales: Optional[str] = typer.Option(None, "--scales", help="Comma-separated evaluation scales to try besides the "
                                         "recipe's infer_scale (default: it x 0.8, 1.25, 1.5, at most 2: scales above "
                                         "1 upsample the tile, as zoomed training crops did)."),
    keep_offsets: bool = typer.Option(False, "--keep-offsets", help="Keep the offsets even when a 2-fold cross-fit "
                                      "says they lower the mIoU of pairs they were not fitted on (default: dropped)."),
) -> None:
    """Fit one logit offset per class for the mIoU and choose the evaluation scale; score, predict
    and export then apply them. Offsets that do not hold up on half the pairs when fitted on the
    other half are not kept."""
    from vislab.paths import data_root
    from vislab.calibration import crossfit_words
    from vislab.pipelines.seg_scores import calibrate

    if pairs_dir is not None and data is not None:
        raise VislabError("--data", "names the course data folder used when no PAIRS_DIR is given; drop one of them")
    from vislab.models.checkpoints import torch_checkpoint_file

    torch_checkpoint_file(ckpt)  # a list, an export or no run at all: said before any data folder is looked for
    if pairs_dir is None and split == "holdout" and data is None:
        pairs_dir = _recorded_train_dir(ckpt)
    if pairs_dir is None:
        pairs_dir = data_root(data) / "p2_data" / "train"
    tried = None
    if scales is not None:
        try:
            tried = [float(v) for v in scales.split(",") if v.strip()]
        except ValueError:
            raise VislabError(None, f"--scales: {scales!r} is not a comma-separated list of numbers") from None
        if not tried:
            raise VislabError(None, "--scales: give at least one scale")
        from vislab.config import twice

        again = twice(tried)
        if again is not None:
            raise VislabError(None, f"--scales: {scales!r} lists the scale {again:g} twice")
    rec = calibrate(ckpt, pairs_dir, split=split, tta=tta, device=device, scales=tried, keep_offsets=keep_offsets)
    # each scale tried was printed as it was fitted; the one kept is named below
    shown = ", ".join(f"{n} {v:+.2f}" for n, v in zip(rec["classes"], rec["offsets"]))
    out.print("offsets: none kept (all 0)" if rec["offsets_dropped"] else f"offsets: {shown}")
    at = f" (evaluation scale {rec['trained_scale']:g} -> {rec['infer_scale']:g})" \
        if rec["infer_scale"] != rec["trained_scale"] else ""
    step = rec["pixel_stride"]
    every = f", one pixel in {step} along rows and columns" if step > 1 else ""
    out.print(f"mIoU on {rec['files']} {rec['split']} pairs{every}: {rec['miou_before']:.4f} -> "
              f"{rec['miou_after']:.4f}{at}{crossfit_words(rec)}")
    out.print(f"wrote {rec['file']}")


@seg_app.command("predict")
def seg_predict(
    ckpt: str = EnsembleArg,
    img_dir: Path = typer.Argument(..., help="A folder of images (xxxx.jpg or xxxx_sat.jpg), a folder with images/, or one image file."),
    out_dir: Path = typer.Argument(..., help="Output folder for the masks."),
    tta: str = typer.Option("none", "--tta", help="none | flip | d4 (averaged probabilities)."),
    batch_size: int = typer.Option(4, "--batch-size"),
    device: Optional[str] = typer.Option(None, "--device"),
    engine: str = ENGINE_OPTION,
    offsets: bool = OffsetsOpt,
) -> None:
    """Write a mask per image, the input's size, in the data set's format (colours, or class ids
    for index masks)."""
    from vislab.pipelines.seg_predict import predict

    n = predict(ckpt, img_dir, out_dir, tta=tta, batch_size=batch_size, device=device, engine=engine,
                offsets=offsets)
    out.print(f"wrote {n} mask{'' if n == 1 else 's'} to {out_dir}")


@seg_app.command("progress")
def seg_progress(
    run_dir: Path = typer.Argument(..., help="Run folder of `vislab seg train --snapshot ...`."),
    out_png: Optional[Path] = typer.Option(None, "--out", help="Output figure (.png, .pdf, .svg or .jpg). Default: "
                                           "masks.png in the run folder."),
    epochs: Optional[str] = typer.Option(None, "--epochs", help="Epochs to show, e.g. 1,5,20 (default early/middle/final)."),
) -> None:
    """The predicted masks of the snapshot images at early, middle and final epochs."""
    from vislab.pipelines.segmentation import progress
    from vislab.viz.save import FORMATS

    _one_run(run_dir, "the masks shown are one run's snapshots")
    out_png = out_png or run_dir / "masks.png"
    _output(out_png, *FORMATS, data=_run_data([run_dir]))
    try:
        chosen = [int(e) for e in epochs.split(",")] if epochs else None
    except ValueError:
        raise VislabError("--epochs", f"{epochs!r} is not a comma-separated list of epoch numbers") from None
    from vislab.config import twice

    again = twice(chosen or [])
    if again is not None:
        raise VislabError("--epochs", f"{epochs!r} lists epoch {again} twice")
    out.print(f"wrote {progress(run_dir, out_png=out_png, epochs=chosen)}")
