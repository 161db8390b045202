"""Writing a figure: its format follows the file name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vislab.errors import VislabError
from vislab.io import atomic_path

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpeg", ".jpeg": "jpeg"}


def figure_format(path: str | Path) -> str:
    """The matplotlib format of a figure file by its extension; any other is a one-line error
    (call it before the work that makes the figure)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise VislabError(path, f"a figure is written as .png, .pdf, .svg or .jpg, and "
                                f"{suffix or 'a name without an extension'} is none of them")
    return FORMATS[suffix]


def save_figure(fig: Any, path: str | Path) -> None:
    """Write matplotlib ``fig`` atomically to ``path`` in the format its extension names."""
    fmt = figure_format(path)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format=fmt)
