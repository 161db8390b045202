"""P2: a trained segmenter's (or an ensemble's) class probabilities on images, and `seg predict`,
which writes them as masks in the data set's format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from vislab.calibration import shift_probs
from vislab.data.images import read_rgb, say_transparent
from vislab.data.seg_classes import SegClasses, check_run_classes, classes_of
from vislab.data.segmentation import IMAGES_DIR, MASK, MASKS_DIR, SAT, list_unlabelled
from vislab.errors import VislabError
from vislab.io import written_by_vislab
from vislab.log import counted, info
from vislab.models.ensemble import check_each_model_once, mean_of, members
from vislab.models.tta import averaged_probs, check_tta


Offsets = torch.Tensor | list[torch.Tensor | None] | None
"""A model's class offsets (:func:`member_offsets`): a tensor (C,), one entry per member of an
exported ensemble whose graph outputs each member's logits, or None."""


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, meta: dict[str, Any], images: torch.Tensor, *, tta: str = "none",
                  device: torch.device | None = None, autocast: bool = False, shift: Offsets = None) -> torch.Tensor:
    """Class probabilities (N, C, H, W) for a uint8 batch (N, 3, H, W), averaged over TTA views,
    then shifted by the class offsets ``shift`` (``softmax(log p + offsets)``; None: none).

    An exported ensemble whose graph outputs each member's logits (``meta["member_logits"]``, see
    :func:`vislab.export.export_ensemble`): each member's probabilities are averaged over the views,
    shifted by its own offsets (``shift[i]``), and then averaged over the members, as :func:`averaged`
    does for the comma-separated list of its members."""
    from vislab.data.tensors import normalize

    check_tta(tta)
    if device is None:  # the network's own device; an ONNX graph (no parameters) runs from the CPU
        params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
        device = next((p.device for p in params), torch.device("cpu"))
    x = normalize(images.to(device), tuple(meta["mean"]), tuple(meta["std"]))
    if not meta.get("member_logits"):
        return shift_probs(averaged_probs(model, x, tta, dense=True, autocast=autocast), shift)
    k = len(meta["members"])
    assert shift is None or isinstance(shift, list) and len(shift) == k
    probs = averaged_probs(model, x, tta, dense=True, autocast=autocast, groups=k)
    return mean_of(shift_probs(p, v) for p, v in zip(probs.chunk(k, 1), shift or [None] * k))


def same_size_runs(images: list[torch.Tensor], batch_size: int) -> list[range]:
    """Consecutive index ranges of at most ``batch_size`` images that share one size."""
    runs, i = [], 0
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch_size and images[j].shape == images[i].shape:
            j += 1
        runs.append(range(i, j))
        i = j
    return runs


def _output_name(image: Path) -> str:
    stem = image.stem
    return f"{stem[: -len(SAT)]}{MASK}.png" if stem.endswith(SAT) else f"{stem}.png"


def ensemble_classes(models: list[tuple[Any, dict[str, Any]]], paths: list[str]) -> SegClasses:
    from vislab.models.ensemble import check_same_classes

    described = [{"classes": {"names": list(classes_of(m).names)}} for _, m in models]
    check_same_classes(described, paths, keys=("classes",))
    first = classes_of(models[0][1])
    for (_, meta), path in zip(models[1:], paths[1:]):  # the same classes, but masks read another way
        apart = classes_of(meta).first_difference(first)
        if apart:
            raise VislabError(path, f"reads its masks otherwise than {paths[0]} ({apart}); an ensemble's members read "
                                    "and write masks alike")
    return first


def member_offsets(meta: dict[str, Any], enabled: bool) -> Offsets:
    """A model's calibrated class offsets (a checkpoint's from :func:`vislab.calibration.load_segmenter`, an
    export's from its metadata), or None when it has none or ``enabled`` is False. An exported
    ensemble that outputs each member's logits has a list, each member's own (None for a member
    without), or None when no member has any."""
    if meta.get("member_logits"):
        shifts = [member_offsets(m, enabled) for m in meta["members"]]
        return shifts if any(v is not None for v in shifts) else None
    stored = meta.get("class_offsets") if enabled else None
    return None if stored is None else torch.tensor([float(v) for v in stored])


