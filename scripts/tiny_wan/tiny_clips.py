"""Procedural captioned clips for training the embedded tiny Wan model.

Each clip is one coloured shape moving in a straight line on a plain coloured background,
with a caption that names all of it::

    "a red circle moving left on a blue background"

Everything is deterministic: clip ``index`` of dataset ``seed`` is drawn from
``numpy.random.default_rng([seed, index])``, so any clip can be regenerated on its own, in
any order, at any resolution (positions and sizes are stored as fractions of the frame).

Pixels are float32 in ``[-1, 1]``, laid out ``[3, frames, height, width]`` (channels first,
as diffusers' video VAEs take them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.10, 0.20, 0.90),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.05),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) in image coordinates, y down
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# each direction's opposite: the one whose (dx, dy) is negated
OPPOSITE: dict[str, str] = {d: next(o for o, (ox, oy) in DIRECTIONS.items() if (ox, oy) == (-dx, -dy))
                            for d, (dx, dy) in DIRECTIONS.items()}

SIZE_RANGE = (0.16, 0.24)  # half-extent of the shape, as a fraction of the frame side
TRAVEL = 0.42  # distance covered over the whole clip, as a fraction of the frame side
JITTER = 0.05  # random offset of the path from the frame centre, per axis


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows; geometry in fractions of the frame, so it renders at any size."""

    color: str
    shape: str
    direction: str
    background: str
    size: float  # half-extent of the shape / frame side
    x0: float  # centre at the first frame, fraction of width
    y0: float  # centre at the first frame, fraction of height

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction} on a {self.background} background"

    def center(self, t: float) -> tuple[float, float]:
        """Centre at clip time ``t`` in [0, 1] (first frame 0, last frame 1)."""
        dx, dy = DIRECTIONS[self.direction]
        return self.x0 + dx * TRAVEL * t, self.y0 + dy * TRAVEL * t


def reverse_direction(caption: str) -> str:
    """The caption with its direction word swapped for the opposite one."""
    words = caption.split()
    i = words.index("moving") + 1
    return " ".join(words[:i] + [OPPOSITE[words[i]]] + words[i + 1:])


def vocabulary() -> list[str]:
    """Every word a caption can use, sorted (the tokenizer's vocabulary)."""
    words = {"a", "moving", "on", "background"}
    words.update(COLORS, SHAPES, DIRECTIONS)
    return sorted(words)


def sample_spec(seed: int, index: int) -> ClipSpec:
    """The spec of clip ``index`` of the dataset drawn from ``seed``."""
    rng = np.random.default_rng([seed, index])
    names = list(COLORS)
    color = names[rng.integers(len(names))]
    background = [n for n in names if n != color][rng.integers(len(names) - 1)]
    shape = SHAPES[rng.integers(len(SHAPES))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    size = float(rng.uniform(*SIZE_RANGE))
    dx, dy = DIRECTIONS[direction]
    # The path is centred on the frame (plus a small jitter): the caption then fixes nearly
    # the whole clip, so a model trained for an hour on two cores learns to draw the shape
    # where and how the caption says (with uniformly random start points, a 143-minute run
    # learned the backgrounds but left the shapes out: their position was noise to it).

    def start(d: float) -> float:
        return float(0.5 - d * TRAVEL / 2 + rng.uniform(-JITTER, JITTER))

    return ClipSpec(color, shape, direction, background, size, start(dx), start(dy))


def _coverage(spec: ClipSpec, cx: float, cy: float, height: int, width: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape centred at pixel (cx, cy), [H, W]."""
    side = min(height, width)
    r = spec.size * side
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    px, py = xs + 0.5 - cx, ys + 0.5 - cy
    if spec.shape == "circle":
        dist = r - np.sqrt(px * px + py * py)
    elif spec.shape == "square":
        dist = 0.85 * r - np.maximum(np.abs(px), np.abs(py))
    elif spec.shape == "triangle":  # equilateral, pointing up, centroid at the centre
        big = 1.25 * r  # circumradius; the inradius is half of it
        s3 = np.sqrt(3.0)
        d_base = 0.5 * big - py
        d_left = (s3 * px + py + big) / 2.0
        d_right = (-s3 * px + py + big) / 2.0
        dist = np.minimum(d_base, np.minimum(d_left, d_right))
    else:
        raise ValueError(f"unknown shape {spec.shape=}")
    return np.clip(dist + 0.5, 0.0, 1.0)


def render(spec: ClipSpec, frames: int = 9, height: int = 64, width: int = 64) -> np.ndarray:
    """Render ``spec`` as float32 ``[3, frames, height, width]`` in [-1, 1]."""
    fg = np.asarray(COLORS[spec.color], np.float32)[:, None, None, None]
    bg = np.asarray(COLORS[spec.background], np.float32)[:, None, None, None]
    a = coverage(spec, frames, height, width)[None]
    return (a * fg + (1.0 - a) * bg) * 2.0 - 1.0


def coverage(spec: ClipSpec, frames: int = 9, height: int = 64, width: int = 64) -> np.ndarray:
    """Where the shape is: float32 ``[frames, height, width]`` coverage in [0, 1] (the alpha
    that :func:`render` blends the shape colour with)."""
    out = np.empty((frames, height, width), np.float32)
    for f in range(frames):
        x, y = spec.center(f / max(frames - 1, 1))
        out[f] = _coverage(spec, x * width, y * height, height, width)
    return out


def make_clip(seed: int, index: int, frames: int = 9, height: int = 64, width: int = 64) -> tuple[np.ndarray, str]:
    """Clip ``index`` of dataset ``seed``: (pixels ``[3, F, H, W]`` in [-1, 1], caption)."""
    spec = sample_spec(seed, index)
    return render(spec, frames, height, width), spec.caption


def make_batch(seed: int, start: int, count: int, frames: int = 9, height: int = 64, width: int = 64):
    """Clips ``start .. start+count-1``: (float32 array ``[N, 3, F, H, W]``, list of captions)."""
    clips = [make_clip(seed, i, frames, height, width) for i in range(start, start + count)]
    return np.stack([c[0] for c in clips]), [c[1] for c in clips]
