"""``dit-sparse bench``: dense against sparse on the same prompts and seeds.

For every (prompt, seed) the pipeline runs once dense and once per sparse configuration
(each ``--plan`` and ``--pattern``, in the order given), interleaved so that a machine
that gets busier mid-run penalises every configuration alike. Reported per configuration:
mean wall time of a pipeline call, the self-attention part of it
(:class:`~dit_sparse.cli.generate.AttentionMeter`), end-to-end and attention speedups
against dense, PSNR and SSIM of the decoded frames against the dense frames of the same
prompt and seed (:mod:`dit_sparse.metrics`, averaged over frames, then runs; ``psnr_min`` is
the worst run's PSNR, so that an easy prompt cannot hide a hard one in the mean), and the mean
density.

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
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .. import report
from . import generate as gen
from . import preflight
from .generate import CLIError, fail

NAME = "bench"
HELP = "compare dense and sparse attention: wall time, speedup, PSNR, SSIM"


def epilog() -> str:
    """The pattern spec syntax, shown under ``--help`` (torch is imported only then)."""
    from dit_sparse.patterns import PATTERN_SPEC_HELP

    return PATTERN_SPEC_HELP

#: Prompts for the embedded model when --prompts is not given (captions of its training data).
EMBEDDED_PROMPTS = (
    "a red circle moving left on a blue background",
    "a yellow triangle moving up on a black background",
)


@dataclass
class Row:
    config: str
    density: float
    seconds: float
    attention_seconds: float
    speedup: float = 1.0
    attention_speedup: float = 1.0
    psnr: float = math.inf
    ssim: float = 1.0
    runs: int = 0
    psnr_min: float = math.inf  # the worst (prompt, seed): a mean over prompts can hide a bad one
    run_seconds: List[float] = field(default_factory=list)
    run_psnr: List[Optional[float]] = field(default_factory=list)  # per (prompt, seed); None where identical


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", action="append", default=[], metavar="PLAN_JSON",
                        help="a plan from `dit-sparse profile` (repeatable)")
    parser.add_argument("--pattern", action="append", default=[], metavar="SPEC",
                        help="one pattern for every self-attention layer, e.g. sliding-tile:tile=4x4x4,window=3x3x3 "
                             "(repeatable)")
    gen.add_prompts_argument(parser, required=False,
                             default_help="default for the embedded model: two captions of its training data")
    gen.add_seeds_argument(parser)
    parser.add_argument("-o", "--output", "--out", dest="out", metavar="PATH",
                        help="side-by-side video or image of all runs (.gif, .mp4, .png)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="time every configuration N times per prompt and seed, round-robin, and keep the fastest "
                             f"(1 to {preflight.MAX_REPEAT}; default 1)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed 1-step call per configuration")
    gen.add_model_arguments(parser)


def _configs(args) -> List[gen.Sparsity]:
    if not args.plan and not args.pattern:
        fail("give at least one --plan or --pattern to compare against dense")
    from dit_sparse.plan import pattern_spec

    configs = [gen.Sparsity("dense")]
    for path in args.plan:
        configs.append(gen.Sparsity(f"plan {Path(path).name}", gen.load_plan(path), args.dense_steps))
    for spec in args.pattern:
        pattern = gen.load_pattern(spec)
        configs.append(gen.Sparsity(pattern_spec(pattern), pattern, args.dense_steps))
    return configs


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


def _run_config(pipe, config: gen.Sparsity, prompt: str, seed: int, kwargs: Dict):
    """``(frames, seconds, attention seconds, density)`` of one pipeline call."""
    handle = gen.apply_sparsity(pipe, config)
    try:
        with gen.AttentionMeter(pipe) as meter:
            start = time.perf_counter()
            frames = gen.run_pipeline(pipe, prompt, seed, kwargs)
            seconds = time.perf_counter() - start
    finally:
        if handle is not None:
            handle.remove()
    return frames, seconds, meter.seconds, meter.density


def _warmup(pipe, configs: List[gen.Sparsity], prompt: str, kwargs: Dict) -> None:
    import warnings

    from dit_sparse.plan import PlanStepsWarning

    short = dict(kwargs, num_inference_steps=1)
    with warnings.catch_warnings():
        # a plan profiled for 20 steps run for 1 warns of it; here that is the point, not news
        warnings.simplefilter("ignore", PlanStepsWarning)
        for config in configs:
            _run_config(pipe, config if config.dense else gen.Sparsity(config.label, config.spec, 0), prompt, 0, short)


def _finite(row: Dict) -> Dict:
    """JSON has no inf/nan: PSNR of identical frames (inf) and undefined ratios become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _fmt(x: float, digits: int) -> str:
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


