"""``vislab cls``: P1, image classification (train, eval, predict, tsne)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vislab.cli.common import (
    COURSE_VAL, AccelOpt, AgainstOpt, BatchOpt, BudgetOpt, MaxMinutesOpt, cls_app, _command_line, DevicesOpt, DistillOpt, EmaOpt,
    ENGINE_OPTION, EnsembleArg, EpochsOpt, LimitOpt, LrOpt, _members, ModelOpt, NodesOpt, _one_run, out,
    _output, PrecisionOpt, _print_against, _print_interval, _recipe, RecipeOpt, _resumed, ResumeOpt,
    _run_data, SeedOpt, SplitSeedOpt, StrategyOpt, TeacherOpt, _teachers, _train_dirs, WeightsOpt,
    WorkersOpt, _write_json,
)
from vislab.errors import VislabError
from vislab.log import counted


@cls_app.command("train")
def cls_train(
    train_dir: Optional[Path] = typer.Argument(None, help="Images as <label>_<index>.<ext>, <class name>/ folders, or a flat folder with --labels (default: DATA/p1_data/train_50)."),
    recipe: Optional[str] = RecipeOpt,
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV filename,label for a flat TRAIN_DIR (label: integer or class name)."),
    val_labels: Optional[Path] = typer.Option(None, "--val-labels", help="CSV filename,label for a flat --val-dir."),
    out_dir: Path = typer.Option(Path("runs/p1"), "--out", help="Run folder."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Labelled folder evaluated once at the end (default with no TRAIN_DIR: DATA/p1_data/val_50)."),
    data: Optional[Path] = typer.Option(None, "--data", help="hw1_data folder (default $VISLAB_DATA, ./hw1_data, ../shared/data/hw1_data)."),
    epochs: Optional[int] = EpochsOpt, batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt,
    precision: Optional[str] = PrecisionOpt, devices: Optional[str] = DevicesOpt, num_nodes: Optional[int] = NodesOpt,
    strategy: Optional[str] = StrategyOpt, accelerator: Optional[str] = AccelOpt, seed: Optional[int] = SeedOpt, split_seed: Optional[int] = SplitSeedOpt,
    model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="The network's input side (0: the images' own size)."),
    resize_from: Optional[int] = typer.Option(None, "--resize-from", help="Progressive resizing: the first epoch trains at this side, growing to --image-size (reached with a quarter of the epochs left)."),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="Held-out fraction of the training folder."),
    mixup: Optional[float] = typer.Option(None, "--mixup", help="Beta parameter of mixup, e.g. 0.2 (0 = off)."),
    cutmix: Optional[float] = typer.Option(None, "--cutmix", help="Beta parameter of cutmix, e.g. 1.0 (0 = off; with --mixup: half the batches each)."),
    augment: Optional[str] = typer.Option(None, "--augment", help="none | trivial (one random operation per image at a random strength)."),
    erasing: Optional[float] = typer.Option(None, "--erasing", help="Probability of erasing a random rectangle per image (0 = off)."),
    ema: Optional[float] = EmaOpt,
    budget: Optional[float] = BudgetOpt,
    max_minutes: Optional[float] = MaxMinutesOpt,
    teacher: Optional[str] = TeacherOpt, distill: Optional[float] = DistillOpt,
    workers: Optional[int] = WorkersOpt, resume: bool = ResumeOpt, limit_batches: Optional[float] = LimitOpt,
) -> None:
    """Train a classifier; the best checkpoint is selected on a held-out split of TRAIN_DIR (when the recipe
    holds one out and the data allow it; else the last epoch's is the model)."""
    from vislab.pipelines.classification import train

    if resume:
        got = _resumed(out_dir, data, "cls", train_dir=train_dir, val_dir=val_dir, labels=labels, val_labels=val_labels,
                       recipe=recipe)
        train_dir, val_dir, labels, val_labels, recipe = (got[k] for k in ("train_dir", "val_dir", "labels",
                                                                          "val_labels", "recipe"))
    train_dir, val_dir = _train_dirs(train_dir, data, "p1_data/train_50", val_dir, COURSE_VAL["cls"])
    if val_labels is not None and val_dir is None:
        raise VislabError("--val-labels", "labels a --val-dir; give one, or drop it")
    r, notes, given = _recipe(recipe, out_dir, resume, "cls", epochs=epochs, batch_size=batch_size, lr=lr, precision=precision,
                devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, seed=seed, split_seed=split_seed,
                model=model, weights=weights,
                image_size=image_size, resize_from=resize_from, holdout=holdout, mixup=mixup, cutmix=cutmix,
                augment=augment, erasing=erasing,
                ema=ema, num_workers=workers,
                limit_train_batches=limit_batches, distill=distill, budget_minutes=budget, max_minutes=max_minutes,
                teacher=_teachers(teacher))
    result = train(train_dir, r, out_dir=out_dir, resume=resume, val_dir=val_dir, labels_csv=labels,
                   val_labels_csv=val_labels, command=_command_line(), notes=notes, given=given)
    if "val" in result:
        val = result["val"]
        _print_interval("val accuracy", val.get("accuracy_interval"))
        out.print(f"val accuracy: {val['accuracy']:.4f}  ({_top5(val)}{val['images']} images)")


CLS_TTA_OPTION = typer.Option("none", "--tta", help="none | flip (average with the mirror image) | shift "
                              "(10 views: flip x the image and 4 translations by 1/16 of the side).")


@cls_app.command("eval")
def cls_eval(
    ckpt: str = EnsembleArg,
    img_dir: Path = typer.Argument(..., help="Labelled images: <label>_<index> names, <class name>/ folders, or --labels."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV filename,label for a flat IMG_DIR (else labels from the layout)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all metrics to this JSON file."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ..."),
    tta: str = CLS_TTA_OPTION,
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Test at this input side instead of the training one (every member of an ensemble)."),
    held_out: bool = typer.Option(False, "--held-out", help="IMG_DIR is the run's training folder: score only the images its recipe held out of training."),
    against: Optional[str] = AgainstOpt,
) -> None:
    """Accuracy, top-5 and per-class accuracy of a checkpoint on a labelled folder."""
    from vislab.data.layouts import id_and_name
    from vislab.pipelines.cls_scores import evaluate

    _output(json_out, ".json", inputs=[labels, *_members(ckpt), *(_members(against) if against else [])], data=[img_dir])
    res = evaluate(ckpt, img_dir, labels_csv=labels, device=device, tta=tta, image_size=image_size, held_out=held_out,
                   against=against)
    t = Table("class", "accuracy", title="per-class accuracy")
    names = res.get("class_names")
    for c, a in res["per_class"].items():
        t.add_row(id_and_name(c, names), f"{a:.3f}")
    out.print(t)
    absent = res.get("classes_without_images") or []
    if absent:
        shown = ", ".join(id_and_name(c, names) for c in absent[:10]) + (", ..." if len(absent) > 10 else "")
        where = f"the images of {img_dir} its run held out" if held_out else f"the images of {img_dir}"
        out.print(f"no row for {len(absent)} of the model's {len(res['confusion'])} classes ({shown}): none of "
                  f"{where} is of {'that class' if len(absent) == 1 else 'those classes'}")
    _write_json(res, json_out)
    _print_interval("accuracy", res.get("accuracy_interval"))
    _print_against(res, ckpt, "accuracy", "accuracy")
    out.print(f"accuracy: {res['accuracy']:.4f}  ({_top5(res)}{res['images']} images)")  # as `cls train` gives val's


def _top5(res: dict[str, Any]) -> str:
    """``top-5 0.9876, `` or nothing when there are 5 classes or fewer (every label is in the top 5)."""
    return "" if res.get("top5") is None else f"top-5 {res['top5']:.4f}, "


@cls_app.command("predict")
def cls_predict(
    ckpt: str = EnsembleArg,
    img_dir: Path = typer.Argument(..., help="Folder of images (any names), a tree of them, or one image file."),
    out_csv: Path = typer.Argument(..., help="Output CSV: image_id,label sorted by file name (label: the class name for named data sets)."),
    device: Optional[str] = typer.Option(None, "--device"),
    batch_size: int = typer.Option(256, "--batch-size"),
    engine: str = ENGINE_OPTION,
    tta: str = CLS_TTA_OPTION,
) -> None:
    """Predict a label for every image of a folder into a CSV."""
    from vislab.pipelines.cls_predict import PREDICT_HEADER, predict, recorded_labels

    # a labels CSV has the predictions' header: the runs' own label files and files in the folder
    # predicted are never replaced
    paths = _members(ckpt)
    _output(out_csv, ".csv", inputs=paths, header=PREDICT_HEADER, data=[img_dir], replace_in_data=False,
            protected=[(f, f"is the labels file {run} was trained with (its inputs.json)")
                       for f, run in recorded_labels(paths)])
    earlier = out_csv.is_file()
    n = predict(ckpt, img_dir, out_csv, batch_size=batch_size, device=device, engine=engine, tta=tta)
    out.print(f"wrote {counted(n, 'prediction')} to {out_csv}" + (" (replacing an earlier prediction there)" if earlier else ""))


@cls_app.command("tsne")
def cls_tsne(
    ckpt: Path = typer.Argument(..., help="Checkpoint or run folder."),
    img_dir: Path = typer.Argument(..., help="Labelled image folder (e.g. val_50)."),
    out_png: Optional[Path] = typer.Option(None, "--out", help="Output figure (.png, .pdf, .svg or .jpg); a CSV of "
                                           "points is written beside it. Default: tsne.png in the run folder, where "
                                           "`vislab report` finds it."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV filename,label for a flat IMG_DIR."),
    seed: int = typer.Option(0, "--seed"),
    perplexity: float = typer.Option(30.0, "--perplexity"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """t-SNE of the second-last-layer features, one colour per class."""
    from vislab.pipelines.cls_predict import TSNE_HEADER, tsne

    from vislab.viz.save import FORMATS

    _one_run(ckpt, "a t-SNE shows the second-last layer of one network")
    out_png = out_png or (ckpt if ckpt.is_dir() else ckpt.parent) / "tsne.png"
    data = [img_dir, *_run_data([ckpt])]
    _output(out_png, *FORMATS, inputs=[labels, ckpt], data=data)
    _output(out_png.with_suffix(".csv"), ".csv", inputs=[labels, ckpt], header=TSNE_HEADER, data=data)
    png = tsne(ckpt, img_dir, out_png=out_png, seed=seed, perplexity=perplexity, device=device, labels_csv=labels)
    out.print(f"wrote {png} and {png.with_suffix('.csv')}")
