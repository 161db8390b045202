"""ONNX export of a checkpoint's network, and ONNX Runtime as a prediction engine.

The exported graph is the network exactly as ``predict`` calls it: input ``image``, a float
batch (N, 3, H, W) already normalised with the checkpoint's mean/std (and, for P1, resized to
its ``image_size``), output ``logits``. The batch axis is dynamic; the spatial size is fixed at
export time. The checkpoint's metadata travels inside the file (``metadata_props["vislab"]``),
so ``vislab cls|seg predict model.onnx ...`` works without the checkpoint; so do a segmenter's
class offsets from ``vislab seg calibrate`` (``class_offsets``; the logits stay the network's,
at the calibrated evaluation scale when the calibration chose one). An ensemble with class
offsets outputs each member's logits instead of their average (:func:`export_ensemble`).

Needs ``pip install 'vislab[export]'`` (onnx, onnxruntime).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from vislab.errors import VislabError
from vislab.io import atomic_path
from vislab.log import info

META_KEY = "vislab"
# fp32 ONNX Runtime vs eager PyTorch on the same inputs: kernels sum in different orders, so
# logits agree to about 1e-5 of their scale; anything above this times the scale (the largest
# |logit|, at least 1) is a wrong export, not rounding.
ATOL = 1e-3
OPSETS = (11, 20)
"""ONNX opsets an export may ask for: up to the TorchScript exporter's newest in torch 2.14
(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET), from the first that every vislab network exports at (a
segmenter's any-size padding needs 11; 7 to 10 failed with hundreds of lines of graph dump)."""


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise VislabError(None, f"ONNX needs the package {module} (pip install 'vislab[export]')") from None


def network_input_shape(meta: dict[str, Any], size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) the network sees: P1 at its training ``image_size`` (else ``size``, else the size
    its images were stored at, else 32 px), P2 at ``size``, else the recipe's ``input_hw``, else
    the most common tile size of its training folder, else 512 x 512."""
    if meta["task"] == "cls":
        if meta.get("image_size"):
            return 3, meta["image_size"], meta["image_size"]
        hw = size or meta.get("stored_hw") or (32, 32)
        return 3, int(hw[0]), int(hw[1])
    hw = size or tuple(meta.get("recipe", {}).get("input_hw") or meta.get("stored_hw") or (512, 512))
    return 3, int(hw[0]), int(hw[1])


def export_onnx(ckpt: str | Path, out: str | Path, *, size: tuple[int, int] | None = None,
                opset: int = 17, check: bool = True, offsets: bool = True) -> dict[str, Any]:
    """Write the checkpoint's network as ONNX to ``out`` and (by default) check it against
    PyTorch on two random batches. ``ckpt`` may list several checkpoints or run folders
    separated by commas: one graph then averages their class probabilities
    (:func:`export_ensemble`). ``offsets=False`` leaves a segmenter's calibration (class offsets,
    evaluation scale) out of the export; a classifier has none to leave out (refused).

    Returns:
        ``{"path", "input_shape", "bytes", "max_abs_diff", "atol"}`` (the last two when checked;
        ``atol`` is :data:`ATOL` times the largest |logit| of the check, at least 1).
    """
    from vislab.calibration import load_segmenter
    from vislab.models.checkpoints import load_network
    from vislab.models.ensemble import members

    paths = members(ckpt)
    _refuse_overwriting_inputs(paths, out)
    if Path(out).suffix.lower() != ".onnx":
        raise VislabError(out, "an ONNX export needs the .onnx suffix: `predict` knows an exported model by it")
    _refuse_replacing_others(Path(out))
    if len(paths) > 1:
        return export_ensemble(paths, out, size=size, opset=opset, check=check, offsets=offsets)
    task = _task_of(ckpt)
    _check_offsets_apply(offsets, task, ckpt)
    # a segmenter's calibration: the evaluation scale goes into the graph, the offsets into the
    # metadata (applied by predict)
    model, meta = load_segmenter(ckpt, calibrated=offsets) if task == "seg" else load_network(ckpt, task=task)
    if size is not None and task == "cls" and meta.get("image_size"):
        raise VislabError(None, f"--size: this classifier takes {meta['image_size']}x{meta['image_size']} inputs "
                                "(its recipe's image_size); the export has that size")
    if size is not None and task == "cls" and meta.get("stored_hw") and tuple(size) != tuple(meta["stored_hw"]):
        h, w = meta["stored_hw"]
        raise VislabError(None, f"--size: this classifier takes its images at the size they were stored at in "
                                f"training ({w}x{h}, width x height), as `cls predict` decodes them; the export has that size")
    meta = {**meta, "source": _source(ckpt)}
    return export_network(model, meta, out, shape=network_input_shape(meta, size), opset=opset, check=check,
                          free_size=task == "seg")


def _source(path: str | Path) -> str:
    """The checkpoint an export is made from, as its metadata records it: the digest of its bytes
    (no path: a file that has since been trained on is another network, and a shared export names
    no local folder); a list of models that names the checkpoint beside its export holds one
    network twice (:func:`vislab.models.ensemble.check_each_model_once`)."""
    from vislab.io import file_digest
    from vislab.models.checkpoints import checkpoint_file

    return file_digest(checkpoint_file(path))


def _refuse_overwriting_inputs(paths: list[str], out: str | Path) -> None:
    """An export whose output is one of its own checkpoints (or an input ONNX file) is refused."""
    from vislab.models.checkpoints import checkpoint_file

    target = Path(out).resolve()
    for p in paths:
        if Path(p).exists() and checkpoint_file(p).resolve() == target:
            raise VislabError(out, f"is the checkpoint being exported ({p}); write the export to another file")


def _refuse_replacing_others(out: Path) -> None:
    """An existing ``out`` is replaced only when it is a vislab export (its ``metadata_props``
    hold :data:`META_KEY`), and a line says so; any other file (a model of another tool, a file
    misnamed .onnx) is refused before any work."""
    if not out.is_file():
        return
    try:
        import onnx
    except ImportError:  # the export itself names what is missing
        return
    try:
        ours = any(e.key == META_KEY for e in onnx.load(str(out), load_external_data=False).metadata_props)
    except Exception:  # noqa: BLE001 - whatever onnx cannot read is no export of ours
        ours = False
    if not ours:
        raise VislabError(out, "exists and is not an ONNX file vislab exported; refusing to replace it (choose "
                               "another name, or delete it first)")
    info(f"{out}: an earlier vislab export; this one replaces it")


def _check_offsets_apply(offsets: bool, task: str, where: str | Path) -> None:
    """``--no-offsets`` on a classifier (which has none) is refused naming ``where``."""
    if not offsets and task != "seg":
        raise VislabError(where, "--no-offsets: a classifier has no class offsets (they come from `vislab seg calibrate`)")


def _task_of(ckpt: str | Path) -> str:
    from vislab.models.checkpoints import read_checkpoint

    if Path(ckpt).suffix == ".onnx":
        raise VislabError(ckpt, "is already an ONNX export; export from its checkpoint or run folder")
    return read_checkpoint(ckpt)["vislab"]["task"]


def export_ensemble(paths: list[str], out: str | Path, *, size: tuple[int, int] | None = None,
                    opset: int = 17, check: bool = True, offsets: bool = True) -> dict[str, Any]:
    """One ONNX graph for several checkpoints of one task and the same classes: the input is the
    image scaled to [0, 1] (the stored metadata says mean 0, std 1), each member normalises (and,
    for classifiers, resizes) it its own way, and the output is the log of the averaged class
    probabilities (:class:`vislab.models.ensemble.AveragedNet`). ``vislab cls|seg predict`` on the
    file gives the predictions of the same comma-separated list, with any ``--tta``. A segmenter
    ensemble with calibrated class offsets is exported otherwise: ``seg predict`` of the list
    shifts each member's probabilities by its offsets after its TTA average, which a graph of one
    averaged output cannot give, so its output is each member's logits, one after the other along
    dim 1 (N, members x C, H, W; ``meta["member_logits"]``), and each member's offsets go into the
    metadata (``meta["members"][i]["class_offsets"]``), applied by ``seg predict``. A member's
    evaluation scale is in the graph either way (``offsets=False``: no member's calibration,
    offsets or evaluation scale, goes in)."""
    from vislab.calibration import load_segmenter
    from vislab.data.seg_classes import SegClasses
    from vislab.models.checkpoints import load_network
    from vislab.models.ensemble import AveragedNet, check_same_classes

    tasks = [_task_of(p) for p in paths]
    for task, path in zip(tasks[1:], paths[1:]):
        if task != tasks[0]:
            raise VislabError(path, f"is a {task} model and {paths[0]} a {tasks[0]} model; an ensemble has one task")
    task = tasks[0]
    # each segmenter at its calibrated evaluation scale, if it has one
    _check_offsets_apply(offsets, task, paths[0])
    loaded = [load_segmenter(p, calibrated=offsets) if task == "seg" else load_network(p, task=task) for p in paths]
    metas = [m for _, m in loaded]
    if task == "cls":
        check_same_classes(metas, paths, keys=("num_classes", "class_names"))
        if size is not None:
            raise VislabError(None, "--size: an exported classifier ensemble takes its images at the size they were "
                                    "stored at in training; each member resizes them itself")
        for meta, path in zip(metas, paths):
            if not meta.get("stored_hw"):
                raise VislabError(path, "records no stored image size (an older checkpoint); export it alone")
            if meta["stored_hw"] != metas[0]["stored_hw"]:
                raise VislabError(path, f"stores its images at {meta['stored_hw']} and {paths[0]} at "
                                        f"{metas[0]['stored_hw']}; the exported graph takes one size")
    else:
        first = SegClasses.from_dict(metas[0].get("seg_classes"))
        for meta, path in zip(metas[1:], paths[1:]):
            theirs = SegClasses.from_dict(meta.get("seg_classes"))
            if not theirs.same_classes(first):
                raise VislabError(path, f"predicts other classes ({', '.join(theirs.names)}) than {paths[0]} "
                                        f"({', '.join(first.names)}); an ensemble needs the same classes")
        if any("class_offsets" in m for m in metas):
            info(f"ensemble: {sum('class_offsets' in m for m in metas)} of {len(metas)} members' class offsets go into "
                 "the metadata and the graph outputs each member's logits: `seg predict` shifts each member's "
                 "probabilities by its own offsets after its TTA average, then averages the members")
    channels = len(metas[0]["mean"])
    meta = {key: value for key, value in metas[0].items() if key not in ("recipe", "class_offsets")}
    meta.update(model="ensemble of " + " + ".join(m["model"] for m in metas), image_size=None,
                mean=[0.0] * channels, std=[1.0] * channels,
                members=[{"path": str(p), "source": _source(p), "model": m["model"], "image_size": m.get("image_size"),
                          "mean": m["mean"], "std": m["std"]} for p, m in zip(paths, metas)])
    shape = network_input_shape(metas[0] if task == "seg" else meta, size)
    separate = task == "seg" and any("class_offsets" in m for m in metas)
    if task == "seg":
        meta["recipe"] = {"input_hw": list(shape[1:])}
        if separate:  # each member's offsets, applied by `seg predict` after its TTA average
            meta["member_logits"] = True
            for entry, m in zip(meta["members"], metas):
                if "class_offsets" in m:
                    entry["class_offsets"] = m["class_offsets"]
        # the members' scales are in the graph (a member may have a scale only)
        meta["calibrated_scale"] = any(m.get("calibrated_scale") for m in metas)
    return export_network(AveragedNet([(net, m) for net, m in loaded], separate=separate), meta, out, shape=shape,
                          opset=opset, check=check, free_size=task == "seg")


def export_network(model: torch.nn.Module, meta: dict[str, Any], out: str | Path, *,
                   shape: tuple[int, int, int], opset: int = 17, check: bool = True,
                   free_size: bool = False) -> dict[str, Any]:
    """:func:`export_onnx` for a network in memory (``meta`` as stored in checkpoints).

    ``free_size`` (segmenters): the graph takes any height and width, traced at ``shape``; it is
    kept only if ONNX Runtime matches PyTorch at another size too (one not a multiple of 32),
    else the export is made again at ``shape`` alone, said on the console. The result's
    ``free_size`` says which."""
    onnx = _require("onnx")
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise VislabError("--opset", f"must be in {OPSETS[0]}..{OPSETS[1]} (the ONNX opsets every vislab network exports at), got {opset}")
    if min(shape[1:]) < 1:
        raise VislabError("--size", f"must be H W >= 1, got {shape[1]} {shape[2]}")
    model = model.eval()
    out = Path(out)
    result: dict[str, Any] = {"path": str(out), "input_shape": list(shape)}
    other = (shape[0], shape[1] + 37, shape[2] + 19)  # another size, not a multiple of the network's stride
    with atomic_path(out) as tmp:  # published only after the check passed
        _write_graph(onnx, model, meta, tmp, shape, opset, free=free_size, named=out)
        if free_size and _onnx_diff(model, tmp, other, seeds=(0,)) is None:
            info(f"{out}: this network's ONNX graph does not take other sizes than the traced one; exported for "
                 f"{shape[2]}x{shape[1]} inputs only (width x height)")
            free_size = False
            _write_graph(onnx, model, meta, tmp, shape, opset, free=False, named=out)
        result["free_size"] = free_size
        result["bytes"] = tmp.stat().st_size
        if check:
            diff, scale = 0.0, 1.0
            for at in (shape, other) if free_size else (shape,):
                measured = _onnx_diff(model, tmp, at, seeds=(0, 1))
                if measured is None:
                    raise VislabError(out, f"ONNX Runtime cannot run the export at {at[2]}x{at[1]}")
                diff, scale = max(diff, measured[0]), max(scale, measured[1])
            tol = ATOL * scale  # float32 rounding grows with the logits (a diverged run's reach 1e5 and more)
            result.update(max_abs_diff=diff, atol=tol)
            if not diff <= tol:
                sizes = (shape, other) if free_size else (shape,)
                rounding = _float32_rounding(model, tmp, sizes, tol)
                if rounding is None:
                    raise VislabError(out, f"ONNX Runtime output differs from PyTorch by {diff:.2e} (> {tol:.2g}: "
                                           f"{ATOL:g} x the largest |logit|, {scale:.3g}), also against PyTorch in "
                                           "float64; --no-check writes the graph unchecked")
                result["float32_rounding"] = rounding
                info(f"{out}: ONNX Runtime differs from PyTorch by {diff:.2e} (more than {tol:.2g}), but it lies as "
                     f"close to PyTorch in float64 as PyTorch's own float32 result does (which is {rounding:.2e} off "
                     "it): float32 rounding, not another graph")
    return result


def _float32_rounding(model: torch.nn.Module, path: Path, sizes: Sequence[tuple[int, int, int]],
                      tol: float) -> float | None:
    """For a graph that fails the float32 comparison (e.g. a segmenter whose evaluation scale
    resizes 512-pixel sides, where bilinear weights round differently): the largest distance of
    PyTorch's float32 output from the same network run in float64, when ONNX Runtime's output
    lies within ``tol`` + twice that distance of the float64 output at every size; else None."""
    import copy

    wide = copy.deepcopy(model).double()
    net = OnnxNet(path)
    worst = 0.0
    for shape in sizes:
        x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            exact, ours = wide(x.double()), model(x).double()
        own = float((ours - exact).abs().max())
        if not float((net(x).double() - exact).abs().max()) <= tol + 2 * own:
            return None
        worst = max(worst, own)
    return worst


def _write_graph(onnx: Any, model: torch.nn.Module, meta: dict[str, Any], path: Path, shape: tuple[int, int, int],
                 opset: int, *, free: bool, named: Path) -> None:
    """Trace ``model`` at ``shape`` into ``path`` with the vislab metadata; the batch axis is
    free, and with ``free`` the height and width too. A failure names the export ``named``."""
    from vislab.models.seg_base import SegmentationModel

    axes = {0: "batch", 2: "height", 3: "width"} if free else {0: "batch"}
    wrappers = [m for m in model.modules() if isinstance(m, SegmentationModel)]
    for m in wrappers:
        m.any_size_export = free
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        try:
            torch.onnx.export(model, (torch.randn(2, *shape),), str(path), input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                              opset_version=opset, dynamo=False)
        except (RuntimeError, ValueError) as exc:  # e.g. an input too small for the network's pooling
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VislabError(named, f"ONNX export of a {shape[1]}x{shape[2]} input failed: {first}") from None
        finally:
            for m in wrappers:
                m.any_size_export = False
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, default=str)
    onnx.save(proto, str(path))


def _onnx_diff(model: torch.nn.Module, path: Path, shape: tuple[int, ...], seeds: tuple[int, ...]
               ) -> tuple[float, float] | None:
    """The largest |ONNX Runtime - PyTorch| over random batches of 3 at ``shape`` and the largest
    |logit| (at least 1); None when ONNX Runtime cannot run it or gives another output shape."""
    net = OnnxNet(path)
    diff, scale = 0.0, 1.0
    for seed in seeds:
        x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            ref = model(x)
        try:
            got = net(x)
        except Exception:  # noqa: BLE001 - ONNX Runtime's errors for a size the graph cannot take
            return None
        if got.shape != ref.shape:
            return None
        diff = max(diff, float((got - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return diff, scale


class OnnxNet:
    """An ONNX Runtime session that stands in for the PyTorch network in ``predict``.

    A graph of free height and width (``free_size``: a segmenter's) takes any size. Else inputs
    of another spatial size than the exported one go to ``fallback`` (the PyTorch
    network) when there is one, e.g. the turned views of a non-square image under d4 TTA; with
    ``announce`` (the user asked for ONNX Runtime) one line says so for each such input size.
    """

    def __init__(self, path: str | Path, *, fallback: torch.nn.Module | None = None, announce: bool = False) -> None:
        ort = _require("onnxruntime")
        if not Path(path).is_file():
            raise VislabError(path, "ONNX model not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure means "not a usable model"
            raise VislabError(path, f"not a readable ONNX model ({type(exc).__name__})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.shape = tuple(first.shape[1:])  # (C, H, W); H and W are names in a graph of free size
        self.free_size = not all(isinstance(d, int) for d in self.shape[1:])
        self.fallback = fallback
        self.path = Path(path)
        self.announce, self._announced = announce, set()

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint metadata stored at export."""
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise VislabError(self.path, "ONNX model without vislab metadata; export it with `vislab export`")
        return json.loads(props[META_KEY])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.free_size and tuple(x.shape[1:]) != self.shape:
            if self.fallback is None:
                raise VislabError(self.path, f"exported for inputs {self.shape}, got {tuple(x.shape[1:])}")
            if self.announce and x.shape[1:] not in self._announced:
                self._announced.add(x.shape[1:])
                info(f"--engine onnx: inputs of {tuple(x.shape[1:])} run in torch (the ONNX graph takes {self.shape})")
            return self.fallback(x)
        feed = {self.input_name: x.detach().float().cpu().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def to(self, *args: Any, **kwargs: Any) -> "OnnxNet":
        return self

    def eval(self) -> "OnnxNet":
        return self


ENGINES = ("auto", "onnx", "torch")


def onnx_available() -> bool:
    """Whether onnx and onnxruntime are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def model_file(path: str | Path, engine: str = "auto") -> Path:
    """The file :func:`load_predictor` will read; checks it and ``engine`` before any images are
    decoded."""
    from vislab.models.checkpoints import checkpoint_file

    if engine not in ENGINES:
        raise VislabError(None, f"unknown --engine {engine!r}; choose {', '.join(ENGINES)}")
    if Path(path).suffix == ".onnx":
        if not Path(path).is_file():
            raise VislabError(path, "ONNX model not found")
        return Path(path)
    return checkpoint_file(path)


def model_meta(path: str | Path, why: str) -> dict[str, Any]:
    """The vislab metadata of a checkpoint, run folder or exported ``.onnx``, without loading the
    network's weights (to check models against each other before any work); an unreadable file
    is one error naming it and ``why`` it is needed."""
    from vislab.models.checkpoints import check_readable

    file = model_file(path)
    return OnnxNet(file).meta if file.suffix == ".onnx" else check_readable(file, why)


def load_predictor(path: str | Path, *, task: str, engine: str = "auto", hw: tuple[int, int] | None = None,
                   device: str | None = None, calibrated: bool = True,
                   tta: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The network ``predict`` runs, and the checkpoint metadata.

    ``path`` is a checkpoint, a run folder or an exported ``.onnx``. Engines: ``onnx`` (ONNX
    Runtime; the fastest on CPUs in bench/bench_predict.py), ``torch`` (eager, channels_last on
    CPUs) and ``auto`` (ONNX Runtime on a CPU when it is installed, else torch). A checkpoint is
    exported once per (file, input size) into the cache folder, and checked against PyTorch.
    ``hw`` is the input images' size. A segmenter's checkpoint comes with its calibration
    (:func:`vislab.calibration.load_segmenter`, told the ``tta`` it will run under) unless
    ``calibrated`` is False.
    """
    from vislab.calibration import load_segmenter
    from vislab.models.checkpoints import checkpoint_file, load_network, pick_device

    model_file(path, engine)
    on_cpu = pick_device(device).type == "cpu"
    if engine == "onnx" and not on_cpu:
        raise VislabError(None, "--engine onnx runs ONNX Runtime on the CPU; use --device cpu, or --engine torch on a GPU")
    if Path(path).suffix == ".onnx":
        if engine == "torch":
            raise VislabError(path, "an exported ONNX model runs only with --engine onnx or auto")
        if device is not None and not on_cpu:
            raise VislabError(path, f"an exported ONNX model runs on the CPU (ONNX Runtime), not --device {device}; "
                                    "use --device cpu, or predict with the checkpoint on the GPU")
        net = OnnxNet(path)
        meta = net.meta
        if meta.get("task") != task:
            raise VislabError(path, f"is a {meta.get('task')} model ({meta.get('model')}); expected a {task} model")
        # an ensemble exported before its members' offsets went into the metadata ("calibrated") holds them in
        # its graph, shifted per TTA view
        offsets_outside = meta.get("class_offsets") or any(m.get("class_offsets") for m in meta.get("members") or [])
        if not calibrated and (meta.get("calibrated_scale") or meta.get("calibrated")):
            inside = "class offsets" if meta.get("calibrated") else "calibrated evaluation scale"
            raise VislabError(path, f"--no-offsets: this export holds its {inside} in the graph; predict with the "
                                    "checkpoint, or export it with --no-offsets")
        if calibrated and (offsets_outside or meta.get("calibrated") or meta.get("calibrated_scale")):
            carried = " and ".join(w for w, on in (("class offsets", offsets_outside or meta.get("calibrated")),
                                                   ("evaluation scale", meta.get("calibrated_scale"))) if on)
            verb = "applies" if carried == "evaluation scale" else "apply"  # offsets: plural
            # a calibrated scale sits in the graph: --no-offsets is refused for such a file (above)
            info(f"calibration carried by {path}: its {carried} from `seg calibrate` {verb}"
                 + ("" if not offsets_outside else " (an export with --no-offsets leaves them out)"
                    if meta.get("calibrated_scale") else " (--no-offsets leaves the offsets out)"))
        return net, meta
    model, meta = load_segmenter(path, calibrated=calibrated, tta=tta) if task == "seg" else \
        load_network(path, task=task)
    if on_cpu:
        model = model.to(memory_format=torch.channels_last)  # measured faster for eager CPU inference
    if engine == "torch" or (engine == "auto" and not (on_cpu and onnx_available())):
        return model, meta
    try:
        shape = network_input_shape(meta, hw)
        onnx_path = _cached_export(model, meta, checkpoint_file(path), shape)
        try:
            return OnnxNet(onnx_path, fallback=model, announce=engine == "onnx"), meta
        except Exception:  # noqa: BLE001 - a cache entry damaged from outside: made again, once
            onnx_path.unlink(missing_ok=True)
            return OnnxNet(_cached_export(model, meta, checkpoint_file(path), shape), fallback=model,
                           announce=engine == "onnx"), meta
    except Exception as exc:  # noqa: BLE001 - auto falls back to the engine that always works
        if engine == "onnx":
            raise
        why = str(exc) if isinstance(exc, VislabError) else f"{type(exc).__name__}: {exc}"
        info(f"warning: the ONNX Runtime engine is not used for {path} ({why}); predicting with torch")
        return model, meta


EXPORT_FORMAT = 1  # bump when the exported graph changes meaning: old cache entries are then ignored


def _cached_export(model: torch.nn.Module, meta: dict[str, Any], ckpt: Path, shape: tuple[int, int, int]) -> Path:
    """Export ``ckpt``'s network once per (checkpoint contents, input shape, software versions)."""
    import onnxruntime

    from vislab import __version__
    from vislab.data.cache import cache_dir, mark_used, record_source
    from vislab.io import file_digest

    salt = f"{shape}|{getattr(model, 'scale', None)}|{__version__}|{torch.__version__}|{onnxruntime.__version__}|{EXPORT_FORMAT}"
    onnx_path = cache_dir() / "onnx" / f"{ckpt.stem}-{file_digest(ckpt, salt=salt)[:20]}.onnx"
    if not onnx_path.is_file():
        export_network(model.to(memory_format=torch.contiguous_format), meta, onnx_path, shape=shape)
        model.to(memory_format=torch.channels_last)
        record_source(onnx_path, ckpt, count=None)  # `vislab cache list` names the checkpoint
    else:
        mark_used(onnx_path)  # its time is its last use, for `vislab cache list`
        record_source(onnx_path, ckpt, count=None, keep=True)  # a graph exported before the records
    return onnx_path
