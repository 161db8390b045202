"""``vislab report``: the homework's figures and tables from run folders, as one page.

For each run folder (P1 or P2): recipe and command, training curves, final held-out and
validation metrics beside the seed's numbers and the course baselines, the architecture table,
and the task's figures (P1: per-class accuracy, confusion matrix, t-SNE, most-confused pairs;
P2: per-class IoU, 7x7 confusion matrix, mask progression, overlays). Figures are embedded, so
the page is one file to send or print.
"""

from __future__ import annotations

import base64
import csv
import datetime
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from vislab.errors import VislabError
from vislab.data.layouts import id_and_name
from vislab.io import atomic_write_bytes, atomic_write_text, figures_folder
from vislab.log import counted, info
from vislab.models.checkpoints import checkpoint_file
from vislab.runfolders import SCORE_KEYS, csv_rows, epoch_counts, find_runs, process_words, read_run
from vislab.viz import figures

TSNE_FIGURE = "tsne.png"
"""The t-SNE figure a run folder's section shows, when ``vislab cls tsne`` wrote one there."""

# (name, value) rows the course report is judged against
REFERENCES = {
    "cls": [("course baseline (simple)", 0.70), ("course baseline (strong)", 0.80),
            ("seed report (VGG16-BN)", 0.8268), ("best published peer (ResNeXt-101)", 0.896)],
    "seg": [("course baseline (simple)", 0.630), ("course baseline (strong)", 0.675),
            ("seed report (VGG19-FCN32s)", 0.688), ("best published peer (DeepLabV3-ResNet50)", 0.735)],
}


def _fig(title: str, png: bytes, text: str = "") -> dict[str, str]:
    return {"title": title, "b64": base64.b64encode(png).decode(), "text": text}


