"""Run recipes: one frozen dataclass, loaded from YAML, overridden by command-line flags.

Configuration flows one way: recipe file -> :class:`Recipe` -> builders. Values the data
decides (the number of classes) are never written in a recipe. ``None`` means "the builder's
default".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Collection

import yaml

from vislab.errors import VislabError, yaml_problem
from vislab.io import load_yaml, missing_file_words


class FieldError(VislabError):
    """A recipe field (or the command-line option that set it) with a value out of range."""

    def __init__(self, name: str, problem: str, where: str | None = None) -> None:
        self.field, self.problem = name, problem
        super().__init__(where, f"recipe field {name} {problem}" if where is None else problem)


def _int(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _num(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = True) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok


AUGMENTS = ("none", "trivial")
# the names the engine builds (engine/optim.py OPTIMIZERS and SCHEDULERS, engine/losses.py LOSSES;
# a test keeps them equal), checked when a recipe is made: before any data is read
OPTIMIZER_NAMES = ("sgd", "adamw", "adam")
SCHEDULER_NAMES = ("cosine", "constant", "poly")
LOSS_NAMES = ("ce", "dice", "lovasz")
CLASS_WEIGHTS = ("inverse-sqrt-frequency",)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla")  # Lightning's names
_PRECISIONS = {"32", "32-true", "16-mixed", "bf16-mixed", "16", "bf16", "64", "64-true", "16-true", "bf16-true"}
PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed"}
"""Lightning's older names of two precisions: a recipe keeps the names Lightning asks for."""


def _devices_ok(v: Any) -> bool:
    text = str(v).strip()
    if text == "auto":
        return True
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:  # a count, or -1: every device (Lightning's rule)
        return parts[0] == "-1" or (parts[0].isdigit() and int(parts[0]) >= 1)
    return all(p.isdigit() for p in parts if p) and any(parts) and twice(p for p in parts if p) is None


def twice(items: Any) -> Any:
    """The first item of ``items`` that is listed a second time, or None when each is once."""
    seen: set = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def _loss_ok(v: Any) -> bool:
    parts = [p.strip() for p in v.split("+")] if isinstance(v, str) else []
    return bool(parts) and all(p in LOSS_NAMES for p in parts)


