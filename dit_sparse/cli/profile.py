"""``dit-sparse profile``: profile a pipeline on calibration prompts and write a plan.

    dit-sparse profile --prompts prompts.txt -o plan.json --budget 0.3 --height 128 --width 128
    dit-sparse profile --model ./my-wan --prompts prompts.txt -o plan.json --max-error 0.05 \\
        --steps 20 --height 64 --width 64 --frames 9 --seeds 0 1

``--model`` defaults to the embedded tiny Wan model (and its trained generation settings).
Over several processes, launch it with torchrun (gloo on CPU, nccl with ``--device cuda``,
each rank on GPU ``LOCAL_RANK``); the (prompt, seed) runs are dealt over the ranks, rank 0
writes the plan and prints, the other ranks are quiet:

    torchrun --nproc-per-node 2 -m dit_sparse profile --prompts prompts.txt -o plan.json --budget 0.3

``--prompts`` takes prompts or prompts files: a file holds one prompt per line (blank lines
and lines starting with # are skipped), or a JSON list of strings when it ends in .json. The plan is written
atomically: an existing file is replaced only by a complete new plan.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CLIError, preflight


NAME = "profile"
HELP = "profile a pipeline on calibration prompts and write a sparse attention plan"


def epilog() -> str:
    """The pattern spec syntax, shown under ``--help`` (torch is imported only then)."""
    from dit_sparse.patterns import PATTERN_SPEC_HELP

    return PATTERN_SPEC_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    from . import generate as gen

    gen.add_prompts_argument(p, required=True)
    p.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="PLAN_JSON",
                   help="where to write the plan (.json)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--max-error", type=float, metavar="E", help="per layer/head: cheapest pattern with error <= E")
    mode.add_argument("--budget", type=float, metavar="D",
                      help="mean density in (0, 1] (with --cost time: mean kernel time relative to dense); "
                           "minimise the error")
    gen.add_seeds_argument(p)
    p.add_argument("--sample-steps", default=None, metavar="I,J,...",
                   help="steps at which candidates are measured (default: all up to 12 steps, else 12 spread)")
    p.add_argument("--candidate", action="append", default=None, metavar="SPEC",
                   help="candidate pattern spec, e.g. neighborhood:kernel=3x9x9 (repeatable; default: a grid-relative "
                        "set; syntax below)")
    p.add_argument("--dense-bound", type=float, default=None, metavar="E",
                   help="per-step error above which early steps stay dense")
    p.add_argument("--per-layer", action="store_true",
                   help="one pattern per layer for all its heads (faster on CPU) instead of per head")
    p.add_argument("--cost", choices=["density", "time"], default="density",
                   help="rank candidates by density, or by their kernel time measured on this device (time)")
    p.add_argument("--phase", action="append", default=None, metavar="STEP=VALUE",
                   help="from denoising step STEP on, select again with error bound (or budget, as the mode) "
                        "VALUE on those steps' measurements; repeatable, e.g. --max-error 0.1 --phase 10=0.25")
    gen.add_model_arguments(p, dense_steps=False, fps=False)


def parse_phases(items, mode: str):
    """``--phase STEP=VALUE`` options as ``[(step, value), ...]``, validated."""
    from dit_sparse.selection import check_phases

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


def _check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".json":
        raise CLIError(f"-o/--output {path!r} must end in .json (a plan is a JSON file)")
    if out.is_dir():
        raise CLIError(f"-o/--output {path!r} is a directory")
    if not out.parent.is_dir():
        raise CLIError(f"-o/--output {path!r}: its folder {str(out.parent)!r} does not exist (create it first)")
    return out


def run(args) -> int:
    from dit_sparse.patterns import parse_pattern
    from dit_sparse.selection import check_mode

    from . import generate as gen

    # everything the user typed is checked before loading
    mode, _ = check_mode(args.max_error, args.budget)
    phases = parse_phases(args.phase, mode)
    prompts = gen.prompts_from_args(args)
    seeds = gen.seeds_from_args(args)
    candidates = []
    for spec in args.candidate or ():
        try:
            candidates.append(parse_pattern(spec))
        except (TypeError, ValueError) as exc:
            raise CLIError(f"--candidate {spec!r}: {exc}") from None
    sample_steps = None
    if args.sample_steps:
        try:
            sample_steps = [int(s) for s in args.sample_steps.split(",") if s.strip()]
        except ValueError:
            raise CLIError(f"--sample-steps {args.sample_steps!r} must be comma-separated ints") from None
    out = _check_out(args.out)
    gen.check_model_args(args)

    rank, started = _start_processes(args)
    try:
        code = _profile(args, rank, prompts, seeds, candidates, sample_steps, phases, out)
        if started:
            import torch.distributed as dist

            dist.barrier()  # no rank tears the group down while another still talks to it
        return code
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _start_processes(args):
    """``(rank, started)``. Under torchrun with more than one process: the default process
    group from torchrun's environment (nccl for ``--device cuda``, each rank on GPU
    ``LOCAL_RANK``; gloo on CPU), and every rank but 0 quiet. ``started``: this call made it."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_torchelastic_launched() or dist.is_initialized():
        return (dist.get_rank() if dist.is_available() and dist.is_initialized() else 0), False
    cuda = args.device.startswith("cuda")
    if cuda:
        import torch

        local = dist.get_node_local_rank()
        if args.device == "cuda":
            args.device = f"cuda:{local}"
        torch.cuda.set_device(torch.device(args.device))
    dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_world_size() == 1:
        dist.destroy_process_group()
        return 0, False
    rank = dist.get_rank()
    if rank != 0:
        args.quiet = True
    return rank, True


