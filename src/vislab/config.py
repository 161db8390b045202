"""Run recipes: one frozen dataclass, loaded from YAML, overridden by command-line flags.

Configuration flows one way: recipe file -> :class:`Recipe` -> builders. Values the data
decides (the number of classes) are never written in a recipe. ``None`` means "the builder's
default".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vislab.errors import VislabError


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs besides its data paths."""

    task: str = "cls"  # "cls" or "seg"
    model: str = "resnet9_s"
    weights: str | None = None  # None, "imagenet" or a state_dict path
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"  # see engine.optim.OPTIMIZERS
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # see engine.optim.SCHEDULERS
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0  # cls: Beta(a, a) parameter of mixup; 0 = off
    cutmix: float = 0.0  # cls: Beta(a, a) parameter of cutmix; 0 = off (both on: 1/2 each per batch)
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and saved; 0 = off
    holdout: float = 0.1  # fraction of the TRAINING folder kept for checkpoint selection
    image_size: int | None = None  # cls: resize inputs to this side (None: native)
    crop_size: int | None = None  # seg: random crop side for training (None: full image)
    pad: int = 4  # cls: reflect padding of the random crop
    crop_area: tuple[float, float] = (0.25, 1.0)  # seg: area fraction range of the random crop
    infer_scale: float = 1.0  # seg: evaluation/prediction resize factor (logits resized back)
    input_hw: tuple[int, int] | None = (512, 512)  # seg: required image size (H, W); None: any
    rot90: bool = True  # seg: random 90-degree turns in the augmentation
    loss: str = "ce"  # seg: ce | ce+dice | ce+lovasz | dice | lovasz
    class_weights: str | None = None  # seg: None or "inverse-sqrt-frequency"
    calibrate: bool = False  # seg: fit class offsets for the mIoU on the held-out split after training
    mean: tuple[float, float, float] | None = None  # None: ImageNet statistics
    std: tuple[float, float, float] | None = None
    freeze: tuple[str, ...] = ()  # submodules whose weights stay as loaded (BN statistics still adapt)
    channels_last: bool = False  # NHWC memory format: faster convolutions on CPUs and GPUs
    compile: bool = False  # torch.compile the network for training (minutes of compiling; pays off on GPUs)
    precision: str = "32"
    seed: int = 0
    num_workers: int = 0
    devices: str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    snapshot: tuple[str, ...] = ()  # seg: image stems whose predictions are saved every epoch
    limit_train_batches: float | int | None = None
    checkpoint_minutes: float | None = 10.0  # also write last.ckpt mid-epoch this often (None: epoch ends only)
    max_minutes: float | None = None  # a safety stop: training ends (and checkpoints) after this
    notes: str = ""  # the command that produced the recipe's score, and that score
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise VislabError(None, f"recipe field {name} must be >= 0 (a Beta parameter; 0 turns it off)")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes <= 0:
            raise VislabError(None, "recipe field checkpoint_minutes must be > 0 (or null: only at the end of epochs)")
        if not 0.0 <= self.ema < 1.0:
            raise VislabError(None, f"recipe field ema must be in [0, 1) (a decay such as 0.999; 0 turns it off), got {self.ema}")

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


def _coerce(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key in ("mean", "std", "snapshot", "input_hw", "freeze", "crop_area"):
        if out.get(key) is not None:
            out[key] = tuple(out[key])
    for key in ("lr", "weight_decay", "mixup", "cutmix", "ema", "checkpoint_minutes"):  # YAML reads 1e-3 as a string
        if out.get(key) is not None:
            try:
                out[key] = float(out[key])
            except (TypeError, ValueError):
                raise VislabError(None, f"recipe field {key} must be a number, got {out[key]!r}") from None
    return out


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> Recipe:
    """Build a :class:`Recipe` from a mapping; unknown keys are an error naming ``source``."""
    known = {f.name for f in fields(Recipe)}
    unknown = set(data) - known
    if unknown:
        raise VislabError(source, f"unknown recipe keys: {', '.join(sorted(unknown))}")
    return Recipe(**_coerce(data))


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped in the package, by name."""
    root = resources.files("vislab") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def load_recipe(name_or_path: str) -> Recipe:
    """Load a shipped recipe by name, or a YAML file by path.

    Example:
        >>> load_recipe("cls-fast").model
        'resnet9_s'
    """
    shipped = shipped_recipes()
    path = shipped.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise VislabError(
            name_or_path, f"no such recipe; shipped recipes: {', '.join(sorted(shipped))}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VislabError(path, f"not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise VislabError(path, "a recipe must be a YAML mapping of field: value")
    return recipe_from_dict(data, source=str(path))