# (field, check, rule shown in the error); checked whenever a recipe is made or overridden
_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("epochs", _int(1), "an integer >= 1"),
    ("batch_size", _int(1), "an integer >= 1"),
    ("lr", _num(0, lo_open=True), "a number > 0"),
    ("momentum", _num(0, 1), "in [0, 1)"),
    ("weight_decay", _num(0), "a number >= 0"),
    ("warmup_epochs", _num(0), "a number >= 0"),
    ("label_smoothing", _num(0, 1), "in [0, 1)"),
    ("distill", _num(0, 1, hi_open=False), "in [0, 1]"),
    ("mixup", _num(0), ">= 0 (a Beta parameter; 0 turns it off)"),
    ("cutmix", _num(0), ">= 0 (a Beta parameter; 0 turns it off)"),
    ("ema", _num(0, 1), "in [0, 1) (a decay such as 0.999; 0 turns it off)"),
    ("augment", lambda v: v in AUGMENTS, f"one of {', '.join(AUGMENTS)}"),
    ("devices", _devices_ok, "auto, a count >= 1, -1 (all) or a list of distinct device ids like 0,1"),
    ("accelerator", lambda v: v in ACCELERATORS, f"one of {', '.join(ACCELERATORS)}"),
    ("optimizer", lambda v: v in OPTIMIZER_NAMES, f"one of {', '.join(OPTIMIZER_NAMES)}"),
    ("scheduler", lambda v: v in SCHEDULER_NAMES, f"one of {', '.join(SCHEDULER_NAMES)}"),
    ("loss", _loss_ok, f"one of {', '.join(LOSS_NAMES)} or a sum like ce+dice"),
    ("class_weights", lambda v: v in CLASS_WEIGHTS, f"{' or '.join(CLASS_WEIGHTS)} (or null: none)"),
    ("erasing", _num(0, 1, hi_open=False), "in [0, 1] (the probability of erasing a rectangle)"),
    ("holdout", _num(0, 1), "in [0, 1) (the held-out fraction of the training folder)"),
    ("image_size", _int(1), "an integer >= 1 (0: the images' own size)"),
    ("resize_from", _int(1), "an integer >= 1 (the first epoch's training side; null: image_size throughout)"),
    ("crop_size", _int(1), "an integer >= 1 (0: the whole image)"),
    ("pad", _int(0), "an integer >= 0"),
    ("crop_area", lambda v: len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and 0 < v[0] <= v[1] <= 1,
     "two area fractions lo, hi with 0 < lo <= hi <= 1"),
    ("mean", lambda v: len(v) == 3 and all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in v),
     "three numbers in [0, 1] (R, G, B, in units of the image's full range)"),
    ("std", lambda v: len(v) == 3 and all(isinstance(x, (int, float)) and 0 < x <= 1 for x in v),
     "three numbers in (0, 1] (R, G, B, in units of the image's full range)"),
    ("infer_scale", _num(0, 8, lo_open=True, hi_open=False), "in (0, 8]"),
    ("seed", _int(0), "an integer >= 0"),
    ("split_seed", _int(0), "an integer >= 0 (or null: the run's seed)"),
    ("num_workers", _int(0), "an integer >= 0"),
    ("num_nodes", _int(1), "an integer >= 1"),
    ("precision", lambda v: str(v) in _PRECISIONS, f"one of {', '.join(sorted(_PRECISIONS))}"),
    ("limit_train_batches", lambda v: _int(1)(v) or _num(0, 1, lo_open=True, hi_open=False)(v),
     "an integer >= 1 (batches) or a fraction in (0, 1]"),
    ("checkpoint_minutes", _num(0, lo_open=True), "> 0 (or null: only at the end of epochs)"),
    ("max_minutes", _num(0, lo_open=True), "> 0 (or null: no time limit)"),
    ("budget_minutes", _num(0, lo_open=True), "> 0 (or null: the recipe's epochs)"),
    *((name, lambda v: isinstance(v, bool), "true or false") for name in ("channels_last", "compile", "rot90", "calibrate")),
    *((name, lambda v: twice(v) is None, "a list that names each once") for name in ("snapshot", "freeze", "teacher")),
]


