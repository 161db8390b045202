"""Per-class logit offsets for segmenters, fitted on held-out pairs to maximise the mIoU (the
course rule by default; any data set's rule through ``miou``).

A network trained with cross-entropy predicts the most probable class per pixel; the course mIoU
rewards something else (a rare, confusable class such as rangeland counts as much as agriculture).
Adding one offset per class to the log-probabilities before the argmax moves the decision
boundaries towards the mIoU optimum. The offsets are chosen on pairs the network was not trained
on (the run's held-out split) and stored beside the checkpoint as ``<ckpt>.offsets.json``, with
the checkpoint's digest; ``seg score`` / ``seg predict`` / ``export`` apply them when they match it.

A model may do better at another evaluation scale than the one it was trained with: random
crops resized to the training side show it objects larger than the tile does (a seg-cpu model,
trained at 0.5 on crops zoomed 0.5-0.71x, scores best at 0.625-0.75). The calibration therefore
also tries the scales of :func:`scale_candidates`, fits offsets at each, and keeps the best
(``infer_scale`` in the same file; :func:`load_segmenter` applies both).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vislab.config import broken_rule
from vislab.data.seg_classes import IGNORE as IGNORED
from vislab.errors import VislabError
from vislab.io import atomic_write_text, file_digest
from vislab.log import info
from vislab.metrics import confusion_matrix, course_miou

SCALE_FACTORS = (0.8, 1.0, 1.25, 1.5)
"""Evaluation scales tried by a calibration, as multiples of the trained one (at most
:data:`MAX_SCALE`)."""

MAX_SCALE = 2.0
"""The largest evaluation scale a calibration tries by itself: a tile upsampled twice costs 4x
the compute of the tile, as much as the zoom of a crop of a quarter of it."""

OFFSET_STEPS = (-2.0, -1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1.0, 2.0)
"""Moves tried for one class's offset per sweep of the coordinate ascent (log-probability units)."""


SWEEPS = 3
"""Sweeps of the coordinate ascent over every class (:func:`fit_offsets`)."""


def at_search_edge(offsets: torch.Tensor, *, sweeps: int = SWEEPS, moves: Sequence[float] = OFFSET_STEPS) -> list[int]:
    """The classes whose offset went as far as the search reaches (each sweep's largest move in
    one direction): the search stopped them there, and further would have helped.

        >>> at_search_edge(torch.tensor([6.0, 0.5, -6.0]))
        [0, 2]
    """
    reach_up, reach_down = sweeps * max(moves), sweeps * min(moves)
    return [c for c, v in enumerate(offsets.tolist()) if v >= reach_up - 1e-6 or v <= reach_down + 1e-6]


def _confusion_with(logp: torch.Tensor, truth: torch.Tensor, offsets: torch.Tensor, num_classes: int,
                    chunk: int = 16) -> torch.Tensor:
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(0, len(logp), chunk):
        pred = (logp[i : i + chunk].float() + offsets.view(1, -1, 1, 1)).argmax(1)
        conf += confusion_matrix(truth[i : i + chunk], pred, num_classes, ignore_index=IGNORED)
    return conf


def _scores_along(logp: torch.Tensor, truth: torch.Tensor, offsets: torch.Tensor, c: int,
                  moves: Sequence[float], chunk: int = 16,
                  miou: Callable[[torch.Tensor], float] = course_miou) -> list[float]:
    """Course mIoU for each ``offsets + move * e_c``: the best other class is found once per
    pixel, so each move costs one comparison and one bincount."""
    k = logp.shape[1]
    confs = [torch.zeros(k, k, dtype=torch.long) for _ in moves]
    others = torch.tensor([j for j in range(k) if j != c])
    for i in range(0, len(logp), chunk):
        z = logp[i : i + chunk].float() + offsets.view(1, -1, 1, 1)
        best_other, arg = z[:, others].max(1)
        arg = others[arg]
        for conf, m in zip(confs, moves):
            pred = torch.where(z[:, c] + m > best_other, c, arg)
            conf += confusion_matrix(truth[i : i + chunk], pred, k, ignore_index=IGNORED)
    return [miou(conf) for conf in confs]


