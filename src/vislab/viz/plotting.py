"""matplotlib for vislab's figures: the Agg backend, and the font: DejaVu Sans (matplotlib's own) with any installed font that covers other
scripts as a per-glyph fallback, and one console line when class names still hold characters
no installed font draws (matplotlib would draw boxes and warn once per glyph)."""

from __future__ import annotations

import functools
import warnings
from typing import Iterable

from vislab.log import info

# tried in this order after DejaVu Sans; only the installed ones are named (a missing family
# makes matplotlib warn on every figure)
FALLBACKS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback",
             "Source Han Sans", "Arial Unicode MS")
_said: set[str] = set()


def pyplot():  # -> the matplotlib.pyplot module
    """``matplotlib.pyplot`` on the Agg backend (files only, no display) with the fonts of
    :func:`use_fonts`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_fonts()
    return plt


def use_fonts() -> list[str]:
    """Set matplotlib's sans-serif families (DejaVu Sans, then the installed fallbacks), silence
    its per-glyph warnings, and return the families in use."""
    import matplotlib
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    families = ["DejaVu Sans", *(f for f in FALLBACKS if f in installed)]
    matplotlib.rcParams["font.family"] = ["sans-serif"]
    matplotlib.rcParams["font.sans-serif"] = families
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
    return families


@functools.lru_cache(maxsize=1)
def _drawable() -> frozenset[int]:
    """The code points some font in use has (each font file read once per process)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    have: set[int] = set()
    for family in use_fonts():
        path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        have |= set(FT2Font(path).get_charmap())
    return frozenset(have)


def undrawable(texts: Iterable[str]) -> str:
    """The characters of ``texts`` that no font in use has, in order of first use."""
    have = _drawable()
    seen: dict[str, None] = {}
    for text in texts:
        for ch in text:
            if not ch.isspace() and ord(ch) not in have:
                seen.setdefault(ch)
    return "".join(seen)


def say_undrawable(names: Iterable[str] | None) -> None:
    """One console line (once per process and set of characters) when class names hold characters
    the figures cannot draw."""
    missing = undrawable(names or [])
    if missing and missing not in _said:
        _said.add(missing)
        info(f"figures: no installed font draws {missing[:12]!r}{' ...' if len(missing) > 12 else ''} of the class "
             "names, so they show as boxes; install a font that has them (e.g. Noto Sans CJK) to draw them")


def add_class_legend(fig, classes) -> None:  # fig: a matplotlib Figure, classes: SegClasses
    """A row of colour patches naming the classes under ``fig`` (and the colour of pixels left out,
    for descriptions with an ignore value or colour)."""
    from matplotlib.patches import Patch

    from vislab.data.seg_classes import IGNORE

    say_undrawable(classes.names)
    handles = [Patch(facecolor=[v / 255 for v in c], edgecolor="0.4", label=n)
               for n, c in zip(classes.names, classes.colours)]
    if not classes.course and (classes.ignore_index is not None or any(v == IGNORE for _, v in classes.extra_colours)):
        handles.append(Patch(facecolor=[v / 255 for v in classes.left_out_colour], edgecolor="0.4", label="left out"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
