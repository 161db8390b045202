"""Settings a recipe leaves open that both training pipelines decide the same way."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any, Callable, Sequence

from vislab.config import FieldError, Recipe, held_out_seed
from vislab.errors import VislabError

Stats = tuple[Sequence[float], Sequence[float]]


def resolve_normalisation(recipe: Recipe, from_scratch: Callable[[], Stats], scratch_why: str) -> tuple[Recipe, str | None]:
    """The input normalisation: the recipe's ``mean``/``std``; else, with weights from a vislab run
    (its folder or checkpoint), the run's own; else, with pretrained weights, the statistics those
    weights were trained with (ImageNet's, EfficientNet-Lite's [-1, 1], a timm model's config:
    :attr:`ModelEntry.pretrained_norm`); else ``from_scratch()``. Returns the
    recipe with both set and a line saying where they came from (None when the recipe set them).
    """
    from vislab.models import get_entry
    from vislab.models.weights import run_normalisation

    if (recipe.mean is None) != (recipe.std is None):
        raise VislabError(None, "recipe sets one of mean and std; set both or neither")
    if recipe.mean is not None:
        return recipe, None
    inherited = run_normalisation(recipe.weights) if recipe.weights not in (None, "imagenet") else None
    if inherited is not None:  # a fine-tune of a vislab run: the inputs its network learnt from
        mean, std = inherited
        why = f"the normalisation of the run it starts from ({recipe.weights})"
    elif recipe.weights is not None:
        mean, std = get_entry(recipe.model).pretrained_norm
        why = f"the normalisation of {recipe.model}'s pretrained weights"
    else:
        mean, std = from_scratch()
        why = scratch_why
    recipe = recipe.with_overrides(mean=tuple(round(float(v), 4) for v in mean),
                                   std=tuple(round(float(v), 4) for v in std))
    return recipe, f"mean {list(recipe.mean)} and std {list(recipe.std)}: {why} (the recipe sets none)"


RESUME_CHANGEABLE = ("devices", "num_nodes", "strategy", "accelerator", "num_workers", "max_minutes")
"""Fields a ``--resume`` may change: where the run continues, not what it computes (the
learning-rate schedule follows the samples seen, so the process count may change), and the
per-invocation time guard ``max_minutes``."""


def _same_value(recipe: Recipe, field: str, value: Any) -> bool:
    """Whether a flag's ``value`` leaves ``field`` of ``recipe`` as it is (the command repeated
    with ``--resume`` added); a value the field refuses is not the same."""
    try:
        return recipe.with_overrides(**{field: value}) == recipe
    except (FieldError, VislabError, TypeError, ValueError):
        return False


def another_run(recipe: str | Path, run: Path) -> str:
    """What a refused ``--resume`` with other settings suggests instead: a new run from its weights."""
    return (f" (or start a new run from what it learnt, with those settings: --recipe {shlex.quote(str(recipe))} "
            f"--weights {shlex.quote(str(run))} --out NEW_FOLDER)")


def run_recipe(recipe: str, out_dir: Path, *, resume: bool, overrides: dict[str, Any],
               flag: Callable[[str], str] = lambda f: f, task: str | None = None) -> tuple[Recipe, list[str]]:
    """The recipe a training run executes: ``recipe`` (a shipped name or YAML file) with the given
    ``overrides`` applied (None = not given), checked for fields the task would ignore; and the
    settings lines that the run folder's ``changes.txt`` must record (pass them to ``train``).

    A resume continues the recipe saved in the run folder and refuses any override but
    :data:`RESUME_CHANGEABLE` (named by ``flag``) or one that repeats the saved value, or the
    value the run's own command gave (before the data adjusted it, as a batch larger than the data). An explicit ``epochs`` switches off the
    recipe's ``budget_minutes`` (the budget would otherwise replace it); both given is an error.
    A bad value is reported under the name of what set it: the recipe file, else the flag. A
    recipe of another ``task`` than the command's is refused first, naming its file.
    """
    unguarded = overrides.get("max_minutes") == 0  # a flag's 0: no time guard (the recipe field's null)
    try:
        r, notes = _run_recipe(recipe, out_dir, resume=resume, flag=flag, task=task,
                               overrides={**overrides, "max_minutes": None} if unguarded else overrides)
    except FieldError as exc:
        if exc.path is not None:  # the recipe file's own value, even when a flag sets the field too
            raise
        if overrides.get(exc.field) is not None:
            lift = f"; {flag('max_minutes')} 0: none" if exc.field == "max_minutes" else ""
            raise VislabError(flag(exc.field), exc.problem + lift) from None
        raise VislabError(recipe, f"field {exc.field} {exc.problem}") from None
    if unguarded and r.max_minutes is not None:
        notes = [*notes, f"{flag('max_minutes')} 0: no time guard (the recipe's max_minutes {r.max_minutes:g} "
                         "is not applied)"]
        r = dataclasses.replace(r, max_minutes=None)
    return r, notes


def _check_task(r: Recipe, path: str | Path, task: str | None) -> None:
    """Refuse a recipe of another task than the command's (None: any), naming its file."""
    if task is not None and r.task != task:
        raise VislabError(path, f"is a {r.task} recipe; `vislab {task} train` needs a {task} recipe")