def fit_offsets(logp: torch.Tensor, truth: torch.Tensor, *, sweeps: int = SWEEPS, moves: Sequence[float] = OFFSET_STEPS,
                searched: Sequence[int] | None = None,
                miou: Callable[[torch.Tensor], float] = course_miou) -> tuple[torch.Tensor, float, float]:
    """Coordinate ascent of an mIoU (default the course's) over one additive offset per class.

    Args:
        logp: log-probabilities (N, C, H, W), any float dtype.
        truth: class ids (N, H, W); pixels of value 255 are left out.
        searched: the classes whose offsets may move (default all); the others stay 0.
        miou: the score of a pooled confusion matrix.
    Returns:
        (offsets of shape (C,), mIoU with zero offsets, mIoU with the offsets). A move is taken
        only when it raises the mIoU, so the offsets stay zero where nothing helps.
    """
    k = logp.shape[1]
    offsets = torch.zeros(k)
    before = current = miou(_confusion_with(logp, truth, offsets, k))
    for _ in range(sweeps):
        moved = False
        for c in range(k) if searched is None else searched:
            scores = _scores_along(logp, truth, offsets, c, moves, miou=miou)
            j = max(range(len(moves)), key=scores.__getitem__)
            if scores[j] > current + 1e-9:
                offsets[c] += moves[j]
                current = scores[j]
                moved = True
        if not moved:
            break
    return offsets, before, current


def crossfit_miou(logp: torch.Tensor, truth: torch.Tensor, *, folds: int = 2, searched: Sequence[int] | None = None,
                  miou: Callable[[torch.Tensor], float] = course_miou) -> float | None:
    """The mIoU of offsets on items they were not fitted on: item ``i`` goes to fold ``i % folds``;
    each fold is predicted with the offsets :func:`fit_offsets` fits on the other folds, and the
    confusion matrices of all folds are pooled. (The mIoU ``fit_offsets`` returns is measured on
    the very pixels it fitted, so it reads high, the more so the fewer the items.) None with
    fewer items than folds. Items are folded by position: neighbouring tiles of one scene land
    in different folds, so on such data the check still reads somewhat high."""
    if len(logp) < folds:
        return None
    k = logp.shape[1]
    pooled = torch.zeros(k, k, dtype=torch.long)
    for f in range(folds):
        held = torch.arange(len(logp)) % folds == f
        offsets, _, _ = fit_offsets(logp[~held], truth[~held], searched=searched, miou=miou)
        pooled += _confusion_with(logp[f::folds], truth[f::folds], offsets, k)
    return miou(pooled)


def crossfit_words(record: dict[str, Any]) -> str:
    """What a calibration record says of its offsets on pairs they were not fitted on ("" for a
    record of an older vislab without that check)."""
    value = record.get("miou_crossfit")
    if value is None:
        one = record.get("files") == 1 and record.get("offsets_dropped")
        scale = ", and the trained evaluation scale stays" if one and len(record.get("scales", [])) > 1 else ""
        return f"; no class offsets kept{scale}: fitted on a single pair, nothing could check them" if one else ""
    checked = f"{value:.4f} with each half of the pairs predicted with the other's offsets"
    if not record.get("offsets_dropped"):
        return f"; {checked}"
    at = record.get("crossfit_scale")
    plain = next((s.get("miou_before") for s in record.get("scales", []) if s.get("scale") == at), None)
    against = f" against {plain:.4f} without them" if isinstance(plain, (int, float)) else ""
    return f"; no class offsets kept: at evaluation scale {at:g}, {checked}{against}" if at is not None else \
        f"; no class offsets kept: {checked}"


