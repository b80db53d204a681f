"""What the commands check and decide before they load a model.

Every argument is validated here, before the model load (seconds on a slow machine) and
before any work, with a one-line error that names the flag, its value and what is allowed.
Nothing here imports torch or diffusers, except :func:`pay_note`, which runs after the load.

* Sizes: ranges, the memory a decode needs at least (from the VAE's config, read as JSON),
  and, where the model folder's configs say so (the embedded model, Wan-style VAEs), the
  multiples the pipeline needs.
* Threads: ``--threads N``, or by default the CPUs that other processes leave idle, measured
  for a quarter second (on busy cores PyTorch's default of one thread per core makes a run
  many times slower: its threads wait for each other at every barrier; docs/benchmarks.md).
* Whether sparsity can pay at the requested size on this device (:func:`pay_note`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import CLIError

MAX_SEED = 2 ** 63 - 1
MAX_STEPS = 1000  # diffusers' schedulers are trained on 1,000 timesteps
MAX_GUIDANCE = 100.0
MAX_FPS = 1000.0
MAX_REPEAT = 1000
#: Token counts below which sparse attention cannot pay on a device type, whatever it skips:
#: per call, the sparse path's fixed costs (the runtime hook, layout lookups, gathers) outweigh
#: the pairs it does not compute. CPU: the embedded model's sparse runs were about as fast as
#: dense at 1,280 tokens and faster at 5,120 (docs/benchmarks.md); one layer's kernel alone
#: looks faster at 1,280 tokens than the pipeline is. No figure for GPUs: nothing was measured
#: on one.
MIN_TOKENS = {"cpu": 4096}
#: Decoder channels at full resolution assumed when a VAE config does not say (SD-style VAEs).
DEFAULT_VAE_CHANNELS = 128
#: Frames a video VAE decodes at once (Wan, HunyuanVideo and LTX decode a few frames at a time).
DECODE_CHUNK_FRAMES = 4


def fail(message: str) -> None:
    raise CLIError(message)


def check_int(flag: str, value: Optional[int], lo: int, hi: Optional[int] = None, why: str = "") -> None:
    """``value`` (None: not given) must be an int in ``[lo, hi]``."""
    if value is None:
        return
    if value < lo or (hi is not None and value > hi):
        allowed = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
        fail(f"{flag} {value}: must be {allowed}{why}")


def check_number(flag: str, value: Optional[float], lo: float, hi: float, *, open_lo: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value > hi or value < lo or (open_lo and value == lo):
        bound = f"> {lo:g}" if open_lo else f">= {lo:g}"
        fail(f"{flag} {value:g}: must be a finite number {bound} and <= {hi:g}")


_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|npu)(:\d+)?")


def check_device(device: str) -> None:
    if not _DEVICE.fullmatch(device or ""):
        fail(f"--device {device!r}: must be cpu, cuda or cuda:N (also mps, xpu)")


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeRules:
    """What sizes a pipeline takes: height and width multiples of ``spatial``; frames
    ``temporal * k + 1`` (``temporal`` None: an image pipeline, one frame). ``token_pixels``
    (height, width) and ``patch_t`` say how many pixels and latent frames make one token."""

    spatial: int
    temporal: Optional[int]
    spatial_why: str
    token_pixels: Tuple[int, int] = (1, 1)
    patch_t: int = 1

    @staticmethod
    def of(vae_factor: int, patch: Tuple[int, int, int], temporal: Optional[int], pipeline_name: str) -> "SizeRules":
        """The rules of a pipeline from its VAE's spatial factor, the transformer's patch
        ``(pt, ph, pw)``, the VAE's temporal factor (None: images) and the pipeline class."""
        pt, ph, pw = patch
        multiple, why = vae_factor * max(ph, pw), f"VAE factor {vae_factor} x patch {max(ph, pw)}"
        if pipeline_name.startswith("Wan") and multiple % 16:
            multiple = math.lcm(multiple, 16)
            why += f"; {pipeline_name} takes multiples of 16"
        return SizeRules(multiple, temporal, why, (vae_factor * ph, vae_factor * pw), pt)

    def check(self, frames: Optional[int], height: Optional[int], width: Optional[int]) -> None:
        for name, value in (("--height", height), ("--width", width)):
            if value is None:
                continue
            check_int(name, value, 1)
            if value % self.spatial:
                fail(f"{name} {value} is not a multiple of {self.spatial} ({self.spatial_why}); nearest valid: "
                     f"{_nearest(value, self.spatial, 0)}")
        if frames is None:
            return
        check_int("--frames", frames, 1)
        if self.temporal is None:
            if frames != 1:
                fail(f"--frames {frames}: this is a text-to-image pipeline; use --frames 1")
            return
        if (frames - 1) % self.temporal:
            fail(f"--frames {frames} does not fit the VAE's temporal factor {self.temporal} (frames = "
                 f"{self.temporal}k + 1); nearest valid: {_nearest(frames, self.temporal, 1)}")


