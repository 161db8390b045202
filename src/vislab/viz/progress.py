"""The mask-progression figure from a run folder's ``snapshots/``."""

from __future__ import annotations

from pathlib import Path

from vislab.data.images import read_rgb
from vislab.errors import VislabError
from vislab.log import counted, info
from vislab.viz.save import save_figure


def _run_task(run_dir: Path) -> str | None:
    """The task in a run folder's recipe.yaml (None without a readable one)."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data.get("task") if isinstance(data, dict) else None


def run_classes(run_dir: Path):  # -> SegClasses
    """The data set description a segmentation run trained with (its checkpoint's metadata, read
    memory-mapped: no weight is loaded), else the course's."""
    from vislab.data.seg_classes import SegClasses
    from vislab.models.checkpoints import run_meta

    return SegClasses.from_dict((run_meta(run_dir) or {}).get("seg_classes"))


def snapshot_epochs(snap_dir: Path) -> list[int]:
    """Epoch numbers with saved predictions, ascending."""
    return sorted(int(d.name.split("_")[1]) for d in snap_dir.glob("epoch_*") if d.is_dir())


def pick_stages(epochs: list[int]) -> list[int]:
    """Early (first), middle and final epochs, without repeats."""
    chosen = [epochs[0], epochs[len(epochs) // 2], epochs[-1]]
    return sorted(set(chosen))


def stage_words(stages: list[int], *, chosen: bool) -> str:
    """The figure's words for the epochs it shows: early, middle and final when it shows three
    picked epochs, else the epochs themselves (and how many were saved, when fewer than three)."""
    listed = ", ".join(map(str, stages))
    if len(stages) == 3 and not chosen:
        return f"early, middle, final (epochs {listed})"
    named = f"epoch{'s' if len(stages) > 1 else ''} {listed}"
    return named if chosen else f"{named} (only {len(stages)} saved)"


def progress_figure(run_dir: Path, out_png: Path, *, epochs: list[int] | None = None) -> Path:
    """Rows: snapshot images; columns: satellite, ground truth, then predictions at ``epochs``
    (default: early, middle, final), each titled with its epoch."""
    from vislab.viz.plotting import add_class_legend, pyplot

    plt = pyplot()

    snap = run_dir / "snapshots"
    if not run_dir.is_dir():
        raise VislabError(run_dir, "no such run folder")
    if not snap.is_dir():
        if _run_task(run_dir) == "cls":
            raise VislabError(run_dir, "is a classification run; `seg progress` shows a segmentation run's snapshots")
        raise VislabError(run_dir, "no snapshots/ folder: train with --snapshot STEMS to save predicted masks")
    available = snapshot_epochs(snap)
    if not available:
        raise VislabError(snap, "no epoch_NNN folders yet: no epoch has finished")
    stages = epochs or pick_stages(available)
    absent = [e for e in stages if e not in available]
    if absent:
        raise VislabError(snap, f"no snapshot of epoch {absent[0]}; saved epochs: {available}")
    stems = sorted(p.stem[:-4] for p in snap.glob("*_sat.*"))
    if not stems:
        raise VislabError(snap, "holds no snapshot images (STEM_sat.*): the run saved no snapshot pairs")
    classes = run_classes(run_dir)
    rows = -(-len(classes.names) // 8)  # legend rows under the figure
    fig, axes = plt.subplots(len(stems), 2 + len(stages),
                             figsize=(2.6 * (2 + len(stages)), 2.7 * len(stems) + 0.3 * rows), dpi=100, squeeze=False)
    missing: list[Path] = []
    for r, stem in enumerate(stems):
        sat = next(snap.glob(f"{stem}_sat.*"))
        cells = [(sat, f"{stem} {'satellite' if classes.course else 'image'}"), (snap / f"{stem}_mask.png", "ground truth")]
        cells += [(snap / f"epoch_{e:03d}" / f"{stem}.png", f"epoch {e}") for e in stages]
        for c, (path, title) in enumerate(cells):
            ax = axes[r][c]
            ax.axis("off")
            if path.is_file():  # a broken snapshot is a one-line error naming it
                ax.imshow(read_rgb(path).permute(1, 2, 0).numpy())
            else:
                missing.append(path)
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=9)
    if missing:
        info(f"{snap}: {counted(len(missing), 'snapshot file')} missing, shown as empty cells (e.g. {missing[0].name} of "
             f"{missing[0].parent.name})")
    fig.suptitle(f"Predicted masks during training ({run_dir.name}): {stage_words(stages, chosen=bool(epochs))}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.3 * rows / fig.get_figheight(), 1, 1))
    add_class_legend(fig, classes)
    save_figure(fig, out_png)
    plt.close(fig)
    return out_png
