"""``dit-sparse profile``: profile a pipeline on calibration prompts and write a plan.

    dit-sparse profile --prompts prompts.txt --out plan.json --budget 0.3
    dit-sparse profile --model ./my-wan --prompts prompts.txt --out plan.json --max-error 0.05 \\
        --steps 20 --height 64 --width 64 --frames 9 --seed 0 --seed 1

``--model`` defaults to the embedded tiny Wan model (and its trained generation settings).
A prompts file holds one prompt per line (blank lines and lines starting with ``#`` are
skipped), or a JSON list of strings when it ends in ``.json``. The plan is written
atomically: an existing file is replaced only by a complete new plan.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import List


NAME = "profile"
HELP = "profile a pipeline on calibration prompts and write a sparse attention plan"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="PATH_OR_ID",
                   help="diffusers pipeline folder or hub id in the local cache (default: the embedded tiny Wan)")
    p.add_argument("--prompts", required=True, metavar="FILE", help="calibration prompts, one per line (or .json)")
    p.add_argument("--out", required=True, metavar="PLAN_JSON", help="where to write the plan")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--max-error", type=float, metavar="E", help="per layer/head: cheapest pattern with error <= E")
    mode.add_argument("--budget", type=float, metavar="D",
                      help="mean density in (0, 1] (with --cost time: mean kernel time relative to dense); "
                           "minimise the error")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="denoising steps")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="number of frames (video pipelines)")
    p.add_argument("--seed", type=int, action="append", default=None,
                   help="seed of a calibration run (repeatable; default 0)")
    p.add_argument("--sample-steps", default=None, metavar="I,J,...",
                   help="steps at which candidates are measured (default: all up to 12 steps, else 12 spread)")
    p.add_argument("--candidate", action="append", default=None, metavar="SPEC",
                   help="candidate pattern spec, e.g. neighborhood:kernel=3x9x9 (repeatable; default: a grid-relative set)")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--dense-bound", type=float, default=None, metavar="E",
                   help="per-step error above which early steps stay dense")
    p.add_argument("--per-layer", action="store_true",
                   help="one pattern per layer for all its heads (faster on CPU) instead of per head")
    p.add_argument("--cost", choices=["density", "time"], default="density",
                   help="rank candidates by density, or by their kernel time measured on this device (time)")
    p.add_argument("--phase", action="append", default=None, metavar="STEP=VALUE",
                   help="from denoising step STEP on, select again with error bound (or budget, as the mode) "
                        "VALUE on those steps' measurements; repeatable, e.g. --max-error 0.1 --phase 10=0.25")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def read_prompts(path: str) -> List[str]:
    from . import CLIError

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"prompts file {path!r} does not exist") from None
    except UnicodeDecodeError:
        raise CLIError(f"prompts file {path!r} is not UTF-8 text") from None
    if file.suffix == ".json":
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CLIError(f"prompts file {path!r}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise CLIError(f"prompts file {path!r} must hold a JSON list of strings")
        prompts = [p.strip() for p in prompts if p.strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise CLIError(f"prompts file {path!r} has no prompts")
    return prompts


def load_pipeline(model):
    """``(pipeline, name, default call settings)`` for ``--model`` (None: the embedded model)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model is None:
        from dit_sparse.pipelines.tiny import DEFAULT_CALL_KWARGS, EMBEDDED_NAME, load_embedded_pipeline

        return load_embedded_pipeline(), f"embedded:{EMBEDDED_NAME}", dict(DEFAULT_CALL_KWARGS)
    from diffusers import DiffusionPipeline

    if os.path.sep in model or model.startswith("."):
        if not Path(model).exists():
            raise FileNotFoundError(f"--model {model!r} does not exist")
    try:
        pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise OSError(f"cannot load pipeline {model!r} offline: {exc}") from None
    return pipe, model, {}


def parse_phases(items, mode: str):
    """``--phase STEP=VALUE`` options as ``[(step, value), ...]``, validated."""
    from dit_sparse.selection import check_phases

    from . import CLIError

    phases = []
    for item in items or ():
        step, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            phases.append((int(step), float(value)))
        except ValueError:
            raise CLIError(f"--phase {item!r} must be STEP=VALUE (an int step and a number), e.g. 10=0.25") from None
    try:
        return check_phases(phases, mode)
    except ValueError as exc:
        raise CLIError(f"--phase {' '.join(items)}: {exc}") from None


def run(args) -> int:
    from dit_sparse.selection import check_mode

    from . import CLIError

    from dit_sparse.patterns import parse_pattern

    mode, _ = check_mode(args.max_error, args.budget)  # everything the user typed is checked before loading
    phases = parse_phases(args.phase, mode)
    prompts = read_prompts(args.prompts)
    for spec in args.candidate or ():
        try:
            parse_pattern(spec)
        except (TypeError, ValueError) as exc:
            raise CLIError(f"--candidate {spec!r}: {exc}") from None
    sample_steps = None
    if args.sample_steps:
        try:
            sample_steps = [int(s) for s in args.sample_steps.split(",") if s.strip()]
        except ValueError:
            raise CLIError(f"--sample-steps {args.sample_steps!r} must be comma-separated ints") from None
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out {args.out!r} is a directory")
    if not out.parent.exists() and str(out.parent):
        raise CLIError(f"--out {args.out!r}: folder {str(out.parent)!r} does not exist")

    import dit_sparse as ds

    pipe, name, defaults = load_pipeline(args.model)
    call_kwargs = {}
    guidance = args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale")
    if guidance is not None:
        call_kwargs["guidance_scale"] = guidance
    plan = ds.profile(
        pipe, prompts, candidates=args.candidate, max_error=args.max_error, budget=args.budget,
        num_inference_steps=args.steps if args.steps is not None else defaults.get("num_inference_steps"),
        sample_steps=sample_steps, seeds=tuple(args.seed) if args.seed else (0,),
        height=args.height if args.height is not None else defaults.get("height"),
        width=args.width if args.width is not None else defaults.get("width"),
        num_frames=args.frames if args.frames is not None else defaults.get("num_frames"),
        progress=not args.quiet, dense_bound=args.dense_bound, model_name=name, call_kwargs=call_kwargs,
        per_head=not args.per_layer, cost=args.cost, phases=phases)
    plan.save(out)
    print(plan.summary())
    print(f"\nwrote {out}")
    return 0