def _nearest(value: int, step: int, offset: int) -> str:
    below = (value - offset) // step * step + offset
    above = below + step
    options = [v for v in (below, above) if v >= max(offset, 1)]
    return " or ".join(str(v) for v in options)


def patch_triple(patch, patch_t: int = 1) -> Tuple[int, int, int]:
    """A transformer config's ``patch_size`` (an int, 2 or 3 ints) as ``(pt, ph, pw)``."""
    if isinstance(patch, (list, tuple)):
        return (int(patch[0]), int(patch[-2]), int(patch[-1])) if len(patch) == 3 else \
            (int(patch_t), int(patch[-2]), int(patch[-1]))
    return int(patch_t), int(patch or 1), int(patch or 1)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class FolderFacts:
    """What a pipeline folder's config files say, read without loading anything."""

    rules: Optional[SizeRules]  # None: only the loaded pipeline knows
    vae_channels: int  # decoder channels at full resolution
    video: bool
    max_side: Optional[int] = None  # pixels per side the transformer's rotary table covers (Wan's rope_max_seq_len)
    max_frames: Optional[int] = None  # frames it covers


def folder_facts(folder: Optional[str]) -> FolderFacts:
    """Size rules and VAE width of a local diffusers pipeline folder (None or a hub id: unknown)."""
    path = Path(folder) if folder else None
    if path is None or not path.is_dir():
        return FolderFacts(None, DEFAULT_VAE_CHANNELS, True)
    index = _read_json(path / "model_index.json")
    vae = _read_json(path / "vae" / "config.json")
    transformer = _read_json(path / "transformer" / "config.json")
    channels = DEFAULT_VAE_CHANNELS
    if isinstance(vae.get("block_out_channels"), list) and vae["block_out_channels"]:
        channels = int(vae["block_out_channels"][0])
    elif isinstance(vae.get("base_dim"), int):
        mult = vae.get("dim_mult") or [1]
        channels = int(vae["base_dim"]) * int(mult[0])
    name = str(index.get("_class_name", ""))
    video = any(word in name for word in ("Video", "Wan", "Mochi", "LTX", "CogVideo", "Allegro", "Latte"))
    rules, max_side, max_frames = None, None, None
    rope = transformer.get("rope_max_seq_len")
    spatial, temporal = vae.get("scale_factor_spatial"), vae.get("scale_factor_temporal")
    patch = transformer.get("patch_size")
    if isinstance(spatial, int) and isinstance(temporal, int) and patch is not None:
        rules = SizeRules.of(spatial, patch_triple(patch), temporal, name)
        if isinstance(rope, int) and rope > 0:
            max_side = rope * max(rules.token_pixels)
            max_frames = (rope * rules.patch_t - 1) * temporal + 1
    return FolderFacts(rules, channels, video, max_side, max_frames)