def shift_probs(probs: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """Class probabilities (N, C, H, W) with the offsets applied, ``softmax(log(probs) + offsets)``:
    the same argmax as :func:`apply_offsets`, and still probabilities, so that an ensemble can
    average its members' each calibrated its own way. ``None``: ``probs`` unchanged."""
    if offsets is None:
        return probs
    weighted = probs * offsets.exp().to(probs.device, probs.dtype).view(1, -1, 1, 1)
    return weighted / weighted.sum(1, keepdim=True)


def apply_offsets(probs: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """Class ids (N, H, W): the argmax of ``log(probs) + offsets`` (plain argmax without offsets)."""
    return shift_probs(probs, offsets).argmax(1)


def scale_candidates(trained: float) -> list[float]:
    """The evaluation scales a calibration tries for a model trained to predict at ``trained``:
    ``trained`` times :data:`SCALE_FACTORS`, none above :data:`MAX_SCALE`; a model trained at or
    above it keeps its scale. Scales above 1 upsample the tile, as the training crops did."""
    if trained >= MAX_SCALE:
        return [trained]
    return sorted({round(min(MAX_SCALE, trained * f), 4) for f in SCALE_FACTORS})


def offsets_file(ckpt: Path) -> Path:
    """Where the offsets of checkpoint ``ckpt`` live: ``best.ckpt`` -> ``best.offsets.json``."""
    return ckpt.with_name(f"{ckpt.stem}.offsets.json")


def save_offsets(ckpt: Path, offsets: torch.Tensor, **record: Any) -> Path:
    """Write the offsets of ``ckpt`` (with its digest and ``record``, which may hold the chosen
    ``infer_scale``) atomically beside it."""
    path = offsets_file(ckpt)
    body = {"checkpoint": ckpt.name, "sha256": file_digest(ckpt),
            "offsets": [round(float(v), 6) for v in offsets], **record}
    atomic_write_text(json.dumps(body, indent=1) + "\n", path)
    return path


def stored_record(ckpt: Path) -> dict[str, Any]:
    """The calibration record stored for ``ckpt`` (its offsets file), {} without a readable one."""
    try:
        body = json.loads(offsets_file(ckpt).read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def fitted_folder(record: dict[str, Any]) -> Path | None:
    """The folder whose pairs, all of them (``--split all``), a calibration ``record``
    (:func:`stored_record`) was fitted on (absolute; None for held-out training pairs, or no record)."""
    pairs = record.get("pairs_path")
    return Path(pairs) if record.get("split") == "all" and isinstance(pairs, str) else None


def scale_chosen(record: dict[str, Any]) -> bool:
    """Whether a calibration ``record`` chose an evaluation scale other than the trained one."""
    return record.get("infer_scale") not in (None, record.get("trained_scale"))


def fitted_on(ckpt: Path) -> str | None:
    """What the offsets stored for ``ckpt`` were fitted on, in words, or None without a file."""
    path = offsets_file(ckpt)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        return f"the offsets fitted on {body['files']} pairs of {body['pairs']} (--split {body['split']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable offsets file"


def load_calibration(ckpt: Path, num_classes: int) -> tuple[torch.Tensor, float | None] | None:
    """(offsets, evaluation scale or None) stored for ``ckpt``; None when there is no file or it
    belongs to another file (said)."""
    path = offsets_file(ckpt)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        offsets = torch.tensor([float(v) for v in body["offsets"]])
        digest = str(body["sha256"])
        scale = None if body.get("infer_scale") is None else float(body["infer_scale"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VislabError(path, f"not a readable offsets file ({type(exc).__name__}: {exc})") from None
    if offsets.numel() != num_classes:
        raise VislabError(path, f"holds {offsets.numel()} offsets; the checkpoint has {num_classes} classes")
    if not bool(torch.isfinite(offsets).all()):
        raise VislabError(path, f"holds offsets that are not finite numbers ({[float(v) for v in offsets]})")
    rule = None if scale is None else broken_rule("infer_scale", scale)
    if rule:
        raise VislabError(path, f"infer_scale {scale:g} is not {rule}")
    if digest != file_digest(ckpt):
        info(f"warning: {path} was fitted for an earlier {ckpt.name}; ignored (run `vislab seg calibrate` again)")
        return None
    return offsets, scale


def load_segmenter(path: str | Path, *, calibrated: bool = True,
                   tta: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A segmentation checkpoint's network and metadata (:func:`vislab.models.checkpoints.load_network`)
    with its calibration applied when ``calibrated`` and one matches the file: the offsets go into
    ``meta["class_offsets"]`` (for the argmax, and for an export's metadata; none when all are 0), a
    chosen evaluation scale into the network and ``meta["recipe"]["infer_scale"]``. Both are said on
    the console, and so is a ``tta`` (the views the caller will average) other than the one they
    were fitted under."""
    from vislab.models.checkpoints import checkpoint_file, load_network

    file = checkpoint_file(path)
    model, meta = load_network(file, task="seg")
    found = load_calibration(file, int(meta["num_classes"])) if calibrated else None
    if found is None:
        return model, meta
    offsets, scale = found
    kept = bool(offsets.any())  # all zero: a calibration that kept no offsets (its scale still applies)
    if kept:
        meta = {**meta, "class_offsets": offsets.tolist()}
    shown = ", ".join(f"{v:+.2f}" for v in offsets.tolist())
    line = f"calibration from {offsets_file(file)}: " + (f"class offsets {shown}" if kept else "no class offsets")
    trained = float(meta.get("recipe", {}).get("infer_scale", 1.0))
    if scale is not None and scale != trained and hasattr(model, "scale"):
        model.scale = scale
        meta["recipe"] = {**meta.get("recipe", {}), "infer_scale": scale}
        meta["calibrated_scale"] = True  # an export's graph then holds it: --no-offsets cannot take it out
        line += f"; evaluation scale {scale:g} (trained {trained:g})"
    fitted = str(stored_record(file).get("tta", "none"))
    if tta is not None and tta != fitted:  # the offsets shift averaged probabilities: fitted on other averages
        line += f"; fitted under --tta {fitted}, applied here under --tta {tta}"
    info(line)
    return model, meta
