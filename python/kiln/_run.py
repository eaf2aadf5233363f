"""The ``kiln-run`` command: runs the compiled C++ program installed inside the package (it
needs no Python itself; this only finds it)."""

from __future__ import annotations

import os
import sys


def binary() -> str:
    """The path of the kiln-run executable that ships with this kiln."""
    from . import _core

    return os.path.join(os.path.dirname(_core.__file__), "bin", "kiln-run")


def main() -> None:
    path = binary()
    if not os.access(path, os.X_OK):
        sys.exit(f"kiln-run: the executable is missing at {path}; reinstall kiln (pip install .)")
    os.execv(path, [path, *sys.argv[1:]])


if __name__ == "__main__":
    main()
