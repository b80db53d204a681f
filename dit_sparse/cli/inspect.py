"""``dit-sparse inspect``: print a plan's summary; ``--png`` draws a layers x heads heatmap.

    dit-sparse inspect plan.json
    dit-sparse inspect plan.json --png plan.png

The heatmap has one row per layer and one column per head, coloured by the chosen pattern's
density (dark = sparse, bright = dense), with a colour bar; drawn with Pillow. The PNG is
written atomically (``dit_sparse.atomic``), and ``--png`` is checked before the plan is read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Sequence, Tuple

from . import CLIError

# A perceptually ordered ramp (viridis key colours), interpolated linearly.
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


NAME = "inspect"
HELP = "print a plan's summary (and draw it with --png)"
COMPUTES = False  # reads a plan: no --threads measurement


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", metavar="PLAN_JSON")
    p.add_argument("--png", default=None, metavar="FILE", help="write a heatmap (layers x heads, by density)")


def colour(value: float) -> Tuple[int, int, int]:
    """The ramp colour of ``value`` in [0, 1]."""
    x = min(max(float(value), 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(x), len(_RAMP) - 2)
    f = x - i
    a, b = _RAMP[i], _RAMP[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))  # type: ignore[return-value]


def heatmap(densities: Sequence[Sequence[float]], labels: Sequence[str], cell: int = 18):
    """A Pillow image: one row per layer, one column per head, coloured by density."""
    from PIL import Image, ImageDraw

    rows, cols = len(densities), max(len(r) for r in densities)
    label_w = 7 * max(len(s) for s in labels) + 10
    bar_w = 60
    top = 20
    width = label_w + cols * cell + bar_w + 10
    height = top + max(rows * cell, 120) + 10
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((label_w, 4), "heads ->   (colour = density)", fill=(0, 0, 0))
    for r, (row, label) in enumerate(zip(densities, labels)):
        y = top + r * cell
        draw.text((4, y + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, d in enumerate(row):
            x = label_w + c * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour(d))
    bx = label_w + cols * cell + 12
    bar_h = max(rows * cell, 120)
    for i in range(bar_h):
        draw.line([bx, top + i, bx + 12, top + i], fill=colour(1.0 - i / max(bar_h - 1, 1)))
    draw.text((bx + 16, top - 2), "1.0", fill=(0, 0, 0))
    draw.text((bx + 16, top + bar_h - 10), "0.0", fill=(0, 0, 0))
    return img


def check_png(value: str) -> Path:
    """``Path(value)`` if ``--png value`` can be written; CLIError (one line) otherwise."""
    path = Path(value)
    if path.suffix.lower() != ".png":
        raise CLIError(f"--png {value!r} must end in .png")
    if path.is_dir():
        raise CLIError(f"--png {value!r} is a folder; give a file name ending in .png")
    folder = path.parent  # Path("x.png").parent is Path(".")
    if not folder.is_dir():
        raise CLIError(f"--png {value!r}: its folder {str(folder)!r} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"--png {value!r}: its folder {str(folder)!r} is not writable")
    return path


def run(args) -> int:
    from dit_sparse.atomic import atomic_path
    from dit_sparse.plan import Plan

    png = check_png(args.png) if args.png is not None else None
    plan = Plan.load(args.plan)
    if png is not None:  # drawn before the summary is printed: a failure here prints nothing
        labels: List[str] = []
        rows: List[List[float]] = []
        for i, (first, end, layers) in enumerate(plan.schedule()):
            prefix = f"steps {first}-{end - 1}: " if plan.phases else ""
            labels += [prefix + name for name in layers]
            rows += plan.density_matrix(i)
        img = heatmap(rows, labels)
    print(plan.summary())
    if png is not None:
        with atomic_path(png, "--png") as tmp:
            img.save(tmp, format="PNG")
        print(f"\nwrote {png}")
    return 0
