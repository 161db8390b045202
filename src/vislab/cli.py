"""The ``vislab`` command: parses arguments, calls the library, prints results. Nothing else."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from vislab.errors import Interrupted, VislabError

CLICK = getattr(typer, "_click", None)  # the click that Typer runs on: its own copy since Typer 0.2x
if CLICK is None:
    import click as CLICK


# --- every option once ----------------------------------------------------------------------

def _once_parser(ctx: Any, parser: Any) -> Any:
    """``parser`` (click's, for the command of ``ctx``) made to refuse a single-valued option
    given more than once, where click would keep the last one: ``--epochs 1 --epochs 2``,
    ``--epochs=1 --epochs 2``, ``--offsets --no-offsets``, ``--held-out --held-out``. The values
    are counted as click's own parser reads them, so a positional argument that looks like a
    value is not one, and the error comes before any value is converted or any work starts.
    Options declared to take several values (``multiple=True``, counts) are left alone, and
    ``--help`` anywhere still shows the help."""
    given: dict[Any, list[str]] = {}  # parameter -> each value (a flag: its spelling) as given

    def recording(option: Any) -> Any:
        process = option.process
        spelling = ([*option._long_opts, *option._short_opts] or ["?"])[0]

        def record(value: Any, state: Any) -> None:
            if not option.takes_value:
                shown = spelling
            elif isinstance(value, (tuple, list)):  # an option of several values at once (--input C H W)
                shown = " ".join(shlex.quote(str(v)) for v in value)
            else:
                shown = shlex.quote(str(value))
            given.setdefault(option.obj, []).append(shown)
            process(value, state)

        return record

    options = {id(o): o for o in (*parser._long_opt.values(), *parser._short_opt.values())}
    for option in options.values():
        if option.action in ("store", "store_const"):  # not append/count: those take several by design
            option.process = recording(option)
    parse = parser.parse_args

    def parse_args(args: list[str]) -> Any:
        given.clear()
        try:
            result = parse(args)
        except CLICK.exceptions.UsageError as exc:  # click's parser names no command: --epochs without a value
            if exc.ctx is None:
                exc.ctx = ctx
            raise
        help_option = ctx.command.get_help_option(ctx)
        if not ctx.resilient_parsing and help_option not in given:
            _refuse_empty(ctx, result)
            for param, values in given.items():
                if len(values) > 1:
                    name = param.opts[0] if param.opts else param.name
                    times = "twice" if len(values) == 2 else f"{len(values)} times"
                    spellings = [*param.opts, *getattr(param, "secondary_opts", [])]
                    same_flag = len(set(values)) == 1 and values[0] in spellings  # --held-out --held-out
                    shown = "" if same_flag else f" ({', '.join(values)})"
                    raise CLICK.exceptions.BadOptionUsage(name, f"{name} is given {times}{shown}; give it once",
                                                          ctx=ctx)
        return result

    parser.parse_args = parse_args
    return parser


EMPTY_ALLOWED = {"title", "snapshot"}  # an empty string means something here: no page title, no snapshots


def _refuse_empty(ctx: Any, parsed: Any) -> None:
    """An empty value (``--out ""``, an unset shell variable) is refused: as a path it would mean
    the current folder (a run written among the data, the whole cache cleared), elsewhere nothing."""
    opts = parsed[0] if isinstance(parsed, tuple) else {}
    for param in ctx.command.params:
        value = opts.get(param.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if param.name not in EMPTY_ALLOWED and any(isinstance(v, str) and not v.strip() for v in values):
            name = param.opts[0] if param.param_type_name == "option" else param.name  # as the usage line shows it
            raise CLICK.exceptions.UsageError(f"{name} is empty; give a value", ctx=ctx)


class OnceCommand(TyperCommand):
    """A command that refuses a single-valued option given twice (:func:`_once_parser`)."""

    def make_parser(self, ctx: Any) -> Any:
        return _once_parser(ctx, super().make_parser(ctx))


class OnceGroup(TyperGroup):
    """A command group whose own options (``--debug``) are refused twice, as a command's are."""

    def make_parser(self, ctx: Any) -> Any:
        return _once_parser(ctx, super().make_parser(ctx))


app = typer.Typer(help="Train, evaluate and explain small-image classifiers and land-cover segmenters.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=OnceGroup)
cls_app = typer.Typer(help="P1: image classification: the course's 50 classes of 32x32 images, or any folder of "
                      "labelled images (class folders, <label>_<n> names, a labels CSV).", no_args_is_help=True,
                      cls=OnceGroup)
app.add_typer(cls_app, name="cls")
seg_app = typer.Typer(help="P2: segmentation: the course's 7 land-cover classes, or any data set described by a classes.yaml.",
                      no_args_is_help=True, cls=OnceGroup)
app.add_typer(seg_app, name="seg")
out = Console(highlight=False, soft_wrap=True)  # a line is never broken inside (a path stays whole in a log)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors.")) -> None:
    """vislab."""
    from vislab.memory import keep_freed_memory

    keep_freed_memory()  # big activations reuse their pages batch after batch (bench/bench_malloc.py)


def _write_json(res: dict[str, Any], path: Path | None) -> None:
    """The ``--json`` file of an evaluation command (or of `runs`), when one was asked for."""
    if path:
        from vislab.io import write_marked_json

        write_marked_json(res, path)


def _output(path: Path | None, *suffixes: str, inputs: Iterable[str | Path | None] = (),
            header: list[str] | None = None, data: Iterable[str | Path | None] = (),
            replace_in_data: bool = True, protected: Iterable[tuple[str | Path, str]] = ()) -> None:
    """Refuse, before any work, an output file that cannot be written there (a folder in its place,
    a file in place of its folder), a figure inside the command's ``data`` folders (an image
    replaced, or one more read), anything inside a run folder's records, or one that would replace
    what it must not: one of the command's ``inputs``, a run folder's record or checkpoint, an
    existing file whose suffix is not one of ``suffixes``, a CSV whose first row is not the
    command's ``header``."""
    from vislab.io import check_new_output

    if path is not None:
        from vislab.data.images import IMAGE_SUFFIXES

        check_new_output(path, suffixes=suffixes, inputs=inputs, header=",".join(header) if header else None,
                         data_dirs=data, data_suffixes=IMAGE_SUFFIXES, replace_in_data=replace_in_data,
                         protected=protected)


def _run_inputs(path: str | Path) -> dict[str, Any]:
    """The ``inputs.json`` record of the run at ``path`` (a run folder, or a checkpoint in one)."""
    from vislab.engine.run_folder import read_inputs

    p = Path(path)
    return read_inputs(p if p.is_dir() else p.parent)


def _run_data(paths: Iterable[str | Path]) -> list[str | None]:
    """The training and validation folders the runs at ``paths`` (run folders, or checkpoints in
    them) were trained with, as their ``inputs.json`` records them: a figure written there would
    replace one of their images, or be read as one more."""
    found: list[str | None] = []
    for p in paths:
        try:
            inputs = _run_inputs(p)
        except VislabError:  # a record changed by hand: the command itself names it when it reads it
            continue
        found += [inputs.get("train_dir"), inputs.get("val_dir")]
    return found


def _recorded_train_dir(path: str | Path) -> Path | None:
    """The training folder the run at ``path`` (a run folder, or a checkpoint in one) recorded in
    its ``inputs.json``, said on the console; None without a record. A folder since moved or
    removed is one error naming it."""
    from vislab.log import info

    recorded = _run_inputs(path).get("train_dir")
    if recorded is None:
        return None
    if not Path(recorded).is_dir():
        raise VislabError(recorded, "the run's training folder (its inputs.json) is gone; give PAIRS_DIR")
    info(f"pairs: the run's training folder {recorded} (its inputs.json)")
    return Path(recorded)


def _one_run(path: str | Path, what: str) -> None:
    """Refuse a comma-separated list of runs where a command takes one (``what`` says why)."""
    if "," in str(path) and not Path(path).exists():
        raise VislabError(path, f"names several runs, and {what}; give one run")


def _members(spec: str) -> list[str]:
    """The checkpoints or run folders of a comma-separated ensemble argument."""
    from vislab.models.ensemble import members

    return members(spec)



def _train_dirs(train_dir: Path | None, data: Path | None, default: str, val_dir: Path | None,
                default_val: str) -> tuple[Path, Path | None]:
    """The training folder and validation folder of a train command: the given ones, or the
    course data's under ``--data`` (refused beside an explicit TRAIN_DIR, which it would not change)."""
    from vislab.paths import data_root

    if train_dir is not None:
        if data is not None:
            raise VislabError("--data", "names the course data folder used when no TRAIN_DIR is given; drop one of them")
        return train_dir, val_dir
    root = data_root(data)
    return root / default, val_dir or root / default_val


def _resumed(out_dir: Path, data: Path | None, task: str, **given: Any) -> dict[str, Any]:
    """A ``--resume``'s inputs: what is not given again is what the run started with (TRAIN_DIR
    only when ``--data`` does not name the course data instead); a ``--recipe`` naming the run's
    own recipe is dropped (:func:`vislab.pipelines.training.resumed_inputs`); another ``--val-dir``
    for a finished run is refused (:func:`vislab.pipelines.training.refuse_new_val_dir`)."""
    from vislab.pipelines.training import refuse_new_val_dir, resumed_inputs

    refuse_new_val_dir(out_dir, given.get("val_dir"), task)
    if data is not None and given.get("train_dir") is None:
        kept = {k: given.pop(k) for k in ("train_dir", "val_dir")}
        return {**resumed_inputs(out_dir, given), **kept}
    return resumed_inputs(out_dir, given)


def _command_line() -> str:
    return "vislab " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# --- shared training options ---------------------------------------------------------------

_FLAG = {"num_workers": "--workers", "limit_train_batches": "--limit-batches", "budget_minutes": "--budget"}


def _flag(field: str) -> str:
    return _FLAG.get(field, "--" + field.replace("_", "-"))


DEFAULT_RECIPE = {"cls": "cls-default", "seg": "seg-default"}


def _recipe(recipe: str | None, out_dir: Path, resume: bool, task: str, **overrides: Any):
    """The recipe a train command runs (:func:`vislab.pipelines.settings.run_recipe`): ``recipe``,
    else the task's default, or with ``--resume`` the run folder's own (``--recipe`` refused);
    a flag's bad value is reported under the flag's own name, and a recipe of the other task
    is refused naming its file. Returns the recipe, its settings lines for ``changes.txt`` and
    what the command gave the run (the recipe's name, the flags that override it) for its
    ``inputs.json``."""
    from vislab.pipelines.settings import run_recipe

    saved = out_dir / "recipe.yaml"
    if resume and saved.is_file():
        if recipe is not None:
            raise VislabError(out_dir, "--resume continues the recipe saved in the run folder; drop --recipe")
        recipe = str(saved)
    recipe = recipe or DEFAULT_RECIPE[task]
    r, notes = run_recipe(recipe, out_dir, resume=resume, overrides=overrides, flag=_flag, task=task)
    return r, notes, {"recipe": recipe, "flags": {k: v for k, v in overrides.items() if v is not None}}


def _teachers(spec: str | None) -> tuple[str, ...] | None:
    """``--teacher RUN[,RUN...]`` as the recipe's tuple of runs (None: not given)."""
    from vislab.models.ensemble import members

    if spec is None:
        return None
    try:
        return tuple(members(spec))
    except VislabError as exc:  # the flag's own value: named as such
        raise VislabError("--teacher", f"{spec!r}: {exc.message}") from None


RecipeOpt = typer.Option(None, "--recipe", help="Shipped recipe name or YAML path (see `vislab recipes`; default cls-default: rules, not tuning, for any data; with --resume: the run folder's).")
EpochsOpt = typer.Option(None, "--epochs", help="Training epochs.")
EmaOpt = typer.Option(None, "--ema", help="Decay of a moving average of the weights that is evaluated and saved (e.g. 0.999; 0 = off).")
BatchOpt = typer.Option(None, "--batch-size", help="Batch size per process.")
LrOpt = typer.Option(None, "--lr", help="Peak learning rate (a recipe without lr: the optimiser's rule for the global batch).")
PrecisionOpt = typer.Option(None, "--precision", help="32 | 16-mixed | bf16-mixed.")
DevicesOpt = typer.Option(None, "--devices", help="Devices per node: auto, N or a list like 0,1.")
NodesOpt = typer.Option(None, "--num-nodes", help="Number of machines (torchrun / SLURM).")
StrategyOpt = typer.Option(None, "--strategy", help="auto | ddp | ddp_spawn | fsdp ...")
AccelOpt = typer.Option(None, "--accelerator", help="auto | cpu | gpu.")
SeedOpt = typer.Option(None, "--seed", help="Random seed (held-out split unless --split-seed, order, augmentation, init).")
SplitSeedOpt = typer.Option(None, "--split-seed", help="Seed of the held-out split alone (default: --seed); runs of one split and other seeds can be ensembled with --held-out.")
ModelOpt = typer.Option(None, "--model", help="Registry name (see `vislab models`).")
WeightsOpt = typer.Option(None, "--weights", help="none | imagenet | PATH to a state_dict, checkpoint or run folder (none switches off a recipe's weights).")
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its last.ckpt.")
WorkersOpt = typer.Option(None, "--workers", help="DataLoader worker processes.")
BudgetOpt = typer.Option(None, "--budget", help="Minutes of training to fill: the first steps are timed here and the epochs (and schedule) set to fit.")
TeacherOpt = typer.Option(None, "--teacher", help="Distil from RUN[,RUN...]: their averaged probabilities (per image; a segmenter's per pixel of each training tile, computed once) are soft targets.")
DistillOpt = typer.Option(None, "--distill", help="Weight of the soft targets (default 0.5; the labels' loss gets the rest).")


def _batches(text: Any) -> int | float:
    """``--limit-batches``: a whole number is a count of batches (``2``), any other number a
    fraction of them (``0.25``; ``1.0``: all), as the recipe's ``limit_train_batches`` and
    Lightning read them; the range is the recipe's check."""
    if isinstance(text, (int, float)):  # the default, or a value already read
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a number of batches (e.g. 20) nor a fraction of them "
                                 "(e.g. 0.25)") from None


LimitOpt = typer.Option(None, "--limit-batches", parser=_batches, metavar="<int|fraction>",
                        help="Train on only this many batches per epoch (quick runs), or this fraction of them (0.25; 1.0: all).")


@app.command("models")
def models_cmd(pattern: str = typer.Argument("*", help="Shell pattern, e.g. 'fcn*'.")) -> None:
    """List registered models (plus timm:NAME and smp:ARCH:ENCODER families)."""
    from vislab.models import get_entry, list_models

    names = list_models(pattern)
    if not names:
        raise VislabError(None, f"no registered model matches {pattern!r}; `vislab models` lists them all "
                                "(and timm:NAME, smp:ARCH:ENCODER name models of those libraries)")
    t = Table()
    t.add_column("name", no_wrap=True)  # whole, to copy; the description wraps instead
    t.add_column("task")
    t.add_column("input")
    t.add_column("description", overflow="fold")
    for name in names:
        e = get_entry(name)
        t.add_row(name, e.task, "x".join(map(str, e.input_size)), e.description)
    out.print(t)
    out.print("Also: timm:NAME (any timm classifier), smp:ARCH:ENCODER (e.g. smp:unet:resnet34)")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes, one line each."""
    from vislab.config import load_recipe, shipped_recipes

    for name, path in sorted(shipped_recipes().items()):
        r = load_recipe(str(path))
        first = _first_sentence(path.read_text())
        typer.echo(f"{name:<18} {r.task:<4} {r.model:<36} {r.epochs:>3} ep  {first}")


def _first_sentence(text: str) -> str:
    """The first sentence of a recipe's opening comment (which may run over several lines)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            if lines:
                break
            continue
        if not line[1:].strip():
            if lines:
                break
            continue
        lines.append(line[1:].strip())
    words = " ".join(lines)
    end = words.find(". ")
    return words if end < 0 else words[: end + 1]


@app.command("summary")
def summary_cmd(
    model: str = typer.Argument(..., help="Registry name (e.g. vgg16_bn or fcn32s_vgg16), or a run folder or checkpoint: "
                                          "the trained network, at the input size it trained at."),
    num_classes: int = typer.Option(None, "--num-classes", help="Classes of a registry model (default 50 for cls, 7 for seg)."),
    input: tuple[int, int, int] = typer.Option(None, "--input", help="Input C H W (default: the model's)."),
) -> None:
    """Print the architecture table: Layer (type) | Output Shape | Param #, with totals."""
    from vislab.models import build_model, get_entry
    from vislab.viz.summary import architecture_table, trained_table

    _one_run(model, "an architecture table shows one network")
    if num_classes is not None and num_classes < 1:
        raise VislabError("--num-classes", f"must be >= 1, got {num_classes}")
    if input is not None and (input[0] != 3 or min(input) < 1):
        raise VislabError("--input", f"must be 3 H W with H, W >= 1 (RGB), got {' '.join(map(str, input))}")
    trained = Path(model).exists()
    if trained:  # a trained network: its own classes and input size, its frozen layers
        net, task, meta, recipe = _trained_network(Path(model), num_classes)
        model = Path(model).name
    else:
        entry = get_entry(model)
        net = build_model(model, num_classes=entry.course_classes if num_classes is None else num_classes)
    if input is not None:
        from vislab.models.input_side import check_side

        check_side(net, min(input[1:]), model=model, setting="--input")
    size = tuple(input) if input else None
    table = trained_table(net, task, meta, recipe, size=size) if trained else \
        architecture_table(net, size or entry.input_size)
    out.print(table, markup=False)


def _trained_network(path: Path, num_classes: int | None) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """The network of a run folder or checkpoint, its task, metadata and recipe."""
    from vislab.models.checkpoints import check_readable, checkpoint_file, load_network

    if num_classes is not None:
        raise VislabError("--num-classes", f"{path} is a trained network with its own classes; drop --num-classes")
    ckpt = checkpoint_file(path)
    task = check_readable(ckpt, "`summary` takes a registry name, a run folder or a checkpoint").get("task")
    if task not in ("cls", "seg"):
        raise VislabError(ckpt, "not a vislab checkpoint (no task recorded); name a registry model instead")
    net, meta = load_network(ckpt, task=task)
    recipe = meta.get("recipe")  # the checkpoint's own copy: a file moved out of its run folder keeps it
    return net, task, meta, recipe if isinstance(recipe, dict) else {}


# --- P1 ------------------------------------------------------------------------------------

EnsembleArg = typer.Argument(..., help="Checkpoint or run folder (its best.ckpt, else last.ckpt); several, "
                             "comma-separated (runs/a,runs/b), are an ensemble: class probabilities averaged.")
AgainstOpt = typer.Option(None, "--against", help="Another run (or ensemble) to compare with on the same items and "
                          "settings: its score, the difference and a paired bootstrap interval of it.")

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
    teacher: Optional[str] = TeacherOpt, distill: Optional[float] = DistillOpt,
    workers: Optional[int] = WorkersOpt, resume: bool = ResumeOpt, limit_batches: Optional[float] = LimitOpt,
) -> None:
    """Train a classifier; the best checkpoint is selected on a held-out split of TRAIN_DIR."""
    from vislab.pipelines.classification import train

    if resume:
        got = _resumed(out_dir, data, "cls", train_dir=train_dir, val_dir=val_dir, labels=labels, val_labels=val_labels,
                       recipe=recipe)
        train_dir, val_dir, labels, val_labels, recipe = (got[k] for k in ("train_dir", "val_dir", "labels",
                                                                          "val_labels", "recipe"))
    train_dir, val_dir = _train_dirs(train_dir, data, "p1_data/train_50", val_dir, "p1_data/val_50")
    if val_labels is not None and val_dir is None:
        raise VislabError("--val-labels", "labels a --val-dir; give one, or drop it")
    r, notes, given = _recipe(recipe, out_dir, resume, "cls", epochs=epochs, batch_size=batch_size, lr=lr, precision=precision,
                devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, seed=seed, split_seed=split_seed,
                model=model, weights=weights,
                image_size=image_size, resize_from=resize_from, holdout=holdout, mixup=mixup, cutmix=cutmix,
                augment=augment, erasing=erasing,
                ema=ema, num_workers=workers,
                limit_train_batches=limit_batches, distill=distill, budget_minutes=budget,
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
    _write_json(res, json_out)
    _print_interval("accuracy", res.get("accuracy_interval"))
    _print_against(res, ckpt, "accuracy", "accuracy")
    out.print(f"accuracy: {res['accuracy']:.4f}  ({_top5(res)}{res['images']} images)")  # as `cls train` gives val's


def _print_against(res: dict[str, Any], ours: str, key: str, name: str) -> None:
    """The ``--against`` comparison: the other run's score and the difference, with its interval
    and whether these items tell the two apart."""
    other = res.get("against")
    if not other:
        return
    iv = other["difference_interval"]
    line = f"against {other['run']}: {name} {other[key]:.4f}; difference {other['difference']:+.4f}"
    if iv is None:  # one item, or a metric undefined in every resample
        out.print(f"{line} (no interval: too few items to resample)", markup=False)
        return
    verdict = ("these items do not tell the two apart (the interval holds 0)" if iv["low"] <= 0 <= iv["high"]
               else f"{ours if iv['low'] > 0 else other['run']} is better on these items")
    out.print(f"{line}, {iv['level']:.0%} interval {iv['low']:+.4f} to {iv['high']:+.4f} ({iv['method']}): {verdict}",
              markup=False)


def _print_interval(what: str, interval: dict[str, Any] | None) -> None:
    """``95% interval of the accuracy: 0.8630-0.8887 (Wilson score over 2500 images)``; nothing without one."""
    if interval:
        out.print(f"{interval['level']:.0%} interval of the {what}: {interval['low']:.4f}-{interval['high']:.4f} "
                  f"({interval['method']})", markup=False)


def _top5(res: dict[str, Any]) -> str:
    """``top-5 0.9876, `` or nothing when there are 5 classes or fewer (every label is in the top 5)."""
    return "" if res.get("top5") is None else f"top-5 {res['top5']:.4f}, "


ENGINE_OPTION = typer.Option(
    "auto", "--engine",
    help="auto | onnx | torch. auto: ONNX Runtime on a CPU when installed (fastest in bench/bench_predict.py), else torch.",
)


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
    out.print(f"wrote {n} predictions to {out_csv}" + (" (replacing an earlier prediction there)" if earlier else ""))


@cls_app.command("tsne")
def cls_tsne(
    ckpt: Path = typer.Argument(..., help="Checkpoint or run folder."),
    img_dir: Path = typer.Argument(..., help="Labelled image folder (e.g. val_50)."),
    out_png: Path = typer.Option(Path("tsne.png"), "--out",
                                 help="Output figure (.png, .pdf, .svg or .jpg); a CSV of points is written beside it."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV filename,label for a flat IMG_DIR."),
    seed: int = typer.Option(0, "--seed"),
    perplexity: float = typer.Option(30.0, "--perplexity"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """t-SNE of the second-last-layer features, one colour per class."""
    from vislab.pipelines.cls_predict import TSNE_HEADER, tsne

    from vislab.viz.save import FORMATS

    _one_run(ckpt, "a t-SNE shows the second-last layer of one network")
    data = [img_dir, *_run_data([ckpt])]
    _output(out_png, *FORMATS, inputs=[labels, ckpt], data=data)
    _output(out_png.with_suffix(".csv"), ".csv", inputs=[labels, ckpt], header=TSNE_HEADER, data=data)
    png = tsne(ckpt, img_dir, out_png=out_png, seed=seed, perplexity=perplexity, device=device, labels_csv=labels)
    out.print(f"wrote {png} and {png.with_suffix('.csv')}")


# --- P2 ------------------------------------------------------------------------------------

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
    teacher: Optional[str] = TeacherOpt, distill: Optional[float] = DistillOpt,
    workers: Optional[int] = WorkersOpt, resume: bool = ResumeOpt, limit_batches: Optional[float] = LimitOpt,
) -> None:
    """Train a segmenter; the best checkpoint is selected by the data set's mIoU on held-out training pairs."""
    from vislab.pipelines.segmentation import train

    if resume:
        got = _resumed(out_dir, data, "seg", train_dir=train_dir, val_dir=val_dir, classes=classes, recipe=recipe)
        train_dir, val_dir, classes, recipe = (got[k] for k in ("train_dir", "val_dir", "classes", "recipe"))
    train_dir, val_dir = _train_dirs(train_dir, data, "p2_data/train", val_dir, "p2_data/validation")
    stems = None if snapshot is None else tuple(s.strip() for s in snapshot.split(",") if s.strip())  # "" = none
    r, notes, given = _recipe(recipe, out_dir, resume, "seg", epochs=epochs, batch_size=batch_size, lr=lr, precision=precision,
                devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, seed=seed, split_seed=split_seed,
                model=model, weights=weights,
                crop_size=crop_size, loss=loss, holdout=holdout, ema=ema, num_workers=workers, snapshot=stems,
                limit_train_batches=limit_batches, budget_minutes=budget, distill=distill,
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
        out.print(f"scored on the {res['files']} pairs held out of training (fraction {res['held_out']['fraction']:g}, "
                  f"split seed {res['held_out']['seed']})")
    _print_interval("mIoU", res.get("miou_interval"))
    _print_against(res, run, "miou", "mIoU")
    from vislab.log import counted

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

        if twice(tried) is not None:
            raise VislabError(None, f"--scales: {scales!r} lists the scale {twice(tried):g} twice")
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
    out_png: Path = typer.Option(Path("masks.png"), "--out", help="Output figure (.png, .pdf, .svg or .jpg)."),
    epochs: Optional[str] = typer.Option(None, "--epochs", help="Epochs to show, e.g. 1,5,20 (default early/middle/final)."),
) -> None:
    """The predicted masks of the snapshot images at early, middle and final epochs."""
    from vislab.pipelines.segmentation import progress
    from vislab.viz.save import FORMATS

    _one_run(run_dir, "the masks shown are one run's snapshots")
    _output(out_png, *FORMATS, data=_run_data([run_dir]))
    try:
        chosen = [int(e) for e in epochs.split(",")] if epochs else None
    except ValueError:
        raise VislabError("--epochs", f"{epochs!r} is not a comma-separated list of epoch numbers") from None
    from vislab.config import twice

    if chosen and twice(chosen) is not None:
        raise VislabError("--epochs", f"{epochs!r} lists epoch {twice(chosen)} twice")
    out.print(f"wrote {progress(run_dir, out_png=out_png, epochs=chosen)}")


@app.command("export")
def export_cmd(
    ckpt: str = typer.Argument(..., help="Checkpoint or run folder (P1 or P2); several, comma-separated (runs/a,runs/b), export one graph averaging their class probabilities."),
    out_path: Path = typer.Argument(..., help="Output .onnx file."),
    size: Optional[tuple[int, int]] = typer.Option(None, "--size", help="P2 input H W the graph is traced and checked at (default: the recipe's input_hw, else the most common training tile size); a segmenter's graph takes any size when its network allows."),
    opset: int = typer.Option(17, "--opset"),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare ONNX Runtime with PyTorch on random inputs."),
    offsets: bool = typer.Option(True, "--offsets/--no-offsets", help="P2: carry the `seg calibrate` class offsets and evaluation scale (default) or leave them out."),
) -> None:
    """Export a checkpoint's network to ONNX (normalised input, logits out; batch axis dynamic), or an ensemble's as one graph."""
    from vislab.export import export_onnx

    _output(out_path, ".onnx", inputs=_members(ckpt))
    res = export_onnx(ckpt, out_path, size=size, opset=opset, check=check, offsets=offsets)
    c, h, w = res["input_shape"]
    shown = (f"(N, {c}, H, W): any height and width (traced at {w}x{h}, width x height)" if res.get("free_size")
             else f"(N, {c}, {h}, {w})")
    out.print(f"wrote {res['path']} ({res['bytes'] / 1e6:.1f} MB), input {shown}")
    if check:
        within = (f"; within float32 rounding: PyTorch's own float32 result is {res['float32_rounding']:.1e} off its "
                  "float64 one" if "float32_rounding" in res else "")
        out.print(f"onnxruntime vs torch: max |logit diff| {res['max_abs_diff']:.1e} (tolerance {res['atol']:.3g}{within})")


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders (P1 and/or P2), or folders with run folders up to two levels inside."),
    out_file: Path = typer.Option(Path("report.html"), "--out", help="Output file."),
    fmt: Optional[str] = typer.Option(None, "--format",
                                      help="html (figures embedded) | md (figures as PNGs in <page>_figures/); default: by the --out name."),
    title: str = typer.Option("vislab report", "--title"),
    shot: Optional[Path] = typer.Option(None, "--screenshot", help="Also render the HTML page to this PNG (headless Chromium)."),
) -> None:
    """The homework's figures and tables from run folders, as one self-contained page."""
    from vislab.report import PAGE_SUFFIXES, TSNE_FIGURE, build_report, page_format, screenshot

    _output(out_file, *PAGE_SUFFIXES)
    if shot is not None:
        from vislab.runfolders import find_runs

        try:
            found = find_runs(runs)
        except VislabError:  # said by the report itself, after the checks of its options
            found = []
        _output(shot, ".png", data=_run_data(found),
                protected=[(Path(r) / TSNE_FIGURE, "is a run's t-SNE figure, which the report shows") for r in found])
    fmt = page_format(out_file, fmt)
    if shot is not None and fmt != "html":
        raise VislabError("--screenshot", "renders the HTML page; drop it or use --format html")
    page = build_report(runs, out_file, fmt=fmt, title=title)
    out.print(f"wrote {page}")
    if shot is not None:
        out.print(f"wrote {screenshot(page, shot)}")


@app.command("demo")
def demo_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="hw1_data folder (default $VISLAB_DATA, ./hw1_data, ../shared/data/hw1_data)."),
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (must not hold a previous run)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs instead of the recipe's time budget."),
) -> None:
    """The end-to-end P1 job in about ten minutes on a CPU: fine-tune EfficientNet-Lite0 from the
    offline ImageNet weights (recipe cls-demo, epochs set by its time budget), evaluate val_50,
    write the predictions CSV and the t-SNE figure into the run folder."""
    from vislab.paths import data_root
    from vislab.pipelines.demo import demo

    res = demo(data_root(data), out_dir, epochs=epochs, command=_command_line())
    model = res["recipe"]["model"]
    out.print(f"val_50 accuracy:  {res['val_accuracy']:.4f}  ({res['predictions']['images']} images, predictions in "
              f"{res['predictions']['file']})")
    epochs = res['recipe']['epochs']
    out.print(f"training:         {res['train_seconds'] / 60:.1f} min, {epochs} epoch{'s' if epochs != 1 else ''} of {model} at "
              f"{res['recipe']['image_size']} px")
    out.print(f"t-SNE figure:     {res['tsne']}")
    out.print(f"architecture:     vislab summary {model} --num-classes {res['num_classes']} --input 3 {res['recipe']['image_size']} "
              f"{res['recipe']['image_size']}")