def _run_recipe(recipe: str, out_dir: Path, *, resume: bool, overrides: dict[str, Any],
                flag: Callable[[str], str], task: str | None) -> tuple[Recipe, list[str]]:
    from vislab.config import check_applies, load_recipe, load_recipe_written

    if resume and not (out_dir / "recipe.yaml").is_file() and (out_dir / "last.ckpt").is_file():
        raise VislabError(out_dir / "recipe.yaml", "is missing: --resume continues the recipe the run was started "
                                                   "with; put the file back, or train afresh into another --out")
    if resume and (out_dir / "recipe.yaml").is_file():
        from vislab.engine.run_folder import flag_values, read_inputs

        base = load_recipe(str(out_dir / "recipe.yaml"))
        _check_task(base, out_dir / "recipe.yaml", task)
        asked = read_inputs(out_dir).get("flags") or {}  # the values the run was asked for, before the data adjusted them
        changed = [k for k, v in overrides.items() if v is not None and k not in RESUME_CHANGEABLE
                   and not _same_value(base, k, v) and flag_values({k: v})[k] != asked.get(k)]
        if changed:
            raise VislabError(out_dir, "--resume continues the recipe saved in the run folder; drop "
                                       f"{', '.join(flag(k) for k in changed)}"
                                       + ("" if "model" in changed else another_run(out_dir / "recipe.yaml", out_dir)))
        return base.with_overrides(**{k: v for k, v in overrides.items() if k in RESUME_CHANGEABLE}), []
    given = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in given and "budget_minutes" in given:
        raise FieldError("budget_minutes", f"sets the epochs from a time budget; drop it or {flag('epochs')}")
    r, written = load_recipe_written(recipe)
    _check_task(r, recipe, task)  # before its model is checked against the task
    recipe_batch = r.batch_size
    budget = r.budget_minutes if "epochs" in given else None
    if budget is not None:
        r = dataclasses.replace(r, budget_minutes=None)  # with_overrides reads None as "not given"
    r = r.with_overrides(**given)
    notes = [] if budget is None else [f"{flag('epochs')} {given['epochs']} replaces the recipe's budget_minutes "
                                       f"({budget:g}): no time budget"]
    if given.get("holdout") == 0 and r.split_seed is not None and "split_seed" not in given:
        notes.append(f"{flag('holdout')} 0 drops the recipe's split_seed ({r.split_seed}): no split to seed")
        r = dataclasses.replace(r, split_seed=None)
    check_applies(r, given=written | set(given))
    if r.task == "cls" and r.image_size and r.pad >= r.image_size:  # before any image is decoded at that side
        raise VislabError(flag("image_size") if "image_size" in given else recipe,
                          f"image_size {r.image_size} is too small for the recipe's pad {r.pad}: the random crop's "
                          "reflect padding must be smaller than the image side")
    check_model_and_weights(r, recipe, flag=flag, given=given)
    return r, notes + batch_lr_notes(recipe_batch, r, given, flag) + unused_setting_notes(r, given, flag)


