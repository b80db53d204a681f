"""Atomic file output: write under a temporary name in the destination folder, then rename.

Every file dit-sparse writes (plans, videos and images, benchmark JSON) goes through
:func:`atomic_path`: the writer fills a temporary file next to the destination, its bytes are
flushed to disk (``os.fsync``), and ``os.replace`` moves it into place. The destination is
either untouched or complete, never half-written, and a failed write leaves no temporary file.

The file gets the mode a new file made by ``open(path, "w")`` gets: ``0o666`` less the
process umask (``0o644`` under the usual umask ``022``), whatever mode the destination had.
"""

from __future__ import annotations

import contextlib
import os
import secrets
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
    tmp = _create_temporary(path)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_temporary(path: Path) -> Path:
    """Create an empty, new file ``.<stem>.<random>.tmp<suffix>`` next to ``path``.

    Not ``tempfile.mkstemp``: it creates its file with mode 0600, which ``os.replace`` would
    carry over to the destination. This asks for 0666 and lets the kernel subtract the umask
    (and apply the folder's default ACL), exactly as for ``open(path, "w")``. So the umask is
    never read: reading it means ``os.umask(0)`` then restoring it, a process-wide change that
    races with files other threads create meanwhile. The writers (``Path.write_text``, Pillow,
    ffmpeg) truncate this file and keep its mode.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:  # the name is taken (another writer's temporary): draw again
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {str(path)!r} after 100 tries")


def write_text(path: PathLike, text: str, what: str = "path") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``Path(path)``."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


__all__ = ["check_folder", "atomic_path", "write_text"]