@app.command("runs")
def runs_cmd(
    folders: Optional[list[Path]] = typer.Argument(None, help="Run folders, or folders holding them (up to two levels down; default: runs)."),
    sort: str = typer.Option("time", "--sort", help="time (last write, newest last) | held-out | val (best first)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
) -> None:
    """The run folders, a line each: task, model, epochs, minutes trained, held-out and validation
    scores, last write, and whether the run finished (or how to go on)."""
    from vislab.pipelines.runs import list_runs, rows_json, table_lines

    _output(json_out, ".json")
    rows = list_runs(folders or [Path("runs")], sort=sort)
    for line in table_lines(rows):  # plain lines, whole at any width (a table folds the paths a reader copies)
        out.print(line, markup=False, soft_wrap=True)
    _write_json({"runs": rows_json(rows)}, json_out)


# --- the decode cache ------------------------------------------------------------------------

cache_app = typer.Typer(help="The cache of decoded images and tiles, mask statistics and ONNX graphs "
                        "($VISLAB_CACHE, default ~/.cache/vislab): list it, or free its space.", no_args_is_help=True,
                        cls=OnceGroup)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list_cmd() -> None:
    """Every entry of the cache: what it holds, made from which folder, its size and last use."""
    import time

    from vislab.data.cache import cache_dir, cache_entries, megabytes
    from vislab.log import counted

    entries = cache_entries()
    if not entries:
        out.print(f"{cache_dir()}: empty")
        return
    for e in entries:  # plain lines, whole at any width (a table folds the paths a reader copies)
        items = "" if e.items is None else f", {e.items} items"
        out.print(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e.last_used))}  {megabytes(e.bytes):>9}  "
                  f"{e.describe()}{items}, made from {e.source or '(not recorded)'}", markup=False, soft_wrap=True)
    out.print(f"{cache_dir()}: {counted(len(entries), 'entry', 'entries')}, {megabytes(sum(e.bytes for e in entries))}")


