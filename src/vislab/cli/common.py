"""What every command of ``vislab`` shares: the app and its groups, the console, options given
once, output-file checks, run-folder lookups and the training options."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Iterable

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from vislab.errors import VislabError

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
    from vislab.paths import data_root
    from vislab.pipelines.training import refuse_new_val_dir, resumed_inputs

    if data is not None and given.get("train_dir") is None:  # --data decides the folders, not the record
        kept = {k: given.pop(k) for k in ("train_dir", "val_dir")}
        scored = kept["val_dir"] or data_root(data) / COURSE_VAL[task]  # the folder _train_dirs gives
        refuse_new_val_dir(out_dir, scored, task, given.get("val_labels"))
        return {**resumed_inputs(out_dir, given, val_dir=scored), **kept}
    refuse_new_val_dir(out_dir, given.get("val_dir"), task, given.get("val_labels"))
    return resumed_inputs(out_dir, given)


COURSE_VAL = {"cls": "p1_data/val_50", "seg": "p2_data/validation"}
"""The course's validation folder of each task under ``--data`` (as :func:`_train_dirs` is given it)."""


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
    from vislab.pipelines.settings import another_run, run_recipe

    saved = out_dir / "recipe.yaml"
    if resume and saved.is_file():
        if recipe is not None:
            raise VislabError(out_dir, "--resume continues the recipe saved in the run folder; drop --recipe"
                                       + another_run(recipe, out_dir))
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
PrecisionOpt = typer.Option(None, "--precision", help="32 | 16-mixed | bf16-mixed (or Lightning's others: 64-true, "
                                                      "16-true, bf16-true; 16 and bf16 are read as the -mixed ones).")
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
MaxMinutesOpt = typer.Option(None, "--max-minutes", help="A time guard: no epoch starts after this many minutes of one invocation (said; --resume continues). Kept with the run: a --resume has it again, or the value it is given (0: none).")
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


# --- evaluation options and lines, P1 and P2 ------------------------------------------------

EnsembleArg = typer.Argument(..., help="Checkpoint or run folder (its best.ckpt, else last.ckpt); several, "
                             "comma-separated (runs/a,runs/b), are an ensemble: class probabilities averaged.")
AgainstOpt = typer.Option(None, "--against", help="Another run (or ensemble) to compare with on the same items and "
                          "settings: its score, the difference and a paired bootstrap interval of it.")


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


ENGINE_OPTION = typer.Option(
    "auto", "--engine",
    help="auto | onnx | torch. auto: ONNX Runtime on a CPU when installed (fastest in bench/bench_predict.py), else torch.",
)
