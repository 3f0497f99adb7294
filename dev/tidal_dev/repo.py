"""Where the Tidal checkout is: the dev tools read its charts, CRDs, examples and tools/ folder.

Found, not counted: $TIDAL_REPO when set, else the nearest directory at or above the current one that holds
charts/tidal/Chart.yaml, else the nearest above this package (an editable install inside a checkout). An
install elsewhere with no checkout in sight gets an error saying what to set, not a path that happens to exist.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

MARKER = Path("charts") / "tidal" / "Chart.yaml"


def _holding_marker(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        if (directory / MARKER).is_file():
            return directory
    return None


@functools.cache
def repo_root() -> Path:
    if os.environ.get("TIDAL_REPO"):
        root = Path(os.environ["TIDAL_REPO"]).resolve()
        if not (root / MARKER).is_file():
            raise RuntimeError(f"TIDAL_REPO={root}: no {MARKER} there; point it at a Tidal checkout")
        return root
    root = _holding_marker(Path.cwd().resolve()) or _holding_marker(Path(__file__).resolve().parent)
    if root is None:
        raise RuntimeError(f"no Tidal checkout found (a directory holding {MARKER}) at or above {Path.cwd()}: "
                           "run from the checkout or set TIDAL_REPO")
    return root
