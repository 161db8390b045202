"""Several trained networks as one: the comma-separated list that names them, the check that they
predict the same classes, and one network (for export): each member gets the input the way its
checkpoint expects it (its own normalisation, and for classifiers its own input size), and the
output is the logarithm of the members' averaged class probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vislab.errors import VislabError
from vislab.log import info
from vislab.models.checkpoints import checkpoint_file


def members(spec: str | Path) -> list[str]:
    """The checkpoints (or run folders, or ONNX files) of ``spec``: one path, or several joined
    by commas (``runs/a,runs/b``); a path that exists as written is one, commas and all."""
    if "," in str(spec) and Path(spec).exists():
        return [str(spec)]
    parts = [p.strip() for p in str(spec).split(",")]
    if not all(parts):
        raise VislabError(str(spec), "an empty name in the comma-separated list of models")
    twice = next((p for i, p in enumerate(parts) if p in parts[:i]), None)
    if twice is not None:
        raise VislabError(str(spec), f"{twice} is listed twice; list it once")
    seen: dict[Path, str] = {}
    for part in parts:  # the same file under two spellings (a run folder and its best.ckpt)
        path = Path(part)
        if path.exists():
            try:
                path = checkpoint_file(path).resolve()
            except VislabError:  # a run folder without a checkpoint: its loading says so
                path = path.resolve()
            if path in seen:
                raise VislabError(str(spec), f"{seen[path]} and {part} are the same model ({path}); list it once")
            seen[path] = part
    return parts


def check_each_model_once(metas: list[dict[str, Any]], paths: list[str]) -> None:
    """Refuse a list of models that holds one network twice under two forms (a checkpoint and its
    export, or an exported ensemble holding it: it would weigh twice in the average), known by
    the digest of the checkpoint's bytes that an export records; say of an exported ensemble in a
    longer list that its models count as one member together."""
    if len(paths) < 2:
        return
    from vislab.io import file_digest

    def exported(meta: dict[str, Any]) -> list[str]:  # none for an export of an older vislab
        return [e["source"] for e in meta.get("members") or [meta] if isinstance(e.get("source"), str)]

    onnx = [Path(p).suffix == ".onnx" for p in paths]
    known = any(exported(m) for m, is_onnx in zip(metas, onnx) if is_onnx)
    seen: dict[str, str] = {}
    for meta, path, is_onnx in zip(metas, paths, onnx):
        # a checkpoint's bytes are read only when an export in the list recorded its sources
        sources = exported(meta) if is_onnx else [file_digest(checkpoint_file(path))] if known else []
        for source in sources:
            if source in seen:
                raise VislabError(path, f"holds a network that {seen[source]} holds too (the same checkpoint): it would "
                                        "weigh twice in the average; list the runs themselves, each once")
            seen[source] = path
        inside = len(meta.get("members") or []) if is_onnx else 0
        if inside:
            info(f"{path}: an exported ensemble of {inside} models, one member of this list of {len(paths)}: each of "
                 f"its models weighs 1/{inside} of another member")


def check_same_classes(metas: list[dict[str, Any]], paths: list[str], *, keys: tuple[str, ...]) -> None:
    """Every member must predict the same classes (the first member's ``keys`` values)."""
    first = [metas[0].get(k) for k in keys]
    for meta, path in zip(metas[1:], paths[1:]):
        if [meta.get(k) for k in keys] != first:
            raise VislabError(path, f"predicts other classes than {paths[0]} ({_classes_in_words(meta, keys)} against "
                                    f"{_classes_in_words(metas[0], keys)}); an ensemble needs the same classes")


def _classes_in_words(meta: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A member's classes as its names (a segmenter's description, a classifier's names), else count."""
    for k in keys:
        v = meta.get(k)
        names = v.get("names") if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else None
        if names:
            return f"{len(names)} classes: {', '.join(map(str, names))}"
    return f"{meta.get('num_classes')} classes"


# Probabilities are clamped before the logarithm, so that a class every member rules out gets a
# finite score (the log of 0 would make exported outputs -inf, and their differences NaN).
FLOOR = 1e-30


def mean_of(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean of the tensors ``parts`` yields, added in order (the one order every ensemble,
    exported or not, averages its members in)."""
    total, count = None, 0
    for p in parts:
        total, count = (p if total is None else total + p), count + 1
    assert total is not None, "no tensors to average"
    return total / count


class AveragedNet(nn.Module):
    """``forward(x)``: ``x`` is a float batch (N, 3, H, W) of pixel values scaled to [0, 1]; each
    member sees ``(x - mean) / std`` (bilinearly resized to ``size`` x ``size`` when ``size`` is
    set, as classifiers are in ``predict``) and the members' softmax outputs over dim 1 are
    averaged, each first shifted by the member's calibrated class offsets (``meta["class_offsets"]``,
    added to its logits) when it has them. The result, log-probabilities, has the same argmax and
    softmax as the average.

    ``separate``: no average and no offsets; the output is each member's logits, concatenated
    along dim 1 (N, members x C, H, W), member by member. An exported segmenter ensemble with
    class offsets is this, so that ``seg predict`` can shift each member's probabilities after
    its TTA average, as a comma-separated list does (an offset is not linear in the probabilities,
    so shifting each view before the TTA average gives other predictions)."""

    def __init__(self, loaded: list[tuple[nn.Module, dict[str, Any]]], *, separate: bool = False) -> None:
        super().__init__()
        self.separate = separate
        self.nets = nn.ModuleList(net for net, _ in loaded)
        self.sizes = [int(meta["image_size"]) if meta.get("image_size") else None for _, meta in loaded]
        for i, (_, meta) in enumerate(loaded):
            self.register_buffer(f"mean{i}", torch.tensor(meta["mean"], dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer(f"std{i}", torch.tensor(meta["std"], dtype=torch.float32).view(1, -1, 1, 1))
            shift = meta.get("class_offsets")
            self.register_buffer(f"shift{i}", None if shift is None else
                                 torch.tensor([float(v) for v in shift], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for i, (net, size) in enumerate(zip(self.nets, self.sizes)):
            y = (x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
            if size is not None and (y.shape[-2] != size or y.shape[-1] != size):
                y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
            outputs.append(net(y).float())
        if self.separate:
            return torch.cat(outputs, 1)
        shifts = [getattr(self, f"shift{i}") for i in range(len(self.nets))]
        probs = ((logits if shift is None else logits + shift).softmax(1) for logits, shift in zip(outputs, shifts))
        return mean_of(probs).clamp_min(FLOOR).log()