def _profile(args, rank: int, prompts, seeds, candidates, sample_steps, phases, out: Path) -> int:
    import dit_sparse as ds

    from . import generate as gen

    pipe, embedded = gen.load_pipeline(args.model, args.device, args.dtype, args.native_conv3d, args.quiet)
    settings = gen.prepare(args, pipe, embedded)
    if rank == 0:
        _warn_if_cannot_pay(pipe, candidates, settings, args.device, embedded)
    from dit_sparse.pipelines.tiny import EMBEDDED_NAME

    name = f"embedded:{EMBEDDED_NAME}" if embedded else args.model
    call_kwargs = {"guidance_scale": settings.guidance} if settings.guidance is not None else {}
    plan = ds.profile(
        pipe, prompts, candidates=args.candidate, max_error=args.max_error, budget=args.budget,
        num_inference_steps=settings.steps, sample_steps=sample_steps, seeds=tuple(seeds),
        height=settings.height, width=settings.width, num_frames=settings.frames,
        progress=not args.quiet, dense_bound=args.dense_bound, model_name=name, call_kwargs=call_kwargs,
        per_head=not args.per_layer, cost=args.cost, phases=phases)
    if rank == 0:  # every rank holds the same plan; one writes it
        plan.save(out)
        print(plan.summary())
        print(f"\nwrote {out}")
    return 0


def _warn_if_cannot_pay(pipe, candidates, settings, device: str, embedded: bool) -> None:
    """The note of :func:`generate.warn_if_cannot_pay` for the sparsest candidate: if even it
    cannot beat dense attention at this size, no plan profiled here can."""
    from dit_sparse import Full, TokenLayout
    from dit_sparse.selection import default_candidates

    from . import generate as gen

    frames, height, width = settings.resolved_size(pipe)
    grid = preflight.token_grid(frames, height, width, gen.size_rules(pipe))
    layout = TokenLayout(grid=grid)
    sparse = [p for p in (candidates or default_candidates(grid)) if not isinstance(p, Full)]
    if not sparse:
        return
    def density(pattern) -> float:
        try:
            return pattern.density(layout)
        except ValueError:  # data-dependent (a BlockSparse threshold)
            return 1.0

    sparsest = min(sparse, key=density)
    note = preflight.pay_note(pipe, sparsest, 0.0, grid, device, embedded)
    if note:
        print(f"dit-sparse {NAME}: note: {note} (checked with the sparsest candidate, "
              f"{sparsest.spec})", file=sys.stderr, flush=True)