def batch_lr_notes(recipe_batch: int, r: Recipe, given: dict[str, Any], flag: Callable[[str], str]) -> list[str]:
    """A line when the command line changes the batch but not the learning rate the recipe set
    for its own batch: the rate is kept (as told), and the line gives the optimizer's rule for the
    new batch (a recipe without ``lr`` gets that rule anyway, :func:`~vislab.engine.trainer.resolve_lr`)."""
    from vislab.engine.optim import rescaled_lr

    if "batch_size" not in given or "lr" in given or r.lr is None or r.batch_size == recipe_batch:
        return []
    rule = float(f"{rescaled_lr(r.optimizer, r.lr, recipe_batch, r.batch_size):.3g}")
    return [f"lr {r.lr:g} stays the recipe's, set for a batch of {recipe_batch}; for {flag('batch_size')} "
            f"{r.batch_size} the {r.optimizer} rule (engine/optim.py LR_RULES) gives {rule:g}: "
            f"add {flag('lr')} {rule:g} to use it"]


def unused_setting_notes(r: Recipe, given: dict[str, Any], flag: Callable[[str], str]) -> list[str]:
    """Lines for settings that run as told but likely not as meant: layers frozen at random
    weights, a crop area without a crop, and a recipe's normalisation kept for a model (or
    weights) given on the command line that was pretrained with another."""
    from vislab.models import get_entry

    notes = []
    if r.freeze and r.weights is None:
        notes.append(f"warning: freeze keeps {', '.join(r.freeze)} at their random initial weights "
                     "(no pretrained weights to keep)")
    if r.task == "seg" and not r.crop_size and tuple(r.crop_area) != Recipe.crop_area:
        notes.append(f"crop_area {list(r.crop_area)} is unused: crop_size is 0, so training sees whole tiles")
    if r.mean is not None and r.weights is not None and ("model" in given or "weights" in given):
        from vislab.models.weights import run_normalisation

        if r.weights == "imagenet":
            learnt, source = get_entry(r.model).pretrained_norm, f"{r.model}'s pretrained weights were"
        else:  # a vislab run (or its checkpoint); None for a plain state_dict, which records none
            learnt, source = run_normalisation(r.weights), f"the run it starts from ({r.weights}) was"
        pretrained = None if learnt is None else [round(float(v), 4) for v in (*learnt[0], *learnt[1])]
        if pretrained is not None and pretrained != [round(float(v), 4) for v in (*r.mean, *r.std)]:
            notes.append(f"warning: mean {list(r.mean)} and std {list(r.std)} stay the recipe's, while {source} "
                         f"trained with mean {pretrained[:3]} and std {pretrained[3:]}; set mean/std in a recipe "
                         "file to change them")
    return notes


def check_model_and_weights(r: Recipe, recipe: str, *, flag: Callable[[str], str], given: dict[str, Any]) -> None:
    """Refuse an unknown model, a missing weights file or one that does not fit the model (weights
    of another architecture, not a state_dict) before any data is read or a run folder is written
    (the error names the flag that set it, else the recipe; a file's own problem names the file)."""
    from vislab.log import quiet
    from vislab.models import build_model, get_entry

    try:
        entry = get_entry(r.model)
    except VislabError as exc:
        raise VislabError(flag("model") if "model" in given else recipe, exc.message) from None
    if entry.task != r.task:
        raise VislabError(flag("model") if "model" in given else recipe,
                          f"{r.model} is a {entry.task} model; a {r.task} run needs a {r.task} model (`vislab models`)")
    if r.weights in (None, "imagenet"):
        return
    if not Path(r.weights).exists():  # a run folder's checkpoint is found by the load
        raise VislabError(r.weights, f"weights file not found (set by {flag('weights') if 'weights' in given else recipe})")
    # built with the course's class count: the data's is not known yet, and a head of another width
    # is skipped by the load, so the check refuses only what the run's own build would refuse (it
    # reads the file and builds the model once more: seconds, even for a VGG FCN)
    with quiet():  # the run's build loads the file again and reports what it skipped
        build_model(r.model, num_classes=entry.course_classes, weights=r.weights)


