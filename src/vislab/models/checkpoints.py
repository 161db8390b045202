"""Reading vislab checkpoints for inference: the file of a run folder, one clear error for
anything that is not a checkpoint of the expected task, and the rebuilt network (no download,
no Lightning). Used by predict, evaluate, export and report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vislab.data.images import IMAGE_SUFFIXES
from vislab.errors import VislabError

FORMAT = 1
"""The layout of the ``vislab`` metadata block in checkpoints."""


def pick_device(name: str | None = None) -> torch.device:
    """``name`` (cpu, cuda, cuda:1 ...) or the GPU when there is one (in one process of a
    multi-GPU run, ``LOCAL_RANK`` set by its launcher, that process's own GPU); a name that is no
    device, or a GPU this machine lacks, is one error naming ``--device``."""
    if not name:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        rank = os.environ.get("LOCAL_RANK")
        if rank is not None and rank.isdigit() and int(rank) < torch.cuda.device_count():
            return torch.device("cuda", int(rank))
        return torch.device("cuda")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise VislabError("--device", f"{name!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise VislabError("--device", f"{name!r}: vislab runs on cpu, cuda or mps devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VislabError("--device", f"{name!r}: this machine has no Apple GPU")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise VislabError("--device", f"{name!r}: this machine has no CUDA GPU")
        if dev.index is not None and dev.index >= count:
            raise VislabError("--device", f"{name!r}: this machine has {count} CUDA GPU(s), numbered from 0")
    return dev


def net_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights inference uses from a checkpoint: the weight average (``ema.module.``) when
    the run kept one, else the trained network (the LightningModule keeps it under ``net.``)."""
    sd = ckpt["state_dict"]
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in sd) else "net."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or for a run folder its best.ckpt (else last.ckpt)."""
    p = Path(path)
    if not p.exists():
        listed = [part for part in str(path).split(",") if part]  # the commands that take several split them first
        if len(listed) > 1 and any(Path(part).exists() for part in listed):  # not a name with a comma
            raise VislabError(p, f"a list of {len(listed)} models, and this command takes one run folder or checkpoint")
        raise VislabError(p, "no such run folder or checkpoint")
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / name).is_file():
                return p / name
        if (p / "recipe.yaml").is_file():
            raise VislabError(p, "run folder holds no best.ckpt or last.ckpt")
        images = " (it holds images: a model's run folder or checkpoint goes here)" if _holds_images(p) else ""
        raise VislabError(p, f"is not a run folder (it holds no recipe.yaml, best.ckpt or last.ckpt){images}")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise VislabError(p, "is an image, not a checkpoint (a model's run folder or checkpoint goes here)")
    return p


def torch_checkpoint_file(path: str | Path) -> Path:
    """:func:`checkpoint_file`, an ONNX export refused: for the commands that need the network's
    checkpoint (its training record), checked before any data folder is looked for."""
    p = checkpoint_file(path)
    if p.suffix == ".onnx":
        raise VislabError(p, "is an ONNX export, which `predict` takes; this command needs the checkpoint or run folder")
    return p


def _holds_images(folder: Path, *, looked: int = 8) -> bool:
    """Whether ``folder`` or one of its first ``looked`` subfolders (class folders) holds an image."""
    try:
        entries = sorted(folder.iterdir())
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in entries):
            return True
        return any(f.suffix.lower() in IMAGE_SUFFIXES for d in [e for e in entries if e.is_dir()][:looked]
                   for f in d.iterdir())
    except OSError:  # a folder it cannot read: nothing said of its contents
        return False


def read_checkpoint(path: str | Path, *, task: str | None = None) -> dict[str, Any]:
    """Read a vislab checkpoint, with one clear error for anything else.

    Args:
        path: a ``.ckpt`` written by ``vislab ... train``.
        task: "cls" or "seg" to refuse a checkpoint of the other pipeline.
    """
    p = torch_checkpoint_file(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure means "not a readable checkpoint"
        raise VislabError(p, f"not a readable checkpoint ({_unreadable(p, exc)})") from None
    expected = f"expected a checkpoint written by `vislab {task} train`" if task else \
        "expected a checkpoint written by `vislab cls train` or `vislab seg train`"
    if not isinstance(ckpt, dict) or "vislab" not in ckpt or "state_dict" not in ckpt:
        what = "a plain state_dict" if isinstance(ckpt, dict) and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()
        ) else "not a vislab checkpoint"
        raise VislabError(p, f"{what}; {expected}")
    meta = ckpt["vislab"]
    lacking = [k for k in ("task", "model", "num_classes") if not isinstance(meta, dict) or k not in meta]
    if lacking:
        raise VislabError(p, f"its vislab metadata lacks {', '.join(lacking)}; {expected}")
    if not isinstance(meta.get("format", FORMAT), int) or meta.get("format", FORMAT) > FORMAT:
        raise VislabError(p, f"written by a newer vislab (checkpoint format {meta.get('format')!r}; this one reads "
                             f"up to {FORMAT}); upgrade vislab")
    if task is not None and meta.get("task") != task:
        raise VislabError(
            p, f"is a {meta.get('task')} checkpoint ({meta.get('model')}); expected a {task} checkpoint"
        )
    return ckpt


def loader_position(checkpoint: dict[str, Any]) -> tuple[int, int] | None:
    """(the epoch to run, 0-based; the items of it already trained on, over all processes) as a
    checkpoint's loader state holds them (:class:`vislab.engine.sampling.ResumableLoader`); None in a checkpoint without it."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
    if not states or not isinstance(states[0], dict) or "epoch" not in states[0]:
        return None
    return int(states[0]["epoch"]), int(states[0].get("items", 0))


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """The vislab metadata of a checkpoint file, opened memory-mapped (no tensor is read); {} for
    a file that holds none. Whatever torch.load raises for an unreadable file goes through."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    meta = ckpt.get("vislab") if isinstance(ckpt, dict) else None
    return meta if isinstance(meta, dict) else {}


def run_meta(run: Path) -> dict[str, Any] | None:
    """The vislab metadata of a run folder's checkpoint (last.ckpt, else best.ckpt: the data they
    describe is the same), read memory-mapped; None when neither can be read."""
    for name in ("last.ckpt", "best.ckpt"):
        try:
            return checkpoint_meta(run / name)
        except Exception:  # noqa: BLE001 - missing or unreadable: the next, else none
            continue
    return None


def check_readable(path: Path, why: str) -> dict[str, Any]:
    """Refuse a checkpoint file that torch cannot open (memory-mapped: no tensor is read), one
    line naming the file and ``why`` it is needed; else return its :func:`checkpoint_meta`."""
    try:
        return checkpoint_meta(path)
    except Exception as exc:  # noqa: BLE001 - every failure means "not a readable checkpoint"
        raise VislabError(path, f"not a readable checkpoint ({_unreadable(path, exc)}); {why}") from None


def _unreadable(p: Path, exc: Exception) -> str:
    """Why ``torch.load(p, weights_only=True)`` failed, in words."""
    import pickle
    import zipfile

    if p.stat().st_size == 0:
        return "empty file"
    if zipfile.is_zipfile(p) and isinstance(exc, pickle.UnpicklingError):
        return ("it holds Python objects, not only tensors: a whole model saved with torch.save(model)? "
                "vislab loads tensors only")
    if not zipfile.is_zipfile(p):
        return f"not a PyTorch file, or a truncated one: {type(exc).__name__}"
    return f"truncated or corrupt: {type(exc).__name__}"


def load_network(path: str | Path, *, task: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network of a checkpoint and load its weights (no download, no Lightning).

    Returns:
        (model in eval mode, the checkpoint's ``vislab`` metadata)
    """
    from vislab.models import build_model

    file = checkpoint_file(path)
    ckpt = read_checkpoint(file, task=task)
    meta = ckpt["vislab"]
    try:
        model = build_model(meta["model"], num_classes=meta["num_classes"], weights=None)
    except VislabError as exc:  # a model this install does not have (another version, a missing extra)
        raise VislabError(file, f"trained with model {meta['model']!r}, which this vislab cannot "
                                                 f"build: {exc.message}") from None
    try:
        model.load_state_dict(net_state_dict(ckpt))
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise VislabError(file, f"weights do not fit {meta['model']} with {meta['num_classes']} classes ({first})") from None
    if hasattr(model, "scale"):  # segmenters: the recipe's evaluation resize factor
        model.scale = float(meta.get("recipe", {}).get("infer_scale", 1.0))
    return model.eval(), meta
