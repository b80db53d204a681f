"""``dit-sparse bench``: dense against sparse on the same prompts and seeds.

For every (prompt, seed) the pipeline runs once dense and once per sparse configuration
(each ``--plan`` and ``--pattern``, in the order given), interleaved so that a machine
that gets busier mid-run penalises every configuration alike. Reported per configuration:
mean wall time of a pipeline call, the self-attention part of it
(:class:`~dit_sparse.cli.generate.AttentionMeter`), end-to-end and attention speedups
against dense, the quality of the decoded clip against the dense clip of the same prompt and
seed, and the mean density.

``--cache NAME`` adds one of diffusers' caching hooks (:mod:`dit_sparse.pipelines.caching`):
it gets a row of its own (cache alone) and runs with every sparse configuration, which then
appear twice, without and with the cache (``PATTERN + cache NAME``). MagCache first measures
its magnitude ratios with one untimed dense call on the first prompt and seed.

``--merge-text-padding`` merges the zero-padded text rows of Wan's cross-attention
(:func:`dit_sparse.merge_text_padding`: the same output up to float rounding). The untouched
``dense`` row stays the baseline of every speedup and PSNR; the flag adds the row
``dense + merged text``, and every other configuration (cache and sparse) runs twice, without
and with the merge (``CONFIG + merged text``), so that what the sparsity gains and what the
merge adds are both measured.

Quality (:mod:`dit_sparse.metrics`, pixels in [0, 1]), as video papers report it:

* ``psnr_db``: the clip PSNR, ``10 log10(1 / MSE)`` with the MSE over every pixel of every
  frame of the clip, averaged over the (prompt, seed) runs. Not the mean of the frames' dB
  values, in which frames that barely differ (70+ dB) hide the frames that do.
* ``psnr_min``: the worst run's clip PSNR, so that an easy prompt cannot hide a hard one.
* ``frame_min``: the worst single frame's PSNR over all runs.
* ``ssim``: the clip SSIM (the mean of its frames' SSIM, itself a mean of local statistics),
  averaged over the runs.

Identical clips have an infinite PSNR (``inf``; ``null`` in the JSON). The JSON has the table's
fields and, per run, the clip PSNR (``run_psnr``) and every frame's PSNR (``run_frame_psnr``).

``--repeat N`` runs every configuration N times per (prompt, seed), round-robin, and keeps
the fastest call's times (the least disturbed by other work on a shared machine); quality
comes from the first call (the runs are deterministic).

Before timing, every configuration runs one untimed 1-step call at the benchmark size
(``--no-warmup`` skips it), with no dense warm-up steps, so that one-time costs (kernel
tables, allocator growth, lazy imports) are not charged to whichever configuration runs
first.

``--out`` writes the decoded videos side by side: a GIF/MP4 whose rows are the
(prompt, seed) runs and whose columns are the configurations (dense first), or a PNG whose
rows are the runs x configurations, each row one clip's frames left to right.

``--frontier PATH.png`` draws the quality-speed frontier with Pillow: per configuration, its
mean clip PSNR against its end-to-end speedup, with a whisker down to its worst run's clip
PSNR, numbered and keyed below the plot; dense sits at 1.0x on the top edge, which stands for
an infinite PSNR and takes any configuration at :data:`FRONTIER_SAME_DB` or more (equal to dense
up to float rounding, such as ``--merge-text-padding`` alone), so that such a point does not
stretch the axis over the sparse configurations. The picture is :data:`FRONTIER_WIDTH` pixels wide and
``frontier_height(configurations)`` high. Every output path is checked before the model loads,
and every file is written atomically (:mod:`dit_sparse.atomic`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import report
from . import generate as gen
from . import preflight
from .generate import fail

NAME = "bench"
HELP = "compare dense and sparse attention: wall time, speedup, clip PSNR, SSIM"

QUALITY_HELP = """\
quality, against the dense clip of the same prompt and seed (pixels in [0, 1]):
  psnr_db    clip PSNR: 10 log10(1 / MSE), the MSE over every pixel of every frame,
             averaged over the (prompt, seed) runs (not a mean of per-frame dB)
  psnr_min   the worst run's clip PSNR
  frame_min  the worst single frame's PSNR over all runs
  ssim       clip SSIM (mean over its frames), averaged over the runs
