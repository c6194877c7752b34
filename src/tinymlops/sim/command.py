"""How library code starts the product's own command (``tinymlops fleet serve``, ``tinymlops agent``).

The library does not import or name the app layer's modules: it runs the installed ``tinymlops`` console script
that sits beside the running interpreter (``.venv/bin/tinymlops``), and only if there is none (a source checkout
without ``pip install``) the same command through ``python -m cli``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPT = "tinymlops"


def product_command(*args: str) -> list[str]:
    """Return the argv that runs ``tinymlops *args`` with this interpreter's installation."""
    script = Path(sys.executable).with_name(SCRIPT)
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    return [sys.executable, "-m", "cli", *args]