def empty_holdout(recipe: Recipe, held_out: int, why: str) -> tuple[Recipe, str | None]:
    """A held-out fraction that holds out nothing (too few items) runs as ``holdout: 0`` (the last
    epoch is the model, no best.ckpt), said in one line; otherwise the recipe as it is."""
    if recipe.holdout <= 0 or held_out > 0:
        return recipe, None
    line = f"holdout {recipe.holdout:g} -> 0: {why} leave none to hold out; the last epoch is the model"
    if recipe.split_seed is not None:
        line += f" (and split_seed {recipe.split_seed} is dropped: no split to seed)"
    return dataclasses.replace(recipe, holdout=0.0, split_seed=None), line


def fit_batch(recipe: Recipe, n: int, what: str) -> tuple[Recipe, str | None]:
    """A batch larger than the ``n`` items each process trains on shrinks to them (training drops a
    partial last batch, so no step would run), said in one line ("only 4 ``what``")."""
    if 0 < n < recipe.batch_size:
        return recipe.with_overrides(batch_size=n), f"batch size {recipe.batch_size} -> {n}: only {n} {what}"
    return recipe, None


def check_positive(**values: int | float) -> None:
    """Refuse option values that must be > 0, naming the option."""
    for name, value in values.items():
        if not value > 0:
            raise VislabError(f"--{name.replace('_', '-')}", f"must be > 0, got {value}")


class AtTrainingStart:
    """Distillation's targets as a function of the training device, for a module's
    ``before_training``: ``make(teachers, device=device, **kwargs)`` runs once, when training starts
    (never for the resume of a finished run, which trains nothing), and the teachers' networks go
    with it. Picklable when ``make`` is a module-level function (``ddp_spawn`` pickles the module)."""

    def __init__(self, make: Callable[..., Any], teachers: Any, **kwargs: Any) -> None:
        self.make, self.teachers, self.kwargs = make, teachers, kwargs

    def __call__(self, device: Any) -> Any:
        if self.teachers is None:
            raise RuntimeError("the teachers' targets were made already")
        teachers, self.teachers = self.teachers, None
        return self.make(teachers, device=device, **self.kwargs)


TEACHER_DIGESTS = "teacher_digests"
"""The key of a distilled run's checkpoint metadata: the digest of each teacher's checkpoint file."""


def teacher_files(recipe: Recipe, out: Path, *, resume: bool) -> list[str] | None:
    """The digest of each ``recipe.teacher`` checkpoint's bytes (None without teachers), for the
    student's checkpoints to record. On ``--resume`` they must be the ones last.ckpt recorded: a
    teacher trained on or replaced since would give other soft targets, silently (refused, naming
    it); a teacher that is gone is named as the run's teacher."""
    from vislab.engine.run_folder import recorded_meta
    from vislab.io import file_digest
    from vislab.models.checkpoints import torch_checkpoint_file

    if not recipe.teacher:
        return None
    digests = []
    for path in recipe.teacher:
        try:
            digests.append(file_digest(torch_checkpoint_file(path)))
        except VislabError as exc:
            if not resume:
                raise
            raise VislabError(path, f"a teacher this run distils from: {exc.message}; --resume goes on with the "
                                    "teachers the run started with") from None
    recorded = recorded_meta(out).get(TEACHER_DIGESTS) if resume else None
    if recorded is not None and len(recorded) == len(digests):
        for path, now, then in zip(recipe.teacher, digests, recorded):
            if now != then:
                raise VislabError(path, f"is not the teacher {out / 'last.ckpt'} distilled from (its checkpoint changed "
                                        "since the run started: trained on, or replaced), and its soft targets would "
                                        "be other ones; --resume goes on with the teachers the run started with: put "
                                        "it back, or start a new run")
    return digests


