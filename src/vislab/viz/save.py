"""Writing a figure: its format follows the file name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vislab.errors import VislabError
from vislab.io import JPEG_COMMENT, atomic_path, tag_png

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
    """Write matplotlib ``fig`` atomically to ``path`` in the format its extension names; a PNG
    or JPEG carries vislab's mark (:func:`vislab.io.written_by_vislab`), so that a later command
    replaces it but no image it did not write."""
    fmt = figure_format(path)
    with atomic_path(Path(path)) as tmp:
        if fmt == "jpeg":
            fig.savefig(tmp, format=fmt, pil_kwargs={"comment": JPEG_COMMENT})
        else:
            fig.savefig(tmp, format=fmt)
        if fmt == "png":
            tmp.write_bytes(tag_png(tmp.read_bytes()))