def say_offsets(models: list[tuple[Any, dict[str, Any]]], enabled: bool) -> list[Offsets]:
    """Each model's offsets; for an ensemble, one console line on how they are used."""
    shifts = [member_offsets(meta, enabled) for _, meta in models]
    shifted = sum(v is not None for v in shifts)
    if len(models) > 1 and shifted:
        info(f"ensemble: each member's probabilities are shifted by its own class offsets before they are averaged "
             f"({shifted} of {len(models)} members {'has' if shifted == 1 else 'have'} offsets)")
    return shifts


def averaged(models: list[tuple[Any, dict[str, Any]]], images: torch.Tensor, *, tta: str,
              device: torch.device, shifts: Sequence[Offsets] | None = None) -> torch.Tensor:
    """Class probabilities averaged over the models (each with its own normalisation, scale, TTA
    average and then class offsets, ``shifts[i]`` from :func:`say_offsets`: ``softmax(log p +
    offsets)`` per member; None: none shifted)."""
    return mean_of(predict_probs(model, meta, images, tta=tta, device=device, shift=shift)
                   for (model, meta), shift in zip(models, shifts or [None] * len(models)))


def labelled_probs(models: list[tuple[Any, dict[str, Any]]], pairs: list, classes: SegClasses, *, tta: str,
                    batch_size: int, device: torch.device,
                    shifts: Sequence[Offsets] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(class probabilities (C, H, W) on ``device``, averaged over ``models`` as in :func:`averaged`,
    true class ids (H, W), the mask's pixels of no class) per pair, in order."""
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        imgs = [read_rgb(p.image) for p in chunk]
        for run in same_size_runs(imgs, batch_size):
            probs = averaged(models, torch.stack(imgs[run.start : run.stop]), tta=tta, device=device, shifts=shifts)
            for i, p in zip(run, probs):
                truth, stray = classes.read_mask(chunk[i].mask, tuple(imgs[i].shape[1:]))
                yield p, truth, int(stray)


def predict(ckpt: str | Path, img_dir: str | Path, out_dir: str | Path, *, tta: str = "none",
            batch_size: int = 4, device: str | None = None, engine: str = "auto", offsets: bool = True) -> int:
    """Write a mask per image in the data set's format (class ids for index masks, colours for
    palette and course masks): ``xxxx_sat.jpg`` -> ``xxxx_mask.png``, ``xxxx.jpg`` -> ``xxxx.png``.

    ``img_dir`` holds the images (or an ``images/`` folder of them). Masks have the input's size.
    Images are decoded a batch at a time and the masks written into a hidden staging folder of
    ``out_dir`` that is moved into place only when every image has been predicted: a bad file
    leaves no partial output, and memory holds one batch. ``ckpt`` may also be an exported
    ``.onnx``; ``engine`` as in :func:`vislab.export.load_predictor` (the ONNX graph serves the
    most common image size; an ``.onnx`` file that cannot take every image, or every TTA view,
    is refused before any work). ``offsets``: apply the checkpoint's class offsets from
    ``vislab seg calibrate`` if it has any.
    """
    import shutil
    import tempfile
    from collections import Counter

    from vislab.data.images import image_size
    from vislab.models.checkpoints import pick_device
    from vislab.export import load_predictor, model_file

    from vislab.pipelines.settings import check_positive

    check_positive(batch_size=batch_size)
    paths = members(ckpt)
    for p in paths:
        model_file(p, engine)
    check_tta(tta)
    files = list_unlabelled(img_dir)
    names = _check_outputs(files, Path(out_dir))
    # the output folder, before any model is loaded or exported
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VislabError(out, "is a file, but an output folder is needed")
    if out.is_dir() and any(out.glob(f"*{SAT}.*")):  # its masks would be ground truth, not a prediction
        raise VislabError(out, "holds satellite images: a data folder, whose masks the prediction would replace; "
                               "predict into another folder")
    replaced = [name for name in names if (out / name).exists()]
    theirs = [name for name in replaced if not written_by_vislab(out / name)]
    if theirs:  # masks no vislab prediction wrote: ground truth?
        raise VislabError(out, f"holds {counted(len(theirs), 'mask')} this prediction would replace (e.g. "
                               f"{theirs[0]}) that this vislab did not write (ground truth, another tool's, or a "
                               "prediction of a vislab before 2026-12-06): predict into another folder, or delete "
                               "them first")
    sizes = [image_size(f) for f in files]
    say_transparent(img_dir, files)
    hw = Counter(sizes).most_common(1)[0][0]
    dev = pick_device(device)
    models = [(lambda mm: (mm[0].to(dev), mm[1]))(load_predictor(p, task="seg", engine=engine, hw=hw, device=device,
                                                                 calibrated=offsets, tta=tta))
              for p in paths]
    check_each_model_once([m for _, m in models], paths)
    for (model, meta), path in zip(models, paths):
        _check_fixed_input(model, path, files, sizes, tta)
        if tta != "none" and offsets and meta.get("calibrated") and not meta.get("member_logits"):
            raise VislabError(path, f"shifts its members by their class offsets inside the graph, view by view (an "
                                    f"export of an earlier vislab), so --tta {tta} would not predict as the list of "
                                    "its members does; export the list again, or use --tta none")
    classes = ensemble_classes(models, paths)
    folder = Path(img_dir) if Path(img_dir).is_dir() else Path(img_dir).parent
    check_run_classes(folder, classes, [m for _, m in models])  # as seg score: a folder described otherwise is refused
    shifts = say_offsets(models, offsets)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".vislab-predict-", dir=out))
    except OSError as exc:
        raise VislabError(out, f"cannot write here ({exc.strerror or exc})") from None
    if replaced:
        info(f"{out}: {counted(len(replaced), 'mask')} of an earlier prediction replaced")
    mine = set(names)
    others = sorted(f.name for f in out.glob("*.png") if f.name not in mine and not f.name.startswith("."))
    if others:
        info(f"{out}: {counted(len(others), 'other mask')} there (e.g. {others[0]}) not from this prediction; `seg eval` "
             "of this folder would score them too")
    done = False
    try:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images = [read_rgb(f) for f in chunk]
            for run in same_size_runs(images, batch_size):
                probs = averaged(models, torch.stack(images[run.start : run.stop]), tta=tta, device=dev,
                                  shifts=shifts)
                for i, ids in zip(run, probs.argmax(1).cpu()):
                    (staging / names[start + i]).write_bytes(classes.mask_png(ids))
        for name in names:
            (staging / name).replace(out / name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            shutil.rmtree(out, ignore_errors=True)
    return len(files)


def _check_outputs(files: list[Path], out: Path) -> list[str]:
    """The mask file name of each image, in order. Before any work: two images whose masks would
    get one name, and an output folder that is the images' own (its masks, or the images
    themselves, would be replaced), are refused."""
    named: dict[str, Path] = {}
    for f in files:
        name = _output_name(f)
        if name in named:
            raise VislabError(f, f"and {named[name].name} would both be predicted into {name}; rename one")
        named[name] = f
    if out.is_dir() and any(out.resolve() == d.resolve() for d in {f.parent for f in files}):
        raise VislabError(out, "is the folder of the input images: the predicted masks would replace its files "
                               "(ground-truth masks, or the images); write them to another folder")
    if out.name == MASKS_DIR and (out.parent / IMAGES_DIR).is_dir() and any(out.iterdir()):
        raise VislabError(out, f"is the {MASKS_DIR}/ folder of a data set (beside {IMAGES_DIR}/): the predicted masks "
                               "would replace its ground truth; write them to another folder")
    if (out / IMAGES_DIR).is_dir() and (out / MASKS_DIR).is_dir():
        raise VislabError(out, f"holds a data set ({IMAGES_DIR}/ + {MASKS_DIR}/): masks written beside them would make "
                               "its layout ambiguous, and every command would refuse it; write them to another folder")
    return list(named)


def _check_fixed_input(model: Any, path: str, files: list[Path], sizes: list[tuple[int, int]], tta: str) -> None:
    """An ONNX graph of one input size (and no PyTorch network to fall back on) must fit every
    image and every TTA view: refused up front, naming the first image it cannot take."""
    from vislab.export import OnnxNet

    if not isinstance(model, OnnxNet) or model.fallback is not None or model.free_size:
        return
    want = tuple(int(v) for v in model.shape[1:])
    turns = tta == "d4"
    for f, (h, w) in zip(files, sizes):
        if (h, w) != want:
            raise VislabError(f, f"is {w}x{h} (width x height, as every image size vislab names), but {path} was "
                                 f"exported for {want[1]}x{want[0]} inputs; export it again with --size {h} {w} "
                                 "(height, width) or predict with the checkpoint")
        if turns and h != w:
            raise VislabError(f, f"is not square, so --tta d4 turns it to {h}x{w} (width x height), which {path} "
                                 f"(exported for {want[1]}x{want[0]}) cannot take; use --tta flip or predict with "
                                 "the checkpoint")


