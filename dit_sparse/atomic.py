"""Atomic file output: write under a temporary name in the destination folder, then rename.

Every file dit-sparse writes (plans, videos and images, benchmark JSON) goes through
:func:`atomic_path`: the writer fills a temporary file next to the destination, its bytes are
flushed to disk (``os.fsync``), and ``os.replace`` moves it into place. The destination is
either untouched or complete, never half-written, and a failed write leaves no temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def check_folder(path: PathLike, what: str = "path") -> Path:
    """``Path(path)`` if its folder exists; FileNotFoundError naming ``what``, path and folder otherwise."""
    path = Path(path)
    parent = path.parent  # Path("plan.json").parent is Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{what}={str(path)!r}: its folder {str(parent)!r} does not exist (create it first)")
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike, what: str = "path") -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix, so writers that go by the suffix
    still work) that replaces ``path`` once the ``with`` body has written it, and is deleted
    if the body (or the flush to disk) raises. ``what`` names the argument in the error for
    a missing folder."""
    path = check_folder(path, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: PathLike, text: str, what: str = "path") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``Path(path)``."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


__all__ = ["check_folder", "atomic_path", "write_text"]