def _run_notes(run: Path, data: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting a section: a run that never finished (no
    results.json; said on the console too), one its time limit stopped early, and the settings
    vislab changed (``changes.txt``)."""
    notes = []
    if not data["results"]:
        epochs = len(data["history"])
        failed, process = data["failure"], data["process"]
        running = bool(process and process["alive"])  # a --resume of it is refused while it trains
        saved = "; last.ckpt can resume it (--resume)" if (run / "last.ckpt").is_file() and not running else ""
        why = f"training stopped: {failed}" if failed else process_words(process) if process else \
            "no results.json, so training failed, was interrupted or is still running"
        notes.append(f"Unfinished: {why} ({epochs} epoch{'' if epochs == 1 else 's'} in history.csv); "
                     f"no final numbers{saved}.")
        info(f"{run}: unfinished run (no results.json); its section says so")
    if data["results"].get("stopped_early"):
        notes.append(f"Stopped early: {data['results']['stopped_early']}")
    notes += [f"Resumed with: {c}" for c in data.get("resumed", [])]
    notes += [c[0].upper() + c[1:] if c.startswith(("warning:", "stopped:")) else f"Setting: {c}"
              for c in data["changes"]]  # a warning or a failure is no setting
    later = _later_calibration(run, data["results"])
    if later:
        notes.append(later)
    return notes


def _later_calibration(run: Path, results: dict[str, Any]) -> str | None:
    """A note when ``best.offsets.json`` is not the calibration the run's numbers were measured
    with (``vislab seg calibrate`` ran after training): score, predict and export apply it."""
    from vislab.calibration import crossfit_words, offsets_file, stored_record

    try:
        ckpt = checkpoint_file(run)  # best.ckpt, else (no held-out split) last.ckpt
    except VislabError:
        return None
    rec, path = stored_record(ckpt), offsets_file(ckpt)
    if not rec:
        return None
    measured = results.get("calibration") or {}
    if measured.get("offsets") == rec.get("offsets") and measured.get("infer_scale") == rec.get("infer_scale"):
        return None
    scale = (f", evaluation scale {rec['trained_scale']:g} -> {rec['infer_scale']:g}"
             if rec.get("infer_scale") not in (None, rec.get("trained_scale")) else "")
    how = "with the offsets training fitted" if measured else "without offsets"
    return (f"Calibrated after training: {path.name} (`vislab seg calibrate`, {rec.get('files')} {rec.get('split')} "
            f"pairs: mIoU {rec.get('miou_before', float('nan')):.4f} -> {rec.get('miou_after', float('nan')):.4f}"
            f"{scale}{crossfit_words(rec)}) is what `vislab seg score`, `predict` and `export` apply; the validation "
            f"numbers here were measured {how}.")


def _architecture(run: Path, task: str, recipe: dict[str, Any], num_classes: int | None) -> str:
    from vislab.models.checkpoints import load_network
    from vislab.models import build_model
    from vislab.viz.summary import trained_table

    meta: dict[str, Any] = {}
    try:
        ckpt: Path | None = checkpoint_file(run)
    except VislabError:  # neither best.ckpt nor last.ckpt
        ckpt = None
    if ckpt is not None:
        model, meta = load_network(ckpt, task=task)
    elif num_classes:  # checkpoints removed (e.g. copied back from another machine): rebuild from the recipe
        model = build_model(recipe["model"], num_classes=num_classes)
    else:
        return "(no checkpoint in the run folder)"
    return trained_table(model, task, meta, recipe)


def _cls_figures(run: Path, data: dict[str, Any]) -> list[dict[str, str]]:
    val = data["results"].get("val", {})
    out = []
    if val:
        names = val.get("class_names")
        per_class = {id_and_name(int(k), names): v for k, v in val["per_class"].items()}
        out.append(_fig("Per-class validation accuracy", figures.bars(per_class, title="accuracy per class",
                                                                       reference={"mean": val["accuracy"]})))
        n = len(val["confusion"])
        out.append(_fig("Confusion matrix (validation)", figures.confusion_heatmap(
            val["confusion"], labels=[id_and_name(i, names) for i in range(n)], title="row-normalised confusion")))
        pairs = _confused_pairs(run, data, val)
        if pairs:
            out.append(_fig("Most confused pairs", figures.image_pairs(pairs),
                            "Each row: a validation image of the most often confused (true, predicted) class pairs, "
                            "beside an image of the class it was taken for."))
    tsne = run / TSNE_FIGURE
    if tsne.is_file():
        out.append(_fig(f"t-SNE of the second-last layer ({_tsne_images(run)})", tsne.read_bytes(),
                        "Classes that form their own cluster are recognised reliably; overlapping clusters are "
                        "the pairs the confusion matrix shows as confused."))
    else:
        info(f"{run}: no tsne.png, so the page has no t-SNE; `vislab cls tsne {shlex.quote(str(run))} VAL_DIR` makes it")
    return out


def _tsne_images(run: Path) -> str:
    """Which images the run's t-SNE shows: "validation" when its points (``tsne.csv``) are the
    images of the run's validation predictions, else the words that send the reader to the
    figure's own title (which names the folder)."""
    ids = []
    for name in ("tsne.csv", "val_predictions.csv"):
        try:
            ids.append({row.get("image_id") for row in csv_rows(run / name)})
        except (OSError, UnicodeDecodeError, csv.Error):
            ids.append(None)
    if ids[0] and ids[0] == ids[1]:
        return "validation"
    if ids[0] and ids[1]:
        return f"{counted(len(ids[0]), 'image')} of the folder its title names, not the validation images scored above"
    return "the images of the folder its title names"


def _epochs_run(data: dict[str, Any]) -> str:
    """The epochs a run trained (:func:`vislab.runfolders.epoch_counts`), with its schedule's and
    recipe.yaml's when they differ (a budget re-planned it, a time limit stopped it, it has not
    finished)."""
    ran, schedule, planned = epoch_counts(data)
    if ran is None:  # a finished run of an older vislab without its history: its schedule
        ran = schedule
    if ran == schedule == planned:
        return str(ran)
    words = f"{ran} trained, of a {schedule}-epoch schedule"
    return words + (f" (recipe.yaml: {planned}, before the budget's re-plans)" if schedule != planned else "")


def _confused_pairs(run: Path, data: dict[str, Any], val: dict[str, Any], k: int = 5) -> list[tuple[Path, Path, str]]:
    preds = run / "val_predictions.csv"
    val_dir = Path(data["results"].get("val_dir", ""))
    if not preds.is_file() or not val_dir.is_dir():
        return []
    conf = val["confusion"]
    rows = _prediction_rows(preds, len(conf))
    names = val.get("class_names")
    cells = sorted(((conf[t][p], t, p) for t in range(len(conf)) for p in range(len(conf)) if t != p), reverse=True)
    out, missing = [], set()

    def first(label: int, pred: int) -> Path | None:
        for f, lab, prd in rows:
            if lab == label and prd == pred:
                if (val_dir / f).is_file():
                    return val_dir / f
                missing.add(f)
        return None

    for count, t, p in cells[:k]:
        wrong, other = (first(t, p), first(p, p)) if count > 0 else (None, None)
        if wrong and other:
            out.append((wrong, other, f"true {id_and_name(t, names)}, predicted {id_and_name(p, names)} ({count}x)"))
    if missing:
        info(f"{run}: images of {preds.name} not found under {val_dir} (e.g. {sorted(missing)[0]}: "
             f"{len(missing)} of those the confused pairs looked at); the pairs are drawn from the others")
    return out


def _prediction_rows(path: Path, num_classes: int) -> list[tuple[str, int, int]]:
    """The ``(image_id, label, pred)`` rows of a run's ``val_predictions.csv``; a missing column,
    or a label or prediction that is not a class id, is one error naming the file and the row."""
    try:
        rows = csv_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise VislabError(path, f"not a readable CSV ({type(exc).__name__}: {exc})") from None
    out = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        missing = [c for c in ("image_id", "label", "pred") if row.get(c) is None]
        if missing:
            raise VislabError(path, f"line {n}: no {', '.join(missing)} (its columns: image_id,label,pred)")
        ids = []
        for c in ("label", "pred"):
            try:
                ids.append(int(row[c]))
            except ValueError:
                ids.append(-1)
            if not 0 <= ids[-1] < num_classes:
                raise VislabError(path, f"line {n}: {c} {row[c]!r} is not a class id 0-{num_classes - 1}")
        out.append((row["image_id"], ids[0], ids[1]))
    return out


def _seg_figures(run: Path, data: dict[str, Any]) -> list[dict[str, str]]:
    from vislab.data.palette import CLASS_NAMES
    from vislab.viz.progress import progress_figure, run_classes, snapshot_epochs

    val = data["results"].get("val", {})
    out = []
    if val:
        rule = "course rule" if val.get("metric", "course").startswith("course") else "standard rule"
        out.append(_fig(f"Per-class validation IoU ({rule})", figures.bars(
            val["iou"], title="IoU per class", reference={"mIoU": val["miou"]})))
        out.append(_fig("Confusion matrix (validation, pixels)", figures.confusion_heatmap(
            val["confusion"], labels=list(val.get("classes") or CLASS_NAMES), title="row-normalised pixel confusion")))
    snap = run / "snapshots"
    if snap.is_dir() and snapshot_epochs(snap):
        with tempfile.TemporaryDirectory(prefix="vislab-report-") as scratch:  # nothing written into the run
            png = progress_figure(run, Path(scratch) / "progress.png")
            out.append(_fig("Predicted masks at early, middle and final epochs", png.read_bytes()))
        last = snapshot_epochs(snap)[-1]
        stems = [(sat, sat.stem[: -len("_sat")]) for sat in sorted(snap.glob("*_sat.*"))]
        items = [(sat, snap / f"epoch_{last:03d}" / f"{stem}.png", f"{stem}, epoch {last}") for sat, stem in stems]
        items = [i for i in items if i[1].is_file()]
        if items:
            classes = run_classes(run)
            over = "the satellite images" if classes.course else "their images"
            out.append(_fig(f"Final predictions over {over}", figures.overlays(items, classes=classes)))
    return out


def _not_course_data(run: Path, task: str, res: dict[str, Any]) -> str | None:
    """Why the course's reference numbers do not compare with the run (None: they do): they
    belong to the course's data alone, for P1 course-named images of all its 50 classes (not a
    subset of them), for P2 its 7 colour-coded classes scored by the course's mIoU (older runs
    recorded neither, and are taken as the course's)."""
    from vislab.models.checkpoints import run_meta
    from vislab.models.registry import COURSE_CLASSES
    from vislab.viz.progress import run_classes

    if task != "cls":
        if not run_classes(run).course:
            return "the run trained on a data set with classes of its own, not the course's 7"
        if not res.get("val", {}).get("metric", "course").startswith("course"):
            return "its validation score is not the course's mIoU"
        return None
    layout = res.get("layout")
    classes = len(res["val"]["confusion"]) if "confusion" in res.get("val", {}) else None
    if layout is None or classes is None:  # an unfinished run's records are its checkpoint's
        meta = run_meta(run) or {}
        layout, classes = layout or meta.get("layout"), classes or meta.get("num_classes")
    if (layout or "course") != "course":
        return f"the run trained on images of its own ({layout} layout), not the course's"
    if classes not in (None, COURSE_CLASSES["cls"]):
        return f"the run trained on {classes} classes, the course's numbers are for all its {COURSE_CLASSES['cls']}"
    return None


def _run_section(run: Path, index: int) -> dict[str, Any]:
    data = read_run(run)
    task = data["recipe"].get("task", "cls")
    res = data["results"]
    metric, val_key, _ = SCORE_KEYS["cls" if task == "cls" else "seg"]
    elsewhere = _not_course_data(run, task, res)
    comparison = [] if elsewhere else [(name, f"{v:.4f}", False) for name, v in REFERENCES[task]]
    if res.get(metric) is not None:
        comparison.append(("this run, held-out split of the training folder (best epoch)", f"{res[metric]:.4f}", True))
    if res.get(val_key) is not None:
        where = f" ({res['val_dir']})" if res.get("val_dir") else ""
        interval = res.get("val", {}).get("accuracy_interval" if task == "cls" else "miou_interval")
        spread = f" ({interval['level']:.0%} interval {interval['low']:.4f}-{interval['high']:.4f})" if interval else ""
        comparison.append((f"this run, validation{where}", f"{res[val_key]:.4f}{spread}", True))
    figs = []
    if data["history"]:
        figs.append(_fig("Training curves", figures.curves(data["history"], metric=metric)))
    figs += _cls_figures(run, data) if task == "cls" else _seg_figures(run, data)
    keys = ("model", "weights", "epochs", "batch_size", "lr", "optimizer", "scheduler", "image_size", "crop_size",
            "loss", "precision", "holdout", "seed", "split_seed", "teacher")
    shown = [(k, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
             for k, v in ((k, data["recipe"].get(k)) for k in keys) if v not in (None, [], ())]
    shown = [(k, _epochs_run(data) if k == "epochs" else v) for k, v in shown]
    if data["recipe"].get("teacher"):
        shown.append(("distill", data["recipe"].get("distill")))
    return {
        "id": f"run{index}",
        "heading": f"{'P1 classification' if task == 'cls' else 'P2 segmentation'}: {run}",
        "command": data["command"],
        "notes": _run_notes(run, data) + ([f"The course's reference numbers are left out: {elsewhere}."]
                                          if elsewhere else []),
        "recipe": shown,
        "metric_name": "accuracy" if task == "cls" else "mIoU",
        "comparison": comparison,
        "figures": figs,
        "architecture": _architecture(run, task, data["recipe"], len(res["val"]["confusion"]) if "val" in res else None),
    }


def screenshot(html: str | Path, png: str | Path, *, width: int = 1200, height: int = 2400) -> Path:
    """Render ``html`` in headless Chromium (Debian package ``chromium``) into ``png`` (written
    whole or not at all, with vislab's mark, as its figures are)."""
    import shutil
    import subprocess
    import tempfile

    from vislab.io import atomic_path, tag_png

    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise VislabError(None, "no Chromium found (apt-get install chromium) for the screenshot")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={width},{height}",
               f"--screenshot={Path(profile) / 'shot.png'}", Path(html).resolve().as_uri()]
        subprocess.run(cmd, capture_output=True, timeout=180, check=False)
        shot = Path(profile) / "shot.png"
        if not shot.is_file():
            raise VislabError(png, "Chromium wrote no screenshot")
        with atomic_path(png) as tmp:
            tmp.write_bytes(tag_png(shot.read_bytes()))
    return Path(png)


def _readable_section(run: Path, i: int) -> dict[str, Any]:
    """:func:`_run_section`, with a record the run folder holds in a broken form (a recipe that is
    no YAML, results that are no JSON, a history row that is no number) as one error naming it."""
    try:
        return _run_section(run, i)
    except VislabError:
        raise
    except (yaml.YAMLError, json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise VislabError(run, f"a record in this run folder is broken (recipe.yaml, results.json or "
                               f"history.csv: {type(exc).__name__}: {first})") from None


PAGE_SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}


def page_format(out: str | Path, fmt: str | None = None) -> str:
    """The report format: ``fmt`` (html or md), else the one the name of ``out`` says; a format
    that contradicts the name, or neither, is a one-line error."""
    if fmt is not None and fmt not in ("html", "md"):
        raise VislabError("--format", f"unknown format {fmt!r}; choose html or md")
    named = PAGE_SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None and named is None:
        raise VislabError(out, "name the page .html or .md, or give --format html|md")
    if fmt is not None and named is not None and named != fmt:
        raise VislabError(out, f"the name says {named}, but --format is {fmt}; rename the file or drop --format")
    return fmt or str(named)


FIGURE_NAMES = "run*-fig*.png"
"""The figures of a Markdown page, in its figures folder."""
PAGE_MARKS = ('<meta name="generator" content="vislab report">', "Generated by `vislab report`")
"""What the first lines of a page :func:`build_report` wrote hold (HTML, Markdown)."""


def check_page_replaceable(page: str | Path, fmt: str) -> None:
    """Refuse to replace an existing page that is not a vislab report (notes of one's own), or,
    for Markdown, an image of the figures folder that vislab did not write."""
    from vislab.io import written_by_vislab

    page = Path(page)
    if page.is_file() and page.stat().st_size:
        with open(page, "rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
        if not any(mark in head for mark in PAGE_MARKS):
            raise VislabError(page, "exists and is not a page vislab report wrote; refusing to replace it (choose "
                                    "another name, or delete it first)")
    folder = figures_folder(page)
    if fmt == "md" and folder.is_dir():
        theirs = sorted(f for f in folder.glob(FIGURE_NAMES) if not written_by_vislab(f))
        if theirs:
            raise VislabError(theirs[0], "is an image vislab did not write, in the folder the page's figures go to; "
                                         "refusing to replace it (name the page otherwise, or delete it first)")


def _figure_files(sections: list[dict[str, Any]], folder: Path) -> None:
    """Write every figure of ``sections`` as a PNG in ``folder`` (what Markdown viewers such as
    GitHub's show; they do not show ``data:`` images) and give each its relative ``src``. The
    folder is the page's own: figures of an earlier page there are replaced."""
    from vislab.io import tag_png

    if folder.exists() and not folder.is_dir():
        raise VislabError(folder, "is a file, but the Markdown page's figures folder is needed here")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(FIGURE_NAMES):  # an earlier page's (check_page_replaceable refused any other)
        old.unlink()
    for section in sections:
        for j, fig in enumerate(section.get("figures", []), 1):
            name = f"{section['id']}-fig{j}.png"
            atomic_write_bytes(tag_png(base64.b64decode(fig["b64"])), folder / name)
            fig["src"] = quote(f"{folder.name}/{name}")  # a space in the page's name: %20, as Markdown links need


def build_report(runs: list[str | Path], out: str | Path, *, fmt: str | None = None,
                 title: str = "vislab report") -> Path:
    """Write the report page for ``runs`` to ``out`` (``fmt``: html or md; default: by the name of
    ``out``, see :func:`page_format`).

    Example:
        >>> build_report(["runs/p1", "runs/p2"], "report.html")
    """
    fmt = page_format(out, fmt)
    check_page_replaceable(out, fmt)
    found = find_runs(Path(r) for r in runs)
    sections = [_readable_section(run, i) for i, run in enumerate(found)]
    if fmt == "md":
        _figure_files(sections, figures_folder(out))
    context = {"title": title, "date": datetime.date.today().isoformat(), "runs": sections}
    from jinja2 import Environment, PackageLoader

    # HTML is escaped; Markdown is not HTML (escaping turned `a&b` into `a&amp;b` in commands)
    env = Environment(loader=PackageLoader("vislab", "templates"), autoescape=lambda name: bool(name) and ".html" in name)
    text = env.get_template(f"report.{fmt}.j2").render(**context)
    atomic_write_text(text, out)
    return Path(out)