@cache_app.command("clear")
def cache_clear_cmd(
    unused_days: Optional[float] = typer.Option(None, "--unused-days", help="Only entries not used for this many days."),
    source: Optional[Path] = typer.Option(None, "--source", help="Only entries made from this folder (or one inside it: a run folder takes its checkpoints' ONNX graphs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go, delete nothing."),
) -> None:
    """Delete cache entries (all, or those the options choose); a later run decodes again."""
    from vislab.data.cache import cache_dir, cache_entries, megabytes, remove_entries, select_entries
    from vislab.log import counted, info

    if unused_days is not None and not unused_days >= 0:  # nan too
        raise VislabError("--unused-days", f"must be >= 0, got {unused_days:g}")
    entries = cache_entries()
    from_source = select_entries(entries, source=source)
    chosen = select_entries(from_source, unused_days=unused_days)
    if source is not None and not from_source:
        info(f"--source {source}: no entry records it as its folder (entries made before vislab recorded sources "
             "name none); `vislab cache list` shows what each was made from")
    size = megabytes(sum(e.bytes for e in chosen))
    of = f"{len(chosen)} of {counted(len(entries), 'entry', 'entries')}"
    if dry_run:
        for e in chosen:
            out.print(f"would delete {e.name} ({e.describe()}, {megabytes(e.bytes)})", markup=False)
        out.print(f"{cache_dir()}: would free {size} ({of})")
        return
    freed, kept = remove_entries(chosen)
    out.print(f"{cache_dir()}: freed {megabytes(freed)} ({of} deleted)")
    if kept:
        raise VislabError(kept[0][0], f"could not be deleted ({kept[0][1]}); {counted(len(kept), 'file')} of the "
                                      "chosen entries are left")


