"""Write generated frames to MP4, GIF or PNG, atomically.

The format comes from the file suffix:

* ``.mp4``: H.264 (``libx264``, ``yuv420p``) through imageio-ffmpeg, at ``fps``; frame
  sizes are kept as they are (no resizing to macro blocks), so width and height must be even.
* ``.gif``: Pillow, looping, ``1000 / fps`` ms per frame, an adaptive palette per frame.
  Pillow merges consecutive identical frames into one longer frame (the clip plays the
  same, but the file then holds fewer frames).
* ``.png``: Pillow. One frame is one image; several frames are laid out as a horizontal
  strip (frame 0 on the left), so a PNG always shows the whole clip.

Every writer writes to a temporary file in the destination folder and moves it into place
(``dit_sparse.atomic.atomic_path``): the destination is either untouched or complete, never
partial.

Frames are ``[F, H, W, C]`` (C = 3, or 1 for grey) arrays or tensors, ``uint8`` or float in
``[0, 1]`` (as diffusers returns with ``output_type="np"``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .atomic import atomic_path, check_folder

SUFFIXES = (".mp4", ".gif", ".png")

PathLike = Union[str, os.PathLike]


def output_format(path: PathLike) -> str:
    """``"mp4"``, ``"gif"`` or ``"png"`` from the suffix of ``path``; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"output {str(path)!r} has suffix {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)}")
    return suffix[1:]


def check_writable(path: PathLike) -> Path:
    """Check, without leaving anything behind, that ``path`` can be written; returns it.

    Raises ValueError for an unsupported suffix or a directory, OSError (with the path in
    the message) when its folder is missing or not writable.
    """
    path = Path(path)
    output_format(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {str(path)!r} is a directory")
    folder = check_folder(path, "output").parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=folder)
    except OSError as exc:
        raise PermissionError(f"output folder {str(folder)!r} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(tmp)
    return path


def to_uint8(frames) -> np.ndarray:
    """``[F, H, W, C]`` uint8 (C = 3) from uint8 or ``[0, 1]`` float frames (array or tensor)."""
    if hasattr(frames, "detach"):  # a torch tensor
        frames = frames.detach().float().cpu().numpy()
    a = np.asarray(frames)
    if a.ndim == 3:  # one image [H, W, C]
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [F, H, W, C] with C in (1, 3, 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def strip(frames: np.ndarray) -> np.ndarray:
    """``[H, F * W, C]``: the frames side by side, frame 0 on the left."""
    f, h, w, c = frames.shape
    return frames.transpose(1, 0, 2, 3).reshape(h, f * w, c)


def grid(videos: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile ``videos[row][col]`` (each ``[F, H, W, 3]`` uint8 of one size) into one video
    ``[F, rows * H + gaps, cols * W + gaps, 3]`` with white ``gap``-pixel separators."""
    rows, cols = len(videos), len(videos[0])
    f, h, w, c = videos[0][0].shape
    out = np.full((f, rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), 255, np.uint8)
    for r, row in enumerate(videos):
        for k, v in enumerate(row):
            if v.shape != (f, h, w, c):
                raise ValueError(f"video [{r}][{k}] has shape {v.shape}, expected {(f, h, w, c)}")
            y, x = r * (h + gap), k * (w + gap)
            out[:, y:y + h, x:x + w] = v
    return out


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v2 as imageio

    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"MP4 (yuv420p) needs even frame sizes, got {h}x{w}; use .gif or .png")
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, quality=8,
                                ffmpeg_log_level="error")
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)),
                   loop=0)


def _write_png(path: Path, frames: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frames[0] if len(frames) == 1 else strip(frames)).save(path, format="PNG")


def write_frames(path: PathLike, frames, fps: float = 16.0) -> Path:
    """Write ``frames`` (``[F, H, W, C]``) to ``path`` in the format of its suffix, atomically."""
    path = Path(path)
    kind = output_format(path)
    data = to_uint8(frames)
    if not fps > 0:
        raise ValueError(f"fps={fps!r} must be > 0")
    with atomic_path(path) as tmp:
        if kind == "mp4":
            _write_mp4(tmp, data, fps)
        elif kind == "gif":
            _write_gif(tmp, data, fps)
        else:
            _write_png(tmp, data)
    return path


def read_frames(path: PathLike) -> np.ndarray:
    """``[F, H, W, 3]`` uint8 frames of a file written by :func:`write_frames` (a PNG is
    returned as one frame, a strip as it is)."""
    path = Path(path)
    kind = output_format(path)
    if kind == "mp4":
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(path), format="FFMPEG")
        try:
            return np.stack([np.asarray(f)[..., :3] for f in reader])
        finally:
            reader.close()
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


__all__ = ["SUFFIXES", "output_format", "check_writable", "to_uint8", "strip", "grid", "atomic_path", "write_frames",
           "read_frames"]