def teacher_split_notes(metas: list[dict[str, Any]], paths: list[str], recipe: Recipe, *,
                        digest: str | None, digest_key: str, held_out: Callable[[float, int], set[int]],
                        items: str) -> list[str]:
    """A warning line (for ``changes.txt``) for each teacher that trained on some of the ``items``
    (images, pairs) the student holds out (``recipe`` as the run resolved it, its training
    folder's ``digest`` beside the teacher's ``meta[digest_key]``): a teacher that held nothing
    out, one trained on another folder, or one whose held-out fraction or split seed held out
    other items (``held_out(fraction, seed)``: the indices a split holds out; a smaller fraction
    of the same seed holds out a part of a larger one, which is no warning). The student's
    held-out score, and its checkpoint choice, then lean the teacher's way. None when nothing is
    held out."""
    ours = (float(recipe.holdout), held_out_seed(recipe))
    if ours[0] <= 0:
        return []
    lines = []
    for meta, path in zip(metas, paths):
        r = meta.get("recipe", {})
        theirs = (float(r.get("holdout", 0.0)), held_out_seed(r))
        some = f"it trained on some of the student's held-out {items}"
        if theirs[0] <= 0:
            why = f"held nothing out of its training folder: {some}"
        elif meta.get(digest_key) is not None and digest is not None and meta[digest_key] != digest:
            why = f"was trained on another folder than the student's: {some}"
        elif theirs != ours:
            student = held_out(*ours)
            seen = len(student - held_out(*theirs))
            if not seen:
                continue
            why = (f"held out (fraction, split seed) {theirs}, the student {ours} (--holdout {theirs[0]:g} "
                   f"--split-seed {theirs[1]} would share its split): it trained on {seen} of the student's "
                   f"{len(student)} held-out {items}")
        else:
            continue
        lines.append(f"warning: teacher {path} {why}, so the student's held-out score may read high")
    return lines


def held_out_of(models: list[tuple[Any, dict[str, Any]]], paths: list[str], *,
                digest_key: str) -> tuple[float, int, str | None]:
    """(held-out fraction, seed, the training folder's digest, ``meta[digest_key]``) shared by the
    runs; refused when a run held nothing out or the members held out different items."""
    splits = [(float(m.get("recipe", {}).get("holdout", 0.0)), held_out_seed(m.get("recipe", {})),
               m.get(digest_key)) for _, m in models]
    for (fraction, _, _), path in zip(splits, paths):
        if fraction <= 0:
            raise VislabError(path, "--held-out: this run held no training images out (its recipe's holdout is 0)")
    for split, path in zip(splits, paths):
        if split[:2] != splits[0][:2]:
            raise VislabError(path, f"--held-out: holds out (fraction, split seed) {split[:2]}, the first run "
                                    f"{splits[0][:2]}: not the same images")
    known = [(d, path) for (_, _, d), path in zip(splits, paths) if d is not None]  # older checkpoints have none
    for digest, path in known[1:]:
        if digest != known[0][0]:
            raise VislabError(path, f"--held-out: trained on another folder than {known[0][1]}: not the same images")
    return (*splits[0][:2], known[0][0] if known else None)


def evaluation_device(recipe: Recipe) -> str | None:
    """The device a run's own evaluations after training (validation, calibration) use: the CPU
    when it trained on the CPU (``accelerator: cpu``, a GPU left free on purpose), else the one
    :func:`vislab.models.checkpoints.pick_device` picks."""
    return "cpu" if recipe.accelerator == "cpu" else None
