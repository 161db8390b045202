"""Where the course data is found when no path is given."""

from __future__ import annotations

import os
from pathlib import Path

from vislab.errors import VislabError


def data_root(explicit: str | Path | None = None) -> Path:
    """The hw1_data folder: ``explicit``, else ``$VISLAB_DATA``, else ``./hw1_data``, else
    ``../shared/data/hw1_data``."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_dir():
            raise VislabError(p, "data folder not found")
        return p
    candidates = [os.environ.get("VISLAB_DATA"), "hw1_data", "../shared/data/hw1_data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise VislabError(
        None,
        "no data folder found: pass --data DIR or set VISLAB_DATA (looked in $VISLAB_DATA, "
        "./hw1_data, ../shared/data/hw1_data)",
    )