"""


def epilog() -> str:
    """The quality columns and the pattern spec syntax, shown under ``--help`` (torch is
    imported only then)."""
    from dit_sparse.patterns import PATTERN_SPEC_HELP

    return QUALITY_HELP + "\n" + PATTERN_SPEC_HELP


#: Prompts for the embedded model when --prompts is not given: the 9 of its 360 possible
#: captions (scripts/tiny_wan/tiny_clips.py: 6 shape colours x 5 background colours x 3 shapes
#: x 4 directions) that no training clip has (scripts/tiny_wan/README.md: dataset seed 0,
#: clips 0-1,199 at 64 px and 10,000,000-10,000,159 at 128 px). The plans' profiling prompts
#: (docs/plans/calib.txt) are training captions, so none of these. tests/test_cli_bench.py
#: checks all of it.
EMBEDDED_PROMPTS = (
    "a red circle moving up on a yellow background",
    "a green circle moving up on a black background",
    "a green square moving up on a black background",
    "a green triangle moving left on a red background",
    "a yellow circle moving left on a white background",
    "a yellow circle moving right on a green background",
    "a yellow square moving left on a green background",
    "a yellow triangle moving up on a blue background",
    "a white triangle moving right on a green background",
)


@dataclass
class Row:
    config: str
    density: float
    seconds: float
    attention_seconds: float
    speedup: float = 1.0
    attention_speedup: float = 1.0
    psnr: float = math.inf  # clip PSNR, mean over the runs
    ssim: float = 1.0  # clip SSIM, mean over the runs
    runs: int = 0
    psnr_min: float = math.inf  # the worst run's clip PSNR: a mean over prompts can hide a bad one
    frame_min: float = math.inf  # the worst single frame's PSNR over all runs
    run_seconds: List[float] = field(default_factory=list)
    run_psnr: List[Optional[float]] = field(default_factory=list)  # clip PSNR per run; None where identical
    run_frame_psnr: List[List[Optional[float]]] = field(default_factory=list)  # per run, per frame


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", action="append", default=[], metavar="PLAN_JSON",
                        help="a plan from `dit-sparse profile` (repeatable)")
    parser.add_argument("--pattern", action="append", default=[], metavar="SPEC",
                        help="one pattern for every self-attention layer, e.g. sliding-tile:tile=4x4x4,window=3x3x3 "
                             "(repeatable)")
    gen.add_prompts_argument(parser, required=False,
                             default_help=f"default for the embedded model: {len(EMBEDDED_PROMPTS)} captions that "
                                          "none of its training clips has")
    gen.add_seeds_argument(parser)
    parser.add_argument("-o", "--output", "--out", dest="out", metavar="PATH",
                        help="side-by-side video or image of all runs (.gif, .mp4, .png)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--frontier", metavar="PATH.png",
                        help="draw clip PSNR (mean over runs, whisker to the worst run) against end-to-end speedup, "
                             f"one point per configuration; dense at 1.0x on the top edge (inf dB); "
                             f"{FRONTIER_WIDTH} px wide")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="time every configuration N times per prompt and seed, round-robin, and keep the fastest "
                             f"(1 to {preflight.MAX_REPEAT}; default 1)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed 1-step call per configuration")
    gen.add_cache_argument(parser)
    gen.add_merge_text_argument(parser)
    gen.add_model_arguments(parser)


def _configs(args) -> List[gen.Sparsity]:
    if not args.plan and not args.pattern:
        fail("give at least one --plan or --pattern to compare against dense")
    from dit_sparse.plan import pattern_spec

    cache = gen.check_cache(args.cache)
    sparse = [gen.Sparsity(f"plan {Path(path).name}", gen.load_plan(path), args.dense_steps) for path in args.plan]
    for spec in args.pattern:
        pattern = gen.load_pattern(spec)
        sparse.append(gen.Sparsity(pattern_spec(pattern), pattern, args.dense_steps))
    labels = [c.label for c in sparse]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        fail(f"--plan/--pattern: {', '.join(twice)} given twice; give each configuration once "
             "(plans are told apart by file name)")
    if cache is None:
        configs = [gen.Sparsity("dense"), *sparse]
    else:
        configs = [gen.Sparsity("dense"), gen.Sparsity(f"cache {cache}", cache=cache)]
        for config in sparse:
            configs += [config, replace(config, label=f"{config.label} + cache {cache}", cache=cache)]
    if not args.merge_text_padding:
        return configs
    merged = [replace(c, label=f"{c.label} + merged text", merge_text=True) for c in configs]
    return [configs[0], merged[0], *(c for pair in zip(configs[1:], merged[1:]) for c in pair)]


def _check_outputs(args) -> None:
    from dit_sparse import video_io

    if args.out is not None:
        try:
            video_io.check_writable(args.out)
        except (OSError, ValueError) as exc:
            fail(f"--out: {exc}")
    if args.json is not None:
        path = Path(args.json)
        if path.suffix.lower() != ".json":
            fail(f"--json {args.json!r} must end in .json")
        if not path.parent.is_dir():
            fail(f"--json: folder {str(path.parent)!r} does not exist")
    if args.frontier is not None:
        path = Path(args.frontier)
        if path.suffix.lower() != ".png":
            fail(f"--frontier {args.frontier!r} must end in .png")
        if path.is_dir():
            fail(f"--frontier {args.frontier!r} is a folder; give a file name ending in .png")
        if not path.parent.is_dir():
            fail(f"--frontier: folder {str(path.parent)!r} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            fail(f"--frontier: folder {str(path.parent)!r} is not writable")
        if args.out is not None and path.resolve() == Path(args.out).resolve():
            fail(f"--frontier {args.frontier!r} is also the --out file")


def _run_config(pipe, config: gen.Sparsity, prompt: str, seed: int, kwargs: Dict):
    """``(frames, seconds, attention seconds, density)`` of one pipeline call (with the
    configuration's cache, if any)."""
    frames, seconds, meter, _ = gen.timed_call(pipe, config, prompt, seed, kwargs)
    return frames, seconds, meter.seconds, meter.density


def _warmup(pipe, configs: List[gen.Sparsity], prompt: str, kwargs: Dict) -> None:
    import warnings

    from dit_sparse.plan import PlanStepsWarning

    short = dict(kwargs, num_inference_steps=1)
    with warnings.catch_warnings():
        # a plan profiled for 20 steps run for 1 warns of it; here that is the point, not news
        warnings.simplefilter("ignore", PlanStepsWarning)
        for config in configs:
            _run_config(pipe, config if config.dense else replace(config, dense_steps=0), prompt, 0, short)


def _finite(row: Dict) -> Dict:
    """JSON has no inf/nan: PSNR of identical frames (inf) and undefined ratios become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _fmt(x: float, digits: int) -> str:
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


def _rounded(x: float, digits: int = 3) -> Optional[float]:
    return round(x, digits) if math.isfinite(x) else None


def format_table(rows: List[Row]) -> str:
    header = ("config", "density", "time_s", "attn_s", "speedup", "attn_speedup", "psnr_db", "psnr_min", "frame_min",
              "ssim")
    body = [(r.config, f"{r.density:.3f}", f"{r.seconds:.2f}", f"{r.attention_seconds:.2f}", f"{r.speedup:.2f}x",
             f"{r.attention_speedup:.2f}x", _fmt(r.psnr, 2), _fmt(r.psnr_min, 2), _fmt(r.frame_min, 2),
             f"{r.ssim:.4f}") for r in rows]
    return report.format_table([header, *body])


FRONTIER_WIDTH = 800
FRONTIER_SAME_DB = 80.0  # clip PSNR from which the frontier draws a configuration as equal to dense
_PLOT = (70, 66, FRONTIER_WIDTH - 24, 406)  # left, top (the inf edge), right, bottom of the plot area
_LINE = 18  # height of a legend or key line
_LEGEND_LINES = 3
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def frontier_height(configs: int) -> int:
    """Height in pixels of the frontier picture of ``configs`` configurations (dense included)."""
    return _PLOT[3] + 48 + _LINE * (_LEGEND_LINES + configs) + 8


def _ticks(lo: float, hi: float, target: int = 6) -> List[float]:
    """Round tick values in ``[lo, hi]``: a step of 1, 2, 2.5 or 5 times a power of ten."""
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _font(size: int):
    from PIL import ImageFont, features

    return ImageFont.load_default(size) if features.check("freetype2") else ImageFont.load_default()


def frontier_picture(rows: Sequence[Row], title: str):
    """A Pillow image of clip PSNR against end-to-end speedup (module docstring); ``rows[0]`` is
    dense. A row whose mean PSNR is infinite (its clips equal dense) or at least
    :data:`FRONTIER_SAME_DB` is drawn on the top edge, and the axis spans the other values."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = _PLOT
    img = Image.new("RGB", (FRONTIER_WIDTH, frontier_height(len(rows))), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    ink, grey = (0, 0, 0), (200, 200, 200)

    speeds = [r.speedup for r in rows if math.isfinite(r.speedup)] + [1.0]
    pad = max(0.05, 0.1 * (max(speeds) - min(speeds)))
    x_lo, x_hi = min(speeds) - pad, max(speeds) + pad
    on_axis = [v for r in rows[1:] for v in (r.psnr, r.psnr_min) if v < FRONTIER_SAME_DB]
    y_lo, y_hi = (min(on_axis) - 2.0, max(on_axis) + 2.0) if on_axis else (0.0, 50.0)
    y_hi = max(y_hi, y_lo + 1.0)
    finite_top = top + 28  # the band between the finite range and the top edge keeps inf apart

    def px(speed: float) -> float:
        return left + (speed - x_lo) / (x_hi - x_lo) * (right - left)

    def py(db: float) -> float:
        return top if db >= FRONTIER_SAME_DB else bottom - (db - y_lo) / (y_hi - y_lo) * (bottom - finite_top)

    draw.text((left, 8), title, fill=ink, font=font)
    draw.text((8, 28), "clip PSNR against dense (dB)", fill=ink, font=font)
    for v in _ticks(y_lo, y_hi):
        y = py(v)
        draw.line([left, y, right, y], fill=grey)
        label = f"{v:g}"
        draw.text((left - 6 - draw.textlength(label, font=small), y - 7), label, fill=ink, font=small)
    edge = f"inf, >={FRONTIER_SAME_DB:g}"
    draw.text((left - 6 - draw.textlength(edge, font=small), top - 7), edge, fill=ink, font=small)
    for v in _ticks(x_lo, x_hi):
        x = px(v)
        draw.line([x, top, x, bottom], fill=grey)
        label = f"{v:.2f}".rstrip("0").rstrip(".") + ("x" if v % 1 else ".0x")
        draw.text((x - draw.textlength(label, font=small) / 2, bottom + 6), label, fill=ink, font=small)
    for y in range(top, bottom, 8):  # dense speed, dashed
        draw.line([px(1.0), y, px(1.0), min(y + 4, bottom)], fill=(120, 120, 120))
    draw.rectangle([left, top, right, bottom], outline=ink)
    axis = "end-to-end speedup against dense (x)"
    draw.text(((left + right - draw.textlength(axis, font=font)) / 2, bottom + 24), axis, fill=ink, font=font)

    def colour(i: int) -> Tuple[int, int, int]:
        return ink if i == 0 else _COLOURS[(i - 1) % len(_COLOURS)]

    for i, r in enumerate(rows):
        x, y, c = px(r.speedup), py(r.psnr), colour(i)
        if i == 0:
            draw.rectangle([x - 6, y - 6, x + 6, y + 6], outline=ink, width=2)
        else:
            if r.psnr_min < min(r.psnr, FRONTIER_SAME_DB):
                low = py(r.psnr_min)
                draw.line([x, y, x, low], fill=c, width=2)
                draw.line([x - 6, low, x + 6, low], fill=c, width=2)
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=c)
        draw.text((x + 8, y - 17), str(i + 1), fill=c, font=font)

    y = bottom + 48
    legend = ["mean clip PSNR over the runs (prompt x seed)", "whisker: down to the worst run's clip PSNR",
              f"top edge: dense (inf dB) and any configuration at {FRONTIER_SAME_DB:g} dB or more (equal up to rounding)"]
    for j, text in enumerate(legend):
        cy = y + j * _LINE + 8
        if j == 0:
            draw.ellipse([14, cy - 5, 24, cy + 5], fill=(90, 90, 90))
        elif j == 1:
            draw.line([19, cy - 7, 19, cy + 7], fill=(90, 90, 90), width=2)
            draw.line([13, cy + 7, 25, cy + 7], fill=(90, 90, 90), width=2)
        else:
            draw.rectangle([13, cy - 6, 25, cy + 6], outline=ink, width=2)
        draw.text((34, cy - 8), text, fill=ink, font=font)
    y += _LINE * _LEGEND_LINES
    for i, r in enumerate(rows):
        worst = "" if i == 0 else f" (worst run {_fmt(r.psnr_min, 2)} dB)"
        text = f"{i + 1}  {r.config}: {r.speedup:.2f}x, {_fmt(r.psnr, 2)} dB{worst}"
        draw.text((14, y + i * _LINE), text, fill=colour(i), font=font)
    return img


def _side_by_side(path: str, videos: List[List], fps: float) -> None:
    """``videos[run][config]`` float frames -> one file (module docstring)."""
    from dit_sparse import video_io

    clips = [[video_io.to_uint8(v) for v in row] for row in videos]
    if Path(path).suffix.lower() == ".png":
        picture = video_io.grid([[video_io.strip(c)[None]] for row in clips for c in row])
    else:
        picture = video_io.grid(clips)
    video_io.write_frames(path, picture, fps=fps)


def run(args) -> int:
    """Run ``bench`` from parsed arguments; returns the exit code."""
    import torch

    from dit_sparse.metrics import clip_quality, to_images

    _check_outputs(args)
    seeds = gen.seeds_from_args(args)
    preflight.check_int("--repeat", args.repeat, 1, preflight.MAX_REPEAT)
    gen.check_model_args(args)
    configs = _configs(args)
    prompts = gen.prompts_from_args(args)
    if prompts is None:
        if args.model is not None:
            fail("--prompts is required with --model")
        prompts = list(EMBEDDED_PROMPTS)
    pipe, embedded = gen.load_pipeline(args.model, args.device, args.dtype, args.native_conv3d, args.quiet)
    settings = gen.prepare(args, pipe, embedded)
    if args.merge_text_padding:
        gen.merge_text_padding(pipe, True).remove()  # a model it cannot merge fails before any call
    kwargs = settings.call_kwargs(pipe)
    for config in configs:
        gen.warn_if_cannot_pay(pipe, config, settings, args.device, embedded, f"dit-sparse {NAME}")
    gen.set_progress(pipe, True, "")
    runs = [(p, s) for p in prompts for s in seeds]
    from tqdm.auto import tqdm

    cache_name = next((c.cache for c in configs if c.cache), None)
    cache = gen.build_cache(pipe, cache_name, prompts[0], 0, kwargs, settings.resolved_steps(pipe),
                            f"dit-sparse {NAME}", args.quiet)
    configs = [replace(c, cache_config=cache) if c.cache else c for c in configs]
    if args.warmup:
        _warmup(pipe, configs, prompts[0], kwargs)
    times = {c.label: [] for c in configs}
    attn = {c.label: [] for c in configs}
    dens = {c.label: [] for c in configs}
    quality = {c.label: [] for c in configs}
    videos = []
    total = len(runs) * len(configs) * args.repeat
    with tqdm(total=total, desc="bench", unit="run", disable=args.quiet, leave=False) as bar:
        for prompt, seed in runs:
            row, dense_frames = [], None
            for rep in range(args.repeat):
                for config in configs:
                    bar.set_postfix_str(config.label[:40])
                    frames, seconds, attention, density = _run_config(pipe, config, prompt, seed, kwargs)
                    bar.update(1)
                    if rep > 0:  # the fastest call of this prompt and seed counts
                        if seconds < times[config.label][-1]:
                            times[config.label][-1], attn[config.label][-1] = seconds, attention
                        continue
                    times[config.label].append(seconds)
                    attn[config.label].append(attention)
                    dens[config.label].append(density)
                    if dense_frames is None:
                        dense_frames = frames
                    quality[config.label].append(clip_quality(to_images(frames), to_images(dense_frames)))
                    row.append(frames)
            videos.append(row)
    if args.out is not None:
        _side_by_side(args.out, videos, args.fps)

    def mean(xs):
        return sum(xs) / len(xs)

    dense = configs[0].label
    rows = []
    for c in configs:
        t, a = mean(times[c.label]), mean(attn[c.label])
        clips = quality[c.label]
        psnrs = [q.psnr for q in clips]
        rows.append(Row(config=c.label, density=mean(dens[c.label]), seconds=t, attention_seconds=a,
                        speedup=mean(times[dense]) / t,
                        attention_speedup=mean(attn[dense]) / a if a > 0 else math.nan,
                        psnr=mean(psnrs), ssim=mean([q.ssim for q in clips]), runs=len(times[c.label]),
                        psnr_min=min(psnrs), frame_min=min(q.frame_min for q in clips),
                        run_seconds=[round(x, 4) for x in times[c.label]],
                        run_psnr=[_rounded(x) for x in psnrs],
                        run_frame_psnr=[[_rounded(x) for x in q.frame_psnr] for q in clips]))
    f, h, w, _ = videos[0][0].shape
    conv3d, device = None, args.device  # conv3d: which kernel ran the Conv3d layers on CPU (pipelines/cpu_conv.py)
    if args.device.startswith("cpu"):
        from dit_sparse.pipelines.cpu_conv import switched

        done, total = switched(pipe)
        conv3d = None if total == 0 else "oneDNN" if done else "native"
        device += f", {torch.get_num_threads()} threads" + ("" if conv3d is None else f", conv3d {conv3d}")
    steps = kwargs.get("num_inference_steps", "default")
    print(f"dit-sparse bench: {pipe.__class__.__name__} {'(embedded tiny-wan)' if embedded else args.model}, "
          f"{f} frames {h}x{w}, {steps} steps, {len(prompts)} prompt(s) x "
          f"{len(seeds)} seed(s), {device}, {args.dtype}"
          + (f", fastest of {args.repeat} calls" if args.repeat > 1 else ""))
    print(format_table(rows))
    if args.out is not None:
        print(f"side by side: {args.out} (columns: {', '.join(c.label for c in configs)})")
    if args.frontier is not None:
        from dit_sparse.atomic import atomic_path

        img = frontier_picture(rows, f"clip PSNR against speedup: {f} frames {h}x{w}, {steps} steps, "
                                     f"{len(prompts)} prompt(s) x {len(seeds)} seed(s), {args.dtype}")
        with atomic_path(args.frontier, "--frontier") as tmp:
            img.save(tmp, format="PNG")
        print(f"frontier: {args.frontier}")
    if args.json is not None:
        doc = {"model": "embedded" if embedded else args.model, "frames": f, "height": h, "width": w,
               "repeat": args.repeat, "conv3d": conv3d, "cache": cache_name,
               "merge_text_padding": bool(args.merge_text_padding),
               "steps": kwargs.get("num_inference_steps"), "prompts": prompts, "seeds": list(seeds),
               "device": args.device, "dtype": args.dtype, "rows": [_finite(asdict(r)) for r in rows]}
        from dit_sparse.atomic import write_text

        write_text(args.json, json.dumps(doc, indent=1, allow_nan=False) + "\n", what="--json")
    return 0