def decode_bytes(frames: int, height: int, width: int, vae_channels: int) -> int:
    """A lower bound of the memory a decode of ``frames`` x ``height`` x ``width`` needs: the
    float32 output (plus its uint8 copy) of every frame, and the decoder's full-resolution
    activations (about 8 live float32 maps of ``vae_channels`` each) of a chunk of frames.
    A real decode needs more (the embedded model's measured peak: docs/benchmarks.md)."""
    pixels = height * width
    return frames * pixels * (12 + 3) + min(frames, DECODE_CHUNK_FRAMES) * pixels * 32 * vae_channels


def check_memory(frames: int, height: int, width: int, vae_channels: int,
                 available: Optional[int] = None) -> None:
    """Refuse sizes whose decode cannot fit this machine's available memory."""
    from dit_sparse import env

    available = env.available_memory() if available is None else available
    if not available:
        return
    need = decode_bytes(frames, height, width, vae_channels)
    if need <= available:
        return
    side = int(math.sqrt(available / max(decode_bytes(frames, 1, 1, vae_channels), 1)))
    fail(f"--frames {frames} --height {height} --width {width}: decoding needs at least {need / 2**30:.1f} GiB, "
         f"more than the {available / 2**30:.1f} GiB of memory available here; at {frames} frames the largest "
         f"square size that fits is about {side}x{side}")


def check_sizes(frames, height, width, steps, guidance, facts: FolderFacts, defaults: Dict[str, Any]) -> None:
    """Everything about sizes that can be known before the load."""
    check_int("--steps", steps, 1, MAX_STEPS)
    check_number("--guidance", guidance, 0.0, MAX_GUIDANCE)
    for flag, value in (("--frames", frames), ("--height", height), ("--width", width)):
        check_int(flag, value, 1)
    if facts.rules is not None:
        facts.rules.check(frames, height, width)
    for flag, value, limit in (("--height", height, facts.max_side), ("--width", width, facts.max_side),
                               ("--frames", frames, facts.max_frames)):
        if value is not None and limit is not None and value > limit:
            fail(f"{flag} {value}: at most {limit} for this model (the transformer's rotary position table "
                 f"ends there)")
    f = frames if frames is not None else defaults.get("num_frames", 1)
    h = height if height is not None else defaults.get("height")
    w = width if width is not None else defaults.get("width")
    if h is not None and w is not None:
        check_memory(int(f or 1), int(h), int(w), facts.vae_channels)


def check_dense_steps(dense_steps, steps: Optional[int]) -> None:
    """An integer count of dense warm-up steps must leave a sparse step."""
    if dense_steps is None or steps is None or isinstance(dense_steps, float):
        return
    if dense_steps >= steps:
        fail(f"--dense-steps {dense_steps} with --steps {steps}: every step would run dense; allowed: 0 to "
             f"{steps - 1}, or a fraction in (0, 1) (use --dense for a dense run)")


def check_seeds(flag: str, seeds: Sequence[int]) -> None:
    for seed in seeds:
        check_int(flag, seed, 0, MAX_SEED)


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


def choose_threads(requested: Optional[int]) -> Tuple[int, Optional[str]]:
    """``(threads, note)``: ``requested``, or the CPUs other processes leave idle (at least
    one, at most what PyTorch would pick). ``note`` says why fewer threads than PyTorch's
    default were chosen, else None."""
    import os

    from dit_sparse import env

    cpus = env.cpu_count()
    if requested is not None:
        check_int("--threads", requested, 1, cpus, f" (this machine has {cpus} CPU{'s' if cpus != 1 else ''})")
        return requested, None
    import torch

    default = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or default <= 1:
        return default, None  # the user's choice, or nothing to take away
    busy = env.busy_cpus()
    if busy is None:
        return default, None
    free = max(1, min(default, cpus - int(round(busy))))
    if free == default:
        return default, None
    return free, (f"{busy:.1f} of {cpus} CPUs are busy with other work: running on {free} thread"
                  f"{'s' if free != 1 else ''} instead of {default} (--threads N to choose)")


