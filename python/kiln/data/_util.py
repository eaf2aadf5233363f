"""Small helpers shared by the readers."""

from __future__ import annotations

import os
from pathlib import Path

from kiln._graph import Error

__all__ = ["Error", "as_path", "require_pillow"]


def as_path(path: str | os.PathLike, what: str) -> Path:
    """Returns ``path`` as a Path, raising kn.Error naming ``what`` when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise Error(f"{what}: {p} does not exist")
    return p


def require_pillow():
    """Imports and returns PIL.Image, or raises kn.Error telling how to install it."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise Error("decoding PNG/JPEG images needs Pillow: pip install pillow") from e
    return Image
