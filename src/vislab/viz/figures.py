"""Report figures from run folders: curves, confusion matrices, IoU bars, confused pairs,
overlays. Each function returns PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from vislab.viz.plotting import add_class_legend, say_undrawable


def _plt():
    from vislab.viz.plotting import pyplot

    return pyplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def curves(history: list[dict[str, str]], *, metric: str) -> bytes:
    """Training loss, the held-out metric (a run without a held-out split has no panel for it) and
    the learning rate per epoch."""
    plt = _plt()
    epochs = [int(r["epoch"]) for r in history]
    nice = metric.removeprefix("holdout_").replace("acc", "accuracy").replace("miou", "mIoU")
    panels = [(k, t) for k, t in (("train_loss", "training loss"), (metric, f"held-out {nice}"), ("lr", "learning rate"))
              if k != metric or any(r.get(k) not in (None, "") for r in history)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        vals = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in history]
        ax.plot(epochs, vals, marker="o", ms=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _png(fig)


def confusion_heatmap(conf: Sequence[Sequence[int]], *, labels: Sequence[str], title: str) -> bytes:
    """Row-normalised confusion matrix (rows: truth, columns: prediction)."""
    plt = _plt()
    say_undrawable(labels)
    m = np.asarray(conf, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(labels)
    size = 4 + n * 0.12
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    # every class labelled up to 60 (smaller type past 30), then every k-th; long names shortened
    step = 1 if n <= 60 else -(-n // 60)
    shown = [_short(labels[i]) for i in range(0, n, step)]
    font = 7 if n <= 30 else 5
    ax.set_xticks(range(0, n, step), shown, rotation=90, fontsize=font)
    ax.set_yticks(range(0, n, step), shown, fontsize=font)
    if n <= 10:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] < 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def _short(label: str, most: int = 24) -> str:
    """A tick label of at most ``most`` characters (an ellipsis ends a shortened one)."""
    return label if len(label) <= most else label[: most - 1] + "\u2026"


def bars(values: dict[str, float | None], *, title: str, reference: dict[str, float] | None = None) -> bytes:
    """Horizontal bars of per-class values (None shown as absent)."""
    plt = _plt()
    names = list(values)
    say_undrawable(names)
    vals = [np.nan if v is None else float(v) for v in values.values()]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(names) + 1.2))
    ax.barh(names, vals, color="#3b7dd8")
    for i, v in enumerate(vals):
        if not np.isnan(v):
            ax.text(v + 0.01, i, f"{v:.3f}", va="center", fontsize=7)
    for label, x in (reference or {}).items():
        ax.axvline(x, color="gray", ls="--", lw=1)
        ax.text(x, len(names) - 0.4, label, fontsize=7, color="gray", rotation=90, va="top")
    ax.set_xlim(0, 1.08)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7 if len(names) > 20 else 9)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def image_pairs(pairs: list[tuple[Path, Path, str]]) -> bytes:
    """Rows of (misclassified image, an image of the class it was taken for, caption)."""
    plt = _plt()
    from PIL import Image

    # captions wrapped to the width of their image (long class names ran into the next one)
    captions = [(textwrap.fill(caption, 30), "an image of the\npredicted class") for _, _, caption in pairs]
    lines = max(max(a.count("\n"), b.count("\n")) + 1 for a, b in captions)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(4.4, (1.8 + 0.14 * lines) * len(pairs)), squeeze=False)
    for r, ((a, b, _), subs) in enumerate(zip(pairs, captions)):
        for c, (path, sub) in enumerate(zip((a, b), subs)):
            with Image.open(path) as im:
                axes[r][c].imshow(im.convert("RGB"), interpolation="nearest")
            axes[r][c].set_title(sub, fontsize=7)
            axes[r][c].axis("off")
    fig.tight_layout()
    return _png(fig)


def overlays(items: list[tuple[Path, Path, str]], *, alpha: float = 0.45, classes=None) -> bytes:
    """Predicted colour masks blended over their images; ``classes`` (a SegClasses): a legend of
    their colours under the row."""
    plt = _plt()
    from PIL import Image

    rows = -(-len(classes.names) // 8) if classes is not None else 0
    fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items), 3.4 + 0.3 * rows), squeeze=False)
    for ax, (sat, pred, title) in zip(axes[0], items):
        with Image.open(sat) as im_sat, Image.open(pred) as im_pred:
            base = np.asarray(im_sat.convert("RGB"), dtype=float)
            mask = np.asarray(im_pred.convert("RGB").resize(base.shape[1::-1], Image.NEAREST), dtype=float)
        ax.imshow(((1 - alpha) * base + alpha * mask).astype(np.uint8))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    if classes is not None:
        fig.tight_layout(rect=(0, 0.3 * rows / fig.get_figheight(), 1, 1))
        add_class_legend(fig, classes)
    return _png(fig)