# --------------------------------------------------------------------------------------
# Can sparsity pay here?
# --------------------------------------------------------------------------------------


def token_grid(frames: Optional[int], height: int, width: int, rules: SizeRules) -> Tuple[int, int, int]:
    """The transformer's token grid ``(T, H, W)`` for a call at these sizes."""
    t = 1
    if rules.temporal is not None and frames:
        t = max(1, ((frames - 1) // rules.temporal + 1) // rules.patch_t)
    th, tw = rules.token_pixels
    return t, max(1, height // th), max(1, width // tw)


def _weighted_patterns(spec) -> List[Tuple[Any, int]]:
    """``[(pattern, how many heads use it)]`` of a Pattern or a Plan's sparse steps (the
    three most used patterns)."""
    from collections import Counter

    from dit_sparse import Plan

    if not isinstance(spec, Plan):
        return [(spec, 1)]
    counts = Counter()
    for layer in spec.layers.values():
        counts.update(layer.patterns)
    return counts.most_common(3)


def pay_note(pipe, spec, dense_steps_share: float, grid: Tuple[int, int, int], device: str,
             embedded: bool) -> Optional[str]:
    """One line when sparse attention cannot be faster than dense at ``grid`` on ``device``,
    else None: when every step runs dense, when the token count is below what the device
    needs (:data:`MIN_TOKENS`), or when the kernel is not faster than dense SDPA on one
    layer's shape (random q, k, v, at most 8 heads;
    :func:`dit_sparse.pipelines.profiling.time_candidates`), measured up to 16,384 tokens;
    above that the tile-bound estimate (:func:`dit_sparse.estimate_speedup`) stands in,
    since fixed costs no longer matter there."""
    import dit_sparse as ds
    from dit_sparse.pipelines.profiling import time_candidates

    layout = ds.TokenLayout(grid=grid)
    tokens = layout.seq_len
    hint = " (e.g. --height 128 --width 128 for the embedded model)" if embedded else ""
    where = f"{tokens:,} tokens (grid {'x'.join(map(str, grid))})"
    weighted = _weighted_patterns(spec)
    if all(isinstance(p, ds.Full) for p, _ in weighted):
        return f"every layer of {_label(spec)} is dense: it cannot be faster than dense attention"
    if dense_steps_share >= 1:
        return f"every step runs dense (the warm-up covers all of them): {_label(spec)} cannot be faster than dense"
    minimum = MIN_TOKENS.get(device.split(":")[0])
    if minimum is not None and tokens < minimum:
        return (f"sparsity cannot pay at this size on {device}: at {where} the sparse path's fixed costs per call "
                f"outweigh the pairs it skips (it pays from about {minimum:,} tokens here); use a larger size{hint}")
    cfg = pipe.transformer.config
    heads = cfg.get("num_attention_heads") if hasattr(cfg, "get") else None
    head_dim = cfg.get("attention_head_dim") if hasattr(cfg, "get") else None
    total = sum(n for _, n in weighted)
    if tokens <= 16384 and isinstance(heads, int) and isinstance(head_dim, int):
        times = time_candidates([p for p, _ in weighted], layout, min(heads, 8), head_dim, device=device)
        ratio = sum(float(t) * n for t, (_, n) in zip(times, weighted)) / total
        how = "measured on one layer here"
    else:
        ratio = sum(n / ds.estimate_speedup(p, layout).tile_bound for p, n in weighted) / total
        how = "tile-bound estimate"
    ratio = dense_steps_share + (1 - dense_steps_share) * ratio
    if ratio < 0.95:
        return None
    return (f"sparsity cannot pay at this size on {device}: at {where} sparse attention takes {ratio:.2f}x the "
            f"time of dense ({how}); use a larger size{hint}")


def _label(spec) -> str:
    from dit_sparse import Plan

    return "the plan" if isinstance(spec, Plan) else "the pattern"