def _one_line_summaries(*apps: typer.Typer) -> None:
    """A command's line in its group's list is its docstring's first paragraph on one line (Typer
    would keep the docstring's own line breaks there, cutting sentences mid-way)."""
    for group in apps:
        for command in group.registered_commands:
            doc = command.help or (command.callback.__doc__ if command.callback else None)
            if command.short_help is None and doc:
                command.short_help = " ".join(doc.strip().split("\n\n")[0].split())


_one_line_summaries(app, cls_app, seg_app, cache_app)


def _options_once(*apps: typer.Typer) -> None:
    """Every command refuses a single-valued option given twice (:class:`OnceCommand`); one
    declared with a class of its own must be an :class:`OnceCommand` too."""
    for group in apps:
        for command in group.registered_commands:
            if command.cls in (None, TyperCommand):  # Typer's default
                command.cls = OnceCommand
            assert issubclass(command.cls, OnceCommand), f"{command.name}: not an OnceCommand"


_options_once(app, cls_app, seg_app, cache_app)


def main() -> None:
    """Console entry point: one line and exit status 2 for every bad input; one line and status 1
    for any other failure (``--debug`` shows the traceback)."""
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False, prog_name="vislab")
    except CLICK.exceptions.UsageError as exc:  # a missing argument, an unknown option, a value of the wrong type
        message = " ".join(exc.format_message().split())
        if not message:  # a command group called without a command: its help, as Typer shows it
            exc.show()
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if exc.ctx is not None else "vislab"
        print(f"vislab: error: {message} (see `{command} --help`)", file=sys.stderr)
        sys.exit(2)
    except VislabError as exc:
        if debug:
            raise
        print(f"vislab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Interrupted, typer.Abort) as exc:  # click turns Ctrl-C into Abort
        if debug:
            raise
        how = f" ({exc})" if isinstance(exc, Interrupted) else "; a training run that wrote last.ckpt continues with --resume"
        print(f"vislab: interrupted{how}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a case no check names yet: still one line, status 1
        if debug:
            raise
        if type(exc).__name__ in ("OutOfMemoryError", "MemoryError"):  # torch.cuda's, Python's
            print("vislab: out of memory; try a smaller --batch-size (or --image-size / --crop-size)", file=sys.stderr)
            sys.exit(1)
        print(f"vislab: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:  # --help and --version return 0; a command's own exit status
        sys.exit(code)
