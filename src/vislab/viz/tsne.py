"""2-D t-SNE of feature vectors and its scatter plot, one colour per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vislab.viz.save import save_figure


def usable_perplexity(n: int, perplexity: float) -> float:
    """The perplexity t-SNE runs with on ``n`` points: at most (n - 1) / 3 (scikit-learn needs it
    below n; a third keeps each neighbourhood a small part of the data), at least 2."""
    return min(perplexity, max(2.0, (n - 1) / 3.0))


def embed(features: torch.Tensor, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """PCA to at most 50 dimensions (standard practice, for speed), then 2-D t-SNE at
    :func:`usable_perplexity`."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = features.double().numpy()
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perp = usable_perplexity(x.shape[0], perplexity)
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)


def plot_embedding(points: np.ndarray, labels: torch.Tensor, out_png: Path, *, title: str,
                   class_names: list[str] | None = None) -> None:
    """Scatter ``points`` coloured by class with a legend (class names when given, else ids);
    class ids are written at class centres."""
    from vislab.data.layouts import id_and_name
    from vislab.viz.plotting import pyplot, say_undrawable

    plt = pyplot()
    say_undrawable(class_names)
    labs = labels.numpy()
    classes = np.unique(labs)
    cmap = plt.get_cmap("gist_ncar" if len(classes) > 20 else "tab20")
    markers = ["o", "s", "^", "D", "v"]
    fig, ax = plt.subplots(figsize=(11, 9), dpi=110)
    for k, c in enumerate(classes):
        m = labs == c
        ax.scatter(points[m, 0], points[m, 1], s=7, color=cmap(k / max(1, len(classes) - 1) * 0.92),
                   marker=markers[k % len(markers)], label=id_and_name(int(c), class_names),
                   alpha=0.8, linewidths=0)
        cx, cy = np.median(points[m], axis=0)
        ax.text(cx, cy, str(c), fontsize=7, ha="center", va="center", weight="bold")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ncol = 1 + len(classes) // 26
    ax.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6, ncol=ncol,
              markerscale=1.5, frameon=False)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)