def broken_rule(name: str, value: Any) -> str | None:
    """The range rule of recipe field ``name`` that ``value`` breaks (worded as in its error), or
    None when it is within range; for values that reach a field's meaning another way (a stored
    calibration's scale, a command-line list)."""
    for field_name, ok, rule in _CHECKS:
        if field_name == name:
            return None if ok(value) else rule
    raise KeyError(name)


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs besides its data paths."""

    task: str = "cls"  # "cls" or "seg"
    model: str = "resnet9_s"
    weights: str | None = None  # None, "imagenet" or a state_dict path
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None  # peak learning rate; None: engine.optim.scaled_lr of the optimiser and global batch
    optimizer: str = "sgd"  # see engine.optim.OPTIMIZERS
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # see engine.optim.SCHEDULERS
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    teacher: tuple[str, ...] = ()  # runs whose averaged probabilities (per image; seg: per pixel) are soft targets
    distill: float = 0.5  # weight of the soft-target term when there is a teacher (1 - it: the labels' loss)
    mixup: float = 0.0  # cls: Beta(a, a) parameter of mixup; 0 = off
    cutmix: float = 0.0  # cls: Beta(a, a) parameter of cutmix; 0 = off (both on: 1/2 each per batch)
    augment: str = "none"  # cls: none | trivial (one random operation per image at a random strength, data/augment.py)
    erasing: float = 0.0  # cls: probability of erasing one random rectangle per image; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and saved; 0 = off
    holdout: float = 0.1  # fraction of the TRAINING folder kept for checkpoint selection
    image_size: int | None = None  # cls: resize inputs to this side (None: native)
    resize_from: int | None = None  # cls: progressive resizing: the first epoch trains at this side, growing to image_size
    crop_size: int | None = None  # seg: random crop side for training (None: full image)
    pad: int = 4  # cls: reflect padding of the random crop
    crop_area: tuple[float, float] = (0.25, 1.0)  # seg: area fraction range of the random crop
    infer_scale: float = 1.0  # seg: evaluation/prediction resize factor (logits resized back)
    input_hw: tuple[int, int] | None = None  # seg: required tile size (H, W); None: the data set's (course 512x512, else any)
    rot90: bool = True  # seg: random 90-degree turns in the augmentation
    loss: str = "ce"  # seg: ce | ce+dice | ce+lovasz | dice | lovasz
    class_weights: str | None = None  # seg: None or "inverse-sqrt-frequency" (of the scored classes; others weigh 1)
    calibrate: bool = False  # seg: fit class offsets for the mIoU on the held-out split after training
    mean: tuple[float, float, float] | None = None  # None: ImageNet statistics
    std: tuple[float, float, float] | None = None
    freeze: tuple[str, ...] = ()  # submodules whose weights stay as loaded (BN statistics still adapt)
    channels_last: bool = False  # NHWC memory format: faster convolutions on CPUs and GPUs
    compile: bool = False  # torch.compile the network for training (minutes of compiling; pays off on GPUs)
    precision: str = "32"
    seed: int = 0
    split_seed: int | None = None  # seed of the held-out split alone (None: seed); runs of one split, other seeds, ensemble on it
    num_workers: int = 0
    devices: str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    snapshot: tuple[str, ...] = ()  # seg: image stems whose predictions are saved every epoch
    limit_train_batches: float | int | None = None
    checkpoint_minutes: float | None = 10.0  # also write last.ckpt mid-epoch this often (None: epoch ends only)
    max_minutes: float | None = None  # a safety stop, per invocation: no new epoch starts after this (said; --resume continues)
    budget_minutes: float | None = None  # training time to fill: epochs set from the measured speed of the first steps
    notes: str = ""  # the command that produced the recipe's score, and that score
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.devices, int) and not isinstance(self.devices, bool):  # YAML `devices: 2`
            object.__setattr__(self, "devices", str(self.devices))
        # "off" spellings: weights none, image/crop size 0 (native size)
        if isinstance(self.weights, str) and self.weights.strip().lower() in ("", "none"):
            object.__setattr__(self, "weights", None)
        for name in ("image_size", "crop_size"):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)
        # Lightning's older spellings, which it takes with a warning to use these: the same setting
        object.__setattr__(self, "precision", PRECISION_ALIASES.get(str(self.precision), self.precision))
        for name, ok, rule in _CHECKS:
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise FieldError(name, f"must be {rule}, got {value!r}")

    def with_overrides(self, **overrides: Any) -> "Recipe":
        """A new recipe with the non-None ``overrides`` applied (the original is untouched)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise VislabError(None, f"unknown recipe fields: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists for tuples) for YAML and checkpoints."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def held_out_seed(recipe: "Recipe | dict[str, Any]") -> int:
    """The seed of a run's held-out split: ``split_seed`` where set, else ``seed`` (a recipe or its
    stored dict form, as in a checkpoint's meta).

        >>> held_out_seed(Recipe(seed=3)), held_out_seed({"seed": 3, "split_seed": 0})
        (3, 0)
    """
    get = recipe.get if isinstance(recipe, dict) else lambda k, d=None: getattr(recipe, k, d)
    split = get("split_seed")
    return int(get("seed", 0) or 0) if split is None else int(split)


def names_field(value: Any) -> Any:
    """A recipe field of names (``teacher``, ``snapshot``, ``freeze``) as a tuple when it is one
    name, or several joined by commas, as on the command line; any other value as it is."""
    return tuple(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else value


_TEXT_FIELDS = tuple(f.name for f in fields(Recipe) if str(f.type) in ("str", "str | None")
                     and f.name not in ("precision", "devices"))  # their YAML integers become text (_coerce, __post_init__)
"""Recipe fields that hold text (a number there is a slip)."""
_NUMBER_FIELDS = tuple(f.name for f in fields(Recipe) if str(f.type) in ("float", "float | None"))
"""Recipe fields that hold a float (YAML 1.1 reads ``1e-6`` as text: made a number)."""


def _coerce(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key in ("teacher", "snapshot", "freeze"):
        if key in out:
            out[key] = names_field(out[key])
    for key in ("mean", "std", "snapshot", "input_hw", "freeze", "crop_area", "teacher"):
        if out.get(key) is not None:
            if not isinstance(out[key], (list, tuple)):
                raise FieldError(key, f"must be a list, got {out[key]!r}")
            out[key] = tuple(out[key])
    if isinstance(out.get("lr"), str) and out["lr"].strip().lower() == "auto":
        out["lr"] = None
    if out.get("precision") is not None:
        out["precision"] = str(out["precision"])  # YAML reads 32 as an integer
    for key in _TEXT_FIELDS:  # `model: 5` failed later as an internal error
        if out.get(key) is not None and not isinstance(out[key], str):
            raise FieldError(key, f"must be text, got {out[key]!r}")
    for key in _NUMBER_FIELDS:  # YAML 1.1 reads 1e-3 (no dot) as a string
        if out.get(key) is not None:
            if isinstance(out[key], bool):  # float(True) is 1.0: `lr: true` is a slip, not a rate of 1
                raise FieldError(key, f"must be a number, got {out[key]!r}")
            try:
                out[key] = float(out[key])
            except (TypeError, ValueError):
                raise FieldError(key, f"must be a number, got {out[key]!r}") from None
    return out


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> Recipe:
    """Build a :class:`Recipe` from a mapping; unknown keys are an error naming ``source``."""
    known = {f.name for f in fields(Recipe)}
    unknown = set(data) - known
    if unknown:
        raise VislabError(source, f"unknown recipe keys: {', '.join(sorted(unknown))}")
    try:
        return Recipe(**_coerce(data))
    except FieldError as exc:
        raise FieldError(exc.field, f"recipe field {exc.field} {exc.problem}", where=source) from None


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped in the package, by name."""
    root = resources.files("vislab") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def _recipe_file(name_or_path: str) -> tuple[Path, dict[str, Any]]:
    """A shipped recipe's file (by name) or a YAML file's path, and its mapping of field: value."""
    shipped = shipped_recipes()
    path = shipped.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        looks_like_file = path.suffix.lower() in (".yaml", ".yml") or len(path.parts) > 1
        raise VislabError(
            name_or_path, (missing_file_words(path, "recipe file") if path.is_dir() or looks_like_file else
                           "no such recipe") +
            f"; shipped recipes: {', '.join(sorted(shipped))}"
        )
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise VislabError(path, yaml_problem(exc)) from None
    except UnicodeDecodeError:
        raise VislabError(path, "not UTF-8 text (save the recipe as UTF-8)") from None
    if data is None:
        raise VislabError(path, "empty recipe; a recipe sets at least task and model (`vislab recipes` lists the fields)")
    if not isinstance(data, dict):
        raise VislabError(path, "a recipe must be a YAML mapping of field: value")
    return path, data


def load_recipe(name_or_path: str) -> Recipe:
    """Load a shipped recipe by name, or a YAML file by path.

    Example:
        >>> load_recipe("cls-fast").model
        'resnet9_xs'
    """
    return load_recipe_written(name_or_path)[0]


def load_recipe_written(name_or_path: str) -> tuple[Recipe, frozenset[str]]:
    """:func:`load_recipe`, and the fields the file sets to a value (not null): what its author
    chose, which :func:`check_applies` holds to applying even at their default value. None are
    counted for a file that lists at least 3/4 of the fields: a run's saved ``recipe.yaml`` (or a
    copy of one), which lists every field whatever the run used, from this version or an older
    one with fewer fields.

        >>> written = load_recipe_written("cls-fast")[1]
        >>> "model" in written, "rot90" in written
        (True, False)
    """
    path, data = _recipe_file(name_or_path)
    recipe = recipe_from_dict(data, source=str(path))
    if len(set(data) & {f.name for f in fields(Recipe)}) >= 0.75 * len(fields(Recipe)):
        return recipe, frozenset()
    return recipe, frozenset(k for k, v in data.items() if v is not None)


TASK_ONLY = {
    "cls": ("image_size", "resize_from", "pad", "mixup", "cutmix", "augment", "erasing", "label_smoothing"),
    "seg": ("crop_size", "crop_area", "infer_scale", "input_hw", "rot90", "loss", "class_weights", "calibrate",
            "snapshot"),
}
"""Recipe fields that only one task reads."""


def check_applies(recipe: Recipe, given: Collection[str] = ()) -> None:
    """Refuse settings the run would ignore: a field of the other task, momentum under Adam, a
    distillation weight without a teacher (each when set to a value other than its default, or
    named in ``given``: the fields a recipe file or a flag set, as at their default they are
    still a sign the author expected them to act), class weights without a cross-entropy term,
    offsets or a split seed without a held-out split, a warm-up longer than the run (a time
    budget that plans one says so itself)."""
    defaults = {f.name: f.default for f in fields(Recipe)}

    def chosen(name: str) -> bool:
        value, default = getattr(recipe, name), defaults[name]
        if isinstance(value, tuple):
            value, default = list(value), list(default or [])
        return name in given or value != default

    other = "seg" if recipe.task == "cls" else "cls"
    for name in TASK_ONLY[other]:
        if chosen(name):
            raise FieldError(name, f"applies to {other} training only; a {recipe.task} run would ignore it")
    if recipe.task == "cls" and recipe.teacher and (recipe.mixup > 0 or recipe.cutmix > 0):
        raise FieldError("teacher", "gives soft targets per image, which mixup/cutmix would mix; use one or the other")
    if recipe.task == "cls" and recipe.resize_from is not None:
        if recipe.image_size is None:
            raise FieldError("resize_from", "grows the training side to image_size, and image_size is not set")
        if recipe.resize_from > recipe.image_size:
            raise FieldError("resize_from", f"must be at most image_size ({recipe.image_size}), got {recipe.resize_from}")
    if chosen("momentum") and recipe.optimizer in ("adam", "adamw"):
        raise FieldError("momentum", f"is SGD's; {recipe.optimizer} has its own betas and would ignore it")
    if recipe.warmup_epochs > recipe.epochs and not recipe.budget_minutes:
        raise FieldError("warmup_epochs", f"{recipe.warmup_epochs:g} is longer than the run's {recipe.epochs} epochs: "
                                          "the learning rate would never reach lr")
    if recipe.extra:
        raise FieldError("extra", f"is read by nothing in vislab, so {', '.join(map(str, recipe.extra))} would be "
                                  "ignored; `vislab recipes` lists the fields")
    if not recipe.teacher and chosen("distill"):
        raise FieldError("distill", "weights the teacher's soft targets, and there is no teacher")
    if recipe.teacher and recipe.distill == 0:
        raise FieldError("distill", "is 0, so the teacher's soft targets would be computed and given no weight; "
                                    "drop the teacher or give distill a weight > 0")
    if recipe.split_seed is not None and recipe.holdout <= 0:
        raise FieldError("split_seed", "seeds the held-out split, and holdout is 0")
    if recipe.task == "seg":
        parts = [p.strip() for p in recipe.loss.split("+")]
        if recipe.class_weights is not None and "ce" not in parts:
            raise FieldError("class_weights", f"weight the ce term of the loss, and loss {recipe.loss!r} has none")
        if recipe.calibrate and recipe.holdout <= 0:
            raise FieldError("calibrate", "fits class offsets on the held-out split, and holdout is 0")