def format_table(rows: List[Row]) -> str:
    header = ("config", "density", "time_s", "attn_s", "speedup", "attn_speedup", "psnr_db", "psnr_min", "ssim")
    body = [(r.config, f"{r.density:.3f}", f"{r.seconds:.2f}", f"{r.attention_seconds:.2f}", f"{r.speedup:.2f}x",
             f"{r.attention_speedup:.2f}x", _fmt(r.psnr, 2), _fmt(r.psnr_min, 2), f"{r.ssim:.4f}") for r in rows]
    return report.format_table([header, *body])


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

    from dit_sparse.metrics import psnr, ssim, to_images

    try:
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
        kwargs = settings.call_kwargs(pipe)
        for config in configs:
            gen.warn_if_cannot_pay(pipe, config, settings, args.device, embedded, f"dit-sparse {NAME}")
        gen.set_progress(pipe, True, "")
        runs = [(p, s) for p in prompts for s in seeds]
        from tqdm.auto import tqdm

        if args.warmup:
            _warmup(pipe, configs, prompts[0], kwargs)
        times = {c.label: [] for c in configs}
        attn = {c.label: [] for c in configs}
        dens = {c.label: [] for c in configs}
        quality = {c.label: ([], []) for c in configs}
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
                        ref, got = to_images(dense_frames), to_images(frames)
                        quality[config.label][0].append(psnr(got, ref))
                        quality[config.label][1].append(ssim(got, ref))
                        row.append(frames)
                videos.append(row)
        if args.out is not None:
            _side_by_side(args.out, videos, args.fps)
    except CLIError as exc:
        if getattr(args, "debug", False):
            raise
        return gen.report_error(f"dit-sparse {NAME}", exc)

    def mean(xs):
        return sum(xs) / len(xs)

    dense = configs[0].label
    rows = []
    for c in configs:
        t, a = mean(times[c.label]), mean(attn[c.label])
        psnrs, ssims = quality[c.label]
        rows.append(Row(config=c.label, density=mean(dens[c.label]), seconds=t, attention_seconds=a,
                        speedup=mean(times[dense]) / t,
                        attention_speedup=mean(attn[dense]) / a if a > 0 else math.nan,
                        psnr=mean(psnrs), ssim=mean(ssims), runs=len(times[c.label]), psnr_min=min(psnrs),
                        run_seconds=[round(x, 4) for x in times[c.label]],
                        run_psnr=[round(x, 3) if math.isfinite(x) else None for x in psnrs]))
    f, h, w, _ = videos[0][0].shape
    conv3d, device = None, args.device  # conv3d: which kernel ran the Conv3d layers on CPU (pipelines/cpu_conv.py)
    if args.device.startswith("cpu"):
        from dit_sparse.pipelines.cpu_conv import switched

        done, total = switched(pipe)
        conv3d = None if total == 0 else "oneDNN" if done else "native"
        device += f", {torch.get_num_threads()} threads" + ("" if conv3d is None else f", conv3d {conv3d}")
    print(f"dit-sparse bench: {pipe.__class__.__name__} {'(embedded tiny-wan)' if embedded else args.model}, "
          f"{f} frames {h}x{w}, {kwargs.get('num_inference_steps', 'default')} steps, {len(prompts)} prompt(s) x "
          f"{len(seeds)} seed(s), {device}, {args.dtype}"
          + (f", fastest of {args.repeat} calls" if args.repeat > 1 else ""))
    print(format_table(rows))
    if args.out is not None:
        print(f"side by side: {args.out} (columns: {', '.join(c.label for c in configs)})")
    if args.json is not None:
        doc = {"model": "embedded" if embedded else args.model, "frames": f, "height": h, "width": w,
               "repeat": args.repeat, "conv3d": conv3d,
               "steps": kwargs.get("num_inference_steps"), "prompts": prompts, "seeds": list(seeds),
               "device": args.device, "dtype": args.dtype, "rows": [_finite(asdict(r)) for r in rows]}
        from dit_sparse.atomic import write_text

        write_text(args.json, json.dumps(doc, indent=1, allow_nan=False) + "\n", what="--json")
    return 0
