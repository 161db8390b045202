"""Loading pretrained weights: library enums (need internet once) or a local state_dict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vislab.errors import VislabError
from vislab.log import info
from vislab.models.checkpoints import checkpoint_file, checkpoint_meta, net_state_dict


def _weights_file(path: str | Path) -> Path:
    """``path``, or for a run folder its best.ckpt (else last.ckpt)."""
    p = Path(path)
    if p.is_dir():
        p = checkpoint_file(p)
    return p


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict (or a vislab/Lightning checkpoint's weights) from ``path``; a run folder
    gives its best.ckpt (else last.ckpt), so a run can start from another run's model."""
    p = _weights_file(path)
    if not p.is_file():
        raise VislabError(p, "weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a weights file"
        raise VislabError(p, f"not a readable PyTorch weights file ({type(exc).__name__})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        # a vislab checkpoint: the weights inference uses (the average, when the run kept one);
        # another Lightning checkpoint: its state_dict as it is
        obj = net_state_dict(obj) or obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VislabError(p, "not a state_dict (expected a mapping of parameter names to tensors)")
    return obj


def run_normalisation(weights: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input mean and std that the vislab run (or checkpoint) ``weights`` trained with, or None
    when ``weights`` is no such file (a library's weights, a plain state_dict)."""
    p = _weights_file(weights)
    meta = _meta_of(p)
    if meta.get("mean") is None or meta.get("std") is None:
        return None
    return tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])


def _meta_of(path: Path) -> dict[str, Any]:
    """:func:`~vislab.models.checkpoints.checkpoint_meta` of ``path``; {} for a file that is missing
    or that torch cannot open (:func:`read_state_dict` says why, where it matters)."""
    try:
        return checkpoint_meta(path) if path.is_file() else {}
    except Exception:  # noqa: BLE001 - not a checkpoint vislab reads
        return {}


def _run_of(path: Path) -> str | None:
    """"cls resnet9_xs": the task and model of the vislab checkpoint ``path`` (None: not one)."""
    meta = _meta_of(path)
    return f"{meta['task']} {meta.get('model', '')}".strip() if meta.get("task") else None


def load_local_weights(
    model: nn.Module, path: str | Path, *, skip_mismatched: bool = True,
    state: dict[str, torch.Tensor] | None = None,
) -> tuple[list[str], list[str]]:
    """Load a local state_dict into ``model``; tensors whose shape differs (a head for another
    class count) are skipped. Missing/unexpected keys are reported; a file that holds fewer than
    half of the model's weight tensors (another architecture) is refused.

    Returns:
        (missing keys, unexpected keys)
    """
    sd = read_state_dict(path) if state is None else state  # ``state``: ``path``'s, already read
    path = _weights_file(path)  # a run folder's checkpoint: the file its words are about
    own = model.state_dict()
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if skipped and not skip_mismatched:
        raise VislabError(path, f"shape mismatch for {skipped[:3]}")
    shapes = {k: (tuple(sd[k].shape), tuple(own[k].shape)) for k in skipped}
    sd = {k: v for k, v in sd.items() if k not in skipped}
    # counted in weight tensors: buffers such as BatchNorm's step counters share names across
    # architectures; fewer than half of the weights found is a file of another architecture
    params = [n for n, _ in model.named_parameters()]
    found = sum(n in sd for n in params)
    renamed = [k for k in params if k in shapes]  # named as this model's weights, shaped otherwise
    if found < len(params) / 2 <= len(renamed):  # the names of this architecture, another size of it
        k = renamed[0]
        raise VislabError(path, f"this model's weights are named in this file, but with other shapes (e.g. {k}: "
                                f"{list(shapes[k][0])} here, {list(shapes[k][1])} in the model): weights of another "
                                "width or depth of this architecture?")
    if found == 0:
        run = _run_of(path)
        if run is not None:  # another vislab run's model: said as such, not by its keys
            raise VislabError(path, f"is a checkpoint of a {run} run, and no weight of this model is in it: --weights "
                                    "takes a run (or checkpoint) of the same model, or a state_dict of this model's weights")
        raise VislabError(path, f"no weight of this model is in this file (its keys are such as {list(sd)[:3]})")
    if found < len(params) / 2:
        raise VislabError(path, f"only {found} of this model's {len(params)} weight tensors are in this file "
                                f"with their shapes: weights of another architecture?")
    result = model.load_state_dict(sd, strict=False)
    loaded = len(sd) - len(result.unexpected_keys)
    missing = list(result.missing_keys)
    if missing or result.unexpected_keys or skipped:
        info(
            f"{path}: loaded {loaded} tensors; missing {len(missing)} {missing[:4]}, "
            f"unexpected {len(result.unexpected_keys)} {result.unexpected_keys[:4]}, "
            f"skipped (shape) {skipped[:4]}"
        )
    return missing, list(result.unexpected_keys)


class _HeldDownloadLine:
    """A stand-in for stdout that holds torch.hub's one-line "Downloading: URL to FILE" (printed
    before it tries: misleading when the download then fails, and out of place among a command's
    results) and passes everything else on as it comes."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.lines = stream, []

    def write(self, text: str) -> int:
        if text.startswith("Downloading: "):
            self.lines.append(text.strip())
            return len(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the real stream's
        return getattr(self.stream, name)


def apply_weights(
    model: nn.Module,
    weights: str | None,
    *,
    pretrained: Callable[[], Any] | None = None,
    name: str = "model",
    state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Apply ``weights`` to a freshly built ``model``.

    ``pretrained`` is a zero-argument callable that loads the library's ImageNet weights into
    ``model`` (and may download them); it is only called for ``weights == "imagenet"``.
    ``state``: the file ``weights`` already read (not read again).
    """
    if weights is None or weights == "none":
        return model
    if weights == "imagenet":
        if pretrained is None:
            raise VislabError(None, f"{name} has no ImageNet weights; use --weights PATH")
        import contextlib

        # torch.hub's "Downloading: URL" (on stdout, with the command's results): said once it worked
        held = _HeldDownloadLine(sys.stdout)
        try:
            with contextlib.redirect_stdout(held):
                pretrained()
            for line in held.lines:
                info(line)
        except (OSError, RuntimeError, ConnectionError) as exc:
            if isinstance(exc, RuntimeError) and "download" not in str(exc).lower() and "url" not in str(exc).lower():
                raise
            raise VislabError(
                None,
                f"{name}: ImageNet weights could not be downloaded (no network?); "
                "download them once elsewhere and pass --weights PATH to a state_dict",
            ) from None
        return model
    load_local_weights(model, weights, state=state)
    return model
